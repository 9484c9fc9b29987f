// Registers one seeded device with the official Azure IoT Node.js device SDK (HTTP transport) against a
// running simulator, the way a real device would, and prints the assigned hub and device id.
//
// Usage: node register.mjs <endpoints.json> <registrationId>
//   endpoints.json: what `azure-iot-sim --https --fleet FILE` prints on stdout.
//   The device's credentials come from the simulator's admin API (GET /_sim/devices/<id>/credentials).
//
// The SDK always connects to port 443 of the host it is given; like run.mjs, this script connects the
// simulated host names to their local ports and trusts the simulator's CA for them only.

import fs from 'node:fs';
import https from 'node:https';

import provDevice from 'azure-iot-provisioning-device';
import provHttp from 'azure-iot-provisioning-device-http';
import symKey from 'azure-iot-security-symmetric-key';
import x509Sec from 'azure-iot-security-x509';

const [endpointsFile, registrationId] = process.argv.slice(2);
if (!endpointsFile || !registrationId) {
  console.error('usage: node register.mjs <endpoints.json> <registrationId>');
  process.exit(2);
}
const endpoints = JSON.parse(fs.readFileSync(endpointsFile, 'utf8'));
const ca = endpoints.tlsCaPem;
if (!ca) {
  console.error('the simulator must run with --https (the device SDK speaks HTTPS only)');
  process.exit(2);
}

// Simulated host name -> local port, from the listener URLs.
const ports = new Map();
const portOf = (urls) => Number(new URL(urls[0]).port);
for (const d of endpoints.dps) ports.set(d.host.toLowerCase(), portOf(d.urls));
for (const h of endpoints.hubs) ports.set(h.host.toLowerCase(), portOf(h.urls));
ports.set(endpoints.deviceApi.host.toLowerCase(), portOf(endpoints.deviceApi.urls));

const originalCreateConnection = https.Agent.prototype.createConnection;
https.Agent.prototype.createConnection = function createConnection(options, callback) {
  const port = ports.get(String(options.host || '').toLowerCase());
  if (port) {
    options = { ...options, servername: options.servername || options.host, host: '127.0.0.1', port, ca };
  }
  return originalCreateConnection.call(this, options, callback);
};

// The admin API answers on every listener; ask the device API's.
const credentialsUrl = `${endpoints.deviceApi.urls[0]}/_sim/devices/${encodeURIComponent(registrationId)}/credentials`;
const creds = await new Promise((resolve, reject) => {
  https
    .get(credentialsUrl, { ca }, (res) => {
      let body = '';
      res.on('data', (c) => (body += c));
      res.on('end', () => (res.statusCode === 200 ? resolve(JSON.parse(body)) : reject(new Error(`${res.statusCode} ${body}`))));
    })
    .on('error', reject);
});

let security;
if (creds.attestation === 'symmetricKey') {
  security = new symKey.SymmetricKeySecurityClient(creds.registrationId, creds.symmetricKey);
} else if (creds.attestation === 'x509') {
  security = new x509Sec.X509Security(creds.registrationId, { cert: creds.chainPem, key: creds.keyPem });
} else {
  console.error(`attestation ${creds.attestation} is not supported by this script (the Node SDK has no simulated TPM)`);
  process.exit(2);
}

const client = provDevice.ProvisioningDeviceClient.create(endpoints.deviceApi.host, creds.idScope, new provHttp.Http(), security);
client.register((err, result) => {
  if (err) {
    console.error(`registration of ${registrationId} failed: ${err.message || err}`);
    process.exit(1);
  }
  console.log(JSON.stringify({ registrationId, status: result.status, assignedHub: result.assignedHub, deviceId: result.deviceId }));
});

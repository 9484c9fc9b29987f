#!/usr/bin/env bash
# Writes the files docker-compose.yml reads as secrets, under ./secrets (never committed):
# a random PostgreSQL password, the database URL that uses it, an admin API key (printed once, stored only as
# its SHA-256), and an Azure configuration to fill in.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
umask 077
mkdir -p secrets
if [[ ! -s secrets/postgres-password ]]; then
    head -c 32 /dev/urandom | base64 | tr -d '/+=\n' >secrets/postgres-password
fi
printf 'postgres://deprovisiond:%s@postgres:5432/deprovisiond\n' "$(cat secrets/postgres-password)" >secrets/database-url
if [[ ! -s secrets/api-keys ]]; then
    # One admin key; only its SHA-256 is stored. Add lines from `deprovisiond keys new` for other callers.
    key="dpk_$(head -c 32 /dev/urandom | base64 | tr -d '/+=\n')"
    printf 'admin:admin:%s\n' "$(printf '%s' "$key" | sha256sum | cut -d' ' -f1)" >secrets/api-keys
    echo "admin API key (shown once, not stored): $key" >&2
fi
if [[ ! -e secrets/azure-config.json ]]; then
    cat >secrets/azure-config.json <<'JSON'
{
  "dps": [{"name": "main", "connection_string": "HostName=YOUR-DPS.azure-devices-provisioning.net;SharedAccessKeyName=provisioningserviceowner;SharedAccessKey=..."}],
  "hubs": [{"connection_string": "HostName=YOUR-HUB.azure-devices.net;SharedAccessKeyName=registryReadWrite;SharedAccessKey=...", "tier": "S1", "units": 1}]
}
JSON
    echo "edit secrets/azure-config.json: your DPS and hub connection strings" >&2
fi
echo "secrets written under $(pwd)/secrets" >&2

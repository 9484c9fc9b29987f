//! The simulated DPS device registration API, end to end over HTTP(S): symmetric keys, X.509 (test
//! header and real mutual TLS), DPS precedence, SAS failures, and fleet seeding.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use azure_iot_sim::device_api::{self, DeviceApiConfig};
use azure_iot_sim::sas;
use azure_iot_sim::seed::{
    self, Attestation, FleetSpec, GroupSpec, IndividualSpec, ProvisionOutcome,
};
use azure_iot_sim::state::{EnrollmentKind, Precondition};
use azure_iot_sim::tls::{self, CLIENT_CERT_HEADER, TlsSettings};
use azure_iot_sim::x509::TestCa;
use azure_iot_sim::{ExistingPutPolicy, RunningSimulator, SimConfig, Simulator};
use serde_json::{Value, json};

const DPS: &str = "test-dps";
const HUBS: [&str; 3] = [
    "hub-1.azure-devices.net",
    "hub-2.azure-devices.net",
    "hub-3.azure-devices.net",
];

fn config() -> SimConfig {
    let mut c = SimConfig::single(DPS, &HUBS);
    c.device_api = DeviceApiConfig {
        retry_after_secs: 0,
        ..DeviceApiConfig::default()
    };
    c
}

async fn start(c: SimConfig) -> RunningSimulator {
    Simulator::start(c).await.expect("simulator starts")
}

fn scope(sim: &RunningSimulator) -> String {
    sim.state().dps(DPS).unwrap().id_scope.clone()
}

fn expiry(secs_from_now: i64) -> u64 {
    (chrono::Utc::now().timestamp() + secs_from_now) as u64
}

/// Stores an enrollment or group in-process and returns the stored form (keys included).
fn put(sim: &RunningSimulator, kind: EnrollmentKind, id: &str, body: Value) -> Value {
    sim.state()
        .dps(DPS)
        .unwrap()
        .put(
            kind,
            id,
            body,
            &Precondition::None,
            ExistingPutPolicy::Replace,
        )
        .expect("enrollment stored")
}

fn primary_key(stored: &Value) -> String {
    stored
        .pointer("/attestation/symmetricKey/primaryKey")
        .and_then(Value::as_str)
        .unwrap()
        .to_owned()
}

/// How a test device authenticates.
enum Auth {
    Sas(String),
    CertHeader(String),
    None,
}

/// PUT register, then poll until the operation leaves `assigning`. Returns the last status and
/// body, and every intermediate status seen.
async fn register(
    client: &reqwest::Client,
    base: &str,
    scope: &str,
    rid: &str,
    auth: &Auth,
) -> (u16, Value, reqwest::header::HeaderMap) {
    let apply = |rb: reqwest::RequestBuilder| match auth {
        Auth::Sas(t) => rb.header("authorization", t),
        Auth::CertHeader(v) => rb.header(CLIENT_CERT_HEADER, v),
        Auth::None => rb,
    };
    let url = format!("{base}/{scope}/registrations/{rid}/register?api-version=2019-03-31");
    let resp = apply(client.put(&url).json(&json!({"registrationId": rid})))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    if status != 202 {
        return (status, body, headers);
    }
    assert_eq!(body["status"], "assigning");
    assert!(headers.contains_key("x-ms-request-id"));
    assert_eq!(headers["retry-after"], "0");
    let location = headers["location"].to_str().unwrap().to_owned();
    let op = body["operationId"].as_str().unwrap().to_owned();
    assert!(location.ends_with(&format!("/operations/{op}")));
    for _ in 0..50 {
        let url =
            format!("{base}/{scope}/registrations/{rid}/operations/{op}?api-version=2021-06-01");
        let resp = apply(client.get(&url)).send().await.unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body: Value = resp.json().await.unwrap();
        if status == 202 {
            assert_eq!(body["status"], "assigning");
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        return (status, body, headers);
    }
    panic!("operation never finished");
}

fn sas_for(scope: &str, rid: &str, key: &str) -> Auth {
    Auth::Sas(device_api::device_sas(scope, rid, key, expiry(3600)))
}

#[tokio::test]
async fn symmetric_key_individual_registers_and_creates_the_hub_identity() {
    let sim = start(config()).await;
    let stored = put(
        &sim,
        EnrollmentKind::Individual,
        "sk-dev-1",
        json!({"registrationId": "sk-dev-1", "deviceId": "custom-id",
               "attestation": {"type": "symmetricKey"}, "capabilities": {"iotEdge": true},
               "initialTwin": {"tags": {"site": "lyon"}}}),
    );
    let key = primary_key(&stored);
    let client = reqwest::Client::new();
    let (status, body, _) = register(
        &client,
        &sim.device_api_base_url(),
        &scope(&sim),
        "sk-dev-1",
        &sas_for(&scope(&sim), "sk-dev-1", &key),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "assigned");
    let state = &body["registrationState"];
    assert_eq!(state["deviceId"], "custom-id");
    assert_eq!(state["substatus"], "initialAssignment");
    assert!(state["etag"].as_str().is_some_and(|e| !e.is_empty()));
    assert!(state["createdDateTimeUtc"].is_string() && state["lastUpdatedDateTimeUtc"].is_string());
    let hub_host = state["assignedHub"].as_str().unwrap().to_owned();
    assert!(HUBS.contains(&hub_host.as_str()));

    // The DPS registration record and the hub identity agree with the answer.
    let record = sim
        .state()
        .dps(DPS)
        .unwrap()
        .registration("sk-dev-1")
        .unwrap();
    assert_eq!(record.group_id, None);
    assert_eq!(record.state["assignedHub"], hub_host.as_str());
    let device = sim
        .state()
        .hub(&hub_host)
        .unwrap()
        .get_device("custom-id")
        .unwrap();
    assert_eq!(device["authentication"]["type"], "sas");
    assert_eq!(
        device["authentication"]["symmetricKey"]["primaryKey"],
        key.as_str()
    );
    assert_eq!(device["capabilities"]["iotEdge"], true);
    let twin = sim
        .state()
        .hub(&hub_host)
        .unwrap()
        .get_stored("custom-id")
        .unwrap();
    assert_eq!(twin.tags["site"], "lyon");

    // Re-registering keeps the hub and the substatus, and the secondary key works too.
    let secondary = stored
        .pointer("/attestation/symmetricKey/secondaryKey")
        .and_then(Value::as_str)
        .unwrap()
        .to_owned();
    let (status, body, _) = register(
        &client,
        &sim.device_api_base_url(),
        &scope(&sim),
        "sk-dev-1",
        &sas_for(&scope(&sim), "sk-dev-1", &secondary),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["registrationState"]["assignedHub"], hub_host.as_str());
    assert_eq!(body["registrationState"]["substatus"], "initialAssignment");
    sim.shutdown().await;
}

#[tokio::test]
async fn group_derived_key_registers_and_assigning_phase_answers_202() {
    let mut c = config();
    c.device_api.assigning_ms = 300;
    let sim = start(c).await;
    let stored = put(
        &sim,
        EnrollmentKind::Group,
        "sk-group",
        json!({"enrollmentGroupId": "sk-group", "attestation": {"type": "symmetricKey"},
               "iotHubs": ["hub-2.azure-devices.net"]}),
    );
    let group_key = sas::key_bytes(&primary_key(&stored)).unwrap();
    let device_key = sas::group_device_key(&group_key, "sensor-42");
    let client = reqwest::Client::new();
    let scope = scope(&sim);
    let started = std::time::Instant::now();
    let (status, body, _) = register(
        &client,
        &sim.device_api_base_url(),
        &scope,
        "sensor-42",
        &sas_for(&scope, "sensor-42", &device_key),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "polls answered 202 while assigning"
    );
    assert_eq!(
        body["registrationState"]["assignedHub"],
        "hub-2.azure-devices.net"
    );
    assert_eq!(
        body["registrationState"]["symmetricKey"]["enrollmentGroupId"],
        "sk-group"
    );
    let record = sim
        .state()
        .dps(DPS)
        .unwrap()
        .registration("sensor-42")
        .unwrap();
    assert_eq!(record.group_id.as_deref(), Some("sk-group"));
    let device = sim
        .state()
        .hub("hub-2.azure-devices.net")
        .unwrap()
        .get_device("sensor-42")
        .unwrap();
    assert_eq!(
        device["authentication"]["symmetricKey"]["primaryKey"],
        device_key.as_str()
    );

    // A key derived for another id does not work.
    let wrong = sas::group_device_key(&group_key, "sensor-43");
    let (status, _, _) = register(
        &client,
        &sim.device_api_base_url(),
        &scope,
        "sensor-42",
        &sas_for(&scope, "sensor-42", &wrong),
    )
    .await;
    assert_eq!(status, 401);
    sim.shutdown().await;
}

#[tokio::test]
async fn bad_or_expired_sas_gets_401002_without_error_code_header() {
    let sim = start(config()).await;
    let stored = put(
        &sim,
        EnrollmentKind::Individual,
        "sk-dev-2",
        json!({"registrationId": "sk-dev-2", "attestation": {"type": "symmetricKey"}}),
    );
    let key = primary_key(&stored);
    let scope = scope(&sim);
    let client = reqwest::Client::new();
    let base = sim.device_api_base_url();
    let wrong_key = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    let expired = Auth::Sas(device_api::device_sas(
        &scope,
        "sk-dev-2",
        &key,
        expiry(-10),
    ));
    let other_sr = Auth::Sas(device_api::device_sas(
        &scope,
        "sk-dev-3",
        &key,
        expiry(3600),
    ));
    for auth in [
        sas_for(&scope, "sk-dev-2", wrong_key),
        expired,
        other_sr,
        Auth::None,
    ] {
        let (status, body, headers) = register(&client, &base, &scope, "sk-dev-2", &auth).await;
        assert_eq!(status, 401, "{body}");
        assert_eq!(body["errorCode"], 401_002);
        assert_eq!(body["message"], "Unauthorized");
        assert!(body["timestampUtc"].is_string());
        assert_eq!(
            body["trackingId"].as_str().unwrap(),
            headers["x-ms-request-id"].to_str().unwrap()
        );
        assert!(!headers.contains_key("x-ms-error-code"));
    }
    // No enrollment at all is refused the same way; an unknown scope too.
    let (status, _, _) = register(
        &client,
        &base,
        &scope,
        "nobody",
        &sas_for(&scope, "nobody", &key),
    )
    .await;
    assert_eq!(status, 401);
    let (status, _, _) = register(
        &client,
        &base,
        "0ne99999999",
        "sk-dev-2",
        &sas_for("0ne99999999", "sk-dev-2", &key),
    )
    .await;
    assert_eq!(status, 401);
    // A missing api-version is a 400.
    let resp = client
        .put(format!("{base}/{scope}/registrations/sk-dev-2/register"))
        .header(
            "authorization",
            device_api::device_sas(&scope, "sk-dev-2", &key, expiry(60)),
        )
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    sim.shutdown().await;
}

#[tokio::test]
async fn x509_individual_and_group_via_the_test_header() {
    let sim = start(config()).await;
    let root = TestCa::root("Header Root").unwrap();
    let inter = root.intermediate("Header Inter").unwrap();
    let single = inter.leaf("x509-single").unwrap();
    put(
        &sim,
        EnrollmentKind::Individual,
        "x509-single",
        json!({"registrationId": "x509-single",
               "attestation": {"type": "x509", "x509": {"clientCertificates": {"primary": {"certificate": single.cert_pem}}}}}),
    );
    put(
        &sim,
        EnrollmentKind::Group,
        "x509-group",
        json!({"enrollmentGroupId": "x509-group",
               "attestation": {"type": "x509", "x509": {"signingCertificates": {"primary": {"certificate": inter.cert_pem()}}}}}),
    );
    let client = reqwest::Client::new();
    let base = sim.device_api_base_url();
    let scope = scope(&sim);

    let (status, body, _) = register(
        &client,
        &base,
        &scope,
        "x509-single",
        &Auth::CertHeader(tls::cert_header_value(&single.chain_der)),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let state = &body["registrationState"];
    assert_eq!(
        state["x509"]["certificateInfo"]["subjectName"],
        "CN=x509-single"
    );
    let hub = sim
        .state()
        .hub(state["assignedHub"].as_str().unwrap())
        .unwrap();
    let device = hub.get_device("x509-single").unwrap();
    assert_eq!(device["authentication"]["type"], "selfSigned");
    assert_eq!(
        device["authentication"]["x509Thumbprint"]["primaryThumbprint"],
        azure_iot_sim::x509::sha1_thumbprint(&single.cert_der).as_str()
    );

    let member = inter.leaf("x509-member-1").unwrap();
    let (status, body, _) = register(
        &client,
        &base,
        &scope,
        "x509-member-1",
        &Auth::CertHeader(tls::cert_header_value(&member.chain_der)),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["registrationState"]["x509"]["enrollmentGroupId"],
        "x509-group"
    );
    assert_eq!(
        body["registrationState"]["x509"]["signingCertificateInfo"]["subjectName"],
        "CN=Header Inter, O=azure-iot-sim test PKI"
    );

    // CN must be the registration id; a leaf from another PKI matches nothing.
    let (status, _, _) = register(
        &client,
        &base,
        &scope,
        "someone-else",
        &Auth::CertHeader(tls::cert_header_value(&member.chain_der)),
    )
    .await;
    assert_eq!(status, 401);
    let stranger = TestCa::root("Other Root")
        .unwrap()
        .intermediate("Header Inter")
        .unwrap()
        .leaf("x509-member-2")
        .unwrap();
    let (status, _, _) = register(
        &client,
        &base,
        &scope,
        "x509-member-2",
        &Auth::CertHeader(tls::cert_header_value(&stranger.chain_der)),
    )
    .await;
    assert_eq!(status, 401);
    sim.shutdown().await;
}

#[tokio::test]
async fn x509_group_over_real_mutual_tls() {
    let mut c = config();
    c.tls = Some(TlsSettings::generated());
    let sim = start(c).await;
    let root = TestCa::root("mTLS Root").unwrap();
    let inter = root.intermediate("mTLS Inter").unwrap();
    put(
        &sim,
        EnrollmentKind::Group,
        "mtls-group",
        json!({"enrollmentGroupId": "mtls-group",
               "attestation": {"type": "x509", "x509": {"signingCertificates": {"primary": {"certificate": root.cert_pem()}}}}}),
    );
    let leaf = inter.leaf("mtls-dev-1").unwrap();
    let ca = reqwest::Certificate::from_pem(sim.tls_ca_pem().unwrap().as_bytes()).unwrap();
    let client = reqwest::Client::builder()
        .tls_certs_only([ca])
        .identity(reqwest::Identity::from_pem(leaf.identity_pem().as_bytes()).unwrap())
        .build()
        .unwrap();
    let base = sim.device_api_base_url().replace("127.0.0.1", "localhost");
    assert!(base.starts_with("https://"));
    let (status, body, _) = register(&client, &base, &scope(&sim), "mtls-dev-1", &Auth::None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["registrationState"]["x509"]["enrollmentGroupId"],
        "mtls-group"
    );
    // The service listeners serve HTTPS too.
    assert!(sim.dps_base_url(DPS).starts_with("https://"));
    sim.shutdown().await;
}

#[tokio::test]
async fn disabled_individual_blocks_one_group_device_and_disabled_group_blocks_all() {
    let sim = start(config()).await;
    let spec: FleetSpec = serde_json::from_value(json!({
        "groups": [
            {"groupId": "x-group", "attestation": "x509", "devices": 4},
            {"groupId": "k-group", "attestation": "symmetricKey", "devices": 3}
        ]
    }))
    .unwrap();
    let fleet = seed::seed_fleet(sim.state(), &spec).unwrap();
    assert_eq!(fleet.counts.get("assigned"), Some(&7));
    let state = sim.state();
    let dps = state.dps(DPS).unwrap();

    // Block one X.509 device with a disabled individual enrollment holding its leaf certificate,
    // and one symmetric-key device with a disabled symmetric-key individual enrollment.
    let blocked_x = "x-group-dev-0001";
    let leaf_pem = fleet.device(blocked_x).unwrap().cert_pem.clone().unwrap();
    put(
        &sim,
        EnrollmentKind::Individual,
        blocked_x,
        json!({"registrationId": blocked_x, "provisioningStatus": "disabled",
               "attestation": {"type": "x509", "x509": {"clientCertificates": {"primary": {"certificate": leaf_pem}}}}}),
    );
    let blocked_k = "k-group-dev-0002";
    let derived = fleet
        .device(blocked_k)
        .unwrap()
        .symmetric_key
        .clone()
        .unwrap();
    put(
        &sim,
        EnrollmentKind::Individual,
        blocked_k,
        json!({"registrationId": blocked_k, "provisioningStatus": "disabled",
               "attestation": {"type": "symmetricKey", "symmetricKey": {"primaryKey": derived, "secondaryKey": derived}}}),
    );

    // Over HTTP: the blocked device's operation ends `disabled` (HTTP 200), not an HTTP error.
    let client = reqwest::Client::new();
    let base = sim.device_api_base_url();
    let dev = fleet.device(blocked_x).unwrap();
    let (status, body, _) = register(
        &client,
        &base,
        &fleet.id_scope,
        blocked_x,
        &Auth::CertHeader(tls::cert_header_value(&dev.chain_der)),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "disabled");
    assert!(body["registrationState"]["errorCode"].is_i64());
    assert!(body["registrationState"]["errorMessage"].is_string());
    assert_eq!(
        dps.registration(blocked_x).unwrap().state["status"],
        "disabled"
    );

    for d in fleet
        .group_devices("x-group")
        .into_iter()
        .chain(fleet.group_devices("k-group"))
    {
        let outcome = seed::try_provision(state, &fleet, &d.registration_id).unwrap();
        if d.registration_id == blocked_x || d.registration_id == blocked_k {
            assert_eq!(outcome, ProvisionOutcome::Disabled, "{}", d.registration_id);
        } else {
            assert!(
                matches!(outcome, ProvisionOutcome::Assigned { .. }),
                "{} {outcome:?}",
                d.registration_id
            );
        }
    }

    // Disable the whole symmetric-key group: every device is refused, records say disabled.
    let mut group = dps.find_group("k-group").unwrap();
    group["provisioningStatus"] = json!("disabled");
    put(&sim, EnrollmentKind::Group, "k-group", group);
    for d in fleet.group_devices("k-group") {
        if d.registration_id == blocked_k {
            continue;
        }
        assert_eq!(
            seed::try_provision(state, &fleet, &d.registration_id).unwrap(),
            ProvisionOutcome::Disabled
        );
        let record = dps.registration(&d.registration_id).unwrap().state;
        assert_eq!(record["status"], "disabled");
        // The hub the device was on stays known (deprovisiond reads it after disabling the group).
        assert_eq!(record["assignedHub"].as_str(), d.assigned_hub.as_deref());
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn intermediate_group_wins_over_root_group() {
    let sim = start(config()).await;
    let spec: FleetSpec = serde_json::from_value(json!({
        "groups": [
            {"groupId": "root-group", "attestation": "x509", "devices": 0, "signingCa": "root"},
            {"groupId": "inter-group", "attestation": "x509", "devices": 2, "signingCa": "line-ca", "provisioningStatus": "disabled"}
        ]
    }))
    .unwrap();
    let fleet = seed::seed_fleet(sim.state(), &spec).unwrap();
    // The disabled intermediate group is the closest match: its devices are refused even though
    // an enabled group on the root would admit them (README §7 item 2).
    for d in fleet.group_devices("inter-group") {
        assert_eq!(d.status, "disabled");
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn no_linked_hub_fails_with_400208_and_tpm_flow_works() {
    let mut c = config();
    c.dps[0].linked_hubs.clear();
    let sim = start(c).await;
    let fleet = seed::seed_fleet(
        sim.state(),
        &FleetSpec {
            individuals: vec![IndividualSpec {
                registration_id: "lonely".into(),
                attestation: Attestation::SymmetricKey,
                device_id: None,
                provisioning_status: None,
                iot_hubs: vec![],
                provision: true,
                certificate_of: None,
            }],
            ..FleetSpec::default()
        },
    )
    .unwrap();
    assert_eq!(fleet.device("lonely").unwrap().status, "failed");
    let record = sim
        .state()
        .dps(DPS)
        .unwrap()
        .registration("lonely")
        .unwrap()
        .state;
    assert_eq!(record["status"], "failed");
    assert_eq!(record["errorCode"], 400_208);
    sim.shutdown().await;

    // TPM: first PUT without auth gets the challenge, then a token signed with the key works.
    let sim = start(config()).await;
    let ek = "AToAAQALAAMAsgAgg3GXZ0SEs/gakMyNRqXXJP1S124GUgtk8qHaGzMUaaoABgCAAEMAEAgAAAAAAAEAxsj2gUScTk1UjuioeTlfGYZrrimExB+bScH75adUMRIi2UOMxG1kw4y+9RW/IVoMl4e620VxZad0ARX2gUqVjYO7KPVt3dyKhZS3dkcvfBisBhP1XH9B33VqHG9SHnbnQXdBUaCgKAfxome8UmBKfe+naTsE5fkvjb/do3/dD6l4sGBwFCnKRdln4XpM03zLpoHFao8zOwt8l/uP3qUIxmCYv9A7m69Ms+5/pCkTu/rK4mRDsfhZ0QLfbzVI6zQFOKF/rwsfBtFeWlWtcuJMKlXdD8TXWElTzgh7JS4qhFzreL0c1mI0GCj+Aws0usZh7dLIVPnlgZcBhgy1SSDQMQ==";
    put(
        &sim,
        EnrollmentKind::Individual,
        "tpm-dev",
        json!({"registrationId": "tpm-dev", "attestation": {"type": "tpm", "tpm": {"endorsementKey": ek}}}),
    );
    let client = reqwest::Client::new();
    let base = sim.device_api_base_url();
    let scope = scope(&sim);
    let resp = client
        .put(format!("{base}/{scope}/registrations/tpm-dev/register?api-version=2019-03-31"))
        .json(&json!({"registrationId": "tpm-dev", "tpm": {"endorsementKey": ek, "storageRootKey": "c3Jr"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    let challenge: Value = resp.json().await.unwrap();
    assert_eq!(challenge["keyName"], "registration");
    let key = challenge["authenticationKey"].as_str().unwrap().to_owned();
    let (status, body, _) = register(
        &client,
        &base,
        &scope,
        "tpm-dev",
        &sas_for(&scope, "tpm-dev", &key),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["registrationState"]["tpm"]["authenticationKey"],
        key.as_str()
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn seeding_5000_devices_over_3_hubs_is_consistent() {
    let sim = start(config()).await;
    let spec = FleetSpec {
        groups: vec![
            GroupSpec {
                group_id: "big-x509".into(),
                attestation: Attestation::X509,
                devices: 2_000,
                device_prefix: None,
                provisioning_status: None,
                iot_hubs: vec![],
                provision_count: None,
                signing_ca: None,
                issuing_ca: None,
            },
            GroupSpec {
                group_id: "big-keys".into(),
                attestation: Attestation::SymmetricKey,
                devices: 2_997,
                device_prefix: None,
                provisioning_status: None,
                iot_hubs: vec![],
                provision_count: None,
                signing_ca: None,
                issuing_ca: None,
            },
        ],
        individuals: [
            ("ind-tpm", Attestation::Tpm),
            ("ind-key", Attestation::SymmetricKey),
            ("ind-x509", Attestation::X509),
        ]
        .into_iter()
        .map(|(id, a)| IndividualSpec {
            registration_id: id.into(),
            attestation: a,
            device_id: None,
            provisioning_status: None,
            iot_hubs: vec![],
            provision: true,
            certificate_of: None,
        })
        .collect(),
        ..FleetSpec::default()
    };
    let started = std::time::Instant::now();
    let fleet = seed::seed_fleet(sim.state(), &spec).unwrap();
    eprintln!("seeded 5000 devices in {:?}", started.elapsed());
    assert_eq!(fleet.devices.len(), 5_000);
    assert_eq!(
        fleet.counts.get("assigned"),
        Some(&5_000),
        "{:?}",
        fleet.counts
    );

    let state = sim.state();
    let dps = state.dps(DPS).unwrap();
    let (_, groups, registrations) = dps.counts();
    assert_eq!(groups, 2);
    assert_eq!(registrations, 5_000);
    let mut per_hub: BTreeMap<String, usize> = BTreeMap::new();
    for d in &fleet.devices {
        let record = dps.registration(&d.registration_id).unwrap();
        assert_eq!(record.group_id, d.group_id);
        let hub_host = record.state["assignedHub"].as_str().unwrap();
        assert_eq!(Some(hub_host), d.assigned_hub.as_deref());
        let device = state
            .hub(hub_host)
            .unwrap()
            .get_device(d.device_id.as_deref().unwrap())
            .unwrap();
        let expected_type = if d.attestation == Attestation::X509 {
            "selfSigned"
        } else {
            "sas"
        };
        assert_eq!(device["authentication"]["type"], expected_type);
        *per_hub.entry(hub_host.to_owned()).or_default() += 1;
    }
    let hub_total: usize = HUBS
        .iter()
        .map(|h| state.hub(h).unwrap().device_count())
        .sum();
    assert_eq!(hub_total, 5_000);
    assert_eq!(per_hub.len(), 3);
    for (hub, n) in &per_hub {
        assert!(*n > 1_300, "{hub} got only {n} devices: {per_hub:?}");
    }
    // Seeded credentials still work, and each kind is refused once its enrollment is disabled.
    assert!(matches!(
        seed::try_provision(state, &fleet, "ind-tpm").unwrap(),
        ProvisionOutcome::Assigned { .. }
    ));
    for id in ["ind-tpm", "ind-key", "ind-x509"] {
        let mut e = dps.find_enrollment(id).unwrap();
        e["provisioningStatus"] = json!("disabled");
        put(&sim, EnrollmentKind::Individual, id, e);
        assert_eq!(
            seed::try_provision(state, &fleet, id).unwrap(),
            ProvisionOutcome::Disabled,
            "{id}"
        );
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn admin_seed_endpoint_seeds_and_returns_credentials() {
    let sim = start(config()).await;
    let client = reqwest::Client::new();
    let url = format!("{}/_sim/seed", sim.dps_base_url(DPS));
    let resp = client
        .post(&url)
        .json(&json!({"groups": [{"groupId": "g", "attestation": "symmetricKey", "devices": 5, "provisionCount": 3}],
                      "individuals": [{"registrationId": "i-1", "attestation": "x509"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["counts"]["assigned"], 4);
    assert_eq!(body["counts"]["notProvisioned"], 2);
    let devices = body["devices"].as_array().unwrap();
    assert_eq!(devices.len(), 6);
    let x = devices
        .iter()
        .find(|d| d["registrationId"] == "i-1")
        .unwrap();
    assert!(x["keyPem"].as_str().unwrap().contains("PRIVATE KEY"));
    assert!(x["certPem"].as_str().unwrap().contains("BEGIN CERTIFICATE"));
    let k = devices
        .iter()
        .find(|d| d["registrationId"] == "g-dev-0004")
        .unwrap();
    assert_eq!(k["status"], "notProvisioned");
    assert!(k["symmetricKey"].is_string());
    // Over the device API the not-yet-provisioned device can register with the returned key.
    let scope = body["idScope"].as_str().unwrap();
    let key = k["symmetricKey"].as_str().unwrap();
    let (status, reg, _) = register(
        &client,
        &sim.device_api_base_url(),
        scope,
        "g-dev-0004",
        &sas_for(scope, "g-dev-0004", key),
    )
    .await;
    assert_eq!(status, 200, "{reg}");
    sim.shutdown().await;
}

#[tokio::test]
async fn every_sdk_api_version_is_accepted_and_calls_are_logged() {
    let sim = start(config()).await;
    let stored = put(
        &sim,
        EnrollmentKind::Individual,
        "versions",
        json!({"registrationId": "versions", "attestation": {"type": "symmetricKey"}}),
    );
    let key = primary_key(&stored);
    let scope = scope(&sim);
    let client = reqwest::Client::new();
    for v in device_api::KNOWN_API_VERSIONS {
        let resp = client
            .put(format!(
                "{}/{scope}/registrations/versions/register?api-version={v}&forceRegistration=true",
                sim.device_api_base_url()
            ))
            .header(
                "authorization",
                device_api::device_sas(&scope, "versions", &key, expiry(60)),
            )
            .json(&json!({"registrationId": "versions", "payload": null}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 202, "api-version {v}");
    }
    let calls: Vec<_> = sim
        .calls()
        .into_iter()
        .filter(|c| c.operation == "DeviceRegister")
        .collect();
    assert_eq!(calls.len(), 4);
    assert!(calls.iter().all(|c| c.instance == DPS
        && c.entity_id.as_deref() == Some("versions")
        && c.status == Some(202)));
    sim.shutdown().await;
}

#[tokio::test]
async fn registrations_and_polls_are_throttled_with_retry_after() {
    let mut c = config();
    c.throttle.enabled = true;
    c.throttle.dps_registrations_per_minute = 2.0;
    c.device_api.polls_per_10s_per_device = 1;
    let sim = start(c).await;
    let stored = put(
        &sim,
        EnrollmentKind::Individual,
        "busy",
        json!({"registrationId": "busy", "attestation": {"type": "symmetricKey"}}),
    );
    let key = primary_key(&stored);
    let scope = scope(&sim);
    let base = sim.device_api_base_url();
    let client = reqwest::Client::new();
    let token = device_api::device_sas(&scope, "busy", &key, expiry(600));
    let put_once = || {
        client
            .put(format!(
                "{base}/{scope}/registrations/busy/register?api-version=2019-03-31"
            ))
            .header("authorization", &token)
            .json(&json!({}))
            .send()
    };
    let first: Value = put_once().await.unwrap().json().await.unwrap();
    assert_eq!(put_once().await.unwrap().status().as_u16(), 202);
    let third = put_once().await.unwrap();
    assert_eq!(third.status().as_u16(), 429);
    assert!(third.headers().contains_key("retry-after"));
    // Polls have their own per-device budget (here 1 per 10 s).
    let op = first["operationId"].as_str().unwrap();
    let poll = || {
        client
            .get(format!(
                "{base}/{scope}/registrations/busy/operations/{op}?api-version=2019-03-31"
            ))
            .header("authorization", &token)
            .send()
    };
    assert_eq!(poll().await.unwrap().status().as_u16(), 200);
    assert_eq!(poll().await.unwrap().status().as_u16(), 429);
    sim.shutdown().await;
}

#[tokio::test]
async fn reprovisioning_follows_the_enrollment_hubs_and_policy() {
    let sim = start(config()).await;
    let state = sim.state();
    let dps = state.dps(DPS).unwrap();
    let body = |hub: &str, update: bool, migrate: bool| {
        json!({"registrationId": "mover", "attestation": {"type": "symmetricKey",
                 "symmetricKey": {"primaryKey": "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
                                  "secondaryKey": "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="}},
               "iotHubs": [hub],
               "reprovisionPolicy": {"updateHubAssignment": update, "migrateDeviceData": migrate}})
    };
    let key = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
    let register = || {
        let cred = seed::SeededDevice::credential_for_key(
            &dps.id_scope,
            "mover",
            key,
            state.clock().now_utc().timestamp(),
        );
        seed::provision_with(state, &dps, "mover", &cred)
    };
    put(
        &sim,
        EnrollmentKind::Individual,
        "mover",
        body(HUBS[0], true, true),
    );
    assert!(matches!(register(), ProvisionOutcome::Assigned { ref hub, .. } if hub == HUBS[0]));

    // The enrollment moves to hub-2: the device follows, data migrated, old identity removed.
    put(
        &sim,
        EnrollmentKind::Individual,
        "mover",
        body(HUBS[1], true, true),
    );
    assert!(matches!(register(), ProvisionOutcome::Assigned { ref hub, .. } if hub == HUBS[1]));
    let record = dps.registration("mover").unwrap().state;
    assert_eq!(record["substatus"], "deviceDataMigrated");
    assert!(state.hub(HUBS[0]).unwrap().get_device("mover").is_none());
    assert!(state.hub(HUBS[1]).unwrap().get_device("mover").is_some());

    // migrateDeviceData=false: deviceDataReset.
    put(
        &sim,
        EnrollmentKind::Individual,
        "mover",
        body(HUBS[2], true, false),
    );
    register();
    assert_eq!(
        dps.registration("mover").unwrap().state["substatus"],
        "deviceDataReset"
    );

    // updateHubAssignment=false: the device stays where it is.
    put(
        &sim,
        EnrollmentKind::Individual,
        "mover",
        body(HUBS[0], false, true),
    );
    assert!(matches!(register(), ProvisionOutcome::Assigned { ref hub, .. } if hub == HUBS[2]));
    assert_eq!(
        dps.registration("mover").unwrap().state["substatus"],
        "initialAssignment"
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn status_lookup_returns_the_registration_result() {
    let sim = start(config()).await;
    let stored = put(
        &sim,
        EnrollmentKind::Individual,
        "lookup",
        json!({"registrationId": "lookup", "attestation": {"type": "symmetricKey"}}),
    );
    let key = primary_key(&stored);
    let scope = scope(&sim);
    let base = sim.device_api_base_url();
    let client = reqwest::Client::new();
    let lookup = |token: String| {
        client
            .post(format!(
                "{base}/{scope}/registrations/lookup?api-version=2021-10-01"
            ))
            .header("authorization", token)
            .json(&json!({"registrationId": "lookup"}))
            .send()
    };
    let token = device_api::device_sas(&scope, "lookup", &key, expiry(60));
    // Not registered yet: 404.
    assert_eq!(lookup(token.clone()).await.unwrap().status().as_u16(), 404);
    let (status, _, _) = register(
        &client,
        &base,
        &scope,
        "lookup",
        &sas_for(&scope, "lookup", &key),
    )
    .await;
    assert_eq!(status, 200);
    let resp = lookup(token).await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["registrationId"], "lookup");
    assert_eq!(body["status"], "assigned");
    assert!(body["assignedHub"].is_string());
    // A wrong key gets the device 401.
    let bad = device_api::device_sas(&scope, "lookup", "AAAAAAAAAAAAAAAAAAAAAA==", expiry(60));
    assert_eq!(lookup(bad).await.unwrap().status().as_u16(), 401);
    sim.shutdown().await;
}

#[tokio::test]
async fn https_with_a_given_certificate_and_a_fleet_file() {
    // A certificate and key given as files (here: generated once, then handed over).
    let material = tls::TlsMaterial::generate(&[]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cert_file, key_file) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_file, &material.cert_chain_pem).unwrap();
    std::fs::write(&key_file, &material.key_pem).unwrap();
    let mut c = config();
    c.tls = Some(TlsSettings {
        cert_file: Some(cert_file),
        key_file: Some(key_file),
        ..TlsSettings::default()
    });
    let sim = start(c).await;
    assert_eq!(sim.tls_ca_pem(), None, "nothing generated");

    let fleet_file = dir.path().join("fleet.json");
    std::fs::write(
        &fleet_file,
        r#"{"groups": [{"groupId": "f", "attestation": "symmetricKey", "devices": 2}]}"#,
    )
    .unwrap();
    let spec = FleetSpec::from_file(&fleet_file).unwrap();
    let fleet = seed::seed_fleet(sim.state(), &spec).unwrap();
    let dev = fleet.device("f-dev-0001").unwrap();

    let ca = reqwest::Certificate::from_pem(material.ca_pem.unwrap().as_bytes()).unwrap();
    let client = reqwest::Client::builder()
        .tls_certs_only([ca])
        .build()
        .unwrap();
    let base = sim.device_api_base_url().replace("127.0.0.1", "localhost");
    let (status, body, _) = register(
        &client,
        &base,
        &fleet.id_scope,
        "f-dev-0001",
        &sas_for(
            &fleet.id_scope,
            "f-dev-0001",
            dev.symmetric_key.as_deref().unwrap(),
        ),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["registrationState"]["assignedHub"].as_str(),
        dev.assigned_hub.as_deref()
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn the_test_header_can_be_refused() {
    let mut c = config();
    c.device_api.accept_client_cert_header = false;
    let sim = start(c).await;
    let root = TestCa::root("R").unwrap();
    let inter = root.intermediate("I").unwrap();
    put(
        &sim,
        EnrollmentKind::Group,
        "g",
        json!({"enrollmentGroupId": "g",
               "attestation": {"type": "x509", "x509": {"signingCertificates": {"primary": {"certificate": inter.cert_pem()}}}}}),
    );
    let leaf = inter.leaf("hdr-dev").unwrap();
    let client = reqwest::Client::new();
    let (status, _, _) = register(
        &client,
        &sim.device_api_base_url(),
        &scope(&sim),
        "hdr-dev",
        &Auth::CertHeader(tls::cert_header_value(&leaf.chain_der)),
    )
    .await;
    assert_eq!(status, 401);
    sim.shutdown().await;
}

fn specs_dir() -> Option<std::path::PathBuf> {
    common::specs_dir("device API bodies against the swagger")
}

/// Every field of `value` is declared by `schema` (following `$ref`s) with a matching JSON type,
/// and string enums hold one of their values.
fn conforms(spec: &Value, schema: &Value, value: &Value, path: &str, errors: &mut Vec<String>) {
    let schema = match schema.get("$ref").and_then(Value::as_str) {
        Some(r) => &spec["definitions"][r.trim_start_matches("#/definitions/")],
        None => schema,
    };
    let ty = schema.get("type").and_then(Value::as_str);
    match value {
        Value::Null => {}
        Value::Object(map) => {
            if ty.is_some_and(|t| t != "object") {
                errors.push(format!("{path}: object, spec says {ty:?}"));
                return;
            }
            let props = schema.get("properties").and_then(Value::as_object);
            for (k, v) in map {
                match props.and_then(|p| p.get(k)) {
                    Some(s) => conforms(spec, s, v, &format!("{path}.{k}"), errors),
                    None if schema.get("additionalProperties").is_some() => {}
                    None => errors.push(format!("{path}.{k}: not in the spec")),
                }
            }
        }
        Value::String(s) => {
            if ty != Some("string") {
                errors.push(format!("{path}: string, spec says {ty:?}"));
            } else if let Some(values) = schema.get("enum").and_then(Value::as_array)
                && !values.iter().any(|e| e == s)
            {
                errors.push(format!("{path}: '{s}' is not one of {values:?}"));
            }
        }
        Value::Number(_) if !matches!(ty, Some("integer" | "number")) => {
            errors.push(format!("{path}: number, spec says {ty:?}"));
        }
        Value::Bool(_) if ty != Some("boolean") => {
            errors.push(format!("{path}: bool, spec says {ty:?}"))
        }
        Value::Array(_) if ty != Some("array") => {
            errors.push(format!("{path}: array, spec says {ty:?}"))
        }
        _ => {}
    }
}

#[tokio::test]
async fn device_api_bodies_match_the_swagger() {
    let Some(dir) = specs_dir() else { return };
    let sim = start(config()).await;
    let fleet = seed::seed_fleet(
        sim.state(),
        &serde_json::from_value(json!({
            "groups": [{"groupId": "sw-x", "attestation": "x509", "devices": 1},
                       {"groupId": "sw-k", "attestation": "symmetricKey", "devices": 1}],
            "individuals": [{"registrationId": "sw-off", "attestation": "symmetricKey", "provisioningStatus": "disabled"}]
        }))
        .unwrap(),
    )
    .unwrap();
    let client = reqwest::Client::new();
    let base = sim.device_api_base_url();
    let scope = fleet.id_scope.clone();
    let x = fleet.device("sw-x-dev-0000").unwrap();
    let k = fleet.device("sw-k-dev-0000").unwrap();
    let off = fleet.device("sw-off").unwrap();
    let mut bodies = Vec::new();
    for (rid, auth) in [
        (
            x.registration_id.as_str(),
            Auth::CertHeader(tls::cert_header_value(&x.chain_der)),
        ),
        (
            k.registration_id.as_str(),
            sas_for(
                &scope,
                &k.registration_id,
                k.symmetric_key.as_deref().unwrap(),
            ),
        ),
        (
            off.registration_id.as_str(),
            sas_for(&scope, "sw-off", off.symmetric_key.as_deref().unwrap()),
        ),
    ] {
        let (status, body, _) = register(&client, &base, &scope, rid, &auth).await;
        assert_eq!(status, 200, "{body}");
        bodies.push(("RegistrationOperationStatus", body));
    }
    let (status, err, _) = register(
        &client,
        &base,
        &scope,
        "sw-k-dev-0000",
        &sas_for(&scope, "sw-k-dev-0000", "AAAAAAAAAAAAAAAAAAAAAA=="),
    )
    .await;
    assert_eq!(status, 401);
    bodies.push(("ProvisioningServiceErrorDetails", err));

    for file in ["dps-device-2021-10-01.json", "dps-device-2026-11-01.json"] {
        let spec: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join(file)).unwrap()).unwrap();
        let mut errors = Vec::new();
        for (def, body) in &bodies {
            conforms(
                &spec,
                &json!({"$ref": format!("#/definitions/{def}")}),
                body,
                def,
                &mut errors,
            );
        }
        assert!(errors.is_empty(), "{file}: {errors:#?}");
        // The checker itself notices an undeclared field and a wrong enum value.
        let mut caught = Vec::new();
        let bogus = json!({"operationId": "x", "status": "sleeping", "bogus": 1});
        conforms(
            &spec,
            &json!({"$ref": "#/definitions/RegistrationOperationStatus"}),
            &bogus,
            "t",
            &mut caught,
        );
        assert_eq!(caught.len(), 2, "{caught:?}");
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn seeding_rejects_inconsistent_fleets() {
    let sim = start(config()).await;
    let bad = |v: Value| seed::seed_fleet(sim.state(), &serde_json::from_value(v).unwrap());
    assert!(matches!(
        bad(json!({"dps": "nope"})),
        Err(seed::SeedError::UnknownDps(_))
    ));
    assert!(matches!(
        bad(json!({"groups": [{"groupId": "t", "attestation": "tpm", "devices": 1}]})),
        Err(seed::SeedError::Invalid(_))
    ));
    assert!(matches!(
        bad(
            json!({"individuals": [{"registrationId": "a", "attestation": "x509", "certificateOf": "missing"}]})
        ),
        Err(seed::SeedError::Invalid(_))
    ));
    assert!(matches!(
        bad(json!({"individuals": [{"registrationId": "bad id!", "attestation": "symmetricKey"}]})),
        Err(seed::SeedError::Enrollment { .. })
    ));
    assert!(FleetSpec::from_json("{not json").is_err());
    sim.shutdown().await;
}

#[tokio::test]
async fn seeded_device_credentials_come_from_the_admin_api_and_a_folder() {
    let sim = start(config()).await;
    let spec = FleetSpec::from_json(
        r#"{"groups": [{"groupId": "cams", "attestation": "x509", "devices": 2},
                       {"groupId": "sk", "attestation": "symmetricKey", "devices": 2, "provisionCount": 1}]}"#,
    )
    .unwrap();
    let fleet = seed::seed_fleet(sim.state(), &spec).unwrap();
    let client = reqwest::Client::new();
    let get = |rid: &str| {
        let url = format!("{}/_sim/devices/{rid}/credentials", sim.dps_base_url(DPS));
        let client = client.clone();
        async move {
            let resp = client.get(url).send().await.unwrap();
            (resp.status().as_u16(), resp.json::<Value>().await.unwrap())
        }
    };
    let (status, cam) = get("cams-dev-0001").await;
    assert_eq!(status, 200);
    let seeded = fleet.device("cams-dev-0001").unwrap();
    assert_eq!(cam["certPem"].as_str(), seeded.cert_pem.as_deref());
    assert!(cam["keyPem"].as_str().unwrap().contains("PRIVATE KEY"));
    assert!(
        cam["chainPem"]
            .as_str()
            .unwrap()
            .matches("BEGIN CERTIFICATE")
            .count()
            >= 2
    );
    assert_eq!(cam["idScope"], fleet.id_scope.as_str());
    // Registration ids are case-insensitive; the never-registered device still has its key.
    let (status, sk) = get("SK-DEV-0001").await;
    assert_eq!(status, 200);
    assert_eq!(sk["status"], "notProvisioned");
    assert_eq!(
        sk["symmetricKey"].as_str(),
        fleet
            .device("sk-dev-0001")
            .unwrap()
            .symmetric_key
            .as_deref()
    );
    let (status, missing) = get("nobody").await;
    assert_eq!(status, 404);
    assert!(
        missing["error"]
            .as_str()
            .unwrap()
            .contains("no seeded device")
    );

    let dir = tempfile::tempdir().unwrap();
    let written = azure_iot_sim::seed::write_credentials(&fleet, dir.path()).unwrap();
    assert_eq!(written.devices, 4);
    let cam_dir = dir.path().join("cams-dev-0001");
    assert_eq!(
        std::fs::read_to_string(cam_dir.join("device.cert.pem")).unwrap(),
        seeded.cert_pem.clone().unwrap()
    );
    assert!(cam_dir.join("device.key.pem").is_file() && cam_dir.join("chain.pem").is_file());
    let sk_key = std::fs::read_to_string(dir.path().join("sk-dev-0000/symmetric.key")).unwrap();
    assert_eq!(
        sk_key.trim(),
        fleet
            .device("sk-dev-0000")
            .unwrap()
            .symmetric_key
            .clone()
            .unwrap()
    );
    let summary: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("sk-dev-0000/device.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(summary["status"], "assigned");
    assert!(dir.path().join("root-ca.pem").is_file());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(cam_dir.join("device.key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(
            mode & 0o077,
            0,
            "private keys are readable by the owner only"
        );
    }
    sim.shutdown().await;
}

//! The Azure clients against the in-process simulator: every operation the workflows use, paging across
//! several pages, ETag conflicts, each error class, 429 with and without Retry-After, and a token that
//! expires in the middle of a run.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use azure_iot_sim::Clock as SimClockTrait;
use azure_iot_sim::{
    FakeClock, FaultAction, FaultRule, RunningSimulator, SimConfig, Simulator, ThrottleConfig,
};
use deprovisiond::azure::hub::set_status;
use deprovisiond::azure::models::*;
use deprovisiond::azure::{
    AzureClients, AzureConfig, AzureError, ClientOptions, Clock, ConnectionString, DpsClient,
    HubClient, IfMatch, ManualClock,
};
use futures::TryStreamExt;
use serde_json::json;

/// Import/export jobs and the blob client, against Azurite.
#[path = "azure_clients/jobs.rs"]
mod jobs;

/// Where each hub's job blobs go (its own container or one minted from the account), against Azurite.
#[path = "azure_clients/jobs_storage.rs"]
mod jobs_storage;

const DPS: &str = "demo-dps";
const HUB: &str = "demo-hub-1.azure-devices.net";

/// The simulator's fake clock seen through the clients' clock trait, so one clock drives both sides.
#[derive(Debug)]
struct Shared(FakeClock);

impl Clock for Shared {
    fn now_ms(&self) -> i64 {
        self.0.now_utc().timestamp_millis()
    }
}

struct Env {
    sim: RunningSimulator,
    clients: AzureClients,
}

impl Env {
    /// A simulator plus clients configured the way the service configures them: from environment variables.
    async fn start(cfg: SimConfig) -> Self {
        let sim = Simulator::start(cfg).await.unwrap();
        let clients = clients_for(&sim, Arc::new(deprovisiond::azure::SystemClock));
        Self { sim, clients }
    }

    fn dps(&self) -> &DpsClient {
        self.clients.default_dps().unwrap()
    }

    fn hub(&self) -> &HubClient {
        self.clients.hub(HUB).unwrap()
    }
}

fn clients_for(sim: &RunningSimulator, clock: Arc<dyn Clock>) -> AzureClients {
    let vars: HashMap<String, String> = [
        (
            "DEPROVISIOND_DPS_DEMO_DPS_CONNECTION_STRING",
            sim.dps_connection_string(DPS, "provisioningserviceowner")
                .unwrap(),
        ),
        ("DEPROVISIOND_DPS_DEMO_DPS_BASE_URL", sim.dps_base_url(DPS)),
        (
            "DEPROVISIOND_HUB_1_CONNECTION_STRING",
            sim.hub_connection_string(HUB, "iothubowner").unwrap(),
        ),
        ("DEPROVISIOND_HUB_1_BASE_URL", sim.hub_base_url(HUB)),
        ("DEPROVISIOND_HUB_1_TIER", "S1".to_string()),
        ("DEPROVISIOND_AZURE_REQUEST_TIMEOUT_SECS", "5".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let config = AzureConfig::from_env_map(&vars).unwrap();
    AzureClients::with_clock(&config, clock).unwrap()
}

fn default_sim() -> SimConfig {
    SimConfig::single(DPS, &[HUB])
}

fn symmetric(kind_extra: serde_json::Value) -> AttestationMechanism {
    let mut v = json!({"type": "symmetricKey"});
    if let Some(o) = kind_extra.as_object() {
        v.as_object_mut().unwrap().extend(o.clone());
    }
    serde_json::from_value(v).unwrap()
}

fn sym_enrollment(id: &str) -> IndividualEnrollment {
    let mut e = IndividualEnrollment::new(id, symmetric(json!({})), ProvisioningStatus::Enabled);
    e.extra.insert("customField".into(), json!({"kept": true}));
    e
}

fn sym_group(id: &str) -> EnrollmentGroup {
    serde_json::from_value(
        json!({"enrollmentGroupId": id, "attestation": {"type": "symmetricKey"}}),
    )
    .unwrap()
}

#[tokio::test]
async fn dps_enrollment_full_replace_keeps_keys_and_detects_stale_etags() {
    let env = Env::start(default_sim()).await;
    let dps = env.dps();
    assert_eq!(dps.host_name(), "demo-dps.azure-devices-provisioning.net");
    let created = dps
        .create_or_replace_enrollment(&sym_enrollment("dev-1"), None)
        .await
        .unwrap();
    let key = created
        .attestation
        .symmetric_key
        .as_ref()
        .unwrap()
        .primary_key
        .clone()
        .unwrap();
    let etag1 = created.etag.clone().unwrap();

    let got = dps.get_enrollment("dev-1").await.unwrap();
    assert_eq!(
        got.attestation
            .symmetric_key
            .as_ref()
            .and_then(|k| k.primary_key.as_ref()),
        None,
        "GET hides keys"
    );
    assert_eq!(got.extra["customField"], json!({"kept": true}));

    let disabled = dps
        .set_enrollment_status("dev-1", ProvisioningStatus::Disabled)
        .await
        .unwrap()
        .stored;
    assert_eq!(disabled.status(), ProvisioningStatus::Disabled);
    assert_ne!(
        disabled.etag.as_deref(),
        Some(etag1.as_str()),
        "etag changes on write"
    );
    assert_eq!(
        disabled.extra["customField"],
        json!({"kept": true}),
        "unknown fields survive the full replace"
    );
    let att = dps.enrollment_attestation("dev-1").await.unwrap();
    assert_eq!(
        att.symmetric_key.unwrap().primary_key.as_deref(),
        Some(key.as_str()),
        "keys kept"
    );
    assert_eq!(
        dps.get_enrollment("dev-1").await.unwrap().status(),
        ProvisioningStatus::Disabled,
        "verified"
    );

    // A writer holding the old etag loses: 412, re-read and retry.
    let err = dps
        .create_or_replace_enrollment(&got, Some(&etag1))
        .await
        .unwrap_err();
    assert!(err.is_precondition_failed(), "{err:?}");
    assert_eq!(err.code().as_deref(), Some("412001"));
    assert!(err.tracking_id().is_some());
    let err = dps
        .delete_enrollment("dev-1", Some(&etag1))
        .await
        .unwrap_err();
    assert!(err.is_precondition_failed(), "{err:?}");

    dps.delete_enrollment("dev-1", disabled.etag.as_deref())
        .await
        .unwrap();
    let err = dps.get_enrollment("dev-1").await.unwrap_err();
    assert!(err.is_not_found());
    assert_eq!(err.code().as_deref(), Some("404201"));
    let err = dps.delete_enrollment("dev-1", None).await.unwrap_err();
    assert!(
        err.is_not_found(),
        "deleting what is gone is a 404 the caller counts as done"
    );
    env.sim.shutdown().await;
}

#[tokio::test]
async fn dps_x509_group_disable_echoes_certificate_info() {
    let env = Env::start(default_sim()).await;
    let dps = env.dps();
    let ca = rcgen::generate_simple_self_signed(vec!["int-ca.example".into()]).unwrap();
    let group: EnrollmentGroup = serde_json::from_value(json!({
        "enrollmentGroupId": "x509-group",
        "attestation": {"type": "x509", "x509": {"signingCertificates": {"primary": {"certificate": ca.cert.pem()}}}},
        "provisioningStatus": "enabled"
    }))
    .unwrap();
    let created = dps
        .create_or_replace_enrollment_group(&group, None)
        .await
        .unwrap();
    let info = |g: &EnrollmentGroup| {
        g.attestation
            .x509
            .as_ref()
            .unwrap()
            .signing_certificates
            .as_ref()
            .unwrap()
            .primary
            .clone()
            .unwrap()
    };
    assert_eq!(
        info(&created).certificate,
        None,
        "the certificate is never returned"
    );
    let before = info(&created).info.unwrap();
    assert!(before.subject_name.contains("rcgen"), "{before:?}");

    let disabled = dps
        .set_enrollment_group_status("x509-group", ProvisioningStatus::Disabled)
        .await
        .unwrap()
        .stored;
    assert_eq!(disabled.status(), ProvisioningStatus::Disabled);
    assert_eq!(
        info(&disabled).info.unwrap().sha256_thumbprint,
        before.sha256_thumbprint
    );

    let err = dps
        .create_or_replace_enrollment_group(&created, created.etag.as_deref())
        .await
        .unwrap_err();
    assert!(err.is_precondition_failed());
    dps.delete_enrollment_group("x509-group", disabled.etag.as_deref())
        .await
        .unwrap();
    assert!(
        dps.get_enrollment_group("x509-group")
            .await
            .unwrap_err()
            .is_not_found()
    );
    env.sim.shutdown().await;
}

#[tokio::test]
async fn dps_registration_states_page_by_page_then_get_and_delete() {
    let env = Env::start(default_sim()).await;
    let dps = env.dps();
    dps.create_or_replace_enrollment_group(&sym_group("g"), None)
        .await
        .unwrap();
    let state = env.sim.state().dps(DPS).unwrap();
    for i in 0..7 {
        let id = format!("g-dev-{i}");
        state
            .upsert_registration(
                Some("g"),
                json!({"registrationId": id, "assignedHub": HUB, "deviceId": id, "status": "assigned",
                       "substatus": "initialAssignment"}),
            )
            .unwrap();
    }
    state
        .upsert_registration(
            None,
            json!({"registrationId": "other", "status": "assigned"}),
        )
        .unwrap();

    let all: Vec<DeviceRegistrationState> = dps
        .query_registrations("g", Some(3))
        .try_collect()
        .await
        .unwrap();
    assert_eq!(all.len(), 7);
    assert!(all.iter().all(|r| r.assigned_hub.as_deref() == Some(HUB)
        && r.status == Some(RegistrationStatus::Assigned)));
    let queries = env
        .sim
        .calls()
        .iter()
        .filter(|c| c.path == "/registrations/g/query")
        .count();
    assert_eq!(queries, 3, "3 + 3 + 1");

    // The page call hands back the token so a worker can persist it and resume.
    let (first, token) = dps
        .query_registrations_page("g", Some(5), None)
        .await
        .unwrap();
    assert_eq!(first.len(), 5);
    let (rest, end) = dps
        .query_registrations_page("g", Some(5), token.as_deref())
        .await
        .unwrap();
    assert_eq!(rest.len(), 2);
    assert_eq!(end, None);

    let one = dps.get_registration("g-dev-3").await.unwrap();
    assert_eq!(one.device_id.as_deref(), Some("g-dev-3"));
    let err = dps
        .delete_registration("g-dev-3", Some("\"stale\""))
        .await
        .unwrap_err();
    assert!(err.is_precondition_failed(), "{err:?}");
    dps.delete_registration("g-dev-3", one.etag.as_deref())
        .await
        .unwrap();
    assert!(
        dps.get_registration("g-dev-3")
            .await
            .unwrap_err()
            .is_not_found()
    );
    env.sim.shutdown().await;
}

#[tokio::test]
async fn dps_group_query_and_bulk_enrollments() {
    let env = Env::start(default_sim()).await;
    let dps = env.dps();
    for g in ["ga", "gb", "gc"] {
        dps.create_or_replace_enrollment_group(&sym_group(g), None)
            .await
            .unwrap();
    }
    let groups: Vec<EnrollmentGroup> = dps
        .query_enrollment_groups(Some(1))
        .try_collect()
        .await
        .unwrap();
    let ids: Vec<&str> = groups
        .iter()
        .map(|g| g.enrollment_group_id.as_str())
        .collect();
    assert_eq!(ids, ["ga", "gb", "gc"]);
    assert_eq!(
        env.sim
            .calls()
            .iter()
            .filter(|c| c.path == "/enrollmentGroups/query")
            .count(),
        3
    );

    let op = BulkEnrollmentOperation {
        mode: BulkEnrollmentMode::Create,
        enrollments: (0..3)
            .map(|i| sym_enrollment(&format!("bulk-{i}")))
            .collect(),
    };
    let result = dps.bulk_enrollments(&op).await.unwrap();
    assert!(result.is_successful, "{result:?}");
    let (page, _) = dps
        .query_enrollments_page("SELECT *", None, None)
        .await
        .unwrap();
    assert_eq!(page.len(), 3);
    let again = dps.bulk_enrollments(&op).await.unwrap();
    assert!(!again.is_successful);
    assert_eq!(again.errors.len(), 3, "{again:?}");
    let eleven = BulkEnrollmentOperation {
        mode: BulkEnrollmentMode::Delete,
        enrollments: (0..11)
            .map(|i| sym_enrollment(&format!("bulk-{i}")))
            .collect(),
    };
    let before = env.sim.calls().len();
    assert!(matches!(
        dps.bulk_enrollments(&eleven).await,
        Err(AzureError::InvalidRequest(_))
    ));
    assert_eq!(env.sim.calls().len(), before, "refused before sending");
    let groups_op = BulkEnrollmentGroupOperation {
        mode: BulkEnrollmentMode::Delete,
        enrollment_groups: vec![sym_group("ga")],
    };
    assert!(
        dps.bulk_enrollment_groups(&groups_op)
            .await
            .unwrap()
            .is_successful
    );
    assert!(
        dps.get_enrollment_group("ga")
            .await
            .unwrap_err()
            .is_not_found()
    );
    env.sim.shutdown().await;
}

#[tokio::test]
async fn hub_device_disable_is_a_full_replace_with_quoted_etag() {
    let env = Env::start(default_sim()).await;
    let hub = env.hub();
    let new: Device =
        serde_json::from_value(json!({"deviceId": "dev-1", "capabilities": {"iotEdge": false}}))
            .unwrap();
    let created = hub.create_device(&new).await.unwrap();
    let keys = created.authentication.clone().unwrap();
    assert_eq!(keys.kind.as_deref(), Some("sas"));
    assert!(matches!(
        hub.create_device(&new).await,
        Err(AzureError::Conflict(_))
    ));

    let disabled = hub
        .set_device_status("dev-1", DeviceStatus::Disabled, Some("deprovision job 7"))
        .await
        .unwrap();
    assert_eq!(disabled.status, Some(DeviceStatus::Disabled));
    assert_eq!(disabled.status_reason.as_deref(), Some("deprovision job 7"));
    assert_eq!(
        disabled.authentication,
        Some(keys),
        "keys kept by the full replace"
    );
    assert_eq!(disabled.generation_id, created.generation_id);
    assert_ne!(disabled.etag, created.etag);

    // Someone holding the old etag loses.
    let stale = set_status(&created, DeviceStatus::Enabled, None).unwrap();
    let err = hub
        .replace_device(&stale, IfMatch::from_etag(created.etag.as_deref()))
        .await
        .unwrap_err();
    assert!(err.is_precondition_failed(), "{err:?}");
    assert_eq!(err.code().as_deref(), Some("PreconditionFailed"));
    let err = hub
        .delete_device("dev-1", IfMatch::ETag(created.etag.clone().unwrap()))
        .await
        .unwrap_err();
    assert!(err.is_precondition_failed());

    hub.delete_device("dev-1", IfMatch::ETag(disabled.etag.clone().unwrap()))
        .await
        .unwrap();
    let err = hub.get_device("dev-1").await.unwrap_err();
    assert!(err.is_not_found());
    assert_eq!(err.code().as_deref(), Some("DeviceNotFound"));
    assert!(
        hub.delete_device("dev-1", IfMatch::Any)
            .await
            .unwrap_err()
            .is_not_found()
    );
    env.sim.shutdown().await;
}

#[tokio::test]
async fn hub_device_statistics_count_identities_by_status() {
    let env = Env::start(default_sim()).await;
    let hub = env.hub();
    assert_eq!(
        hub.device_statistics().await.unwrap(),
        RegistryStatistics::default(),
        "an empty hub"
    );
    for i in 0..4 {
        let d: Device = serde_json::from_value(json!({"deviceId": format!("s-{i}")})).unwrap();
        hub.create_device(&d).await.unwrap();
    }
    hub.set_device_status("s-2", DeviceStatus::Disabled, Some("counted"))
        .await
        .unwrap();
    let stats = hub.device_statistics().await.unwrap();
    assert_eq!(
        stats,
        RegistryStatistics {
            total_device_count: 4,
            enabled_device_count: 3,
            disabled_device_count: 1,
        }
    );
    let call = env
        .sim
        .calls()
        .into_iter()
        .rfind(|c| c.operation == "GetDeviceStatistics")
        .unwrap();
    assert_eq!(
        (call.path.as_str(), call.status),
        ("/statistics/devices", Some(200))
    );

    // A policy without RegistryRead is refused, classified as for any registry call.
    let service = env.sim.hub_connection_string(HUB, "service").unwrap();
    let options = ClientOptions {
        base_url: Some(env.sim.hub_base_url(HUB).parse().unwrap()),
        ..ClientOptions::default()
    };
    let e = HubClient::new(&ConnectionString::parse(&service).unwrap(), options)
        .unwrap()
        .device_statistics()
        .await
        .unwrap_err();
    assert!(matches!(e, AzureError::Unauthorized(_)), "{e:?}");
    env.sim.shutdown().await;
}

#[tokio::test]
async fn hub_bulk_and_twin_query_paging() {
    let env = Env::start(default_sim()).await;
    let hub = env.hub();
    let create: Vec<ExportImportDevice> = (0..7)
        .map(|i| {
            serde_json::from_value(
                json!({"id": format!("b-{i}"), "importMode": "create", "status": "enabled"}),
            )
            .unwrap()
        })
        .collect();
    let r = hub.bulk(&create).await.unwrap();
    assert!(r.is_successful, "{r:?}");

    let twins: Vec<Twin> = hub
        .query_twins("SELECT * FROM devices WHERE status = 'enabled'", Some(3))
        .try_collect()
        .await
        .unwrap();
    assert_eq!(twins.len(), 7);
    assert_eq!(
        env.sim
            .calls()
            .iter()
            .filter(|c| c.path == "/devices/query")
            .count(),
        3
    );

    let d0 = hub.get_device("b-0").await.unwrap();
    let items = vec![
        ExportImportDevice::update_status(&d0, DeviceStatus::Disabled, Some("job 9"), true),
        ExportImportDevice::delete("b-1", None),
        ExportImportDevice::delete("missing", None),
    ];
    let r = hub.bulk(&items).await.unwrap();
    assert!(!r.is_successful);
    assert_eq!(r.errors.len(), 1, "{r:?}");
    assert_eq!(r.errors[0].device_id, "missing");
    assert!(r.errors[0].to_error().is_not_found());
    let d0 = hub.get_device("b-0").await.unwrap();
    assert_eq!(d0.status, Some(DeviceStatus::Disabled));
    assert!(
        d0.authentication
            .as_ref()
            .and_then(|a| a.symmetric_key.as_ref())
            .is_some(),
        "keys kept by the bulk update"
    );
    assert!(hub.get_device("b-1").await.unwrap_err().is_not_found());

    let too_many: Vec<ExportImportDevice> = (0..101)
        .map(|i| ExportImportDevice::delete(format!("x{i}"), None))
        .collect();
    assert!(matches!(
        hub.bulk(&too_many).await,
        Err(AzureError::InvalidRequest(_))
    ));
    env.sim.shutdown().await;
}

#[tokio::test]
async fn error_classes_from_the_simulator() {
    let env = Env::start(default_sim()).await;
    let dps = env.dps();
    let hub = env.hub();
    let status = |s: u16| FaultAction::Status {
        status: s,
        message: None,
    };
    env.sim
        .add_fault(FaultRule::new("GET", "/devices/*", status(503)));
    let e = hub.get_device("a").await.unwrap_err();
    assert!(
        matches!(e, AzureError::Transient(_)) && e.status() == Some(503),
        "{e:?}"
    );
    env.sim
        .add_fault(FaultRule::new("GET", "/devices/*", status(500)));
    assert!(matches!(
        hub.get_device("a").await.unwrap_err(),
        AzureError::Transient(_)
    ));
    env.sim
        .add_fault(FaultRule::new("GET", "/devices/*", status(408)));
    assert!(matches!(
        hub.get_device("a").await.unwrap_err(),
        AzureError::Transient(_)
    ));
    env.sim
        .add_fault(FaultRule::new("GET", "/devices/*", status(403)));
    assert!(matches!(
        hub.get_device("a").await.unwrap_err(),
        AzureError::Forbidden(_)
    ));
    env.sim
        .add_fault(FaultRule::new("GET", "/devices/*", FaultAction::Drop));
    let e = hub.get_device("a").await.unwrap_err();
    assert!(
        matches!(e, AzureError::Transient(_)) && e.status().is_none(),
        "dropped connection: {e:?}"
    );
    env.sim.add_fault(FaultRule::new(
        "GET",
        "/enrollments/*",
        FaultAction::Hang { ms: Some(8_000) },
    ));
    let e = dps.get_enrollment("a").await.unwrap_err();
    assert!(matches!(e, AzureError::Transient(_)), "timeout: {e:?}");

    // Invalid id: 400 from the service.
    let e = dps
        .create_or_replace_enrollment(&sym_enrollment("bad id!"), None)
        .await
        .unwrap_err();
    assert!(matches!(e, AzureError::BadRequest(_)), "{e:?}");
    // Conflict on the hub.
    let d = Device {
        device_id: "c".into(),
        ..Device::default()
    };
    hub.create_device(&d).await.unwrap();
    assert!(matches!(
        hub.create_device(&d).await.unwrap_err(),
        AzureError::Conflict(_)
    ));

    // Wrong key: 401.
    let cs = env.sim.hub_connection_string(HUB, "iothubowner").unwrap();
    let wrong = ConnectionString::parse(&format!(
        "{};SharedAccessKey=d3Jvbmcga2V5",
        cs.rsplit_once(";SharedAccessKey=").unwrap().0
    ))
    .unwrap();
    let options = ClientOptions {
        base_url: Some(env.sim.hub_base_url(HUB).parse().unwrap()),
        ..ClientOptions::default()
    };
    let e = HubClient::new(&wrong, options)
        .unwrap()
        .get_device("c")
        .await
        .unwrap_err();
    assert!(matches!(e, AzureError::Unauthorized(_)), "{e:?}");
    assert_eq!(e.code().as_deref(), Some("401002"));

    // A policy without ServiceConnect cannot run twin queries.
    let ro = env.sim.hub_connection_string(HUB, "registryRead").unwrap();
    let options = ClientOptions {
        base_url: Some(env.sim.hub_base_url(HUB).parse().unwrap()),
        ..ClientOptions::default()
    };
    let ro = HubClient::new(&ConnectionString::parse(&ro).unwrap(), options).unwrap();
    ro.get_device("c").await.unwrap();
    assert!(matches!(
        ro.query_twins_page("SELECT * FROM devices", None, None)
            .await,
        Err(AzureError::Unauthorized(_))
    ));

    // No credentials for a hub named by a registration record.
    let e = env
        .clients
        .hub("unknown-hub.azure-devices.net")
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "no credentials configured for hub unknown-hub.azure-devices.net"
    );
    env.sim.shutdown().await;
}

#[tokio::test]
async fn throttled_with_and_without_retry_after() {
    let env = Env::start(default_sim()).await;
    let hub = env.hub();
    env.sim.add_fault(FaultRule::new(
        "GET",
        "/devices/*",
        FaultAction::Throttle {
            retry_after: Some(2),
        },
    ));
    let e = hub.get_device("a").await.unwrap_err();
    assert!(matches!(e, AzureError::Throttled { .. }), "{e:?}");
    assert_eq!(e.retry_after(), Some(Duration::from_secs(2)));
    assert_eq!(e.code().as_deref(), Some("ThrottlingException"));
    env.sim.add_fault(FaultRule::new(
        "GET",
        "/enrollments/*",
        FaultAction::Throttle { retry_after: None },
    ));
    let e = env.dps().get_enrollment("a").await.unwrap_err();
    assert!(e.is_retryable());
    assert_eq!(e.retry_after(), None);
    env.sim.shutdown().await;

    // The quota model itself: 2 DPS operations a minute, the third is throttled with Retry-After.
    let mut cfg = default_sim();
    cfg.throttle = ThrottleConfig {
        enabled: true,
        dps_ops_per_minute: 2.0,
        ..ThrottleConfig::default()
    };
    let env = Env::start(cfg).await;
    let dps = env.dps();
    for _ in 0..2 {
        assert!(dps.get_enrollment("a").await.unwrap_err().is_not_found());
    }
    let e = dps.get_enrollment("a").await.unwrap_err();
    assert!(matches!(e, AzureError::Throttled { .. }), "{e:?}");
    assert!(e.retry_after().unwrap() >= Duration::from_secs(1));
    env.sim.shutdown().await;
}

#[tokio::test]
async fn token_expiring_mid_run_is_renewed_and_a_stale_clock_is_unauthorized() {
    let sim_clock = FakeClock::new(chrono::Utc::now());
    let sim = Simulator::start_with_clock(default_sim(), Arc::new(sim_clock.clone()))
        .await
        .unwrap();
    let clients = clients_for(&sim, Arc::new(Shared(sim_clock.clone())));
    let hub = clients.hub(HUB).unwrap();
    hub.create_device(&Device {
        device_id: "d".into(),
        ..Device::default()
    })
    .await
    .unwrap();
    let first_expiry = hub.token_provider().cached_expiry().unwrap();

    // An hour and a bit later (the default TTL is an hour): the cached token has expired; the client mints
    // a new one instead of sending it.
    sim_clock.advance(Duration::from_secs(3_700));
    hub.get_device("d").await.unwrap();
    assert!(hub.token_provider().cached_expiry().unwrap() > first_expiry + 3_600);

    // A client whose clock lags behind the service's sends a token the service considers expired.
    let lagging = Arc::new(ManualClock::at_unix(
        sim_clock.now_utc().timestamp() as u64 - 7_200,
    ));
    let cs =
        ConnectionString::parse(&sim.hub_connection_string(HUB, "iothubowner").unwrap()).unwrap();
    let options = ClientOptions {
        base_url: Some(sim.hub_base_url(HUB).parse().unwrap()),
        clock: lagging.clone(),
        ..ClientOptions::default()
    };
    let stale = HubClient::new(&cs, options).unwrap();
    let e = stale.get_device("d").await.unwrap_err();
    assert!(matches!(e, AzureError::Unauthorized(_)), "{e:?}");
    assert!(!e.is_retryable());
    lagging.advance_secs(7_200);
    stale.get_device("d").await.unwrap();
    sim.shutdown().await;
}

#[tokio::test]
async fn the_hub_of_a_registration_record_is_found_by_host_name() {
    let env = Env::start(default_sim()).await;
    let state = env.sim.state().dps(DPS).unwrap();
    env.hub()
        .create_device(&Device {
            device_id: "r-1".into(),
            ..Device::default()
        })
        .await
        .unwrap();
    state
        .upsert_registration(None, json!({"registrationId": "r-1", "assignedHub": "Demo-Hub-1.azure-devices.net", "deviceId": "r-1", "status": "assigned"}))
        .unwrap();
    let reg = env.dps().get_registration("r-1").await.unwrap();
    let hub = env
        .clients
        .hub(reg.assigned_hub.as_deref().unwrap())
        .unwrap();
    assert_eq!(
        hub.get_device(reg.device_id.as_deref().unwrap())
            .await
            .unwrap()
            .device_id,
        "r-1"
    );
    assert_eq!(
        env.clients
            .hub_config(HUB)
            .unwrap()
            .registry_ops_per_minute(),
        Some(100)
    );
    env.sim.shutdown().await;
}

#[tokio::test]
async fn disabling_keeps_group_keys_and_enrollments_with_a_registration_state() {
    let env = Env::start(default_sim()).await;
    let dps = env.dps();
    let created = dps
        .create_or_replace_enrollment_group(&sym_group("sg"), None)
        .await
        .unwrap();
    let key = created
        .attestation
        .symmetric_key
        .clone()
        .unwrap()
        .primary_key
        .unwrap();
    let disabled = dps
        .set_enrollment_group_status("sg", ProvisioningStatus::Disabled)
        .await
        .unwrap()
        .stored;
    assert_eq!(disabled.status(), ProvisioningStatus::Disabled);
    let att = dps.enrollment_group_attestation("sg").await.unwrap();
    assert_eq!(
        att.symmetric_key.unwrap().primary_key.as_deref(),
        Some(key.as_str()),
        "group keys kept"
    );

    // An enrollment whose GET carries the read-only registrationState can still be replaced as read.
    dps.create_or_replace_enrollment(&sym_enrollment("solo"), None)
        .await
        .unwrap();
    let state = env.sim.state().dps(DPS).unwrap();
    state
        .upsert_registration(
            None,
            json!({"registrationId": "solo", "assignedHub": HUB, "deviceId": "solo-device", "status": "assigned"}),
        )
        .unwrap();
    let before = dps.get_enrollment("solo").await.unwrap();
    let reg = before.registration_state.clone().unwrap();
    assert_eq!(reg.device_id.as_deref(), Some("solo-device"));
    let after = dps
        .set_enrollment_status("solo", ProvisioningStatus::Disabled)
        .await
        .unwrap()
        .stored;
    assert_eq!(after.status(), ProvisioningStatus::Disabled);
    assert_eq!(
        dps.get_enrollment("solo")
            .await
            .unwrap()
            .registration_state
            .and_then(|r| r.assigned_hub),
        Some(HUB.to_string()),
        "the registration record is untouched by the replace"
    );
    env.sim.shutdown().await;
}

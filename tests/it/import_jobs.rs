//! The import-job path end to end (issue 13): the planner's choice, snapshot export, import, error log,
//! verification export, the fallbacks, and undo, against the simulator and a real Blob service (Azurite,
//! from `DEPROVISIOND_TEST_AZURITE_CONNECTION_STRING`; `scripts/azurite.sh -- cargo test …` starts one),
//! on both stores. Without Azurite these tests print `SKIPPED:` and pass, except under `CI=true`.

use std::sync::Arc;
use std::time::Duration;

use azure_iot_sim::seed::{Attestation, FleetSpec, GroupSpec, seed_fleet};
use azure_iot_sim::{CallRecord, FaultRule, RunningSimulator, SimConfig, Simulator};
use chrono::Utc;
use deprovisiond::app::WorkflowChoice;
use deprovisiond::azure::config::StorageConfig;
use deprovisiond::azure::{AzureClients, AzureConfig, SasPermissions, StorageAccount};
use deprovisiond::demo::azure_config_for;
use serde_json::{Value, json};

use crate::both_stores;
use crate::support::{TestApp, TestDb, fast_engine, skip};

const DPS: &str = "jobs-dps";
const HUB: &str = "jobs-hub-1.azure-devices.net";
const TIME_SCALE: f64 = 60.0;

both_stores!(
    a_large_group_on_s1_takes_import_jobs_and_every_device_is_verified,
    a_device_changed_between_export_and_import_falls_back_to_its_own_step,
    the_devices_an_import_writes_are_marked_while_it_runs,
    a_hub_running_another_job_is_waited_for,
    a_failed_import_job_falls_back_to_per_device,
    an_expired_sas_falls_back_to_per_device,
    a_container_that_cannot_be_written_falls_back_to_per_device,
    a_delete_by_import_is_undone_from_the_snapshot_with_the_keys,
    a_disable_is_undone_device_by_device_and_dps_only_when_asked,
    a_job_that_failed_during_its_hub_jobs_resumes_there_on_retry,
);

fn storage() -> Option<StorageAccount> {
    match std::env::var("DEPROVISIOND_TEST_AZURITE_CONNECTION_STRING") {
        Ok(cs) if !cs.is_empty() => Some(StorageAccount::from_connection_string(&cs).unwrap()),
        _ => {
            skip(
                "DEPROVISIOND_TEST_AZURITE_CONNECTION_STRING is not set (scripts/azurite.sh -- cargo test starts Azurite)",
                "the import-job path against a real Blob service",
            );
            None
        }
    }
}

fn group(id: &str, devices: usize) -> GroupSpec {
    GroupSpec {
        group_id: id.into(),
        attestation: Attestation::SymmetricKey,
        devices,
        device_prefix: None,
        provisioning_status: None,
        iot_hubs: vec![HUB.into()],
        provision_count: None,
        signing_ca: None,
        issuing_ca: None,
    }
}

/// A throttled S1 hub, time-scaled, whose jobs wait `queue_secs` of quota time before they run.
async fn sim(groups: Vec<GroupSpec>, queue_secs: f64) -> RunningSimulator {
    let mut config = SimConfig::single(DPS, &[HUB]);
    config.throttle.enabled = true;
    config.time_scale = TIME_SCALE;
    config.jobs.devices_per_second = 300.0;
    config.jobs.queue_seconds = queue_secs;
    let sim = Simulator::start(config).await.expect("simulator starts");
    seed_fleet(
        sim.state(),
        &FleetSpec {
            dps: Some(DPS.into()),
            root_ca_name: None,
            groups,
            individuals: vec![],
        },
    )
    .expect("fleet seeds");
    sim.handle().reset_log();
    sim
}

/// The simulator's Azure config with blob storage: minted containers from the account, or the hub's own
/// container URL.
fn config(sim: &RunningSimulator, account: &StorageAccount) -> AzureConfig {
    let mut config = azure_config_for(sim).expect("azure config");
    config.storage = Some(StorageConfig {
        account: account.clone(),
        sas_ttl: Duration::from_secs(3_600),
    });
    config.jobs_poll_interval = Duration::from_millis(50);
    for hub in &mut config.hubs {
        // Modelled at the simulator's rate, time-scaled, so the planner compares like with like.
        hub.jobs_devices_per_second = Some(300.0 * TIME_SCALE);
    }
    config
}

async fn app(db: &TestDb, config: &AzureConfig) -> TestApp {
    let clients = AzureClients::new(config).expect("clients");
    let mut engine = fast_engine();
    engine.concurrency = 16;
    TestApp::spawn_choice(db, WorkflowChoice::Azure(Arc::new(clients)), engine, true).await
}

fn group_body(id: &str, registry: &str) -> Value {
    json!({
        "target": {"kind": "enrollment_group", "group_id": id},
        "reason": {"code": "compromised"},
        "registry": registry,
    })
}

async fn submit(app: &TestApp, body: &Value) -> String {
    let r = app.post("/v1/deprovisions", body).await;
    assert_eq!(r.status(), 202, "{body}");
    let job: Value = r.json().await.unwrap();
    job["id"].as_str().unwrap().to_string()
}

async fn finished(app: &TestApp, id: &str) -> Value {
    app.wait_job(id, Duration::from_secs(120), |j| {
        j["status"] == "succeeded" || j["status"] == "failed"
    })
    .await
}

fn kinds<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["kind"] == kind).collect()
}

fn hub_devices(sim: &RunningSimulator) -> Vec<Value> {
    sim.state().hub(HUB).unwrap().list_devices(None)
}

/// Per-device registry calls (GET/PUT/DELETE of `/devices/{id}` and bulk), not jobs or statistics.
fn registry_calls(calls: &[CallRecord]) -> usize {
    calls
        .iter()
        .filter(|c| c.instance.eq_ignore_ascii_case(HUB))
        .filter(|c| c.path.starts_with("/devices"))
        .count()
}

async fn a_large_group_on_s1_takes_import_jobs_and_every_device_is_verified(db: TestDb) {
    let Some(account) = storage() else { return };
    let sim = sim(vec![group("fleet", 300), group("other", 20)], 0.5).await;
    let keys_before: Vec<Value> = hub_devices(&sim)
        .into_iter()
        .map(|d| json!([d["deviceId"], d["authentication"]]))
        .collect();
    let app = app(&db, &config(&sim, &account)).await;

    // The preview shows both estimates and the choice.
    let r = app
        .post("/v1/deprovisions/preview", &group_body("fleet", "disable"))
        .await;
    assert_eq!(r.status(), 200);
    let preview: Value = r.json().await.unwrap();
    let path = &preview["hubs"][0]["registry_path"];
    assert_eq!(path["route"], "import_job", "{preview:#}");
    assert!(path["per_device_secs"].as_f64().unwrap() > path["import_job_secs"].as_f64().unwrap());

    let id = submit(&app, &group_body("fleet", "disable")).await;
    let job = finished(&app, &id).await;
    assert_eq!(job["status"], "succeeded", "{job:#}");
    assert_eq!(job["progress"]["registry_done"], 300);
    let events = app.events(&id).await;
    let planned = kinds(&events, "registry_path_planned");
    assert_eq!(
        planned[0]["detail"]["hubs"][0]["route"], "import_job",
        "{planned:?}"
    );
    let started: Vec<&str> = kinds(&events, "hub_job_started")
        .iter()
        .map(|e| e["detail"]["blob"].as_str().unwrap())
        .collect();
    assert_eq!(
        started,
        vec![
            format!("{id}/{HUB}/export.txt"),
            format!("{id}/{HUB}/import.txt"),
            format!("{id}/{HUB}/verify.txt")
        ],
        "snapshot export, import, verification export"
    );
    // The snapshot is taken from the export while the import runs, off the hub path: after the import
    // started, before its end was read.
    let at = |kind: &str| {
        events
            .iter()
            .position(|e| {
                e["kind"] == kind && (kind != "hub_job_started" || e["detail"]["type"] == "import")
            })
            .unwrap_or_else(|| panic!("no {kind}: {events:#?}"))
    };
    assert!(at("hub_job_started") < at("snapshot_written"));
    assert!(at("snapshot_written") < at("hub_job_imported"));
    let taken = &events[at("snapshot_written")]["detail"];
    assert_eq!(taken["devices"], 300, "{taken}");
    assert_eq!(taken["snapshot"], format!("{id}/{HUB}/snapshot.txt"));
    // What stays is the snapshot of the job's own devices; the blobs holding the whole hub's keys are gone.
    let clients = AzureClients::new(&config(&sim, &account)).unwrap();
    let container = clients
        .jobs_storage(HUB)
        .unwrap()
        .container(&id, HUB, Utc::now().timestamp(), clients.http())
        .await
        .unwrap();
    for gone in ["export.txt", "import.txt", "verify.txt"] {
        assert!(
            !container
                .exists(&format!("{id}/{HUB}/{gone}"))
                .await
                .unwrap(),
            "{gone}"
        );
    }
    let mut snapshot = container.reader(&format!("{id}/{HUB}/snapshot.txt"));
    let mut lines = 0;
    while let Some(line) = snapshot.next_line().await.unwrap() {
        let d: Value = serde_json::from_str(&line).unwrap();
        assert!(d["id"].as_str().unwrap().starts_with("fleet"), "{d}");
        assert!(d["authentication"]["symmetricKey"]["primaryKey"].is_string());
        lines += 1;
    }
    assert_eq!(
        lines, 300,
        "the snapshot holds the job's devices, keys included"
    );
    // A sweep of every hub checks hubs an import does not cover: device by device.
    let mut sweep = group_body("fleet", "disable");
    sweep["sweep"] = json!("all_hubs");
    let preview: Value = app
        .post("/v1/deprovisions/preview", &sweep)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        preview["hubs"][0]["registry_path"]["route"], "per_device",
        "{preview:#}"
    );
    let verified = kinds(&events, "hub_job_verified");
    assert_eq!(verified[0]["detail"]["devices"], 300, "{verified:?}");
    // No device went through the registry quota one by one.
    assert_eq!(registry_calls(&sim.calls()), 0);
    // Every device of the group is disabled with the job's reason and its keys unchanged; the other
    // group's are untouched.
    let after = hub_devices(&sim);
    let mut disabled = 0;
    for d in &after {
        let id_ = d["deviceId"].as_str().unwrap();
        if id_.starts_with("other") {
            assert_eq!(d["status"], "enabled", "{d}");
            continue;
        }
        assert_eq!(d["status"], "disabled", "{d}");
        assert!(d["statusReason"].as_str().unwrap().contains(&id));
        disabled += 1;
    }
    assert_eq!(disabled, 300);
    let keys_after: Vec<Value> = after
        .into_iter()
        .map(|d| json!([d["deviceId"], d["authentication"]]))
        .collect();
    assert_eq!(keys_before, keys_after, "the import kept every key");
    // Each device shows the hub job that wrote it.
    let page = app
        .get_json(&format!("/v1/deprovisions/{id}/devices?limit=5"))
        .await;
    assert!(page["items"][0]["hub_job"].is_string(), "{page:#}");
    app.stop().await;
    sim.shutdown().await;
}

/// Waits for the job's first event of `kind`.
async fn wait_event(app: &TestApp, id: &str, kind: &str) -> Value {
    for _ in 0..3_000 {
        if let Some(e) = app.events(id).await.into_iter().find(|e| e["kind"] == kind) {
            return e;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no {kind} event in job {id}: {:#?}", app.events(id).await);
}

async fn a_device_changed_between_export_and_import_falls_back_to_its_own_step(db: TestDb) {
    let Some(account) = storage() else { return };
    // The import waits 120 s of quota time (2 s here) in the hub's queue: time to change a device.
    let sim = sim(vec![group("fleet", 50)], 120.0).await;
    let app = app(&db, &config(&sim, &account)).await;
    let body = json!({"target": {"kind": "enrollment_group", "group_id": "fleet"},
        "reason": {"code": "compromised"}, "registry_path": "import_job"});
    let id = submit(&app, &body).await;
    wait_event(&app, &id, "import_blob_written").await;
    let hub = sim.state().hub(HUB).unwrap();
    let victim = hub_devices(&sim)[0]["deviceId"]
        .as_str()
        .unwrap()
        .to_string();
    let mut changed = hub.get_device(&victim).unwrap();
    changed["capabilities"] = json!({"iotEdge": false});
    changed["statusReason"] = json!("touched by an operator");
    hub.upsert_device(&victim, changed).unwrap();

    let job = finished(&app, &id).await;
    assert_eq!(job["status"], "succeeded", "{job:#}");
    let events = app.events(&id).await;
    let refused = kinds(&events, "import_refused");
    assert_eq!(refused.len(), 1, "{events:#?}");
    assert!(refused[0]["message"].as_str().unwrap().contains("ETag"));
    assert_eq!(
        kinds(&events, "hub_job_verified")[0]["detail"]["devices"],
        49
    );
    // Its own registry step disabled it, device by device.
    assert_eq!(hub.get_device(&victim).unwrap()["status"], "disabled");
    assert!(
        kinds(&events, "device_disabled")
            .iter()
            .any(|e| e["message"].as_str().unwrap().contains(&victim))
    );
    assert!(hub_devices(&sim).iter().all(|d| d["status"] == "disabled"));
    app.stop().await;
    sim.shutdown().await;
}

/// The database's share of the import (marking the devices the import blob names as the run's) happens
/// once the hub job has started, while it runs, not between the selection and the import's start.
async fn the_devices_an_import_writes_are_marked_while_it_runs(db: TestDb) {
    use azure_iot_sim::jobs::{JobKind, JobStatus};
    let Some(account) = storage() else { return };
    // Each hub job waits 120 s of quota time (2 s here) in the hub's queue.
    let sim = sim(vec![group("fleet", 40)], 120.0).await;
    let app = app(&db, &config(&sim, &account)).await;
    let store = db.store().await;
    let body = json!({"target": {"kind": "enrollment_group", "group_id": "fleet"},
        "reason": {"code": "compromised"}, "registry_path": "import_job"});
    let id = submit(&app, &body).await;
    let mut import_started = None;
    for _ in 0..1_000 {
        import_started = app
            .events(&id)
            .await
            .into_iter()
            .find(|e| e["kind"] == "hub_job_started" && e["detail"]["type"] == "import");
        if import_started.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let import_started = import_started.expect("the import starts");
    let started_ms = chrono::DateTime::parse_from_rfc3339(import_started["at"].as_str().unwrap())
        .unwrap()
        .timestamp_millis();
    let import_running = || {
        sim.handle()
            .0
            .jobs
            .list(HUB)
            .iter()
            .any(|j| j.kind == JobKind::Import && j.status != JobStatus::Completed)
    };
    let mut marked = None;
    for _ in 0..300 {
        let items = store.list_items(&id, None, 100).await.unwrap().rows;
        assert_eq!(items.len(), 40);
        if items.iter().all(|it| it.hub_job.is_some()) {
            marked = Some((items, import_running()));
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (items, running) = marked.expect("every device is marked");
    assert!(running, "the devices are marked before the import job ends");
    for it in &items {
        assert_eq!(it.state, deprovisiond::domain::lane::LaneState::Waiting);
        assert!(
            it.updated_at >= started_ms,
            "{} marked at {} before the import started at {started_ms}",
            it.registration_id,
            it.updated_at
        );
    }
    let job = finished(&app, &id).await;
    assert_eq!(job["status"], "succeeded", "{job:#}");
    let events = app.events(&id).await;
    assert_eq!(
        kinds(&events, "hub_job_verified")[0]["detail"]["devices"],
        40
    );
    assert!(hub_devices(&sim).iter().all(|d| d["status"] == "disabled"));
    assert_eq!(registry_calls(&sim.calls()), 0);
    app.stop().await;
    sim.shutdown().await;
}

async fn a_hub_running_another_job_is_waited_for(db: TestDb) {
    let Some(account) = storage() else { return };
    let sim = sim(vec![group("fleet", 30)], 0.5).await;
    let config = config(&sim, &account);
    let clients = AzureClients::new(&config).unwrap();
    let hub = clients.hub(HUB).unwrap();
    // Someone else's import of 300,000 lines holds the hub (over 15 s here) until the test cancels it.
    let container = clients
        .jobs_storage(HUB)
        .unwrap()
        .container("someone-else", HUB, Utc::now().timestamp(), clients.http())
        .await
        .unwrap();
    container
        .put_lines(
            "devices.txt",
            futures::stream::iter(
                (0..300_000).map(|i| format!(r#"{{"id":"nobody-{i}","importMode":"delete"}}"#)),
            ),
        )
        .await
        .unwrap();
    let other = hub
        .start_import(container.container(), None, container.container())
        .await
        .unwrap();
    let other_id = other.job_id.clone().unwrap();
    let app = app(&db, &config).await;
    let body = json!({"target": {"kind": "enrollment_group", "group_id": "fleet"},
        "reason": {"code": "compromised"}, "registry_path": "import_job"});
    let id = submit(&app, &body).await;
    let busy = wait_event(&app, &id, "hub_busy").await;
    assert!(
        busy["message"]
            .as_str()
            .unwrap()
            .contains("another import/export job")
    );
    // The service waits: it never cancels a job it did not start.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let still = hub.get_job(&other_id).await.unwrap();
    assert!(still.status().is_active(), "{still:?}");
    hub.cancel_job(&other_id).await.unwrap();
    let job = finished(&app, &id).await;
    assert_eq!(job["status"], "succeeded", "{job:#}");
    let events = app.events(&id).await;
    assert_eq!(
        kinds(&events, "hub_busy").len(),
        1,
        "noted once, not per poll"
    );
    assert_eq!(
        kinds(&events, "hub_job_verified")[0]["detail"]["devices"],
        30
    );
    assert_eq!(registry_calls(&sim.calls()), 0);
    app.stop().await;
    sim.shutdown().await;
}

async fn a_failed_import_job_falls_back_to_per_device(db: TestDb) {
    let Some(account) = storage() else { return };
    let sim = sim(vec![group("fleet", 20)], 60.0).await;
    let config = config(&sim, &account);
    let app = app(&db, &config).await;
    let body = json!({"target": {"kind": "enrollment_group", "group_id": "fleet"},
        "reason": {"code": "compromised"}, "registry_path": "import_job"});
    let id = submit(&app, &body).await;
    // While the import waits in the hub's queue, its input blob disappears: the import job fails.
    let import_blob = format!("{id}/{HUB}/import.txt");
    let mut started = None;
    for _ in 0..3_000 {
        started = app.events(&id).await.into_iter().find(|e| {
            e["kind"] == "hub_job_started" && e["detail"]["blob"] == import_blob.as_str()
        });
        if started.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let started = started.unwrap_or_else(|| panic!("the import of job {id} never started"));
    let clients = AzureClients::new(&config).unwrap();
    let container = clients
        .jobs_storage(HUB)
        .unwrap()
        .container(&id, HUB, Utc::now().timestamp(), clients.http())
        .await
        .unwrap();
    assert!(
        container.delete(&import_blob).await.unwrap(),
        "the import blob was there"
    );
    let job = finished(&app, &id).await;
    assert_eq!(job["status"], "succeeded", "{job:#}");
    let events = app.events(&id).await;
    let fallback = kinds(&events, "hub_job_fallback");
    assert_eq!(fallback.len(), 1, "{events:#?}");
    let why = fallback[0]["message"].as_str().unwrap();
    assert!(
        why.contains(started["detail"]["hub_job"].as_str().unwrap()) && why.contains("failed"),
        "{why}"
    );
    assert_eq!(
        kinds(&events, "device_disabled").len(),
        20,
        "each device on its own"
    );
    assert!(hub_devices(&sim).iter().all(|d| d["status"] == "disabled"));
    // The run that fell back still kept its snapshot and left no export with the hub's keys behind.
    assert!(
        !container
            .exists(&format!("{id}/{HUB}/export.txt"))
            .await
            .unwrap()
    );
    let mut snapshot = container.reader(&format!("{id}/{HUB}/snapshot.txt"));
    let mut lines = 0;
    while snapshot.next_line().await.unwrap().is_some() {
        lines += 1;
    }
    assert_eq!(lines, 20, "{:#?}", kinds(&events, "snapshot_written"));
    app.stop().await;
    sim.shutdown().await;
}

/// A hub configured with its own container SAS URL, minted here with `permissions` until `expiry`.
async fn own_container(
    sim: &RunningSimulator,
    account: &StorageAccount,
    name: &str,
    permissions: SasPermissions,
    expiry: chrono::DateTime<Utc>,
) -> AzureConfig {
    let admin = account
        .container_admin_sas_url(name, Utc::now() + chrono::Duration::hours(1))
        .unwrap();
    let _ = deprovisiond::azure::BlobContainerClient::new(admin)
        .unwrap()
        .create_if_missing()
        .await
        .unwrap();
    let mut config = config(sim, account);
    config.storage = None;
    config.hubs[0].jobs_container = Some(
        account
            .container_sas_url(name, permissions, None, expiry)
            .unwrap(),
    );
    config
}

async fn fell_back_and_finished(app: &TestApp, sim: &RunningSimulator, id: &str, needle: &str) {
    let job = finished(app, id).await;
    assert_eq!(job["status"], "succeeded", "{job:#}");
    let events = app.events(id).await;
    let fallback = kinds(&events, "hub_job_fallback");
    assert_eq!(fallback.len(), 1, "{events:#?}");
    let why = fallback[0]["message"].as_str().unwrap();
    assert!(why.contains(needle), "{why}");
    assert!(!why.contains("sig="), "no SAS in events: {why}");
    assert!(hub_devices(sim).iter().all(|d| d["status"] == "disabled"));
}

async fn an_expired_sas_falls_back_to_per_device(db: TestDb) {
    let Some(account) = storage() else { return };
    let sim = sim(vec![group("fleet", 10)], 0.5).await;
    let name = format!("expired-{}", uuid::Uuid::new_v4().simple());
    let config = own_container(
        &sim,
        &account,
        &name,
        SasPermissions {
            read: true,
            add: true,
            create: true,
            write: true,
            delete: true,
            list: true,
        },
        Utc::now() - chrono::Duration::minutes(5),
    )
    .await;
    let app = app(&db, &config).await;
    let body = json!({"target": {"kind": "enrollment_group", "group_id": "fleet"},
        "reason": {"code": "compromised"}, "registry_path": "import_job"});
    let id = submit(&app, &body).await;
    fell_back_and_finished(&app, &sim, &id, "export job").await;
    app.stop().await;
    sim.shutdown().await;
}

async fn a_container_that_cannot_be_written_falls_back_to_per_device(db: TestDb) {
    let Some(account) = storage() else { return };
    let sim = sim(vec![group("fleet", 10)], 0.5).await;
    let name = format!("readonly-{}", uuid::Uuid::new_v4().simple());
    let config = own_container(
        &sim,
        &account,
        &name,
        SasPermissions::READ,
        Utc::now() + chrono::Duration::hours(1),
    )
    .await;
    let app = app(&db, &config).await;
    let body = json!({"target": {"kind": "enrollment_group", "group_id": "fleet"},
        "reason": {"code": "compromised"}, "registry_path": "import_job"});
    let id = submit(&app, &body).await;
    fell_back_and_finished(&app, &sim, &id, "failed").await;
    app.stop().await;
    sim.shutdown().await;
}

async fn a_delete_by_import_is_undone_from_the_snapshot_with_the_keys(db: TestDb) {
    let Some(account) = storage() else { return };
    let sim = sim(vec![group("fleet", 40)], 0.5).await;
    let before: Vec<Value> = hub_devices(&sim)
        .into_iter()
        .map(|d| json!([d["deviceId"], d["authentication"], d["status"]]))
        .collect();
    let app = app(&db, &config(&sim, &account)).await;
    let body = json!({"target": {"kind": "enrollment_group", "group_id": "fleet"},
        "reason": {"code": "compromised"}, "registry": "delete", "registry_path": "import_job"});
    let id = submit(&app, &body).await;
    let job = finished(&app, &id).await;
    assert_eq!(job["status"], "succeeded", "{job:#}");
    assert!(hub_devices(&sim).is_empty(), "every identity deleted");

    // Undo needs the job to be finished and refuses options that do not apply.
    let r = app
        .post(&format!("/v1/deprovisions/{id}/undo"), &json!({"bogus": 1}))
        .await;
    assert_eq!(r.status(), 422);
    // No body at all means the defaults.
    let r = app
        .http
        .post(app.url(&format!("/v1/deprovisions/{id}/undo")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let undo: Value = r.json().await.unwrap();
    let undo_id = undo["id"].as_str().unwrap().to_string();
    assert_eq!(undo["undo_of"]["job_id"], id.as_str());
    let r = app
        .post(&format!("/v1/deprovisions/{undo_id}/undo"), &json!({}))
        .await;
    assert_eq!(r.status(), 409, "an undo is not undone");
    let undone = finished(&app, &undo_id).await;
    assert_eq!(undone["status"], "succeeded", "{undone:#}");
    assert_eq!(undone["progress"]["registry_done"], 40);
    let events = app.events(&undo_id).await;
    assert_eq!(
        kinds(&events, "hub_job_verified")[0]["detail"]["devices"],
        40,
        "{events:#?}"
    );
    let after: Vec<Value> = hub_devices(&sim)
        .into_iter()
        .map(|d| json!([d["deviceId"], d["authentication"], d["status"]]))
        .collect();
    assert_eq!(before, after, "re-created with their keys");
    // The original job links to its undo.
    let original = app.get_json(&format!("/v1/deprovisions/{id}")).await;
    assert_eq!(original["undo_jobs"], json!([undo_id]));
    // DPS was not touched by the undo.
    let group = sim.state().dps(DPS).unwrap().find_group("fleet").unwrap();
    assert_eq!(group["provisioningStatus"], "disabled");
    app.stop().await;
    sim.shutdown().await;
}

async fn a_disable_is_undone_device_by_device_and_dps_only_when_asked(db: TestDb) {
    let Some(account) = storage() else { return };
    let sim = sim(vec![group("fleet", 6)], 0.5).await;
    let hub = sim.state().hub(HUB).unwrap();
    // One device was disabled by hand before the job: the undo must leave it disabled.
    let first = hub_devices(&sim)[0]["deviceId"]
        .as_str()
        .unwrap()
        .to_string();
    let mut d = hub.get_device(&first).unwrap();
    d["status"] = json!("disabled");
    d["statusReason"] = json!("lost in transit");
    hub.upsert_device(&first, d).unwrap();
    let app = app(&db, &config(&sim, &account)).await;
    let body = json!({"target": {"kind": "enrollment_group", "group_id": "fleet"},
        "reason": {"code": "compromised"}, "registry_path": "per_device"});
    let id = submit(&app, &body).await;
    assert_eq!(finished(&app, &id).await["status"], "succeeded");
    // A later job on the same target: undoing the first could enable what the later one meant to keep
    // disabled, so that needs `force`.
    let later = submit(&app, &body).await;
    assert_eq!(finished(&app, &later).await["status"], "succeeded");
    let r = app
        .post(
            &format!("/v1/deprovisions/{id}/undo"),
            &json!({"restore_dps": true}),
        )
        .await;
    assert_eq!(r.status(), 409);
    let problem: Value = r.json().await.unwrap();
    assert!(
        problem["detail"].as_str().unwrap().contains(&later),
        "{problem}"
    );
    let r = app
        .post(
            &format!("/v1/deprovisions/{id}/undo"),
            &json!({"restore_dps": true, "force": true}),
        )
        .await;
    assert_eq!(r.status(), 202);
    let undo: Value = r.json().await.unwrap();
    let undo_id = undo["id"].as_str().unwrap();
    let undone = finished(&app, undo_id).await;
    assert_eq!(undone["status"], "succeeded", "{undone:#}");
    assert_eq!(
        undone["progress"]["registry_done"], 5,
        "only what the job changed"
    );
    for d in hub_devices(&sim) {
        let expected = if d["deviceId"] == first.as_str() {
            "disabled"
        } else {
            "enabled"
        };
        assert_eq!(d["status"], expected, "{d}");
    }
    let group = sim.state().dps(DPS).unwrap().find_group("fleet").unwrap();
    assert_eq!(
        group["provisioningStatus"], "enabled",
        "restored when asked"
    );
    app.stop().await;
    sim.shutdown().await;
}

async fn a_job_that_failed_during_its_hub_jobs_resumes_there_on_retry(db: TestDb) {
    let Some(account) = storage() else { return };
    let sim = sim(vec![group("fleet", 25)], 0.5).await;
    // Every status read of a hub job fails: the step runs out of attempts and the job fails.
    let fault: FaultRule = serde_json::from_value(
        json!({"method": "GET", "path": "/jobs/*", "times": null, "action": {"type": "status", "status": 500}}),
    )
    .unwrap();
    sim.add_fault(fault);
    let app = app(&db, &config(&sim, &account)).await;
    let body = json!({"target": {"kind": "enrollment_group", "group_id": "fleet"},
        "reason": {"code": "compromised"}, "registry_path": "import_job"});
    let id = submit(&app, &body).await;
    let job = finished(&app, &id).await;
    let jobs_calls: Vec<String> = sim
        .calls()
        .iter()
        .filter(|c| c.path.starts_with("/jobs"))
        .map(|c| format!("{} {} {:?}", c.method, c.path, c.status))
        .collect();
    assert_eq!(job["status"], "failed", "{jobs_calls:#?}");
    // Its devices still wait for the barrier: none ran on its own.
    assert_eq!(job["progress"]["pending"], 25, "{:#}", job["progress"]);
    sim.handle().clear_faults();
    let r = app
        .post(&format!("/v1/deprovisions/{id}/retry"), &json!({}))
        .await;
    assert_eq!(r.status(), 200);
    let job = app
        .wait_job(&id, Duration::from_secs(120), |j| {
            j["status"] == "succeeded" || j["status"] == "failed"
        })
        .await;
    assert_eq!(job["status"], "succeeded", "{job:#}");
    let events = app.events(&id).await;
    // The devices waited at the barrier again, so the hub jobs (resumed, not started anew) finished them.
    assert_eq!(
        kinds(&events, "hub_job_verified")[0]["detail"]["devices"],
        25,
        "{events:#?}"
    );
    assert_eq!(kinds(&events, "hub_job_fallback").len(), 0);
    assert_eq!(registry_calls(&sim.calls()), 0, "no device went on its own");
    assert!(hub_devices(&sim).iter().all(|d| d["status"] == "disabled"));
    app.stop().await;
    sim.shutdown().await;
}

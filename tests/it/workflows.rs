//! End to end: every case of the seed against the simulator, over HTTP, on both stores.
//! Each test asserts the simulator's final state, the call order (revoke strictly before any registry
//! write), and that deprovisioned devices can no longer provision while untouched siblings still can.

use std::sync::Arc;
use std::time::Duration;

use azure_iot_sim::seed::{
    Attestation, FleetSpec, GroupSpec, IndividualSpec, ProvisionOutcome, SeededFleet, seed_fleet,
    try_provision,
};
use azure_iot_sim::{CallRecord, FaultRule, RunningSimulator, SimConfig, Simulator};
use deprovisiond::app::WorkflowChoice;
use deprovisiond::azure::{AzureClients, AzureConfig};
use deprovisiond::demo::azure_config_for;
use serde_json::{Value, json};

use crate::both_stores;
use crate::support::{TestApp, TestDb, fast_engine};

const DPS: &str = "test-dps";
const HUBS: [&str; 3] = [
    "hub-1.azure-devices.net",
    "hub-2.azure-devices.net",
    "hub-3.azure-devices.net",
];

both_stores!(
    individual_disable_disable,
    individual_delete_delete,
    individual_disable_delete_x509,
    individual_never_provisioned_skips_registry,
    group_disable_with_cleanup_and_group_delete,
    group_delete_refused_then_forced,
    group_device_x509_leaf,
    group_device_symmetric_fallback_and_tombstone_rules,
    transient_faults_are_retried,
    permanent_fault_fails_one_device_then_retry_resumes,
    hub_without_credentials_fails_only_its_devices,
    preview_changes_nothing,
    group_of_5000_devices_over_3_hubs,
);

struct Env {
    sim: RunningSimulator,
    fleet: SeededFleet,
    app: TestApp,
}

fn ind(id: &str, attestation: Attestation) -> IndividualSpec {
    IndividualSpec {
        registration_id: id.into(),
        attestation,
        device_id: None,
        provisioning_status: None,
        iot_hubs: Vec::new(),
        provision: true,
        certificate_of: None,
    }
}

fn grp(id: &str, attestation: Attestation, devices: usize) -> GroupSpec {
    GroupSpec {
        group_id: id.into(),
        attestation,
        devices,
        device_prefix: None,
        provisioning_status: None,
        iot_hubs: Vec::new(),
        provision_count: None,
        signing_ca: None,
        issuing_ca: None,
    }
}

fn fleet(groups: Vec<GroupSpec>, individuals: Vec<IndividualSpec>) -> FleetSpec {
    FleetSpec {
        dps: Some(DPS.into()),
        root_ca_name: None,
        groups,
        individuals,
    }
}

async fn env_with(db: &TestDb, spec: FleetSpec, tweak: impl FnOnce(&mut AzureConfig)) -> Env {
    let sim = Simulator::start(SimConfig::single(DPS, &HUBS))
        .await
        .expect("simulator starts");
    let fleet = seed_fleet(sim.state(), &spec).expect("fleet seeds");
    let mut config = azure_config_for(&sim).expect("azure config");
    tweak(&mut config);
    let clients = AzureClients::new(&config).expect("clients");
    let app = TestApp::spawn_choice(
        db,
        WorkflowChoice::Azure(Arc::new(clients)),
        fast_engine(),
        true,
    )
    .await;
    Env { sim, fleet, app }
}

async fn env(db: &TestDb, spec: FleetSpec) -> Env {
    env_with(db, spec, |_| {}).await
}

impl Env {
    async fn run(&self, body: Value, status: &str) -> Value {
        let r = self.app.post("/v1/deprovisions", &body).await;
        assert_eq!(r.status(), 202, "{body}");
        let job: Value = r.json().await.unwrap();
        let id = job["id"].as_str().unwrap().to_string();
        self.app
            .wait_job(&id, Duration::from_secs(120), |j| {
                j["status"] == status || j["status"] == "failed" || j["status"] == "succeeded"
            })
            .await;
        let job = self.app.get_json(&format!("/v1/deprovisions/{id}")).await;
        assert_eq!(
            job["status"],
            status,
            "{job:#}\nevents: {:#}",
            json!(self.app.events(&id).await)
        );
        job
    }

    fn provision(&self, rid: &str) -> ProvisionOutcome {
        try_provision(self.sim.state(), &self.fleet, rid).expect("provision attempt")
    }

    fn hub_of(&self, rid: &str) -> String {
        self.fleet
            .device(rid)
            .and_then(|d| d.assigned_hub.clone())
            .expect("seeded device has a hub")
    }

    fn device(&self, rid: &str) -> Option<Value> {
        let d = self.fleet.device(rid).unwrap();
        let hub = self
            .sim
            .state()
            .hub(d.assigned_hub.as_deref().unwrap())
            .unwrap();
        hub.get_device(d.device_id.as_deref().unwrap_or(rid))
    }

    fn enrollment(&self, rid: &str) -> Option<Value> {
        self.sim.state().dps(DPS).unwrap().find_enrollment(rid)
    }

    fn calls(&self) -> Vec<CallRecord> {
        self.sim.calls()
    }

    async fn stop(self) {
        self.app.stop().await;
        self.sim.shutdown().await;
    }
}

fn is_write(c: &CallRecord) -> bool {
    matches!(c.method.as_str(), "PUT" | "DELETE" | "POST") && c.status.is_some_and(|s| s < 300)
}

/// Every hub write for `device` comes after the revoke: its successful write, or, for an enrollment already
/// disabled (which is not written again), the revoke step's verifying read, the last read before any write.
fn assert_revoke_before_registry(calls: &[CallRecord], revoke_path: &str, device: &str) {
    let first_write = calls
        .iter()
        .filter(|c| c.path == revoke_path && is_write(c))
        .map(|c| c.seq)
        .min();
    let revoke = first_write.unwrap_or_else(|| {
        calls
            .iter()
            .filter(|c| c.path == revoke_path && c.method == "GET" && c.status == Some(200))
            .map(|c| c.seq)
            .max()
            .unwrap_or_else(|| panic!("no successful write or read of {revoke_path}"))
    });
    let hub_writes: Vec<u64> = calls
        .iter()
        .filter(|c| {
            let single = c.path == format!("/devices/{device}")
                && matches!(c.method.as_str(), "PUT" | "DELETE");
            // Deletes waiting together go out as one bulk call naming each device.
            let bulk = c.operation == "BulkDevices" && c.entity_ids.iter().any(|id| id == device);
            single || bulk
        })
        .map(|c| c.seq)
        .collect();
    assert!(!hub_writes.is_empty(), "no registry write for {device}");
    assert!(
        hub_writes.iter().all(|&s| s > revoke),
        "registry write for {device} before the revoke ({revoke}): {hub_writes:?}"
    );
}

fn assert_refused(outcome: ProvisionOutcome, rid: &str) {
    assert!(
        !matches!(outcome, ProvisionOutcome::Assigned { .. }),
        "{rid} can still provision: {outcome:?}"
    );
}

fn assert_assigned(outcome: ProvisionOutcome, rid: &str) {
    assert!(
        matches!(outcome, ProvisionOutcome::Assigned { .. }),
        "{rid} should still provision: {outcome:?}"
    );
}

fn body(target: Value, revoke: &str, registry: &str) -> Value {
    json!({"target": target, "revoke": revoke, "registry": registry, "reason": {"code": "stolen", "text": "e2e"},
           "ticket": {"system": "jira", "key": "OPS-7"}})
}

async fn individual_disable_disable(db: TestDb) {
    let e = env(
        &db,
        fleet(
            vec![],
            vec![
                ind("tpm-1", Attestation::Tpm),
                ind("sk-1", Attestation::SymmetricKey),
            ],
        ),
    )
    .await;
    let before = e.device("sk-1").unwrap();
    let job = e
        .run(
            body(
                json!({"kind": "individual_enrollment", "registration_id": "sk-1"}),
                "disable",
                "disable",
            ),
            "succeeded",
        )
        .await;
    let id = job["id"].as_str().unwrap();
    // DPS: disabled, every other field kept (keys, hubs).
    let enr = e.enrollment("sk-1").unwrap();
    assert_eq!(enr["provisioningStatus"], "disabled");
    assert!(
        enr["attestation"]["symmetricKey"]["primaryKey"]
            .as_str()
            .is_some_and(|k| !k.is_empty())
    );
    // Hub: disabled, reason names the job, keys untouched (full-replace PUT from a GET).
    let dev = e.device("sk-1").unwrap();
    assert_eq!(dev["status"], "disabled");
    assert!(dev["statusReason"].as_str().unwrap().contains(id));
    assert!(dev["statusReason"].as_str().unwrap().len() <= 128);
    assert_eq!(dev["authentication"], before["authentication"]);
    assert_revoke_before_registry(&e.calls(), "/enrollments/sk-1", "sk-1");
    assert!(matches!(e.provision("sk-1"), ProvisionOutcome::Disabled));
    assert_assigned(e.provision("tpm-1"), "tpm-1");
    e.stop().await;
}

async fn individual_delete_delete(db: TestDb) {
    let e = env(
        &db,
        fleet(
            vec![],
            vec![
                ind("tpm-1", Attestation::Tpm),
                ind("sk-1", Attestation::SymmetricKey),
            ],
        ),
    )
    .await;
    let hub = e.hub_of("tpm-1");
    e.run(
        body(
            json!({"kind": "individual_enrollment", "registration_id": "tpm-1"}),
            "delete",
            "delete",
        ),
        "succeeded",
    )
    .await;
    assert!(e.enrollment("tpm-1").is_none());
    assert!(
        e.sim
            .state()
            .hub(&hub)
            .unwrap()
            .get_device("tpm-1")
            .is_none()
    );
    let calls = e.calls();
    // The registration state was read before the enrollment was deleted (deleting removes it).
    let read = calls
        .iter()
        .find(|c| c.method == "GET" && c.path.contains("tpm-1"))
        .map(|c| c.seq)
        .unwrap();
    let delete = calls
        .iter()
        .find(|c| c.method == "DELETE" && c.path == "/enrollments/tpm-1")
        .map(|c| c.seq)
        .unwrap();
    assert!(read < delete);
    assert_revoke_before_registry(&calls, "/enrollments/tpm-1", "tpm-1");
    assert_refused(e.provision("tpm-1"), "tpm-1");
    assert_assigned(e.provision("sk-1"), "sk-1");
    e.stop().await;
}

async fn individual_disable_delete_x509(db: TestDb) {
    let e = env(
        &db,
        fleet(
            vec![],
            vec![
                ind("x509-1", Attestation::X509),
                ind("x509-2", Attestation::X509),
            ],
        ),
    )
    .await;
    let hub = e.hub_of("x509-1");
    e.run(
        body(
            json!({"kind": "individual_enrollment", "registration_id": "x509-1"}),
            "disable",
            "delete",
        ),
        "succeeded",
    )
    .await;
    let enr = e.enrollment("x509-1").unwrap();
    assert_eq!(enr["provisioningStatus"], "disabled");
    assert!(
        e.sim
            .state()
            .hub(&hub)
            .unwrap()
            .get_device("x509-1")
            .is_none()
    );
    assert_revoke_before_registry(&e.calls(), "/enrollments/x509-1", "x509-1");
    assert!(matches!(e.provision("x509-1"), ProvisionOutcome::Disabled));
    assert_assigned(e.provision("x509-2"), "x509-2");
    e.stop().await;
}

async fn individual_never_provisioned_skips_registry(db: TestDb) {
    let mut never = ind("sk-new", Attestation::SymmetricKey);
    never.provision = false;
    let e = env(&db, fleet(vec![], vec![never])).await;
    let job = e
        .run(
            body(
                json!({"kind": "individual_enrollment", "registration_id": "sk-new"}),
                "disable",
                "disable",
            ),
            "succeeded",
        )
        .await;
    assert_eq!(job["progress"]["skipped"], 1);
    let id = job["id"].as_str().unwrap();
    let devices = e
        .app
        .get_json(&format!("/v1/deprovisions/{id}/devices"))
        .await;
    assert_eq!(devices["items"][0]["state"], "skipped");
    let why = devices["items"][0]["skip_reason"].as_str().unwrap();
    assert!(why.contains("never provisioned"), "{why}");
    // Skipped only after every hub it could be in said 404, and the reason names them.
    for hub in HUBS {
        assert!(why.contains(hub), "{why}");
    }
    assert!(
        !e.calls()
            .iter()
            .any(|c| c.path.starts_with("/devices/") && c.method != "GET"),
        "only lookups for a device never provisioned"
    );
    e.stop().await;
}

async fn group_disable_with_cleanup_and_group_delete(db: TestDb) {
    let e = env(
        &db,
        fleet(
            vec![
                grp("fleet-a", Attestation::X509, 30),
                grp("fleet-b", Attestation::SymmetricKey, 5),
            ],
            vec![],
        ),
    )
    .await;
    let mut b = body(
        json!({"kind": "enrollment_group", "group_id": "fleet-a"}),
        "disable",
        "disable",
    );
    b["delete_registrations"] = json!(true);
    b["delete_group"] = json!(true);
    let job = e.run(b, "succeeded").await;
    assert_eq!(job["progress"]["total"], 30);
    assert_eq!(job["progress"]["registry_done"], 30);
    let names: Vec<&str> = job["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "resolve",
            "revoke",
            "enumerate",
            "import_jobs",
            "devices",
            "delete_registrations",
            "delete_group"
        ]
    );
    let dps = e.sim.state().dps(DPS).unwrap();
    assert!(dps.find_group("fleet-a").is_none());
    let calls = e.calls();
    for d in e.fleet.group_devices("fleet-a") {
        let rid = &d.registration_id;
        assert_eq!(e.device(rid).unwrap()["status"], "disabled", "{rid}");
        assert!(
            dps.registration(rid).is_none(),
            "{rid}'s registration record was deleted"
        );
        assert_revoke_before_registry(
            &calls,
            "/enrollmentGroups/fleet-a",
            d.device_id.as_deref().unwrap_or(rid),
        );
        assert_refused(e.provision(rid), rid);
    }
    // The group delete came after every registry write.
    let last_hub_write = calls
        .iter()
        .filter(|c| c.path.starts_with("/devices/") && is_write(c))
        .map(|c| c.seq)
        .max();
    let group_delete = calls
        .iter()
        .find(|c| c.method == "DELETE" && c.path == "/enrollmentGroups/fleet-a")
        .unwrap();
    assert!(Some(group_delete.seq) > last_hub_write);
    for d in e.fleet.group_devices("fleet-b") {
        assert_assigned(e.provision(&d.registration_id), &d.registration_id);
    }
    e.stop().await;
}

async fn group_delete_refused_then_forced(db: TestDb) {
    let mut child = grp("line-a", Attestation::X509, 4);
    child.signing_ca = Some("line-a-ca".into());
    let mut root = grp("all-devices", Attestation::X509, 0);
    root.signing_ca = Some("root".into());
    let e = env(&db, fleet(vec![root, child], vec![])).await;
    let mut b = body(
        json!({"kind": "enrollment_group", "group_id": "line-a"}),
        "disable",
        "delete",
    );
    b["delete_group"] = json!(true);
    let r = e.app.post("/v1/deprovisions", &b).await;
    assert_eq!(r.status(), 409);
    let p: Value = r.json().await.unwrap();
    assert_eq!(
        p["type"],
        "urn:deprovisiond:problem:higher-chain-group-enabled"
    );
    assert!(
        p["detail"].as_str().unwrap().contains("`all-devices`"),
        "{p:#}"
    );
    // The preview says the same, without changing anything.
    let mut preview = b.clone();
    preview["dry_run"] = json!(true);
    let plan: Value = e
        .app
        .post("/v1/deprovisions", &preview)
        .await
        .json()
        .await
        .unwrap();
    assert!(
        plan["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w["code"] == "higher_chain_enabled_group")
    );
    assert_eq!(
        e.sim
            .state()
            .dps(DPS)
            .unwrap()
            .find_group("line-a")
            .unwrap()["provisioningStatus"],
        "enabled"
    );
    b["force"] = json!(true);
    e.run(b, "succeeded").await;
    assert!(
        e.sim
            .state()
            .dps(DPS)
            .unwrap()
            .find_group("line-a")
            .is_none()
    );
    let calls = e.calls();
    for d in e.fleet.group_devices("line-a") {
        let rid = &d.registration_id;
        assert!(e.device(rid).is_none(), "{rid}'s identity was deleted");
        assert_revoke_before_registry(
            &calls,
            "/enrollmentGroups/line-a",
            d.device_id.as_deref().unwrap_or(rid),
        );
    }
    e.stop().await;
}

async fn group_device_x509_leaf(db: TestDb) {
    let e = env(
        &db,
        fleet(vec![grp("fleet-x", Attestation::X509, 6)], vec![]),
    )
    .await;
    let target = e.fleet.group_devices("fleet-x")[2].clone();
    let sibling = e.fleet.group_devices("fleet-x")[3].registration_id.clone();
    let rid = target.registration_id.clone();
    let pem = target.cert_pem.clone().expect("seeded leaf certificate");
    // A certificate whose CN is not the registration id is refused up front.
    let wrong = json!({"kind": "group_device", "group_id": "fleet-x", "registration_id": sibling, "certificate_pem": pem});
    let r = e
        .app
        .post("/v1/deprovisions", &body(wrong, "disable", "disable"))
        .await;
    assert_eq!(r.status(), 422);
    let job = e
        .run(
            body(json!({"kind": "group_device", "group_id": "fleet-x", "registration_id": rid, "certificate_pem": pem}), "disable", "delete"),
            "succeeded",
        )
        .await;
    let enr = e.enrollment(&rid).expect("blocking enrollment");
    assert_eq!(enr["provisioningStatus"], "disabled");
    assert_eq!(enr["attestation"]["type"], "x509");
    assert!(e.device(&rid).is_none());
    assert_revoke_before_registry(
        &e.calls(),
        &format!("/enrollments/{rid}"),
        target.device_id.as_deref().unwrap_or(&rid),
    );
    assert!(
        matches!(e.provision(&rid), ProvisionOutcome::Disabled),
        "{:?}",
        e.provision(&rid)
    );
    assert_assigned(e.provision(&sibling), &sibling);
    let tombs = e.app.get_json("/v1/tombstones").await;
    assert_eq!(tombs["items"][0]["registration_id"], json!(rid));
    assert_eq!(tombs["items"][0]["attestation"], "x509");
    assert_eq!(tombs["items"][0]["job_id"], job["id"]);
    e.stop().await;
}

async fn group_device_symmetric_fallback_and_tombstone_rules(db: TestDb) {
    let e = env(
        &db,
        fleet(
            vec![
                grp("fleet-x", Attestation::X509, 3),
                grp("fleet-k", Attestation::SymmetricKey, 3),
            ],
            vec![],
        ),
    )
    .await;
    let x = e.fleet.group_devices("fleet-x")[0].registration_id.clone();
    let k = e.fleet.group_devices("fleet-k")[1].registration_id.clone();
    // X.509 device without its certificate: the documented symmetric-key fallback.
    let job = e
        .run(
            body(
                json!({"kind": "group_device", "group_id": "fleet-x", "registration_id": x}),
                "disable",
                "disable",
            ),
            "succeeded",
        )
        .await;
    let events = e.app.events(job["id"].as_str().unwrap()).await;
    assert!(events.iter().any(|ev| ev["kind"] == "fallback_block"));
    assert_eq!(
        e.enrollment(&x).unwrap()["attestation"]["type"],
        "symmetricKey"
    );
    assert_refused(e.provision(&x), &x);
    e.run(
        body(
            json!({"kind": "group_device", "group_id": "fleet-k", "registration_id": k}),
            "disable",
            "disable",
        ),
        "succeeded",
    )
    .await;
    assert_refused(e.provision(&k), &k);
    assert_eq!(e.device(&k).unwrap()["status"], "disabled");
    for d in e
        .fleet
        .group_devices("fleet-k")
        .iter()
        .filter(|d| d.registration_id != k)
    {
        assert_assigned(e.provision(&d.registration_id), &d.registration_id);
    }
    // Deleting a tombstone is refused, explaining the re-enrollment risk.
    let r = e
        .app
        .post(
            "/v1/deprovisions",
            &body(
                json!({"kind": "individual_enrollment", "registration_id": k}),
                "delete",
                "disable",
            ),
        )
        .await;
    assert_eq!(r.status(), 409);
    let p: Value = r.json().await.unwrap();
    assert_eq!(p["type"], "urn:deprovisiond:problem:tombstone-protected");
    assert!(p["detail"].as_str().unwrap().contains("enroll again"));
    // The audit finds both blocks; after someone deletes one by hand, it reports the drift.
    let report: Value = e
        .app
        .post("/v1/tombstones/audit", &json!({}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        (report["checked"].as_u64(), report["ok"].as_u64()),
        (Some(2), Some(2))
    );
    e.sim
        .state()
        .dps(DPS)
        .unwrap()
        .delete(
            azure_iot_sim::state::EnrollmentKind::Individual,
            &k,
            &azure_iot_sim::state::Precondition::None,
        )
        .unwrap();
    let report: Value = e
        .app
        .post("/v1/tombstones/audit", &json!({}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(report["drift"][0]["registration_id"], json!(k));
    assert_eq!(report["drift"][0]["status"], "missing");
    let tombs = e.app.get_json("/v1/tombstones").await;
    let drifted: Vec<&Value> = tombs["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["drift"] == true)
        .collect();
    assert_eq!(drifted.len(), 1);
    assert_assigned(e.provision(&k), &k);
    e.stop().await;
}

fn fault(v: Value) -> FaultRule {
    serde_json::from_value(v).expect("fault rule")
}

async fn transient_faults_are_retried(db: TestDb) {
    let e = env(
        &db,
        fleet(vec![grp("fleet-a", Attestation::SymmetricKey, 4)], vec![]),
    )
    .await;
    let d0 = e.fleet.group_devices("fleet-a")[0].clone();
    let dev0 = d0.device_id.clone().unwrap_or(d0.registration_id.clone());
    // One transient fault at each step: the group GET (resolve), the group PUT (revoke), the registration
    // query (enumerate), a hub GET and PUT (registry).
    // The first group GET is the API's admission check (it reads the group before accepting the job);
    // the second is the resolve step's.
    e.sim.add_fault(fault(json!({"method": "GET", "path": "/enrollmentGroups/fleet-a", "nth": 2, "action": {"type": "status", "status": 500}})));
    e.sim.add_fault(fault(json!({"method": "PUT", "path": "/enrollmentGroups/fleet-a", "action": {"type": "status", "status": 503}})));
    e.sim.add_fault(fault(json!({"path": "/registrations/fleet-a/query", "action": {"type": "throttle", "retry_after": 1}})));
    e.sim.add_fault(fault(
        json!({"method": "GET", "entity_id": dev0, "action": {"type": "status", "status": 500}}),
    ));
    e.sim.add_fault(fault(
        json!({"method": "PUT", "entity_id": dev0, "action": {"type": "drop"}}),
    ));
    let job = e
        .run(
            body(
                json!({"kind": "enrollment_group", "group_id": "fleet-a"}),
                "disable",
                "disable",
            ),
            "succeeded",
        )
        .await;
    let events = e.app.events(job["id"].as_str().unwrap()).await;
    // A 429 is a wait, not a failed attempt (issue 9): it shows as `step_throttled`.
    let retries: Vec<&Value> = events
        .iter()
        .filter(|ev| ev["kind"] == "step_retry_scheduled" || ev["kind"] == "step_throttled")
        .collect();
    assert!(retries.len() >= 5, "{retries:#?}");
    assert!(
        retries
            .iter()
            .any(|r| r["detail"]["http_status"] == 503 && r["step"] == "revoke")
    );
    assert!(
        retries
            .iter()
            .any(|r| r["detail"]["http_status"] == 500 && r["step"] == "resolve")
    );
    assert!(retries.iter().any(|r| r["step"] == "registry"));
    assert!(
        retries
            .iter()
            .any(|r| r["detail"]["http_status"] == 429 && r["step"] == "enumerate")
    );
    assert_eq!(e.device(&d0.registration_id).unwrap()["status"], "disabled");
    e.stop().await;
}

async fn permanent_fault_fails_one_device_then_retry_resumes(db: TestDb) {
    let e = env(
        &db,
        fleet(vec![grp("fleet-a", Attestation::SymmetricKey, 4)], vec![]),
    )
    .await;
    let bad = e.fleet.group_devices("fleet-a")[1].clone();
    let bad_dev = bad.device_id.clone().unwrap_or(bad.registration_id.clone());
    let rule = e.sim.add_fault(fault(
        json!({"method": "PUT", "entity_id": bad_dev, "times": null,
        "action": {"type": "status", "status": 403, "message": "policy forbids"}}),
    ));
    let job = e
        .run(
            body(
                json!({"kind": "enrollment_group", "group_id": "fleet-a"}),
                "disable",
                "disable",
            ),
            "failed",
        )
        .await;
    let id = job["id"].as_str().unwrap().to_string();
    assert_eq!(job["progress"]["failed"], 1);
    assert_eq!(job["progress"]["registry_done"], 3);
    let events = e.app.events(&id).await;
    let failed = events
        .iter()
        .find(|ev| ev["kind"] == "step_failed")
        .expect("step_failed");
    assert_eq!(failed["detail"]["http_status"], 403);
    assert!(
        failed["detail"]["code"]
            .as_str()
            .is_some_and(|c| !c.is_empty()),
        "{failed:#}"
    );
    assert!(
        failed["detail"]["tracking_id"]
            .as_str()
            .is_some_and(|t| !t.is_empty()),
        "{failed:#}"
    );
    // Fix the cause, retry: only the failed device runs again; the group is not disabled twice.
    assert!(e.sim.handle().remove_fault(rule));
    let group_puts_before = e
        .calls()
        .iter()
        .filter(|c| c.method == "PUT" && c.path == "/enrollmentGroups/fleet-a")
        .count();
    let seq_before = e.calls().last().map(|c| c.seq).unwrap_or(0);
    let r = e
        .app
        .post(&format!("/v1/deprovisions/{id}/retry"), &json!({}))
        .await;
    assert_eq!(r.status(), 200);
    e.app.wait_status(&id, "succeeded").await;
    let after: Vec<CallRecord> = e
        .calls()
        .into_iter()
        .filter(|c| c.seq > seq_before)
        .collect();
    assert_eq!(group_puts_before, 1);
    assert!(
        !after
            .iter()
            .any(|c| c.path.starts_with("/enrollmentGroups") || c.path.contains("/query")),
        "{after:#?}"
    );
    assert!(
        after
            .iter()
            .all(|c| c.entity_id.as_deref() == Some(bad_dev.as_str())),
        "{after:#?}"
    );
    assert_eq!(
        e.device(&bad.registration_id).unwrap()["status"],
        "disabled"
    );
    e.stop().await;
}

async fn hub_without_credentials_fails_only_its_devices(db: TestDb) {
    let e = env_with(
        &db,
        fleet(vec![grp("fleet-a", Attestation::SymmetricKey, 12)], vec![]),
        |c| {
            c.hubs.retain(|h| h.host_name != HUBS[1]);
        },
    )
    .await;
    let job = e
        .run(
            body(
                json!({"kind": "enrollment_group", "group_id": "fleet-a"}),
                "disable",
                "disable",
            ),
            "failed",
        )
        .await;
    let id = job["id"].as_str().unwrap();
    let on_hub2 = e
        .fleet
        .group_devices("fleet-a")
        .iter()
        .filter(|d| d.assigned_hub.as_deref() == Some(HUBS[1]))
        .count();
    assert!(on_hub2 > 0);
    assert_eq!(job["progress"]["failed"].as_u64(), Some(on_hub2 as u64));
    assert_eq!(
        job["progress"]["registry_done"].as_u64(),
        Some(12 - on_hub2 as u64)
    );
    let devices = e
        .app
        .get_json(&format!("/v1/deprovisions/{id}/devices"))
        .await;
    for d in devices["items"].as_array().unwrap() {
        if d["hub"] == HUBS[1] {
            assert_eq!(d["state"], "failed");
            assert!(
                d["last_error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("no credentials configured for hub")
            );
        } else {
            assert_eq!(d["state"], "succeeded");
        }
    }
    e.stop().await;
}

async fn preview_changes_nothing(db: TestDb) {
    let e = env_with(
        &db,
        fleet(
            vec![grp("fleet-a", Attestation::SymmetricKey, 9)],
            vec![ind("tpm-1", Attestation::Tpm)],
        ),
        |c| {
            c.hubs.retain(|h| h.host_name != HUBS[2]);
        },
    )
    .await;
    let before = e.calls().len();
    let plan: Value = e
        .app
        .post(
            "/v1/deprovisions/preview",
            &body(
                json!({"kind": "enrollment_group", "group_id": "fleet-a"}),
                "disable",
                "delete",
            ),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(plan["found"]["exists"], true);
    assert_eq!(plan["devices"]["total"], 9);
    assert_eq!(
        plan["hubs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["devices"].as_u64().unwrap())
            .sum::<u64>(),
        9
    );
    let codes: Vec<&str> = plan["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["code"].as_str().unwrap())
        .collect();
    if plan["hubs"]
        .as_array()
        .unwrap()
        .iter()
        .any(|h| h["hub"] == HUBS[2])
    {
        assert!(codes.contains(&"no_credentials"), "{plan:#}");
    }
    let writes = e.calls()[before..]
        .iter()
        .filter(|c| c.method != "GET" && !c.path.ends_with("/query"))
        .count();
    assert_eq!(writes, 0, "a preview only reads");
    let list = e.app.get_json("/v1/deprovisions").await;
    assert!(
        list["items"].as_array().unwrap().is_empty(),
        "a preview creates no job"
    );
    let missing: Value = e
        .app
        .post(
            "/v1/deprovisions/preview",
            &body(
                json!({"kind": "individual_enrollment", "registration_id": "nope"}),
                "disable",
                "disable",
            ),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(missing["found"]["exists"], false);
    assert!(
        missing["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w["code"] == "enrollment_not_found")
    );
    e.stop().await;
}

async fn group_of_5000_devices_over_3_hubs(db: TestDb) {
    // Scale over three hubs, not pacing, is under test: let the pacer spend the simulator's whole bucket
    // (a full minute of quota) as a burst, as the simulated hubs allow, so the job is not held to the
    // sustained rate for minutes.
    let e = env_with(
        &db,
        fleet(vec![grp("big", Attestation::SymmetricKey, 5000)], vec![]),
        |c| c.pacing.burst_secs = 60.0,
    )
    .await;
    let started = std::time::Instant::now();
    let job = e
        .run(
            body(
                json!({"kind": "enrollment_group", "group_id": "big"}),
                "disable",
                "disable",
            ),
            "succeeded",
        )
        .await;
    eprintln!("5,000-device group job took {:?}", started.elapsed());
    assert_eq!(job["progress"]["total"], 5000);
    assert_eq!(job["progress"]["registry_done"], 5000);
    for hub in HUBS {
        let h = e.sim.state().hub(hub).unwrap();
        let n = e
            .fleet
            .group_devices("big")
            .iter()
            .filter(|d| d.assigned_hub.as_deref() == Some(hub))
            .count();
        assert!(n > 1000, "devices spread over {hub}: {n}");
        let sample = e
            .fleet
            .group_devices("big")
            .into_iter()
            .find(|d| d.assigned_hub.as_deref() == Some(hub))
            .unwrap();
        assert_eq!(
            h.get_device(
                sample
                    .device_id
                    .as_deref()
                    .unwrap_or(&sample.registration_id)
            )
            .unwrap()["status"],
            "disabled"
        );
    }
    e.stop().await;
}

// ----- discovery: every device whose record names a hub, or whose identity exists, is cut off -----

both_stores!(
    individual_disabled_by_hand_then_device_retried,
    group_disabled_by_hand_then_devices_retried,
    individual_every_record_status,
    group_every_record_status,
    group_device_every_record_status,
    record_without_hub_is_looked_up_in_the_listed_hubs,
    lookup_in_a_hub_without_credentials_fails,
    all_hubs_sweep_finds_a_stale_identity_in_a_second_hub,
    preview_counts_record_statuses_and_lookups,
);

impl Env {
    fn dps_state(&self) -> std::sync::Arc<azure_iot_sim::state::DpsInstance> {
        self.sim.state().dps(DPS).unwrap()
    }

    /// What an operator does in the portal: disable the enrollment or group by hand (full replace).
    fn disable_by_hand(&self, kind: azure_iot_sim::state::EnrollmentKind, id: &str) {
        let dps = self.dps_state();
        let mut body = dps.get(kind, id).expect("enrollment exists");
        body["provisioningStatus"] = json!("disabled");
        dps.put(
            kind,
            id,
            body,
            &azure_iot_sim::state::Precondition::None,
            azure_iot_sim::ExistingPutPolicy::Replace,
        )
        .expect("disabled by hand");
    }

    /// The device retries registration while no linked hub can take it: DPS answers `failed`.
    fn retry_with_no_usable_hub(&self, rid: &str) {
        let dps = self.dps_state();
        let linked = dps.linked_hubs();
        dps.set_linked_hubs(Vec::new());
        let outcome = self.provision(rid);
        dps.set_linked_hubs(linked);
        assert!(
            matches!(outcome, ProvisionOutcome::Failed { .. }),
            "{outcome:?}"
        );
    }

    fn record_status(&self, rid: &str) -> Option<Value> {
        self.dps_state()
            .registration(rid)
            .map(|r| r.state["status"].clone())
    }

    /// The identity of a seeded device in one hub.
    fn identity_in(&self, hub: &str, device_id: &str) -> Option<Value> {
        self.sim.state().hub(hub).unwrap().get_device(device_id)
    }

    async fn devices_of(&self, job: &Value) -> Vec<Value> {
        let id = job["id"].as_str().unwrap();
        self.app
            .get_json(&format!("/v1/deprovisions/{id}/devices?limit=1000"))
            .await["items"]
            .as_array()
            .unwrap()
            .clone()
    }
}

fn individual_body(rid: &str) -> Value {
    body(
        json!({"kind": "individual_enrollment", "registration_id": rid}),
        "disable",
        "disable",
    )
}

fn assert_disabled_identity(e: &Env, hub: &str, device_id: &str) {
    let dev = e
        .identity_in(hub, device_id)
        .unwrap_or_else(|| panic!("{device_id} has an identity in {hub}"));
    assert_eq!(dev["status"], "disabled", "{device_id} in {hub}: {dev:#}");
}

async fn individual_disabled_by_hand_then_device_retried(db: TestDb) {
    let e = env(
        &db,
        fleet(vec![], vec![ind("stolen-1", Attestation::SymmetricKey)]),
    )
    .await;
    let hub = e.hub_of("stolen-1");
    e.disable_by_hand(azure_iot_sim::state::EnrollmentKind::Individual, "stolen-1");
    assert!(matches!(
        e.provision("stolen-1"),
        ProvisionOutcome::Disabled
    ));
    assert_eq!(e.record_status("stolen-1"), Some(json!("disabled")));
    let job = e.run(individual_body("stolen-1"), "succeeded").await;
    assert_disabled_identity(&e, &hub, "stolen-1");
    assert_eq!(job["progress"]["registry_done"], 1);
    assert_eq!(job["progress"]["skipped"], 0);
    e.stop().await;
}

async fn group_disabled_by_hand_then_devices_retried(db: TestDb) {
    let e = env(
        &db,
        fleet(vec![grp("fleet-a", Attestation::SymmetricKey, 6)], vec![]),
    )
    .await;
    e.disable_by_hand(azure_iot_sim::state::EnrollmentKind::Group, "fleet-a");
    let devices: Vec<_> = e
        .fleet
        .group_devices("fleet-a")
        .into_iter()
        .cloned()
        .collect();
    for d in &devices[..4] {
        assert!(matches!(
            e.provision(&d.registration_id),
            ProvisionOutcome::Disabled
        ));
    }
    let job = e
        .run(
            body(
                json!({"kind": "enrollment_group", "group_id": "fleet-a"}),
                "disable",
                "disable",
            ),
            "succeeded",
        )
        .await;
    assert_eq!(job["progress"]["registry_done"], 6);
    for d in &devices {
        let dev = d.device_id.as_deref().unwrap_or(&d.registration_id);
        assert_disabled_identity(&e, d.assigned_hub.as_deref().unwrap(), dev);
    }
    e.stop().await;
}

/// One individual enrollment per record status, each deprovisioned by its own job.
async fn individual_every_record_status(db: TestDb) {
    let mut never = ind("ind-never", Attestation::SymmetricKey);
    never.provision = false;
    let e = env(
        &db,
        fleet(
            vec![],
            vec![
                ind("ind-assigned", Attestation::SymmetricKey),
                ind("ind-disabled", Attestation::SymmetricKey),
                ind("ind-failed", Attestation::Tpm),
                ind("ind-assigning", Attestation::SymmetricKey),
                ind("ind-unassigned", Attestation::X509),
                ind("ind-no-record", Attestation::SymmetricKey),
                never,
            ],
        ),
    )
    .await;
    let dps = e.dps_state();
    e.disable_by_hand(
        azure_iot_sim::state::EnrollmentKind::Individual,
        "ind-disabled",
    );
    assert!(matches!(
        e.provision("ind-disabled"),
        ProvisionOutcome::Disabled
    ));
    e.retry_with_no_usable_hub("ind-failed");
    dps.set_registration_status("ind-assigning", "assigning")
        .unwrap();
    dps.set_registration_status("ind-unassigned", "unassigned")
        .unwrap();
    dps.delete_registration("ind-no-record", &azure_iot_sim::state::Precondition::Any)
        .unwrap();
    for (rid, status) in [
        ("ind-assigned", "assigned"),
        ("ind-disabled", "disabled"),
        ("ind-failed", "failed"),
        ("ind-assigning", "assigning"),
        ("ind-unassigned", "unassigned"),
    ] {
        assert_eq!(e.record_status(rid), Some(json!(status)), "{rid}");
    }
    for rid in [
        "ind-assigned",
        "ind-disabled",
        "ind-failed",
        "ind-assigning",
        "ind-unassigned",
        "ind-no-record",
    ] {
        let job = e.run(individual_body(rid), "succeeded").await;
        assert_eq!(job["progress"]["registry_done"], 1, "{rid}: {job:#}");
        assert_disabled_identity(&e, &e.hub_of(rid), rid);
        assert_revoke_before_registry(&e.calls(), &format!("/enrollments/{rid}"), rid);
    }
    let job = e.run(individual_body("ind-never"), "succeeded").await;
    let items = e.devices_of(&job).await;
    assert_eq!(items[0]["state"], "skipped");
    let why = items[0]["skip_reason"].as_str().unwrap();
    for hub in HUBS {
        assert!(why.contains(hub), "the skip names every hub checked: {why}");
    }
    e.stop().await;
}

/// A group whose devices' records are in every status DPS can leave them in.
async fn group_every_record_status(db: TestDb) {
    let e = env(
        &db,
        fleet(vec![grp("fleet-s", Attestation::SymmetricKey, 6)], vec![]),
    )
    .await;
    let devices: Vec<_> = e
        .fleet
        .group_devices("fleet-s")
        .into_iter()
        .cloned()
        .collect();
    let rid = |i: usize| devices[i].registration_id.clone();
    let dps = e.dps_state();
    e.retry_with_no_usable_hub(&rid(1));
    dps.set_registration_status(&rid(2), "assigning").unwrap();
    dps.set_registration_status(&rid(3), "unassigned").unwrap();
    e.disable_by_hand(azure_iot_sim::state::EnrollmentKind::Group, "fleet-s");
    assert!(matches!(e.provision(&rid(4)), ProvisionOutcome::Disabled));
    for (i, status) in [
        (0, "assigned"),
        (1, "failed"),
        (2, "assigning"),
        (3, "unassigned"),
        (4, "disabled"),
    ] {
        assert_eq!(e.record_status(&rid(i)), Some(json!(status)), "{}", rid(i));
    }
    let job = e
        .run(
            body(
                json!({"kind": "enrollment_group", "group_id": "fleet-s"}),
                "disable",
                "disable",
            ),
            "succeeded",
        )
        .await;
    assert_eq!(job["progress"]["registry_done"], 6, "{job:#}");
    for d in &devices {
        let dev = d.device_id.as_deref().unwrap_or(&d.registration_id);
        assert_disabled_identity(&e, d.assigned_hub.as_deref().unwrap(), dev);
    }
    e.stop().await;
}

/// One device of a group per record status, each blocked and cut off by its own job.
async fn group_device_every_record_status(db: TestDb) {
    let mut g = grp("fleet-d", Attestation::SymmetricKey, 7);
    g.provision_count = Some(6);
    let e = env(&db, fleet(vec![g], vec![])).await;
    let devices: Vec<_> = e
        .fleet
        .group_devices("fleet-d")
        .into_iter()
        .cloned()
        .collect();
    let rid = |i: usize| devices[i].registration_id.clone();
    let dps = e.dps_state();
    e.retry_with_no_usable_hub(&rid(1));
    dps.set_registration_status(&rid(2), "assigning").unwrap();
    dps.set_registration_status(&rid(3), "unassigned").unwrap();
    dps.delete_registration(&rid(4), &azure_iot_sim::state::Precondition::Any)
        .unwrap();
    e.disable_by_hand(azure_iot_sim::state::EnrollmentKind::Group, "fleet-d");
    assert!(matches!(e.provision(&rid(5)), ProvisionOutcome::Disabled));
    for d in &devices[..6] {
        let rid = &d.registration_id;
        let job = e
            .run(
                body(
                    json!({"kind": "group_device", "group_id": "fleet-d", "registration_id": rid}),
                    "disable",
                    "disable",
                ),
                "succeeded",
            )
            .await;
        assert_eq!(job["progress"]["registry_done"], 1, "{rid}: {job:#}");
        let dev = d.device_id.as_deref().unwrap_or(&d.registration_id);
        assert_disabled_identity(&e, d.assigned_hub.as_deref().unwrap(), dev);
    }
    // Never provisioned: blocked, and skipped only after every hub said 404.
    let job = e
        .run(
            body(
                json!({"kind": "group_device", "group_id": "fleet-d", "registration_id": rid(6)}),
                "disable",
                "disable",
            ),
            "succeeded",
        )
        .await;
    let items = e.devices_of(&job).await;
    assert_eq!(items[0]["state"], "skipped");
    let why = items[0]["skip_reason"].as_str().unwrap();
    assert!(HUBS.iter().all(|h| why.contains(h)), "{why}");
    e.stop().await;
}

async fn record_without_hub_is_looked_up_in_the_listed_hubs(db: TestDb) {
    let mut listed = ind("listed-1", Attestation::SymmetricKey);
    listed.iot_hubs = vec![HUBS[1].to_string()];
    let e = env(&db, fleet(vec![], vec![listed])).await;
    assert_eq!(e.hub_of("listed-1"), HUBS[1]);
    e.dps_state()
        .delete_registration("listed-1", &azure_iot_sim::state::Precondition::Any)
        .unwrap();
    let job = e.run(individual_body("listed-1"), "succeeded").await;
    assert_eq!(job["progress"]["registry_done"], 1);
    assert_disabled_identity(&e, HUBS[1], "listed-1");
    // Only the hub the enrollment lists was asked.
    let asked: Vec<String> = e
        .calls()
        .iter()
        .filter(|c| c.path == "/devices/listed-1")
        .map(|c| c.instance.clone())
        .collect();
    assert!(!asked.is_empty());
    assert!(asked.iter().all(|h| h == HUBS[1]), "{asked:?}");
    let events = e.app.events(job["id"].as_str().unwrap()).await;
    assert!(
        events.iter().any(|ev| ev["kind"] == "found_by_lookup"),
        "{events:#?}"
    );
    e.stop().await;
}

async fn lookup_in_a_hub_without_credentials_fails(db: TestDb) {
    let mut listed = ind("nocred-1", Attestation::SymmetricKey);
    listed.iot_hubs = vec![HUBS[1].to_string(), HUBS[2].to_string()];
    listed.provision = false;
    let e = env_with(&db, fleet(vec![], vec![listed]), |c| {
        c.hubs.retain(|h| h.host_name != HUBS[2]);
    })
    .await;
    let job = e.run(individual_body("nocred-1"), "failed").await;
    let items = e.devices_of(&job).await;
    assert_eq!(items[0]["state"], "failed");
    let msg = items[0]["last_error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("no credentials configured for hub") && msg.contains(HUBS[2]),
        "{msg}"
    );
    e.stop().await;
}

async fn all_hubs_sweep_finds_a_stale_identity_in_a_second_hub(db: TestDb) {
    let e = env(
        &db,
        fleet(vec![], vec![ind("moved-1", Attestation::SymmetricKey)]),
    )
    .await;
    let current = e.hub_of("moved-1");
    let old = HUBS.iter().find(|h| **h != current).unwrap().to_string();
    // An identity left behind by an earlier assignment, still enabled.
    e.sim
        .state()
        .hub(&old)
        .unwrap()
        .upsert_device(
            "moved-1",
            json!({"deviceId": "moved-1", "status": "enabled"}),
        )
        .unwrap();
    let mut b = individual_body("moved-1");
    b["sweep"] = json!("all_hubs");
    let job = e.run(b, "succeeded").await;
    assert_disabled_identity(&e, &current, "moved-1");
    assert_disabled_identity(&e, &old, "moved-1");
    let events = e.app.events(job["id"].as_str().unwrap()).await;
    let disabled_in: Vec<&Value> = events
        .iter()
        .filter(|ev| ev["kind"] == "device_disabled")
        .collect();
    assert_eq!(disabled_in.len(), 2, "{events:#?}");
    // An unknown sweep is refused like any other bad enum value.
    let mut bad = individual_body("moved-1");
    bad["sweep"] = json!("everywhere");
    assert_eq!(e.app.post("/v1/deprovisions", &bad).await.status(), 422);
    e.stop().await;
}

async fn preview_counts_record_statuses_and_lookups(db: TestDb) {
    let e = env(
        &db,
        fleet(vec![grp("fleet-p", Attestation::SymmetricKey, 5)], vec![]),
    )
    .await;
    let devices: Vec<_> = e
        .fleet
        .group_devices("fleet-p")
        .into_iter()
        .cloned()
        .collect();
    let dps = e.dps_state();
    e.retry_with_no_usable_hub(&devices[1].registration_id);
    dps.set_registration_status(&devices[2].registration_id, "assigning")
        .unwrap();
    e.disable_by_hand(azure_iot_sim::state::EnrollmentKind::Group, "fleet-p");
    assert!(matches!(
        e.provision(&devices[3].registration_id),
        ProvisionOutcome::Disabled
    ));
    let before = e.calls().len();
    let plan: Value = e
        .app
        .post(
            "/v1/deprovisions/preview",
            &body(
                json!({"kind": "enrollment_group", "group_id": "fleet-p"}),
                "disable",
                "disable",
            ),
        )
        .await
        .json()
        .await
        .unwrap();
    let by = &plan["devices"]["by_record_status"];
    assert_eq!(by["assigned"], 2, "{plan:#}");
    assert_eq!(by["failed"], 1);
    assert_eq!(by["assigning"], 1);
    assert_eq!(by["disabled"], 1);
    assert_eq!(plan["devices"]["with_hub"], 5);
    let costs = plan["registry_operations"].as_object().unwrap();
    // GET + PUT per device in its own hub, plus one GET per device in each other hub for all_hubs.
    assert_eq!(costs["assigned"], 10, "{plan:#}");
    assert_eq!(costs["all_hubs"], 10 + 5 * 2, "{plan:#}");
    // A device whose record names no hub: the preview looks it up and warns.
    let rid = &devices[4].registration_id;
    let ind_plan: Value = e
        .app
        .post(
            "/v1/deprovisions/preview",
            &body(
                json!({"kind": "group_device", "group_id": "fleet-p", "registration_id": rid}),
                "disable",
                "disable",
            ),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(ind_plan["devices"]["by_record_status"]["assigned"], 1);
    dps.delete_registration(rid, &azure_iot_sim::state::Precondition::Any)
        .unwrap();
    let ind_plan: Value = e
        .app
        .post(
            "/v1/deprovisions/preview",
            &body(
                json!({"kind": "group_device", "group_id": "fleet-p", "registration_id": rid}),
                "disable",
                "disable",
            ),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        ind_plan["devices"]["by_record_status"]["no_record"], 1,
        "{ind_plan:#}"
    );
    assert_eq!(ind_plan["devices"]["found_by_lookup"], 1, "{ind_plan:#}");
    assert!(
        ind_plan["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w["code"] == "found_only_by_lookup"),
        "{ind_plan:#}"
    );
    let writes = e.calls()[before..]
        .iter()
        .filter(|c| c.method != "GET" && !c.path.ends_with("/query"))
        .count();
    assert_eq!(writes, 0, "a preview only reads");
    e.stop().await;
}

// ----- the block of a group device is protected from before it exists -----

both_stores!(
    block_is_never_created_without_a_tombstone,
    interrupted_block_stays_protected_and_is_audited,
);

/// The database fails just when the block would be recorded: DPS must not hold a blocking enrollment
/// that no tombstone protects (a later `revoke: delete` job could remove it and re-admit the device).
async fn block_is_never_created_without_a_tombstone(db: TestDb) {
    use deprovisiond::domain::job::DeprovisionRequest;
    use deprovisiond::domain::plan::Plan;
    use deprovisiond::store::{Created, NewJob};
    use deprovisiond::worker::Workflow;
    use deprovisiond::workflow::AzureWorkflow;

    let sim = Simulator::start(SimConfig::single(DPS, &HUBS))
        .await
        .expect("simulator starts");
    let seeded = seed_fleet(
        sim.state(),
        &fleet(vec![grp("fleet-k", Attestation::SymmetricKey, 2)], vec![]),
    )
    .expect("fleet seeds");
    let rid = seeded.group_devices("fleet-k")[0].registration_id.clone();
    let clients = Arc::new(AzureClients::new(&azure_config_for(&sim).unwrap()).unwrap());
    let store = db.store().await;
    let request: DeprovisionRequest = serde_json::from_value(body(
        json!({"kind": "group_device", "group_id": "fleet-k", "registration_id": rid}),
        "disable",
        "disable",
    ))
    .unwrap();
    let new = NewJob {
        dps: DPS.into(),
        plan: Plan::for_request(&request),
        request,
        idempotency: None,
    };
    let Created::New(job) = store.create_job(new, 0).await.unwrap() else {
        panic!("a new job")
    };
    let wf = AzureWorkflow::new(
        clients,
        store.clone(),
        Arc::new(deprovisiond::domain::clock::SystemClock),
    );
    store.close().await;
    let result = wf
        .run_job_step(&job, deprovisiond::domain::plan::JobStep::Revoke)
        .await;
    assert!(
        matches!(
            result.outcome,
            deprovisiond::domain::lane::Outcome::Retry { .. }
        ),
        "{:?}",
        result.outcome
    );
    let check = db.store().await;
    let tomb = check.find_tombstone(DPS, &rid).await.unwrap();
    let block = sim.state().dps(DPS).unwrap().find_enrollment(&rid);
    assert!(
        block.is_none() || tomb.is_some(),
        "DPS holds the blocking enrollment of {rid} but no tombstone protects it"
    );
    check.close().await;
    sim.shutdown().await;
}

/// The step stops between creating the block and confirming it: the pending tombstone still refuses a
/// delete, the audit reports it, and retrying the job finishes it.
async fn interrupted_block_stays_protected_and_is_audited(db: TestDb) {
    let e = env(
        &db,
        fleet(vec![grp("fleet-k", Attestation::SymmetricKey, 3)], vec![]),
    )
    .await;
    let rid = e.fleet.group_devices("fleet-k")[0].registration_id.clone();
    // GETs of the enrollment: resolve (1), before creating (2), verifying (3): the third fails for good.
    let rule = e.sim.add_fault(fault(
        json!({"method": "GET", "path": format!("/enrollments/{rid}"),
        "nth": 3, "times": null, "action": {"type": "status", "status": 403}}),
    ));
    let job = e
        .run(
            body(
                json!({"kind": "group_device", "group_id": "fleet-k", "registration_id": rid}),
                "disable",
                "disable",
            ),
            "failed",
        )
        .await;
    assert_eq!(
        e.enrollment(&rid).unwrap()["provisioningStatus"],
        "disabled"
    );
    let tombs = e.app.get_json("/v1/tombstones").await;
    assert_eq!(tombs["items"][0]["registration_id"], json!(rid));
    assert_eq!(tombs["items"][0]["state"], "pending");
    let r = e
        .app
        .post(
            "/v1/deprovisions",
            &body(
                json!({"kind": "individual_enrollment", "registration_id": rid}),
                "delete",
                "disable",
            ),
        )
        .await;
    assert_eq!(r.status(), 409);
    let report: Value = e
        .app
        .post("/v1/tombstones/audit", &json!({}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        report["pending"][0]["registration_id"],
        json!(rid),
        "{report:#}"
    );
    assert!(e.sim.handle().remove_fault(rule));
    let id = job["id"].as_str().unwrap();
    let r = e
        .app
        .post(&format!("/v1/deprovisions/{id}/retry"), &json!({}))
        .await;
    assert_eq!(r.status(), 200);
    e.app.wait_status(id, "succeeded").await;
    let tombs = e.app.get_json("/v1/tombstones").await;
    assert_eq!(tombs["items"][0]["state"], "active");
    assert_refused(e.provision(&rid), &rid);
    e.stop().await;
}

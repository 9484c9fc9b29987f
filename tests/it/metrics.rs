//! `GET /metrics` after a real job against the simulator: database gauges and Azure call counters.

use std::sync::Arc;
use std::time::Duration;

use azure_iot_sim::seed::{Attestation, FleetSpec, GroupSpec, seed_fleet};
use azure_iot_sim::{SimConfig, Simulator};
use deprovisiond::app::WorkflowChoice;
use deprovisiond::azure::AzureClients;
use deprovisiond::demo::azure_config_for;
use serde_json::{Value, json};

use crate::both_stores;
use crate::support::{TestApp, TestDb, fast_engine};

both_stores!(metrics_show_jobs_devices_and_azure_calls);

/// The value of the sample `name{labels…}` whose labels include every `want` pair.
fn sample(text: &str, name: &str, want: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter(|l| {
            want.iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
}

async fn metrics_show_jobs_devices_and_azure_calls(db: TestDb) {
    let hubs = ["metrics-hub-1.azure-devices.net"];
    let sim = Simulator::start(SimConfig::single("metrics-dps", &hubs))
        .await
        .unwrap();
    let spec = FleetSpec {
        dps: Some("metrics-dps".into()),
        root_ca_name: None,
        groups: vec![GroupSpec {
            group_id: "metrics-group".into(),
            attestation: Attestation::SymmetricKey,
            devices: 4,
            device_prefix: None,
            provisioning_status: None,
            iot_hubs: Vec::new(),
            provision_count: None,
            signing_ca: None,
            issuing_ca: None,
        }],
        individuals: Vec::new(),
    };
    seed_fleet(sim.state(), &spec).unwrap();
    let clients = AzureClients::new(&azure_config_for(&sim).unwrap()).unwrap();
    let app = TestApp::spawn_choice(
        &db,
        WorkflowChoice::Azure(Arc::new(clients)),
        fast_engine(),
        true,
    )
    .await;
    let body = json!({"target": {"kind": "enrollment_group", "group_id": "metrics-group"},
                      "reason": {"code": "compromised"}});
    let r = app.post("/v1/deprovisions", &body).await;
    assert_eq!(r.status(), 202);
    let job: Value = r.json().await.unwrap();
    let id = job["id"].as_str().unwrap().to_string();
    let done = app
        .wait_job(&id, Duration::from_secs(60), |j| j["status"] == "succeeded")
        .await;
    assert_eq!(done["status"], "succeeded");

    let resp = app.http.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let text = resp.text().await.unwrap();
    assert_eq!(
        sample(&text, "deprovisiond_jobs", &[("status", "succeeded")]),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "deprovisiond_devices", &[("state", "succeeded")]),
        Some(4.0),
        "{text}"
    );
    assert_eq!(sample(&text, "deprovisiond_queue_depth", &[]), Some(0.0));
    assert_eq!(
        sample(&text, "deprovisiond_oldest_pending_device_age_seconds", &[]),
        Some(0.0)
    );
    // Counters are per process (other tests add to them): they must show this job's hub calls.
    let hub = hubs[0];
    let gets = sample(
        &text,
        "deprovisiond_azure_calls_total",
        &[
            ("service", "hub"),
            ("host", hub),
            ("operation", "GET /devices/{id}"),
            ("status", "200"),
        ],
    )
    .unwrap_or(0.0);
    assert!(gets >= 4.0, "a GET per device at least:\n{text}");
    assert!(
        sample(
            &text,
            "deprovisiond_azure_calls_total",
            &[
                ("service", "dps"),
                ("operation", "POST /registrations/{id}/query")
            ],
        )
        .is_some(),
        "{text}"
    );
    assert!(
        text.contains("deprovisiond_azure_call_duration_seconds_bucket{"),
        "latencies are histograms:\n{text}"
    );
    assert!(
        sample(
            &text,
            "deprovisiond_step_duration_seconds_count",
            &[
                ("lane", "device"),
                ("step", "registry"),
                ("outcome", "done")
            ],
        )
        .unwrap_or(0.0)
            >= 4.0,
        "every device's registry step is timed:\n{text}"
    );
    assert!(
        sample(
            &text,
            "deprovisiond_step_duration_seconds_count",
            &[("lane", "job"), ("step", "revoke"), ("outcome", "done")],
        )
        .is_some(),
        "{text}"
    );
    // Nothing secret in the metrics.
    for key in sim
        .state()
        .hub(hub)
        .unwrap()
        .policies
        .iter()
        .map(|p| p.primary_key.expose().to_string())
    {
        assert!(!text.contains(&key));
    }
    app.stop().await;
    sim.shutdown().await;
}

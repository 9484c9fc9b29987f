//! The service started with known secrets must not show them: not in its logs at any level, not in any
//! answer, not in `/metrics`. Add a secret (and the variable that configures it) to [`Secrets`] and every
//! check below covers it.

use deprovisiond::http::webhooks::signature::sign_generic;
use std::io::Read;
use std::process::{Command, Stdio};

use azure_iot_sim::seed::{Attestation, FleetSpec, IndividualSpec, seed_fleet};
use azure_iot_sim::{SimConfig, Simulator};
use serde_json::json;

use crate::support::{ADMIN_KEY, client_with, individual};

const DPS: &str = "secret-dps";
const HUB: &str = "secret-hub.azure-devices.net";

/// The secrets the service is given, and how.
struct Secrets {
    /// (variable, value) pairs for the service's environment.
    env: Vec<(String, String)>,
    /// Strings that must never come out.
    never_shown: Vec<String>,
}

fn shared_access_key(cs: &str) -> String {
    cs.split(';')
        .find_map(|p| p.strip_prefix("SharedAccessKey="))
        .expect("a SharedAccessKey")
        .to_string()
}

const GENERIC_SECRET: &str = "generic-webhook-secret-5f1c9e";
const SN_TOKEN: &str = "servicenow-token-a81b77";
const CALLBACK_SECRET: &str = "callback-signing-secret-22d0";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_appears_in_logs_answers_or_metrics() {
    let sim = Simulator::start(SimConfig::single(DPS, &[HUB]))
        .await
        .unwrap();
    seed_fleet(
        sim.state(),
        &FleetSpec {
            dps: Some(DPS.into()),
            root_ca_name: None,
            groups: Vec::new(),
            individuals: vec![IndividualSpec {
                registration_id: "dev-secret-1".into(),
                attestation: Attestation::SymmetricKey,
                device_id: None,
                provisioning_status: None,
                iot_hubs: Vec::new(),
                provision: true,
                certificate_of: None,
            }],
        },
    )
    .unwrap();
    let dps_cs = sim
        .dps_connection_string(DPS, "provisioningserviceowner")
        .unwrap();
    let hub_cs = sim.hub_connection_string(HUB, "iothubowner").unwrap();
    let key_entry = format!(
        "ops:admin:{}",
        deprovisiond::http::auth::keys::to_hex(&deprovisiond::http::auth::keys::hash(ADMIN_KEY))
    );
    let secrets = Secrets {
        env: vec![
            (
                "DEPROVISIOND_DPS_SECRET_DPS_CONNECTION_STRING".into(),
                dps_cs.clone(),
            ),
            (
                "DEPROVISIOND_DPS_SECRET_DPS_BASE_URL".into(),
                sim.dps_base_url(DPS),
            ),
            (
                "DEPROVISIOND_HUB_H1_CONNECTION_STRING".into(),
                hub_cs.clone(),
            ),
            ("DEPROVISIOND_HUB_H1_BASE_URL".into(), sim.hub_base_url(HUB)),
            ("DEPROVISIOND_API_KEYS".into(), key_entry),
            ("T_GENERIC_SECRET".into(), GENERIC_SECRET.into()),
            ("T_SN_TOKEN".into(), SN_TOKEN.into()),
            ("T_CALLBACK_SECRET".into(), CALLBACK_SECRET.into()),
        ],
        never_shown: vec![
            shared_access_key(&dps_cs),
            shared_access_key(&hub_cs),
            ADMIN_KEY.into(),
            GENERIC_SECRET.into(),
            SN_TOKEN.into(),
            CALLBACK_SECRET.into(),
        ],
    };
    let dir = tempfile::tempdir().unwrap();
    // Webhook and callback secrets, named in the configuration file and given in the environment.
    let hooks = dir.path().join("webhooks.json");
    std::fs::write(
        &hooks,
        json!({
            "generic": {"secret": {"env": "T_GENERIC_SECRET"}},
            "servicenow": {
                "header": {"name": "X-Deprovisiond-Token", "secret": {"env": "T_SN_TOKEN"}},
                "rule": {"ticket_key": "/number", "registration_id": "/variables/registration_id"}
            },
            "callbacks": {"secret": {"env": "T_CALLBACK_SECRET"}, "allowed_hosts": ["127.0.0.1"],
                          "max_attempts": 2, "backoff_base_ms": 50, "backoff_cap_ms": 100, "poll_ms": 50}
        })
        .to_string(),
    )
    .unwrap();
    let mut secrets = secrets;
    secrets.env.push((
        "DEPROVISIOND_WEBHOOKS_CONFIG".into(),
        hooks.display().to_string(),
    ));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_deprovisiond"));
    cmd.args(["serve", "--listen", "127.0.0.1:0"])
        .env(
            "DATABASE_URL",
            format!("sqlite://{}?mode=rwc", dir.path().join("s.db").display()),
        )
        .env("RUST_LOG", "trace")
        .env("DEPROVISIOND_POLL_MS", "50")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in &secrets.env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("start deprovisiond");
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    // Read both streams to the end on their own threads, so a chatty trace log never blocks the service.
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let out_thread = std::thread::spawn(move || {
        let mut all = Vec::new();
        let mut buf = [0u8; 4096];
        let mut sent = false;
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            all.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&all).to_string();
            if !sent && text.contains("listening on http://") {
                let _ = tx.send(text);
                sent = true;
            }
        }
        String::from_utf8_lossy(&all).to_string()
    });
    let err_thread = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let first = rx
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("the service starts");
    let rest = first.split("listening on http://").nth(1).unwrap();
    let base = format!("http://{}", rest.split_whitespace().next().unwrap());

    // Answers of every kind: success, validation, auth failures, a job that talks to Azure, metrics.
    let admin = client_with(Some(ADMIN_KEY));
    let mut answers = Vec::new();
    let r = admin
        .post(format!("{base}/v1/deprovisions"))
        .json(&individual("dev-secret-1"))
        .send()
        .await
        .unwrap();
    let job: serde_json::Value = r.json().await.unwrap();
    answers.push(job.to_string());
    let id = job["id"].as_str().unwrap().to_string();
    let mut status = String::new();
    for _ in 0..600 {
        let j: serde_json::Value = admin
            .get(format!("{base}/v1/deprovisions/{id}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        status = j["status"].as_str().unwrap_or_default().to_string();
        if status == "succeeded" || status == "failed" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // The job used the connection strings against the simulator: the keys were really in use.
    assert_eq!(status, "succeeded");
    for path in [
        format!("/v1/deprovisions/{id}"),
        format!("/v1/deprovisions/{id}/events"),
        format!("/v1/deprovisions/{id}/devices"),
        "/v1/deprovisions".into(),
        "/v1/tombstones".into(),
        "/metrics".into(),
        "/readyz".into(),
        "/openapi.json".into(),
    ] {
        answers.push(
            admin
                .get(format!("{base}{path}"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap(),
        );
    }
    answers.push(
        admin
            .post(format!("{base}/v1/deprovisions/preview"))
            .json(&individual("dev-secret-1"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    );
    answers.push(
        admin
            .post(format!("{base}/v1/deprovisions"))
            .json(&json!({"target": 1}))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    );
    // A signed delivery (its job's callback is refused by a closed port, so it is retried and logged), a
    // delivery signed with the wrong secret, and a ServiceNow call with a wrong token.
    let hook_body = serde_json::to_vec(&json!({
        "target": {"kind": "individual_enrollment", "registration_id": "dev-secret-1"},
        "reason": {"code": "stolen"},
        "ticket": {"system": "itsm", "key": "SEC-1"},
        "callback_url": "http://127.0.0.1:9/cb",
    }))
    .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    for secret in [GENERIC_SECRET, "not-the-secret"] {
        let r = reqwest::Client::new()
            .post(format!("{base}/v1/webhooks/generic"))
            .header("content-type", "application/json")
            .header(
                "x-deprovisiond-signature",
                sign_generic(secret.as_bytes(), now, &hook_body),
            )
            .body(hook_body.clone())
            .send()
            .await
            .unwrap();
        let code = r.status().as_u16();
        answers.push(r.text().await.unwrap());
        assert_eq!(code, if secret == GENERIC_SECRET { 202 } else { 401 });
    }
    answers.push(
        reqwest::Client::new()
            .post(format!("{base}/v1/webhooks/servicenow"))
            .header("x-deprovisiond-token", format!("{SN_TOKEN}x"))
            .json(&json!({"number": "RITM1", "variables": {"registration_id": "dev-secret-1"}}))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    );
    // Let the callback sender try (and fail) at least once.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    for bad in [format!("{ADMIN_KEY}x"), "dpk_wrong".into()] {
        answers.push(
            client_with(Some(&bad))
                .get(format!("{base}/v1/deprovisions"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap(),
        );
    }
    let _ = child.kill();
    let _ = child.wait();
    let logs = format!(
        "{}\n{}",
        out_thread.join().unwrap(),
        err_thread.join().unwrap()
    );
    assert!(
        logs.contains("TRACE") || logs.contains("DEBUG"),
        "the logs were not at every level"
    );
    for secret in &secrets.never_shown {
        assert!(!logs.contains(secret.as_str()), "a secret is in the logs");
        for a in &answers {
            assert!(
                !a.contains(secret.as_str()),
                "a secret is in an answer: {}",
                &a[..a.len().min(200)]
            );
        }
    }
    sim.shutdown().await;
}

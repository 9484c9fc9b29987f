//! Feature `otlp`: the real binary exports its spans to an OTLP/HTTP collector named by
//! `OTEL_EXPORTER_OTLP_ENDPOINT`, with the job id on the job's spans.

use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;

type Received = Arc<Mutex<Vec<Bytes>>>;

/// A collector that keeps every trace export it receives (protobuf, undecoded: strings in it are plain bytes).
async fn collector() -> (String, Received) {
    let received: Received = Arc::default();
    let app = axum::Router::new()
        .route(
            "/v1/traces",
            post(|State(r): State<Received>, body: Bytes| async move {
                r.lock().expect("lock").push(body);
                ([("content-type", "application/x-protobuf")], Bytes::new())
            }),
        )
        .with_state(received.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await.expect("collector") });
    (url, received)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn spans_reach_the_collector_with_the_job_id() {
    let (endpoint, received) = collector().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_deprovisiond"))
        .args([
            "serve",
            "--workflow",
            "rehearsal",
            "--rehearsal-step-ms",
            "10",
        ])
        .env("DEPROVISIOND_LISTEN", format!("127.0.0.1:{port}"))
        .env(
            "DATABASE_URL",
            format!("sqlite://{}/otlp.db?mode=rwc", dir.path().display()),
        )
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the binary starts");
    let api = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let start = Instant::now();
    while http.get(format!("{api}/readyz")).send().await.is_err() {
        assert!(start.elapsed() < Duration::from_secs(60), "not ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let job: serde_json::Value = http
        .post(format!("{api}/v1/deprovisions"))
        .json(&serde_json::json!({
            "target": {"kind": "individual_enrollment", "registration_id": "otlp-device-1"},
            "reason": {"code": "stolen"}
        }))
        .send()
        .await
        .expect("create")
        .json()
        .await
        .expect("json");
    let id = job["id"].as_str().expect("job id").to_string();
    loop {
        let j: serde_json::Value = http
            .get(format!("{api}/v1/deprovisions/{id}"))
            .send()
            .await
            .expect("get")
            .json()
            .await
            .expect("json");
        if j["status"] == "succeeded" {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "job: {j}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // SIGTERM: the binary stops and flushes what is still buffered.
    let _ = Command::new("kill").arg(child.id().to_string()).status();
    let status = child.wait().expect("exit");
    assert!(status.success(), "exit {status}");

    let bodies = received.lock().expect("lock").clone();
    assert!(!bodies.is_empty(), "no export reached the collector");
    let all: Vec<u8> = bodies.concat();
    for needle in [&b"deprovisiond"[..], b"job_step", b"http", id.as_bytes()] {
        assert!(
            contains(&all, needle),
            "{:?} not in the exported spans",
            String::from_utf8_lossy(needle)
        );
    }
}

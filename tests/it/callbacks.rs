//! Completion callbacks against a local receiver that fails first, then succeeds; Jira comments; giving up.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::routing::post;
use deprovisiond::domain::clock::{Clock, SystemClock};
use deprovisiond::http::webhooks::WebhookConfig;
use deprovisiond::http::webhooks::config::{CallbackSettings, JiraComment};
use deprovisiond::http::webhooks::signature::{hmac_sha256, to_hex, verify_generic};
use serde_json::{Value, json};

use crate::both_stores;
use crate::support::{Act, Scripted, TestDb};
use crate::webhooks::{
    GENERIC_SECRET, HookApp, JIRA_SECRET, fixture, generic_body, generic_headers, generic_source,
    jira_source,
};

const CALLBACK_SECRET: &str = "callback-secret-4d7e21";
const JIRA_TOKEN: &str = "jira-api-token-c0ffee";

/// What the receiver got.
#[derive(Clone, Debug)]
struct Received {
    path: String,
    headers: HeaderMap,
    body: Bytes,
}

#[derive(Clone, Default)]
struct Receiver {
    got: Arc<Mutex<Vec<Received>>>,
    /// Answer 500 to this many requests first (per path), then 200.
    fail_first: usize,
}

async fn receive(
    State(r): State<Receiver>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let mut got = r.got.lock().unwrap();
    got.push(Received {
        path: uri.path().to_string(),
        headers,
        body,
    });
    let seen = got.iter().filter(|g| g.path == uri.path()).count();
    if seen <= r.fail_first {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::CREATED
    }
}

/// A receiver on a random loopback port; its base URL.
async fn start_receiver(r: Receiver) -> String {
    let app = Router::new()
        .route("/cb", post(receive))
        .route("/rest/api/3/issue/{key}/comment", post(receive))
        .with_state(r);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

fn settings(max_attempts: u32) -> CallbackSettings {
    CallbackSettings {
        secret: Some(CALLBACK_SECRET.into()),
        allowed_hosts: vec!["127.0.0.1".into()],
        max_attempts,
        backoff_base_ms: 20,
        backoff_cap_ms: 100,
        poll_ms: 20,
        timeout_secs: 5,
    }
}

async fn wait_for<T>(what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
}

async fn events_of(app: &HookApp, job_id: &str) -> Vec<Value> {
    app.get(&format!("/v1/deprovisions/{job_id}/events?limit=1000"))
        .await["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

async fn signed_summary_after_a_failure(db: TestDb) {
    let receiver = Receiver {
        fail_first: 1,
        ..Receiver::default()
    };
    let base = start_receiver(receiver.clone()).await;
    let config = WebhookConfig {
        generic: Some(generic_source()),
        callbacks: settings(5),
        ..WebhookConfig::default()
    };
    let app = HookApp::spawn(&db, config).await;
    let mut body: Value = serde_json::from_slice(&generic_body("sk-cb-1", "CHG-77")).unwrap();
    body["callback_url"] = json!(format!("{base}/cb?token=abc"));
    let body = serde_json::to_vec(&body).unwrap();
    let now = SystemClock.now_unix();
    let (status, ack) = app
        .post(
            "/v1/webhooks/generic",
            &generic_headers(GENERIC_SECRET, now, &body),
            &body,
        )
        .await;
    assert_eq!(status, 202, "{ack}");
    let job_id = ack["job_id"].as_str().unwrap().to_string();

    let events = wait_for("the callback to be delivered", async || {
        let ev = events_of(&app, &job_id).await;
        ev.iter()
            .any(|e| e["kind"] == "callback_delivered")
            .then_some(ev)
    })
    .await;
    let got = receiver.got.lock().unwrap().clone();
    assert_eq!(got.len(), 2, "one failure, one success");
    let delivery = |r: &Received| {
        r.headers["x-deprovisiond-delivery"]
            .to_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(
        delivery(&got[0]),
        delivery(&got[1]),
        "the delivery id is stable across retries"
    );
    for r in &got {
        let sig = r.headers["x-deprovisiond-signature"].to_str().unwrap();
        verify_generic(
            CALLBACK_SECRET.as_bytes(),
            Some(sig),
            &r.body,
            SystemClock.now_unix(),
            300,
        )
        .expect("the callback is signed with the generic scheme");
        let summary: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(summary["event"], "deprovision.finished");
        assert_eq!(summary["job"]["id"], job_id.as_str());
        assert_eq!(summary["job"]["status"], "succeeded");
        assert_eq!(summary["job"]["ticket"]["key"], "CHG-77");
    }
    let retry = events
        .iter()
        .find(|e| e["kind"] == "callback_retry_scheduled")
        .expect("the failure is recorded");
    assert_eq!(retry["attempt"], 1);
    assert_eq!(retry["detail"]["http_status"], 500);
    let done = events
        .iter()
        .find(|e| e["kind"] == "callback_delivered")
        .unwrap();
    assert_eq!(done["attempt"], 2);
    assert!(
        !done.to_string().contains("token=abc"),
        "the timeline never shows the URL's query: {done}"
    );
    app.stop().await;
}

async fn jira_comment_and_callback(db: TestDb) {
    let receiver = Receiver {
        fail_first: 1,
        ..Receiver::default()
    };
    let base = start_receiver(receiver.clone()).await;
    let mut jira = jira_source();
    jira.callback_url = Some(format!("{base}/cb").parse().unwrap());
    jira.comment = Some(JiraComment {
        base_url: base.parse().unwrap(),
        email: "bot@acme.example".into(),
        api_token: JIRA_TOKEN.into(),
    });
    let config = WebhookConfig {
        jira: Some(jira),
        callbacks: settings(5),
        ..WebhookConfig::default()
    };
    config.check().expect("valid configuration");
    let app = HookApp::spawn(&db, config).await;
    let body = serde_json::to_vec(&fixture("jira_issue_updated.json")).unwrap();
    let headers = vec![
        (
            "x-hub-signature",
            format!(
                "sha256={}",
                to_hex(&hmac_sha256(JIRA_SECRET.as_bytes(), &[&body]))
            ),
        ),
        ("x-atlassian-webhook-identifier", "cb-1".to_string()),
    ];
    let (status, ack) = app.post("/v1/webhooks/jira", &headers, &body).await;
    assert_eq!(status, 202, "{ack}");
    let job_id = ack["job_id"].as_str().unwrap().to_string();
    wait_for("both callbacks to be delivered", async || {
        let ev = events_of(&app, &job_id).await;
        (ev.iter()
            .filter(|e| e["kind"] == "callback_delivered")
            .count()
            == 2)
            .then_some(())
    })
    .await;
    let got = receiver.got.lock().unwrap().clone();
    let comments: Vec<_> = got
        .iter()
        .filter(|r| r.path == "/rest/api/3/issue/OPS-42/comment")
        .collect();
    assert_eq!(comments.len(), 2, "a failed comment is retried");
    let auth = comments[1].headers["authorization"].to_str().unwrap();
    use base64::Engine as _;
    let expected =
        base64::engine::general_purpose::STANDARD.encode(format!("bot@acme.example:{JIRA_TOKEN}"));
    assert_eq!(auth, format!("Basic {expected}"));
    let comment: Value = serde_json::from_slice(&comments[1].body).unwrap();
    assert_eq!(comment["body"]["type"], "doc");
    assert_eq!(comment["body"]["version"], 1);
    let text = comment["body"]["content"].to_string();
    assert!(
        text.contains(&job_id) && text.contains("succeeded"),
        "{text}"
    );
    assert_eq!(got.iter().filter(|r| r.path == "/cb").count(), 2);
    for r in &got {
        assert!(!String::from_utf8_lossy(&r.body).contains(JIRA_SECRET));
    }
    app.stop().await;
}

async fn gives_up_after_max_attempts(db: TestDb) {
    let receiver = Receiver {
        fail_first: usize::MAX,
        ..Receiver::default()
    };
    let base = start_receiver(receiver.clone()).await;
    let mut generic = generic_source();
    generic.callback_url = Some(format!("{base}/cb").parse().unwrap());
    let config = WebhookConfig {
        generic: Some(generic),
        callbacks: settings(2),
        ..WebhookConfig::default()
    };
    let app = HookApp::spawn(&db, config).await;
    let body = generic_body("sk-cb-3", "CHG-78");
    let (status, ack) = app
        .post(
            "/v1/webhooks/generic",
            &generic_headers(GENERIC_SECRET, SystemClock.now_unix(), &body),
            &body,
        )
        .await;
    assert_eq!(status, 202, "{ack}");
    let job_id = ack["job_id"].as_str().unwrap().to_string();
    let failed = wait_for("the sender to give up", async || {
        events_of(&app, &job_id)
            .await
            .into_iter()
            .find(|e| e["kind"] == "callback_failed")
    })
    .await;
    assert_eq!(failed["attempt"], 2);
    assert_eq!(receiver.got.lock().unwrap().len(), 2);
    app.stop().await;
}

async fn a_retried_job_reports_its_new_outcome(db: TestDb) {
    let receiver = Receiver::default();
    let base = start_receiver(receiver.clone()).await;
    let mut generic = generic_source();
    generic.callback_url = Some(format!("{base}/cb").parse().unwrap());
    let config = WebhookConfig {
        generic: Some(generic),
        callbacks: settings(3),
        ..WebhookConfig::default()
    };
    let wf = Scripted::new(1);
    wf.script("delete_registrations", "-", vec![Act::Fail]);
    let app = HookApp::spawn_with(&db, config, wf).await;
    let body = generic_body("sk-cb-4", "CHG-79");
    let (_, ack) = app
        .post(
            "/v1/webhooks/generic",
            &generic_headers(GENERIC_SECRET, SystemClock.now_unix(), &body),
            &body,
        )
        .await;
    let job_id = ack["job_id"].as_str().unwrap().to_string();
    wait_for("the first callback", async || {
        let ev = events_of(&app, &job_id).await;
        (ev.iter()
            .filter(|e| e["kind"] == "callback_delivered")
            .count()
            == 1)
            .then_some(())
    })
    .await;
    let r = app
        .http
        .post(format!("{}/v1/deprovisions/{job_id}/retry", app.base))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    wait_for("the second callback", async || {
        let ev = events_of(&app, &job_id).await;
        (ev.iter()
            .filter(|e| e["kind"] == "callback_delivered")
            .count()
            == 2)
            .then_some(())
    })
    .await;
    let got = receiver.got.lock().unwrap().clone();
    assert_eq!(got.len(), 2);
    let status =
        |r: &Received| serde_json::from_slice::<Value>(&r.body).unwrap()["job"]["status"].clone();
    assert_eq!(
        (status(&got[0]), status(&got[1])),
        (json!("failed"), json!("succeeded"))
    );
    assert_ne!(
        got[0].headers["x-deprovisiond-delivery"], got[1].headers["x-deprovisiond-delivery"],
        "each finish is its own delivery"
    );
    app.stop().await;
}

/// `POST /v1/deprovisions` with `callback_url`: the allowed host receives the signed summary; another host
/// is refused with 422 before any job exists.
async fn an_api_request_carries_its_own_callback(db: TestDb) {
    let receiver = Receiver::default();
    let base = start_receiver(receiver.clone()).await;
    let config = WebhookConfig {
        callbacks: settings(5),
        ..WebhookConfig::default()
    };
    let app = HookApp::spawn(&db, config).await;
    let request = |url: &str| {
        serde_json::to_vec(&json!({
            "target": {"kind": "individual_enrollment", "registration_id": "api-cb-1"},
            "reason": {"code": "stolen"},
            "callback_url": url,
        }))
        .unwrap()
    };
    let (status, problem) = app
        .post("/v1/deprovisions", &[], &request("http://evil.example/cb"))
        .await;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(problem["errors"][0]["field"], "callback_url", "{problem}");
    assert_eq!(
        app.count("jobs").await,
        0,
        "a refused callback creates no job"
    );

    let (status, job) = app
        .post("/v1/deprovisions", &[], &request(&format!("{base}/cb")))
        .await;
    assert_eq!(status, 202, "{job}");
    let job_id = job["id"].as_str().unwrap().to_string();
    wait_for("the callback to be delivered", async || {
        let ev = events_of(&app, &job_id).await;
        ev.iter()
            .any(|e| e["kind"] == "callback_delivered")
            .then_some(())
    })
    .await;
    let got = receiver.got.lock().unwrap().clone();
    assert_eq!(got.len(), 1);
    let sig = got[0].headers["x-deprovisiond-signature"].to_str().unwrap();
    verify_generic(
        CALLBACK_SECRET.as_bytes(),
        Some(sig),
        &got[0].body,
        SystemClock.now_unix(),
        300,
    )
    .expect("signed with the generic scheme");
    let summary: Value = serde_json::from_slice(&got[0].body).unwrap();
    assert_eq!(summary["job"]["id"], job_id.as_str());
    assert_eq!(summary["job"]["status"], "succeeded");
    app.stop().await;
}

both_stores!(
    an_api_request_carries_its_own_callback,
    signed_summary_after_a_failure,
    jira_comment_and_callback,
    gives_up_after_max_attempts,
    a_retried_job_reports_its_new_outcome,
);

/// Collects every log line the app writes while a test runs on one thread.
#[derive(Clone, Default)]
struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The service with known webhook and callback secrets, driven through refusals, acceptances and callbacks:
/// none of the secrets appears in its logs (every level), its answers or its metrics.
///
/// Runs on a current-thread runtime so the thread-local log subscriber sees the app's tasks too.
async fn secrets_never_show(db: TestDb) {
    let logs = LogBuffer::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let receiver = Receiver {
        fail_first: 1,
        ..Receiver::default()
    };
    let base = start_receiver(receiver.clone()).await;
    let mut generic = generic_source();
    generic.callback_url = Some(format!("{base}/cb").parse().unwrap());
    let mut jira = jira_source();
    jira.comment = Some(JiraComment {
        base_url: base.parse().unwrap(),
        email: "bot@acme.example".into(),
        api_token: JIRA_TOKEN.into(),
    });
    let config = WebhookConfig {
        generic: Some(generic),
        jira: Some(jira),
        callbacks: settings(3),
        ..WebhookConfig::default()
    };
    let app = HookApp::spawn(&db, config).await;
    let mut answers = String::new();
    let now = SystemClock.now_unix();
    let body = generic_body("sk-secret-1", "CHG-90");
    for headers in [
        generic_headers("wrong", now, &body),
        generic_headers(GENERIC_SECRET, now - 1000, &body),
        generic_headers(GENERIC_SECRET, now, &body),
    ] {
        let (_, v) = app.post("/v1/webhooks/generic", &headers, &body).await;
        answers.push_str(&v.to_string());
    }
    let jira_body = serde_json::to_vec(&fixture("jira_issue_updated.json")).unwrap();
    for secret in ["wrong", JIRA_SECRET] {
        let headers = vec![(
            "x-hub-signature",
            format!(
                "sha256={}",
                to_hex(&hmac_sha256(secret.as_bytes(), &[&jira_body]))
            ),
        )];
        let (_, v) = app.post("/v1/webhooks/jira", &headers, &jira_body).await;
        answers.push_str(&v.to_string());
    }
    let jobs = app.get("/v1/deprovisions").await;
    let ids: Vec<String> = jobs["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 2, "{jobs}");
    for id in &ids {
        wait_for("the callbacks", async || {
            let ev = events_of(&app, id).await;
            ev.iter()
                .any(|e| e["kind"] == "callback_delivered")
                .then_some(ev)
        })
        .await;
        answers.push_str(&app.get(&format!("/v1/deprovisions/{id}")).await.to_string());
        answers.push_str(&Value::Array(events_of(&app, id).await).to_string());
    }
    let metrics = app
        .http
        .get(format!("{}/metrics", app.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    app.stop().await;
    let logs = String::from_utf8_lossy(&logs.0.lock().unwrap()).to_string();
    assert!(
        logs.contains("webhook delivery refused"),
        "the refusals are logged"
    );
    for secret in [GENERIC_SECRET, JIRA_SECRET, CALLBACK_SECRET, JIRA_TOKEN] {
        assert!(!logs.contains(secret), "{secret} is in the logs");
        assert!(!answers.contains(secret), "{secret} is in a response");
        assert!(!metrics.contains(secret), "{secret} is in the metrics");
    }
}

mod secrets_never_show {
    #[tokio::test(flavor = "current_thread")]
    async fn sqlite() {
        super::secrets_never_show(crate::support::TestDb::sqlite()).await
    }
    #[tokio::test(flavor = "current_thread")]
    async fn postgres() {
        if let Some(db) = crate::support::TestDb::postgres().await {
            super::secrets_never_show(db).await
        }
    }
}

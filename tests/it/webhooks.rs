//! Webhooks over HTTP: each source with a valid, a wrong, a missing and a replayed signature; the mapping rules
//! (match, no match, bad field); dedupe of redeliveries and of a ticket's later events.

use std::sync::Arc;

use deprovisiond::app::{App, AppConfig, WorkflowChoice};
use deprovisiond::domain::clock::{Clock, SystemClock};
use deprovisiond::http::webhooks::WebhookConfig;
use deprovisiond::http::webhooks::config::{
    BasicAuth, CallbackSettings, GenericSource, JiraSource, ServiceNowSource, SharedHeader,
};
use deprovisiond::http::webhooks::signature::{hmac_sha256, sign_base64, sign_generic, to_hex};
use deprovisiond::store::Store;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::both_stores;
use crate::support::{Scripted, TestDb, fast_engine};

pub const GENERIC_SECRET: &str = "generic-secret-7f3a9c";
pub const JIRA_SECRET: &str = "jira-secret-b81d44";
pub const SN_PASSWORD: &str = "sn-password-5e2c10";
pub const SN_HMAC: &str = "sn-hmac-key-90aa1f";

/// The app with webhook sources, on a random port.
pub struct HookApp {
    pub base: String,
    pub http: reqwest::Client,
    pub store: Store,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl HookApp {
    pub async fn spawn(db: &TestDb, config: WebhookConfig) -> HookApp {
        Self::spawn_with(db, config, Scripted::new(1)).await
    }

    pub async fn spawn_with(
        db: &TestDb,
        config: WebhookConfig,
        workflow: Arc<dyn deprovisiond::worker::Workflow>,
    ) -> HookApp {
        let app_config = AppConfig {
            database_url: db.url.clone(),
            listen: "127.0.0.1:0".parse().expect("addr"),
            run_worker: true,
            engine: fast_engine(),
            tombstone_audit_every: None,
            body_limit: deprovisiond::http::BODY_LIMIT_BYTES,
            auth: crate::support::test_auth(),
        };
        let choice = WorkflowChoice::Custom(workflow, vec!["default".into()]);
        let app = App::build(app_config, choice, Arc::new(SystemClock))
            .await
            .expect("app builds")
            .with_webhooks(config);
        let base = format!("http://{}", app.local_addr());
        let store = app.store().clone();
        let stop = CancellationToken::new();
        let s = stop.clone();
        let task = tokio::spawn(async move {
            app.run_until_stopped(async move { s.cancelled().await })
                .await
                .expect("app runs");
        });
        HookApp {
            base,
            http: crate::support::client_with(Some(crate::support::ADMIN_KEY)),
            store,
            stop,
            task,
        }
    }

    pub async fn post(&self, path: &str, headers: &[(&str, String)], body: &[u8]) -> (u16, Value) {
        let mut req = self
            .http
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body.to_vec());
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        let ct = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        if status >= 400 {
            assert_eq!(ct, "application/problem+json", "{path} {status}: {v}");
        }
        (status, v)
    }

    pub async fn get(&self, path: &str) -> Value {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .expect("request");
        assert!(r.status().is_success(), "GET {path}: {}", r.status());
        r.json().await.expect("json")
    }

    pub async fn count(&self, table: &str) -> i64 {
        sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM {table}")))
            .fetch_one(self.store.pool())
            .await
            .expect("count")
    }

    pub async fn stop(self) {
        self.stop.cancel();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(10), self.task).await;
    }
}

pub fn generic_source() -> GenericSource {
    GenericSource {
        secret: GENERIC_SECRET.into(),
        tolerance_secs: 300,
        events: vec!["deprovision".into()],
        callback_url: None,
    }
}

pub fn jira_rule() -> Value {
    json!({
        "changed": {"field": "status", "to": ["Deprovision"]},
        "registration_id": "customfield_10050",
        "group_id": "customfield_10051",
        "reason_code": "customfield_10052",
        "reason_codes": {"Stolen device": "stolen", "Decommissioned": "decommissioned"},
        "ticket_url": "https://acme.atlassian.net/browse/{key}"
    })
}

pub fn jira_source() -> JiraSource {
    JiraSource {
        secret: JIRA_SECRET.into(),
        rule: serde_json::from_value(jira_rule()).expect("rule"),
        callback_url: None,
        comment: None,
        max_age_secs: None,
    }
}

fn config() -> WebhookConfig {
    WebhookConfig {
        generic: Some(generic_source()),
        jira: Some(jira_source()),
        servicenow: Some(ServiceNowSource {
            basic: Some(BasicAuth {
                username: "servicenow".into(),
                password: SN_PASSWORD.into(),
            }),
            header: None,
            hmac: Some(SharedHeader {
                name: "X-SN-Signature".into(),
                secret: SN_HMAC.into(),
            }),
            rule: serde_json::from_value(json!({
                "when": [{"field": "/state", "equals": ["approved"]}],
                "registration_id": "/variables/registration_id",
                "group_id": "/variables/group_id",
                "reason_code": "/variables/reason",
                "reason_text": "/variables/details",
                "requested_by": "/opened_by"
            }))
            .expect("rule"),
            callback_url: None,
        }),
        callbacks: CallbackSettings::default(),
    }
}

pub fn fixture(name: &str) -> Value {
    let path = format!(
        "{}/tests/fixtures/webhooks/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    serde_json::from_str(&std::fs::read_to_string(&path).expect("fixture"))
        .expect("fixture is JSON")
}

pub fn generic_headers(secret: &str, t: u64, body: &[u8]) -> Vec<(&'static str, String)> {
    vec![(
        "x-deprovisiond-signature",
        sign_generic(secret.as_bytes(), t, body),
    )]
}

fn jira_headers(secret: &str, delivery: &str, body: &[u8]) -> Vec<(&'static str, String)> {
    vec![
        (
            "x-hub-signature",
            format!(
                "sha256={}",
                to_hex(&hmac_sha256(secret.as_bytes(), &[body]))
            ),
        ),
        ("x-atlassian-webhook-identifier", delivery.to_string()),
    ]
}

pub fn generic_body(reg: &str, key: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "event": "deprovision",
        "target": {"kind": "individual_enrollment", "registration_id": reg},
        "reason": {"code": "stolen", "text": "from the ITSM"},
        "ticket": {"system": "itsm", "key": key}
    }))
    .unwrap()
}

fn now() -> u64 {
    SystemClock.now_unix()
}

async fn generic_signatures(db: TestDb) {
    let app = HookApp::spawn(&db, config()).await;
    let body = generic_body("sk-dev-1", "CHG-1");
    // Wrong secret, missing header, replayed (a timestamp 301 s old), body changed after signing.
    for headers in [
        generic_headers("not-the-secret", now(), &body),
        vec![],
        generic_headers(GENERIC_SECRET, now() - 301, &body),
        generic_headers(GENERIC_SECRET, now(), &generic_body("sk-dev-2", "CHG-1")),
    ] {
        let (status, p) = app.post("/v1/webhooks/generic", &headers, &body).await;
        assert_eq!(status, 401, "{p}");
        assert_eq!(
            p["type"],
            "urn:deprovisiond:problem:webhook-unauthenticated"
        );
        assert!(!p.to_string().contains(GENERIC_SECRET));
    }
    assert_eq!(
        app.count("jobs").await,
        0,
        "a refused delivery records nothing"
    );
    assert_eq!(app.count("webhook_deliveries").await, 0);

    let (status, ack) = app
        .post(
            "/v1/webhooks/generic",
            &generic_headers(GENERIC_SECRET, now(), &body),
            &body,
        )
        .await;
    assert_eq!(status, 202, "{ack}");
    assert_eq!(ack["outcome"], "created");
    let job_id = ack["job_id"].as_str().unwrap().to_string();
    let job = app.get(&format!("/v1/deprovisions/{job_id}")).await;
    assert_eq!(job["ticket"]["key"], "CHG-1");
    assert_eq!(job["ticket"]["system"], "itsm");

    // The same ticket again, freshly signed, even with another reason: the same job, nothing new.
    let again = serde_json::to_vec(&json!({
        "target": {"kind": "individual_enrollment", "registration_id": "sk-dev-1"},
        "reason": {"code": "lost"},
        "ticket": {"system": "itsm", "key": "CHG-1"}
    }))
    .unwrap();
    for b in [&body, &again] {
        let (status, ack) = app
            .post(
                "/v1/webhooks/generic",
                &generic_headers(GENERIC_SECRET, now(), b),
                b,
            )
            .await;
        assert_eq!(
            (status, ack["outcome"].as_str()),
            (200, Some("duplicate")),
            "{ack}"
        );
        assert_eq!(ack["job_id"], job_id.as_str());
    }
    assert_eq!(app.count("jobs").await, 1);
    app.stop().await;
}

async fn generic_mapping(db: TestDb) {
    let app = HookApp::spawn(&db, config()).await;
    let post = |body: Value| {
        let b = serde_json::to_vec(&body).unwrap();
        let app = &app;
        async move {
            app.post(
                "/v1/webhooks/generic",
                &generic_headers(GENERIC_SECRET, now(), &b),
                &b,
            )
            .await
        }
    };
    let (status, ack) =
        post(json!({"event": "comment_added", "ticket": {"system": "itsm", "key": "X-1"}})).await;
    assert_eq!(
        (status, ack["outcome"].as_str()),
        (202, Some("ignored")),
        "{ack}"
    );
    assert!(ack.get("job_id").is_none());
    let (status, p) = post(json!({
        "target": {"kind": "individual_enrollment", "registration_id": "sk-1"}, "reason": {"code": "lost"}
    }))
    .await;
    assert_eq!(
        (status, p["errors"][0]["field"].as_str()),
        (422, Some("ticket")),
        "{p}"
    );
    let (status, p) = post(json!({
        "target": {"kind": "individual_enrollment", "registration_id": 12}, "reason": {"code": "lost"},
        "ticket": {"system": "itsm", "key": "X-2"}
    }))
    .await;
    assert_eq!(status, 422, "{p}");
    assert!(
        p["errors"][0]["field"]
            .as_str()
            .unwrap()
            .starts_with("target"),
        "{p}"
    );
    let (status, p) = post(json!({
        "target": {"kind": "individual_enrollment", "registration_id": "sk-1"}, "reason": {"code": "lost"},
        "ticket": {"system": "itsm", "key": "X-3"}, "callback_url": "https://elsewhere.test/cb"
    }))
    .await;
    assert_eq!(
        (status, p["errors"][0]["field"].as_str()),
        (422, Some("callback_url")),
        "{p}"
    );
    let (status, p) = app
        .post(
            "/v1/webhooks/generic",
            &generic_headers(GENERIC_SECRET, now(), b"{not json"),
            b"{not json",
        )
        .await;
    assert_eq!(status, 400, "{p}");
    let huge = vec![b' '; deprovisiond::http::BODY_LIMIT_BYTES + 1];
    let (status, p) = app
        .post(
            "/v1/webhooks/generic",
            &generic_headers(GENERIC_SECRET, now(), &huge),
            &huge,
        )
        .await;
    assert_eq!(status, 413, "{p}");
    assert_eq!(app.count("jobs").await, 0);
    app.stop().await;
}

async fn jira_deliveries(db: TestDb) {
    let app = HookApp::spawn(&db, config()).await;
    let body = serde_json::to_vec(&fixture("jira_issue_updated.json")).unwrap();
    for headers in [
        jira_headers("wrong", "d-1", &body),
        vec![("x-atlassian-webhook-identifier", "d-1".to_string())],
        vec![("x-hub-signature", "sha1=00".to_string())],
    ] {
        let (status, p) = app.post("/v1/webhooks/jira", &headers, &body).await;
        assert_eq!(status, 401, "{p}");
    }
    assert_eq!(
        app.count("jobs").await + app.count("webhook_deliveries").await,
        0
    );

    let (status, ack) = app
        .post(
            "/v1/webhooks/jira",
            &jira_headers(JIRA_SECRET, "d-1", &body),
            &body,
        )
        .await;
    assert_eq!(
        (status, ack["outcome"].as_str()),
        (202, Some("created")),
        "{ack}"
    );
    let job_id = ack["job_id"].as_str().unwrap().to_string();
    let job = app.get(&format!("/v1/deprovisions/{job_id}")).await;
    assert_eq!(
        job["ticket"],
        json!({"system": "jira", "key": "OPS-42", "url": "https://acme.atlassian.net/browse/OPS-42"})
    );
    assert_eq!(
        job["target"],
        json!({"kind": "individual_enrollment", "registration_id": "sk-gw-0042"})
    );
    assert_eq!(job["reason"]["code"], "stolen");

    // Jira retries with the same identifier (a replay of the same delivery): answered from the first.
    let (status, ack) = app
        .post(
            "/v1/webhooks/jira",
            &jira_headers(JIRA_SECRET, "d-1", &body),
            &body,
        )
        .await;
    assert_eq!(
        (status, ack["outcome"].as_str(), ack["job_id"].as_str()),
        (200, Some("duplicate"), Some(job_id.as_str()))
    );
    // Another event of the same issue: the ticket's job, no second one.
    let (status, ack) = app
        .post(
            "/v1/webhooks/jira",
            &jira_headers(JIRA_SECRET, "d-2", &body),
            &body,
        )
        .await;
    assert_eq!(
        (status, ack["job_id"].as_str()),
        (200, Some(job_id.as_str())),
        "{ack}"
    );
    assert_eq!(app.count("jobs").await, 1);
    app.stop().await;
}

async fn jira_replay_refused_by_age(db: TestDb) {
    let mut cfg = config();
    if let Some(j) = cfg.jira.as_mut() {
        j.max_age_secs = Some(600);
    }
    let app = HookApp::spawn(&db, cfg).await;
    // The fixture's timestamp is from the past: a captured delivery replayed later, under a new identifier.
    let old = serde_json::to_vec(&fixture("jira_issue_updated.json")).unwrap();
    let (status, p) = app
        .post(
            "/v1/webhooks/jira",
            &jira_headers(JIRA_SECRET, "r-1", &old),
            &old,
        )
        .await;
    assert_eq!(status, 401, "{p}");
    assert!(p["detail"].as_str().unwrap().contains("replay"), "{p}");
    assert_eq!(
        app.count("jobs").await + app.count("webhook_deliveries").await,
        0
    );
    let mut fresh = fixture("jira_issue_updated.json");
    fresh["timestamp"] = json!(SystemClock.now_ms());
    let fresh = serde_json::to_vec(&fresh).unwrap();
    let (status, ack) = app
        .post(
            "/v1/webhooks/jira",
            &jira_headers(JIRA_SECRET, "r-2", &fresh),
            &fresh,
        )
        .await;
    assert_eq!(
        (status, ack["outcome"].as_str()),
        (202, Some("created")),
        "{ack}"
    );
    app.stop().await;
}

async fn jira_mapping(db: TestDb) {
    let app = HookApp::spawn(&db, config()).await;
    // Created in status Open: no transition to Deprovision in the changelog.
    let created = serde_json::to_vec(&fixture("jira_issue_created.json")).unwrap();
    let (status, ack) = app
        .post(
            "/v1/webhooks/jira",
            &jira_headers(JIRA_SECRET, "c-1", &created),
            &created,
        )
        .await;
    assert_eq!(
        (status, ack["outcome"].as_str()),
        (202, Some("ignored")),
        "{ack}"
    );
    // The transition, with the registration id field emptied: 422 naming it.
    let mut v = fixture("jira_issue_updated.json");
    v["issue"]["fields"]["customfield_10050"] = Value::Null;
    let b = serde_json::to_vec(&v).unwrap();
    let (status, p) = app
        .post(
            "/v1/webhooks/jira",
            &jira_headers(JIRA_SECRET, "u-2", &b),
            &b,
        )
        .await;
    assert_eq!(status, 422, "{p}");
    let fields: Vec<_> = p["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(
        fields,
        [
            "/issue/fields/customfield_10050",
            "/issue/fields/customfield_10051"
        ]
    );
    // A value the rule cannot map.
    v["issue"]["fields"]["customfield_10050"] = json!("sk-1");
    v["issue"]["fields"]["customfield_10052"] = json!({"value": "Bored"});
    let b = serde_json::to_vec(&v).unwrap();
    let (status, p) = app
        .post(
            "/v1/webhooks/jira",
            &jira_headers(JIRA_SECRET, "u-3", &b),
            &b,
        )
        .await;
    assert_eq!(
        (status, p["errors"][0]["field"].as_str()),
        (422, Some("/issue/fields/customfield_10052")),
        "{p}"
    );
    assert_eq!(app.count("jobs").await, 0);
    app.stop().await;
}

async fn servicenow_deliveries(db: TestDb) {
    let app = HookApp::spawn(&db, config()).await;
    let body = serde_json::to_vec(&fixture("servicenow_ritm.json")).unwrap();
    let basic = |user: &str, pass: &str| {
        use base64::Engine as _;
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
        )
    };
    let sig = sign_base64(SN_HMAC.as_bytes(), &body);
    for headers in [
        vec![
            ("authorization", basic("servicenow", "wrong")),
            ("x-sn-signature", sig.clone()),
        ],
        vec![("x-sn-signature", sig.clone())],
        vec![("authorization", basic("servicenow", SN_PASSWORD))],
        vec![
            ("authorization", basic("servicenow", SN_PASSWORD)),
            ("x-sn-signature", sign_base64(b"other", &body)),
        ],
    ] {
        let resp = app
            .http
            .post(format!("{}/v1/webhooks/servicenow", app.base))
            .headers(
                headers
                    .iter()
                    .map(|(k, v)| (k.parse().unwrap(), v.parse().unwrap()))
                    .collect(),
            )
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401);
        assert!(
            resp.headers()["www-authenticate"]
                .to_str()
                .unwrap()
                .starts_with("Basic")
        );
    }
    assert_eq!(app.count("jobs").await, 0);
    let good = vec![
        ("authorization", basic("servicenow", SN_PASSWORD)),
        ("x-sn-signature", sig),
    ];
    let (status, ack) = app.post("/v1/webhooks/servicenow", &good, &body).await;
    assert_eq!(
        (status, ack["outcome"].as_str()),
        (202, Some("created")),
        "{ack}"
    );
    let job = app
        .get(&format!(
            "/v1/deprovisions/{}",
            ack["job_id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(job["ticket"]["key"], "RITM0010042");
    assert_eq!(
        job["reason"],
        json!({"code": "lost", "text": "Lost during transport between Lille and Paris"})
    );
    // The authenticated principal is the webhook source; the ticket's own requester is on whose behalf.
    assert_eq!(job["requested_by"], "webhook:servicenow");
    assert_eq!(job["on_behalf_of"], "servicenow webhook: bob.service");
    // Redelivered (ServiceNow retries on timeouts): the same job.
    let (status, again) = app.post("/v1/webhooks/servicenow", &good, &body).await;
    assert_eq!((status, &again["job_id"]), (200, &ack["job_id"]));
    // Not approved: ignored.
    let mut v = fixture("servicenow_ritm.json");
    v["state"] = json!("requested");
    let b = serde_json::to_vec(&v).unwrap();
    let headers = vec![
        ("authorization", basic("servicenow", SN_PASSWORD)),
        ("x-sn-signature", sign_base64(SN_HMAC.as_bytes(), &b)),
    ];
    let (status, ack) = app.post("/v1/webhooks/servicenow", &headers, &b).await;
    assert_eq!(
        (status, ack["outcome"].as_str()),
        (202, Some("ignored")),
        "{ack}"
    );
    // No target at all: 422 naming both pointers.
    v["state"] = json!("approved");
    v["variables"]["registration_id"] = json!("");
    let b = serde_json::to_vec(&v).unwrap();
    let headers = vec![
        ("authorization", basic("servicenow", SN_PASSWORD)),
        ("x-sn-signature", sign_base64(SN_HMAC.as_bytes(), &b)),
    ];
    let (status, p) = app.post("/v1/webhooks/servicenow", &headers, &b).await;
    assert_eq!(
        (status, p["errors"][0]["field"].as_str()),
        (422, Some("/variables/registration_id")),
        "{p}"
    );
    assert_eq!(app.count("jobs").await, 1);
    app.stop().await;
}

async fn unconfigured_sources_answer_404(db: TestDb) {
    let app = HookApp::spawn(&db, WebhookConfig::default()).await;
    // Signed (with anything): the route is simply not offered here.
    let signed = [
        ("x-deprovisiond-signature", "t=1,v1=00".to_string()),
        ("x-hub-signature", "sha256=00".to_string()),
    ];
    for route in ["generic", "jira", "servicenow"] {
        let (status, p) = app
            .post(&format!("/v1/webhooks/{route}"), &signed, b"{}")
            .await;
        assert_eq!(status, 404, "{route}: {p}");
    }
    // Unsigned: unauthenticated first, configured or not.
    for route in ["generic", "jira"] {
        let (status, p) = app.post(&format!("/v1/webhooks/{route}"), &[], b"{}").await;
        assert_eq!(status, 401, "{route}: {p}");
    }
    app.stop().await;
}

both_stores!(
    generic_signatures,
    generic_mapping,
    jira_deliveries,
    jira_mapping,
    jira_replay_refused_by_age,
    servicenow_deliveries,
    unconfigured_sources_answer_404,
);

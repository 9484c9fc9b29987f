//! Authentication and roles: every operation of the OpenAPI document against every role, API keys,
//! OIDC tokens, the `Host` allow-list, the loopback rule, and secrets kept out of logs and answers.

use serde_json::{Value, json};

use crate::both_stores;
use crate::support::{
    ADMIN_KEY, Act, OPERATOR_KEY, READER_KEY, Scripted, TestApp, TestDb, client_with, group,
    individual,
};

both_stores!(
    every_operation_needs_its_role,
    the_caller_is_the_requester_and_is_on_every_action,
    force_needs_an_admin,
);

/// The role each operation needs, written out independently of the code's policy: a new route that is
/// missing here fails the test until someone decides who may call it.
fn expected_role(method: &str, path: &str) -> Option<&'static str> {
    match (method, path) {
        (_, "/healthz" | "/readyz") => None,
        (_, p) if p.starts_with("/v1/webhooks/") => None,
        (
            "post",
            "/v1/deprovisions/{id}/approve"
            | "/v1/deprovisions/{id}/reject"
            | "/v1/tombstones/audit",
        ) => Some("admin"),
        ("get", _) => Some("reader"),
        _ => Some("operator"),
    }
}

fn rank(role: &str) -> u8 {
    match role {
        "reader" => 1,
        "operator" => 2,
        "admin" => 3,
        other => panic!("unknown role {other}"),
    }
}

async fn send(client: &reqwest::Client, method: &str, url: &str) -> reqwest::Response {
    let rb = match method {
        "get" => client.get(url),
        "post" => client.post(url).json(&json!({})),
        "put" => client.put(url).json(&json!({})),
        "delete" => client.delete(url),
        "patch" => client.patch(url).json(&json!({})),
        other => panic!("method {other}"),
    };
    rb.send().await.expect("request")
}

async fn assert_problem(r: reqwest::Response, status: u16, what: &str) {
    assert_eq!(r.status().as_u16(), status, "{what}");
    if status == 401 {
        let www = r
            .headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        assert!(
            www.starts_with("Bearer"),
            "{what}: WWW-Authenticate {www:?}"
        );
    }
    assert_eq!(
        r.headers()["content-type"],
        "application/problem+json",
        "{what}"
    );
    let p: Value = r.json().await.expect("problem body");
    assert_eq!(p["status"], status, "{what}");
}

async fn every_operation_needs_its_role(db: TestDb) {
    let app = TestApp::spawn(&db, Scripted::new(1)).await;
    let doc: Value = serde_json::from_str(&deprovisiond::http::openapi_json()).unwrap();
    let none = client_with(None);
    let wrong = client_with(Some("dpk_not-a-configured-key"));
    let callers = [
        ("reader", client_with(Some(READER_KEY))),
        ("operator", client_with(Some(OPERATOR_KEY))),
        ("admin", client_with(Some(ADMIN_KEY))),
    ];
    let mut checked = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let expected = expected_role(method, path);
            assert_eq!(
                op["x-required-role"].as_str(),
                Some(expected.unwrap_or("none")),
                "{method} {path}: the document's role"
            );
            let url = app.url(&path.replace("{id}", &uuid::Uuid::new_v4().to_string()));
            let what = |who: &str| format!("{method} {path} as {who}");
            let Some(expected) = expected else {
                let r = send(&none, method, &url).await;
                assert!(
                    r.status() != 401 && r.status() != 403,
                    "{}: {}",
                    what("nobody"),
                    r.status()
                );
                assert_eq!(
                    op["security"],
                    json!([{}]),
                    "{method} {path} documents no security"
                );
                continue;
            };
            assert!(
                op["responses"]["401"].is_object() && op["responses"]["403"].is_object(),
                "{method} {path} documents 401 and 403"
            );
            assert_problem(send(&none, method, &url).await, 401, &what("nobody")).await;
            assert_problem(send(&wrong, method, &url).await, 401, &what("a wrong key")).await;
            for (role, client) in &callers {
                let r = send(client, method, &url).await;
                if rank(role) < rank(expected) {
                    assert_problem(r, 403, &what(role)).await;
                } else {
                    assert!(
                        r.status() != 401 && r.status() != 403,
                        "{}: {}",
                        what(role),
                        r.status()
                    );
                }
            }
            checked += 1;
        }
    }
    assert!(checked >= 10, "only {checked} protected operations found");
    // The documentation is public, and names both schemes for Swagger UI's Authorize button.
    for p in ["/openapi.json", "/docs/"] {
        let r = none.get(app.url(p)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{p}");
    }
    let schemes = &doc["components"]["securitySchemes"];
    assert_eq!(schemes["api_key"]["scheme"], "bearer");
    assert_eq!(schemes["oidc"]["bearerFormat"], "JWT");
    // The dashboard's cookie is no credential for the API itself.
    let r = reqwest::Client::new()
        .get(app.url("/v1/deprovisions"))
        .header("cookie", format!("deprovisiond_session={ADMIN_KEY}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    app.stop().await;
}

async fn the_caller_is_the_requester_and_is_on_every_action(db: TestDb) {
    let wf = Scripted::new(1);
    wf.script("resolve", "-", vec![Act::Fail]);
    let app = TestApp::spawn(&db, wf.clone()).await;
    let operator = client_with(Some(OPERATOR_KEY));
    let mut body = individual("dev-0000");
    body["requested_by"] = json!("alice@example.com");
    let r = operator
        .post(app.url("/v1/deprovisions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let job: Value = r.json().await.unwrap();
    let id = job["id"].as_str().unwrap().to_string();
    assert_eq!(job["requested_by"], "key:test-operator");
    assert_eq!(job["on_behalf_of"], "alice@example.com");
    app.wait_status(&id, "failed").await;
    let r = operator
        .post(app.url(&format!("/v1/deprovisions/{id}/retry")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = app
        .http
        .post(app.url(&format!("/v1/deprovisions/{id}/cancel")))
        .send()
        .await
        .unwrap();
    assert!(r.status() == 200 || r.status() == 409, "{}", r.status());
    let events = app.events(&id).await;
    let by = |kind: &str| {
        events
            .iter()
            .find(|e| e["kind"] == kind)
            .map(|e| e["detail"]["by"].clone())
    };
    assert_eq!(by("created"), Some(json!("key:test-operator")));
    assert_eq!(by("retried"), Some(json!("key:test-operator")));
    if events.iter().any(|e| e["kind"] == "cancel_requested") {
        assert_eq!(by("cancel_requested"), Some(json!("key:test-admin")));
    }
    let created = events.iter().find(|e| e["kind"] == "created").unwrap();
    let msg = created["message"].as_str().unwrap();
    assert!(
        msg.contains("by key:test-operator on behalf of alice@example.com"),
        "{msg}"
    );
    app.stop().await;
}

async fn force_needs_an_admin(db: TestDb) {
    let app = TestApp::spawn(&db, Scripted::new(1)).await;
    let mut body = group("fleet");
    body["delete_group"] = json!(true);
    body["force"] = json!(true);
    let r = client_with(Some(OPERATOR_KEY))
        .post(app.url("/v1/deprovisions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_problem(r, 403, "force as operator").await;
    let r = app.post("/v1/deprovisions", &body).await;
    assert_eq!(r.status(), 202, "force as admin");
    app.stop().await;
}

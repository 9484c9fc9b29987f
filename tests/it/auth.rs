//! Authentication and roles: every operation of the OpenAPI document against every role, API keys,
//! OIDC tokens, the `Host` allow-list, the loopback rule, and secrets kept out of logs and answers.

use std::sync::Arc;

use deprovisiond::app::WorkflowChoice;
use deprovisiond::domain::clock::SystemClock;
use deprovisiond::http::auth::config::{JwksSource, JwtConfig};
use deprovisiond::http::auth::{AuthConfig, Role, keys};
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
            | "/v1/deprovisions/{id}/undo"
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
                // Webhooks authenticate by their signature: an unsigned delivery gets 401, but never a
                // bearer challenge.
                let bearer = r
                    .headers()
                    .get("www-authenticate")
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| v.starts_with("Bearer"));
                let signed_route = path.starts_with("/v1/webhooks/");
                assert!(
                    (r.status() != 401 || (signed_route && !bearer)) && r.status() != 403,
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

// ----- OIDC bearer tokens -----

both_stores!(
    oidc_tokens_are_checked_claim_by_claim,
    jwks_from_a_url_is_refetched_for_a_new_key
);

const ISSUER: &str = "https://login.example.test/tenant/v2.0";
const AUDIENCE: &str = "api://deprovisiond";

/// A signing key of the test's own issuer.
struct TestIssuer {
    kid: String,
    key: jsonwebtoken::EncodingKey,
    jwk: jsonwebtoken::jwk::Jwk,
}

impl TestIssuer {
    fn new(kid: &str) -> Self {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let key = jsonwebtoken::EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap();
        let mut jwk =
            jsonwebtoken::jwk::Jwk::from_encoding_key(&key, jsonwebtoken::Algorithm::ES256)
                .unwrap();
        jwk.common.key_id = Some(kid.into());
        TestIssuer {
            kid: kid.into(),
            key,
            jwk,
        }
    }

    fn sign(&self, claims: &Value) -> String {
        self.sign_as(&self.kid, claims)
    }

    fn sign_as(&self, kid: &str, claims: &Value) -> String {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some(kid.into());
        jsonwebtoken::encode(&header, claims, &self.key).unwrap()
    }
}

fn jwks(keys: &[&TestIssuer]) -> Value {
    json!({ "keys": keys.iter().map(|k| serde_json::to_value(&k.jwk).unwrap()).collect::<Vec<_>>() })
}

fn now_secs() -> i64 {
    chrono::Utc::now().timestamp()
}

fn claims(role: &str) -> Value {
    json!({
        "iss": ISSUER, "aud": AUDIENCE, "exp": now_secs() + 600, "nbf": now_secs() - 10,
        "preferred_username": "alice@example.test", "roles": ["Deprovision.Reader", role],
    })
}

fn oidc_config(jwks: JwksSource) -> AuthConfig {
    AuthConfig {
        jwt: Some(JwtConfig {
            issuer: ISSUER.into(),
            audiences: vec![AUDIENCE.into()],
            jwks,
            role_claim: "roles".into(),
            role_map: vec![
                ("Deprovision.Reader".into(), Role::Reader),
                ("Deprovision.Operator".into(), Role::Operator),
                ("Deprovision.Admin".into(), Role::Admin),
            ],
            name_claims: vec!["preferred_username".into(), "sub".into()],
            refresh: std::time::Duration::from_secs(3600),
            leeway: std::time::Duration::from_secs(5),
        }),
        ..crate::support::test_auth()
    }
}

async fn spawn_with_auth(db: &TestDb, auth: AuthConfig) -> TestApp {
    TestApp::spawn_auth(
        db,
        WorkflowChoice::Custom(Scripted::new(1), vec!["default".into()]),
        crate::support::fast_engine(),
        true,
        Arc::new(SystemClock),
        auth,
    )
    .await
}

async fn status_with(app: &TestApp, token: &str) -> (u16, Value) {
    let r = client_with(Some(token))
        .get(app.url("/v1/deprovisions"))
        .send()
        .await
        .unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

async fn oidc_tokens_are_checked_claim_by_claim(db: TestDb) {
    let issuer = TestIssuer::new("key-1");
    let stranger = TestIssuer::new("key-1");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("jwks.json");
    std::fs::write(&file, jwks(&[&issuer]).to_string()).unwrap();
    let app = spawn_with_auth(&db, oidc_config(JwksSource::File(file))).await;

    // A valid operator token creates a job, recorded under the token's name.
    let op = issuer.sign(&claims("Deprovision.Operator"));
    let r = client_with(Some(&op))
        .post(app.url("/v1/deprovisions"))
        .json(&individual("dev-0000"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let job: Value = r.json().await.unwrap();
    assert_eq!(job["requested_by"], "oidc:alice@example.test");
    // A reader token reads but may not create.
    let reader = issuer.sign(&claims("Deprovision.Reader"));
    assert_eq!(status_with(&app, &reader).await.0, 200);
    let r = client_with(Some(&reader))
        .post(app.url("/v1/deprovisions"))
        .json(&individual("dev-0001"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);

    let with = |f: &dyn Fn(&mut Value)| {
        let mut c = claims("Deprovision.Operator");
        f(&mut c);
        issuer.sign(&c)
    };
    let cases: Vec<(&str, String, u16, &str)> = vec![
        (
            "expired",
            with(&|c| c["exp"] = json!(now_secs() - 3600)),
            401,
            "expired",
        ),
        (
            "not yet valid",
            with(&|c| c["nbf"] = json!(now_secs() + 3600)),
            401,
            "nbf",
        ),
        (
            "wrong audience",
            with(&|c| c["aud"] = json!("api://someone-else")),
            401,
            "wrong audience",
        ),
        (
            "wrong issuer",
            with(&|c| c["iss"] = json!("https://evil.example.test/")),
            401,
            "wrong issuer",
        ),
        (
            "no exp",
            with(&|c| {
                c.as_object_mut().unwrap().remove("exp");
            }),
            401,
            "missing",
        ),
        (
            "unknown kid",
            issuer.sign_as("key-9", &claims("Deprovision.Operator")),
            401,
            "key id",
        ),
        (
            "bad signature",
            stranger.sign(&claims("Deprovision.Operator")),
            401,
            "bad signature",
        ),
        (
            "no mapped role",
            with(&|c| c["roles"] = json!(["Something.Else"])),
            403,
            "no role",
        ),
    ];
    for (what, token, status, needle) in cases {
        let (s, p) = status_with(&app, &token).await;
        assert_eq!(s, status, "{what}: {p}");
        let detail = p["detail"].as_str().unwrap_or_default();
        assert!(detail.contains(needle), "{what}: {detail}");
        assert!(
            !detail.contains(&token),
            "{what}: the answer quotes the token"
        );
    }
    // A token signed with HMAC over the public key (algorithm confusion) is refused.
    let hs = jsonwebtoken::encode(
        &jsonwebtoken::Header {
            kid: Some("key-1".into()),
            ..jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256)
        },
        &claims("Deprovision.Admin"),
        &jsonwebtoken::EncodingKey::from_secret(b"public"),
    )
    .unwrap();
    assert_eq!(status_with(&app, &hs).await.0, 401);
    // API keys keep working next to tokens.
    assert_eq!(status_with(&app, READER_KEY).await.0, 200);
    app.stop().await;
}

async fn jwks_from_a_url_is_refetched_for_a_new_key(db: TestDb) {
    let old = TestIssuer::new("old");
    let new = TestIssuer::new("new");
    let served = Arc::new(std::sync::Mutex::new(jwks(&[&old])));
    let fetches = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (s, f) = (served.clone(), fetches.clone());
    let router = axum::Router::new().route(
        "/keys",
        axum::routing::get(move || {
            let (s, f) = (s.clone(), f.clone());
            async move {
                f.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                axum::Json(s.lock().unwrap().clone())
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url: url::Url = format!("http://{}/keys", listener.local_addr().unwrap())
        .parse()
        .unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, router).await });
    // The verifier's clock is the app's injectable clock: the refetch rate limit is passed by moving it.
    let clock =
        deprovisiond::domain::clock::ManualClock::new(chrono::Utc::now().timestamp_millis());
    let app = TestApp::spawn_auth(
        &db,
        WorkflowChoice::Custom(Scripted::new(1), vec!["default".into()]),
        crate::support::fast_engine(),
        false,
        Arc::new(clock.clone()),
        oidc_config(JwksSource::Url(url)),
    )
    .await;
    let count = || fetches.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(count(), 1, "fetched at start");
    assert_eq!(
        status_with(&app, &old.sign(&claims("Deprovision.Reader")))
            .await
            .0,
        200
    );
    assert_eq!(count(), 1, "cached");
    // The issuer rotates its key. Within a minute of the last fetch an unknown kid is refused without
    // asking the issuer again (made-up kids must not become a flood of fetches)...
    *served.lock().unwrap() = jwks(&[&old, &new]);
    let token = new.sign(&claims("Deprovision.Reader"));
    assert_eq!(status_with(&app, &token).await.0, 401);
    assert_eq!(count(), 1);
    // ...after it, the unknown kid makes the service fetch the keys again, and the token is accepted.
    clock.advance_secs(61);
    assert_eq!(status_with(&app, &token).await.0, 200);
    assert_eq!(count(), 2);
    assert_eq!(status_with(&app, &token).await.0, 200);
    assert_eq!(count(), 2, "cached again");
    app.stop().await;
    server.abort();
}

// ----- Safe defaults: the loopback rule and the Host allow-list -----

both_stores!(hosts_not_on_the_list_are_refused);

async fn hosts_not_on_the_list_are_refused(db: TestDb) {
    let app = TestApp::spawn(&db, Scripted::new(1)).await;
    let get = |host: &'static str, path: &'static str| {
        app.http.get(app.url(path)).header("host", host).send()
    };
    let r = get("evil.example.com", "/v1/deprovisions").await.unwrap();
    assert_eq!(r.status(), 421);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let p: Value = r.json().await.unwrap();
    assert_eq!(p["type"], "urn:deprovisiond:problem:host-not-allowed");
    // Refused before authentication: nothing about the route leaks to a rebinding page.
    let r = client_with(None)
        .get(app.url("/v1/deprovisions"))
        .header("host", "evil.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 421);
    assert_eq!(
        get("localhost:8080", "/v1/deprovisions")
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        get("127.0.0.1", "/v1/deprovisions").await.unwrap().status(),
        200
    );
    // Probes answer whatever the host (an orchestrator calls them by IP).
    assert_eq!(
        get("10.0.0.7:8080", "/healthz").await.unwrap().status(),
        200
    );
    app.stop().await;

    let listed = AuthConfig {
        allowed_hosts: vec!["deprov.corp.example".into()],
        ..crate::support::test_auth()
    };
    let app = spawn_with_auth(&db, listed).await;
    let r = app
        .http
        .get(app.url("/v1/deprovisions"))
        .header("host", "deprov.corp.example:443")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = app
        .http
        .get(app.url("/v1/deprovisions"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 421, "127.0.0.1 is not on a configured list");
    app.stop().await;
}

fn serve_binary(args: &[&str], envs: &[(&str, &str)]) -> std::process::Child {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_deprovisiond"));
    cmd.arg("serve")
        .args(args)
        .env("DATABASE_URL", "sqlite::memory:")
        .env("DEPROVISIOND_WORKFLOW", "rehearsal")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    for v in [
        "DEPROVISIOND_API_KEYS",
        "DEPROVISIOND_API_KEYS_FILE",
        "DEPROVISIOND_OIDC_ISSUER",
        "DEPROVISIOND_INSECURE_NO_AUTH",
        "DEPROVISIOND_LISTEN",
    ] {
        cmd.env_remove(v);
    }
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.spawn().expect("start deprovisiond")
}

/// Reads the child's stdout until the "listening" line; `None` if it exits first.
fn listening_line(child: &mut std::process::Child) -> Option<String> {
    use std::io::BufRead;
    let stdout = child.stdout.take()?;
    let mut line = String::new();
    std::io::BufReader::new(stdout).read_line(&mut line).ok()?;
    line.contains("listening").then_some(line)
}

#[test]
fn serve_refuses_a_network_address_without_authentication() {
    let out = serve_binary(&["--listen", "0.0.0.0:0"], &[])
        .wait_with_output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("refusing to listen on 0.0.0.0:0 with no authentication configured"),
        "{stderr}"
    );
    // --insecure-no-auth overrides, loudly.
    let mut child = serve_binary(&["--listen", "0.0.0.0:0", "--insecure-no-auth"], &[]);
    let line = listening_line(&mut child);
    child.kill().unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        line.is_some(),
        "did not start: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("WITHOUT AUTHENTICATION"));
    // With a key configured it starts (and the key's hash is all the configuration holds).
    let entry = format!("ops:admin:{}", keys::to_hex(&keys::hash(ADMIN_KEY)));
    let mut child = serve_binary(
        &["--listen", "0.0.0.0:0"],
        &[("DEPROVISIOND_API_KEYS", &entry)],
    );
    let line = listening_line(&mut child);
    child.kill().unwrap();
    let _ = child.wait();
    assert!(line.is_some());
}

// ----- `keys new` and the demo -----

/// The address in the "listening on http://…" line.
fn address_in(line: &str) -> String {
    let rest = line.split("http://").nth(1).expect("an address");
    let host = rest.split_whitespace().next().unwrap();
    format!("http://{}", host.split('/').next().unwrap())
}

#[tokio::test]
async fn keys_new_prints_a_key_the_service_admits() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_deprovisiond"))
        .args(["keys", "new", "--name", "ci-bot", "--role", "operator"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    let key = lines
        .iter()
        .find(|l| l.starts_with("dpk_"))
        .expect("a key")
        .to_string();
    let entry = lines
        .iter()
        .find(|l| l.starts_with("ci-bot:operator:"))
        .expect("a configuration line")
        .to_string();
    assert!(
        !entry.contains(&key),
        "the configuration line holds the hash, not the key"
    );
    let mut child = serve_binary(
        &["--listen", "127.0.0.1:0"],
        &[("DEPROVISIOND_API_KEYS", &entry)],
    );
    let line = listening_line(&mut child).expect("serve starts");
    let base = address_in(&line);
    let with = client_with(Some(&key))
        .get(format!("{base}/v1/deprovisions"))
        .send()
        .await
        .unwrap()
        .status();
    let without = client_with(None)
        .get(format!("{base}/v1/deprovisions"))
        .send()
        .await
        .unwrap()
        .status();
    child.kill().unwrap();
    let _ = child.wait();
    assert_eq!(with, 200);
    assert_eq!(without, 401);
}

#[tokio::test]
async fn the_demo_asks_for_its_key_and_prints_it_in_every_curl() {
    use std::io::BufRead;
    let key = "dpk_demo-test-key-0123456789abcdefghijklmnop";
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_deprovisiond"))
        .args(["demo", "--listen", "127.0.0.1:0", "--api-key", key])
        .env_remove("DEPROVISIOND_LISTEN")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut banner = Vec::new();
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line.unwrap();
        let done = line.contains("Press Ctrl-C");
        banner.push(line);
        if done {
            break;
        }
    }
    let api = banner
        .iter()
        .find(|l| l.trim_start().starts_with("API "))
        .map(|l| address_in(l))
        .expect("the API line");
    let curls: Vec<&String> = banner.iter().filter(|l| l.contains("curl ")).collect();
    let anonymous = client_with(None)
        .get(format!("{api}/v1/deprovisions"))
        .send()
        .await
        .unwrap()
        .status();
    let keyed = client_with(Some(key))
        .get(format!("{api}/v1/deprovisions"))
        .send()
        .await
        .unwrap()
        .status();
    child.kill().unwrap();
    let _ = child.wait();
    assert!(curls.len() >= 3, "{banner:#?}");
    for c in curls {
        assert!(c.contains(&format!("authorization: Bearer {key}")), "{c}");
    }
    assert_eq!(anonymous, 401);
    assert_eq!(keyed, 200);
}

//! Hostile and malformed input, as a table: every row is one request against the real app (with the simulator
//! behind it) on both stores, with the status and problem `type` it must get.

use std::sync::Arc;

use azure_iot_sim::{SimConfig, Simulator};
use deprovisiond::app::WorkflowChoice;
use deprovisiond::azure::AzureClients;
use deprovisiond::demo::azure_config_for;
use serde_json::{Value, json};

use crate::both_stores;
use crate::support::{TestApp, TestDb, fast_engine};

both_stores!(hostile_input_table);

const DPS: &str = "test-dps";
const HUBS: [&str; 1] = ["hub-1.azure-devices.net"];

/// One hostile request and what it must get.
struct Row {
    name: &'static str,
    method: &'static str,
    path: String,
    headers: Vec<(&'static str, String)>,
    content_type: Option<&'static str>,
    body: Option<Vec<u8>>,
    status: u16,
    /// The problem type's slug (`urn:deprovisiond:problem:{slug}`).
    slug: &'static str,
    /// A field the problem's `errors` must name, for validation problems.
    field: Option<&'static str>,
}

fn row(
    name: &'static str,
    method: &'static str,
    path: &str,
    status: u16,
    slug: &'static str,
) -> Row {
    Row {
        name,
        method,
        path: path.to_string(),
        headers: Vec::new(),
        content_type: None,
        body: None,
        status,
        slug,
        field: None,
    }
}

impl Row {
    fn json(mut self, body: Value) -> Self {
        self.content_type = Some("application/json");
        self.body = Some(body.to_string().into_bytes());
        self
    }
    fn raw(mut self, content_type: Option<&'static str>, body: impl Into<Vec<u8>>) -> Self {
        self.content_type = content_type;
        self.body = Some(body.into());
        self
    }
    fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }
    fn field(mut self, field: &'static str) -> Self {
        self.field = Some(field);
        self
    }
}

fn reason() -> Value {
    json!({"code": "lost"})
}

fn individual(rid: &str) -> Value {
    json!({"target": {"kind": "individual_enrollment", "registration_id": rid}, "reason": reason()})
}

fn group(gid: &str) -> Value {
    json!({"target": {"kind": "enrollment_group", "group_id": gid}, "reason": reason()})
}

fn group_device(rid: &str, pem: &str) -> Value {
    json!({"target": {"kind": "group_device", "group_id": "fleet", "registration_id": rid, "certificate_pem": pem},
           "reason": reason()})
}

fn cert(cn: &str, ca: bool) -> String {
    let mut params = rcgen::CertificateParams::new(vec![]).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    if ca {
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    }
    let key = rcgen::KeyPair::generate().unwrap();
    params.self_signed(&key).unwrap().pem()
}

fn rows() -> Vec<Row> {
    const CREATE: &str = "/v1/deprovisions";
    const PREVIEW: &str = "/v1/deprovisions/preview";
    let mut rows = Vec::new();
    // Ids: dot segments, separators, encodings, unicode, lengths, in every id field and both routes.
    for (name, id) in [
        ("id ..", ".."),
        ("id .", "."),
        ("id %2e%2e", "%2e%2e"),
        ("id a/b", "a/b"),
        ("id a?b", "a?b"),
        ("id a#b", "a#b"),
        ("id with a space", "a b"),
        ("id with a newline", "a\nb"),
        ("unicode id", "dév"),
        ("empty id", ""),
    ] {
        rows.push(
            row(name, "POST", PREVIEW, 422, "validation-failed")
                .json(individual(id))
                .field("target.registration_id"),
        );
        rows.push(
            row(name, "POST", CREATE, 422, "validation-failed")
                .json(group(id))
                .field("target.group_id"),
        );
    }
    let long = "a".repeat(129);
    rows.push(
        row("129-character id", "POST", CREATE, 422, "validation-failed")
            .json(individual(&long))
            .field("target.registration_id"),
    );
    rows.push(
        row("group_device with .. registration id", "POST", CREATE, 422, "validation-failed")
            .json(json!({"target": {"kind": "group_device", "group_id": "fleet", "registration_id": ".."}, "reason": reason()}))
            .field("target.registration_id"),
    );
    rows.push(
        row("dps with a dot", "POST", CREATE, 422, "validation-failed")
            .json(json!({"dps": "a.b", "target": {"kind": "enrollment_group", "group_id": "g"}, "reason": reason()}))
            .field("dps"),
    );
    rows.push(row(
        "job id ..-like",
        "GET",
        "/v1/deprovisions/x..y",
        400,
        "bad-request",
    ));
    rows.push(row(
        "job id not a uuid",
        "GET",
        "/v1/deprovisions/not-a-uuid",
        400,
        "bad-request",
    ));
    // Bodies.
    rows.push(
        row("array body", "POST", CREATE, 422, "validation-failed")
            .json(json!([]))
            .field("body"),
    );
    rows.push(
        row("string body", "POST", CREATE, 422, "validation-failed")
            .json(json!("x"))
            .field("body"),
    );
    rows.push(
        row("null body", "POST", CREATE, 422, "validation-failed")
            .json(json!(null))
            .field("body"),
    );
    rows.push(
        row("truncated JSON", "POST", CREATE, 400, "bad-request")
            .raw(Some("application/json"), "{\"target\":"),
    );
    rows.push(
        row("empty body", "POST", CREATE, 400, "bad-request").raw(Some("application/json"), ""),
    );
    rows.push(
        row("deep nesting", "POST", CREATE, 400, "bad-request")
            .raw(Some("application/json"), "[".repeat(10_000)),
    );
    rows.push(
        row("invalid UTF-8", "POST", CREATE, 400, "bad-request")
            .raw(Some("application/json"), b"{\"a\": \"\xff\"}".to_vec()),
    );
    rows.push(
        row("registration id is a number", "POST", CREATE, 422, "validation-failed")
            .json(json!({"target": {"kind": "individual_enrollment", "registration_id": 123}, "reason": reason()}))
            .field("target.registration_id"),
    );
    rows.push(
        row(
            "unknown target kind",
            "POST",
            CREATE,
            422,
            "validation-failed",
        )
        .json(json!({"target": {"kind": "everything"}, "reason": reason()}))
        .field("target.kind"),
    );
    rows.push(
        row("unknown field in the target", "POST", CREATE, 422, "validation-failed")
            .json(json!({"target": {"kind": "enrollment_group", "group_id": "g", "extra": 1}, "reason": reason()}))
            .field("target.extra"),
    );
    rows.push(
        row("enum as a number", "POST", CREATE, 422, "validation-failed")
            .json(json!({"target": {"kind": "enrollment_group", "group_id": "g"}, "revoke": 5, "reason": reason()}))
            .field("revoke"),
    );
    rows.push(
        row("unknown reason code", "POST", CREATE, 422, "validation-failed")
            .json(json!({"target": {"kind": "enrollment_group", "group_id": "g"}, "reason": {"code": "bored"}}))
            .field("reason.code"),
    );
    rows.push(
        row("missing reason", "POST", CREATE, 422, "validation-failed")
            .json(json!({"target": {"kind": "enrollment_group", "group_id": "g"}}))
            .field("reason"),
    );
    rows.push(
        row("control characters in ticket key", "POST", CREATE, 422, "validation-failed")
            .json(json!({"target": {"kind": "enrollment_group", "group_id": "g"}, "reason": reason(), "ticket": {"system": "jira", "key": "a\u{7}b"}}))
            .field("ticket.key"),
    );
    rows.push(
        row(
            "body over the limit",
            "POST",
            CREATE,
            413,
            "payload-too-large",
        )
        .raw(Some("application/json"), vec![b' '; 1024 * 1024 + 10]),
    );
    // Content types.
    rows.push(
        row("text/plain", "POST", CREATE, 415, "unsupported-media-type")
            .raw(Some("text/plain"), group("g").to_string()),
    );
    rows.push(
        row(
            "no content type",
            "POST",
            CREATE,
            415,
            "unsupported-media-type",
        )
        .raw(None, group("g").to_string()),
    );
    rows.push(
        row("form body", "POST", CREATE, 415, "unsupported-media-type")
            .raw(Some("application/x-www-form-urlencoded"), "a=b"),
    );
    rows.push(
        row(
            "json-looking type",
            "POST",
            CREATE,
            415,
            "unsupported-media-type",
        )
        .raw(Some("application/jsonx"), group("g").to_string()),
    );
    // Headers.
    for (name, key) in [
        ("empty Idempotency-Key", String::new()),
        ("256-character Idempotency-Key", "k".repeat(256)),
        ("Idempotency-Key with a space", "a b".to_string()),
    ] {
        rows.push(
            row(name, "POST", CREATE, 400, "bad-request")
                .json(group("g"))
                .header("idempotency-key", key),
        );
    }
    // Query strings.
    for (q, status, slug, field) in [
        (
            "created_before=",
            422,
            "validation-failed",
            Some("created_before"),
        ),
        (
            "created_after=",
            422,
            "validation-failed",
            Some("created_after"),
        ),
        (
            "created_after=yesterday",
            422,
            "validation-failed",
            Some("created_after"),
        ),
        ("limit=0", 422, "validation-failed", Some("limit")),
        ("limit=201", 422, "validation-failed", Some("limit")),
        ("cursor=garbage", 422, "validation-failed", Some("cursor")),
        ("limit=abc", 400, "bad-request", None),
        ("status=exploded", 400, "bad-request", None),
        ("bogus=1", 400, "bad-request", None),
    ] {
        let mut r = row("list query", "GET", &format!("{CREATE}?{q}"), status, slug);
        r.field = field;
        rows.push(r);
    }
    // Device and event cursors are what the document says: at most 19 digits that fit a position
    // (schemathesis found 20 zeros accepted although the schema refuses them).
    for (list, cursor) in [
        ("devices", "-1"),
        ("devices", "00000000000000000000"),
        ("devices", "%2B5"),
        ("events", "9223372036854775808"),
        ("events", "00000000000000000000"),
    ] {
        rows.push(row(
            "devices and events cursor",
            "GET",
            &format!(
                "/v1/deprovisions/0193c7a0-6b5e-7c3e-9a51-2f6f0f5c1d2e/{list}?cursor={cursor}"
            ),
            422,
            "validation-failed",
        ));
    }
    // Certificates.
    let leaf = cert("dev-7", false);
    for (name, pem) in [
        (
            "two certificates",
            format!("{leaf}{}", cert("dev-8", false)),
        ),
        (
            "a CA certificate whose CN is the registration id",
            cert("dev-7", true),
        ),
        ("CN is not the registration id", cert("someone-else", false)),
        (
            "certificate plus private key",
            format!("{leaf}-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"),
        ),
        ("not PEM", "hello".to_string()),
        (
            "PEM of garbage",
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".to_string(),
        ),
    ] {
        rows.push(
            row(name, "POST", CREATE, 422, "validation-failed")
                .json(group_device("dev-7", &pem))
                .field("target.certificate_pem"),
        );
    }
    // Targets DPS does not have (the simulator is empty): refused at admission, naming what is missing.
    rows.push(
        row(
            "missing enrollment",
            "POST",
            CREATE,
            422,
            "validation-failed",
        )
        .json(individual("ghost"))
        .field("target.registration_id"),
    );
    rows.push(
        row("missing group", "POST", CREATE, 422, "validation-failed")
            .json(group("ghost"))
            .field("target.group_id"),
    );
    rows.push(
        row("group device of a missing group", "POST", CREATE, 422, "validation-failed")
            .json(json!({"target": {"kind": "group_device", "group_id": "ghost", "registration_id": "d"}, "reason": reason()}))
            .field("target.group_id"),
    );
    // Routes and methods.
    rows.push(row(
        "unknown route",
        "GET",
        "/v2/everything",
        404,
        "no-such-route",
    ));
    rows.push(row(
        "wrong method",
        "DELETE",
        CREATE,
        405,
        "method-not-allowed",
    ));
    rows
}

async fn hostile_input_table(db: TestDb) {
    let sim = Simulator::start(SimConfig::single(DPS, &HUBS))
        .await
        .expect("simulator starts");
    let config = azure_config_for(&sim).expect("azure config");
    let clients = AzureClients::new(&config).expect("clients");
    let app = TestApp::spawn_choice(
        &db,
        WorkflowChoice::Azure(Arc::new(clients)),
        fast_engine(),
        false,
    )
    .await;
    let mut failures = Vec::new();
    for r in rows() {
        let method = reqwest::Method::from_bytes(r.method.as_bytes()).unwrap();
        let mut req = app.http.request(method, app.url(&r.path));
        for (k, v) in &r.headers {
            req = req.header(*k, v.as_str());
        }
        if let Some(ct) = r.content_type {
            req = req.header("content-type", ct);
        }
        if let Some(b) = &r.body {
            req = req.body(b.clone());
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        let ct = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let text = resp.text().await.unwrap_or_default();
        let problem: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let want_type = format!("urn:deprovisiond:problem:{}", r.slug);
        let field_ok = r.field.is_none_or(|f| {
            problem["errors"]
                .as_array()
                .is_some_and(|es| es.iter().any(|e| e["field"] == f))
        });
        let no_rust_words = ![
            "struct ",
            "variant identifier",
            "DeprovisionRequest",
            "Target",
        ]
        .iter()
        .any(|w| text.contains(w));
        if status != r.status
            || ct != "application/problem+json"
            || problem["type"] != want_type.as_str()
            || problem["status"] != r.status
            || !field_ok
            || !no_rust_words
        {
            failures.push(format!(
                "{} ({} {}): want {} {} {:?}, got {status} {ct} {text}",
                r.name, r.method, r.path, r.status, r.slug, r.field
            ));
        }
    }
    // Nothing hostile reached DPS as a path.
    for call in sim.calls() {
        assert!(!call.path.contains(".."), "{call:?}");
    }
    app.stop().await;
    sim.shutdown().await;
    assert!(
        failures.is_empty(),
        "{} row(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

both_stores!(an_idempotent_replay_answers_from_the_database_alone);

async fn an_idempotent_replay_answers_from_the_database_alone(db: TestDb) {
    use azure_iot_sim::seed::{Attestation, FleetSpec, GroupSpec, seed_fleet};
    let sim = Simulator::start(SimConfig::single(DPS, &HUBS))
        .await
        .expect("simulator starts");
    let spec = FleetSpec {
        dps: Some(DPS.into()),
        root_ca_name: None,
        groups: vec![GroupSpec {
            group_id: "fleet".into(),
            attestation: Attestation::SymmetricKey,
            devices: 1,
            device_prefix: None,
            provisioning_status: None,
            iot_hubs: Vec::new(),
            provision_count: None,
            signing_ca: None,
            issuing_ca: None,
        }],
        individuals: Vec::new(),
    };
    seed_fleet(sim.state(), &spec).expect("fleet seeds");
    let config = azure_config_for(&sim).expect("azure config");
    let clients = AzureClients::new(&config).expect("clients");
    // No worker: the only DPS calls are the API's own.
    let app = TestApp::spawn_choice(
        &db,
        WorkflowChoice::Azure(Arc::new(clients)),
        fast_engine(),
        false,
    )
    .await;
    // Deleting a group is checked at admission against DPS (the higher-chain rule).
    let body = json!({"target": {"kind": "enrollment_group", "group_id": "fleet"}, "delete_group": true, "reason": reason()});
    let send = || {
        app.http
            .post(app.url("/v1/deprovisions"))
            .header("idempotency-key", "replay-1")
            .json(&body)
            .send()
    };
    let first = send().await.unwrap();
    assert_eq!(first.status(), 202);
    let first: Value = first.json().await.unwrap();
    let calls = sim.calls().len();
    assert!(calls > 0, "admission reads the group");
    let again = send().await.unwrap();
    assert_eq!(again.status(), 200);
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["id"], first["id"]);
    assert_eq!(
        sim.calls().len(),
        calls,
        "the replay called DPS: {:?}",
        &sim.calls()[calls..]
    );
    app.stop().await;
    sim.shutdown().await;
}

both_stores!(protocol_level_errors);

/// Sends `bytes` on a new connection and reads until the server answers and closes (or `guard` passes).
async fn raw_exchange(addr: &str, bytes: &[u8], then_wait: bool) -> (Option<u16>, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    // A refused write (the server closed first) is part of what is being tested.
    let _ = s.write_all(bytes).await;
    if !then_wait {
        let _ = s.shutdown().await;
    }
    let mut out = Vec::new();
    // A guard against a hang, not a timing assertion.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(60), s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out).to_string();
    let status: Option<u16> = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse().ok());
    // What the server answered is held to the document like every proxied response.
    if let (Some(code), Some((head, body))) = (status, text.split_once("\r\n\r\n"))
        && !body.is_empty()
    {
        let content_type = head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-type").then(|| v.trim())
        });
        let request_line = String::from_utf8_lossy(bytes);
        let mut words = request_line.split(' ');
        let violation = match (code, words.next(), words.next()) {
            (200..=299, Some(method), Some(path)) => crate::response_schema::check_response(
                method,
                path,
                code,
                content_type,
                body.as_bytes(),
            ),
            _ => crate::response_schema::check_protocol_error(content_type, body.as_bytes()),
        };
        assert!(violation.is_none(), "{violation:?}");
    }
    (status, text)
}

async fn protocol_level_errors(db: TestDb) {
    use deprovisiond::app::{App, AppConfig, ServerTimeouts};
    use deprovisiond::domain::clock::SystemClock;
    use std::time::Duration;
    let config = AppConfig {
        database_url: db.url.clone(),
        listen: "127.0.0.1:0".parse().unwrap(),
        run_worker: false,
        engine: fast_engine(),
        tombstone_audit_every: None,
        body_limit: deprovisiond::http::BODY_LIMIT_BYTES,
        // The raw requests below name the host `x`.
        auth: deprovisiond::http::auth::AuthConfig {
            allowed_hosts: vec!["x".into()],
            ..Default::default()
        },
    };
    let choice = WorkflowChoice::Custom(crate::support::Scripted::new(1), vec!["default".into()]);
    let app = App::build(config, choice, Arc::new(SystemClock))
        .await
        .unwrap()
        .with_server_timeouts(ServerTimeouts {
            header_read: Duration::from_secs(1),
            body_read: Duration::from_secs(1),
        });
    let addr = app.local_addr().to_string();
    let stop = tokio_util::sync::CancellationToken::new();
    let s = stop.clone();
    let task = tokio::spawn(app.run_until_stopped(async move { s.cancelled().await }));
    let problem_of = |text: &str| -> Value {
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
        serde_json::from_str(body).unwrap_or(Value::Null)
    };

    // A declared body over the limit is refused on the header, though only one byte of it is sent.
    let (status, text) = raw_exchange(
        &addr,
        b"POST /v1/deprovisions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 10485760\r\n\r\n{",
        true,
    )
    .await;
    assert_eq!(status, Some(413), "{text}");
    assert!(
        text.to_ascii_lowercase()
            .contains("content-type: application/problem+json"),
        "{text}"
    );
    assert_eq!(
        problem_of(&text)["type"],
        "urn:deprovisiond:problem:payload-too-large"
    );

    // A body that stops arriving: 408 problem+json after the body-read timeout.
    let (status, text) = raw_exchange(
        &addr,
        b"POST /v1/deprovisions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{",
        true,
    )
    .await;
    assert_eq!(status, Some(408), "{text}");
    assert_eq!(
        problem_of(&text)["type"],
        "urn:deprovisiond:problem:request-timeout"
    );

    // Headers that never end: the connection is closed after the header-read timeout (hyper sends
    // nothing: there is no request yet to answer).
    let (status, text) = raw_exchange(&addr, b"GET /healthz HTTP/1.1\r\nhost: x\r\n", true).await;
    assert!(status.is_none() || status == Some(408), "{text}");

    // Parsed and refused by hyper before the app sees a request: statuses are right, bodies are empty
    // (hyper has no hook for their body).
    let big = format!(
        "GET /healthz HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n",
        "a".repeat(1024 * 1024)
    );
    let (status, _) = raw_exchange(&addr, big.as_bytes(), false).await;
    assert_eq!(status, Some(431));
    let many: String = (0..200).map(|i| format!("x-h{i}: v\r\n")).collect();
    let (status, _) = raw_exchange(
        &addr,
        format!("GET /healthz HTTP/1.1\r\nhost: x\r\n{many}\r\n").as_bytes(),
        false,
    )
    .await;
    assert_eq!(status, Some(431));
    let (status, _) = raw_exchange(&addr, b"HELLO THERE\r\n\r\n", false).await;
    assert_eq!(status, Some(400));
    let (status, _) = raw_exchange(
        &addr,
        b"POST /v1/deprovisions HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\n{}",
        false,
    )
    .await;
    assert_eq!(status, Some(400));

    // The server still serves.
    let (status, text) = raw_exchange(
        &addr,
        b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
        true,
    )
    .await;
    assert_eq!(status, Some(200), "{text}");
    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
}

both_stores!(a_leaf_must_come_from_its_groups_signing_certificate);

async fn a_leaf_must_come_from_its_groups_signing_certificate(db: TestDb) {
    use azure_iot_sim::seed::{Attestation, FleetSpec, GroupSpec, seed_fleet};
    let sim = Simulator::start(SimConfig::single(DPS, &HUBS))
        .await
        .expect("simulator starts");
    let spec = FleetSpec {
        dps: Some(DPS.into()),
        root_ca_name: None,
        groups: vec![GroupSpec {
            group_id: "fleet-x".into(),
            attestation: Attestation::X509,
            devices: 2,
            device_prefix: None,
            provisioning_status: None,
            iot_hubs: Vec::new(),
            provision_count: None,
            signing_ca: None,
            issuing_ca: None,
        }],
        individuals: Vec::new(),
    };
    let fleet = seed_fleet(sim.state(), &spec).expect("fleet seeds");
    let config = azure_config_for(&sim).expect("azure config");
    let clients = AzureClients::new(&config).expect("clients");
    let app = TestApp::spawn_choice(
        &db,
        WorkflowChoice::Azure(Arc::new(clients)),
        fast_engine(),
        false,
    )
    .await;
    let devices = fleet.group_devices("fleet-x");
    let (own, other) = (&devices[0], &devices[1]);
    let body = |rid: &str, pem: &str, force: bool| {
        json!({"target": {"kind": "group_device", "group_id": "fleet-x", "registration_id": rid, "certificate_pem": pem},
               "force": force, "reason": reason()})
    };
    // A self-made leaf with the right CN but another issuer: refused, unless forced.
    let foreign = cert(&other.registration_id, false);
    let r = app
        .post(
            "/v1/deprovisions",
            &body(&other.registration_id, &foreign, false),
        )
        .await;
    assert_eq!(r.status(), 422);
    let p: Value = r.json().await.unwrap();
    assert_eq!(p["errors"][0]["field"], "target.certificate_pem", "{p:#}");
    assert!(
        p["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("signing certificate"),
        "{p:#}"
    );
    let r = app
        .post(
            "/v1/deprovisions",
            &body(&other.registration_id, &foreign, true),
        )
        .await;
    assert_eq!(r.status(), 202);
    // The device's own leaf passes, and admission reads the group from DPS once for both checks (it
    // exists, and it issued the leaf).
    let before = sim.calls().len();
    let r = app
        .post(
            "/v1/deprovisions",
            &body(
                &own.registration_id,
                own.cert_pem.as_deref().unwrap(),
                false,
            ),
        )
        .await;
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
    let group_reads = sim.calls()[before..]
        .iter()
        .filter(|c| c.method == "GET" && c.path.starts_with("/enrollmentGroups/"))
        .count();
    assert_eq!(group_reads, 1, "{:#?}", &sim.calls()[before..]);
    app.stop().await;
    sim.shutdown().await;
}

both_stores!(overlapping_targets_are_refused);

async fn overlapping_targets_are_refused(db: TestDb) {
    // No worker: every job stays queued, so active.
    let app =
        TestApp::spawn_with(&db, crate::support::Scripted::new(1), fast_engine(), false).await;
    let created = |r: reqwest::Response| async move {
        assert_eq!(r.status(), 202);
        r.json::<Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let device = |gid: &str, rid: &str| json!({"target": {"kind": "group_device", "group_id": gid, "registration_id": rid}, "reason": reason()});
    let refused = |r: reqwest::Response, job: String| async move {
        assert_eq!(r.status(), 409);
        let p: Value = r.json().await.unwrap();
        assert_eq!(
            p["type"], "urn:deprovisiond:problem:overlapping-job-active",
            "{p:#}"
        );
        assert_eq!(p["job_id"], job.as_str(), "{p:#}");
    };
    // A whole group first, then one of its devices.
    let whole = created(app.post("/v1/deprovisions", &group("fleet-a")).await).await;
    refused(
        app.post("/v1/deprovisions", &device("fleet-a", "dev-1"))
            .await,
        whole,
    )
    .await;
    // One device first, then its whole group.
    let one = created(
        app.post("/v1/deprovisions", &device("fleet-b", "dev-2"))
            .await,
    )
    .await;
    refused(
        app.post("/v1/deprovisions", &group("fleet-b")).await,
        one.clone(),
    )
    .await;
    // A group device and an individual enrollment with the same registration id share a target key.
    let r = app.post("/v1/deprovisions", &individual("dev-2")).await;
    assert_eq!(r.status(), 409);
    let p: Value = r.json().await.unwrap();
    assert_eq!(p["job_id"], one.as_str());
    // Devices of another group, and other devices of a group with only device jobs, do not overlap.
    created(
        app.post("/v1/deprovisions", &device("fleet-b", "dev-3"))
            .await,
    )
    .await;
    created(app.post("/v1/deprovisions", &group("fleet-c")).await).await;
    app.stop().await;
}

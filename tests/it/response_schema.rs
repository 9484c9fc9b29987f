//! Every response the integration tests see is checked against the committed OpenAPI document.
//!
//! `TestApp` puts a [`SchemaProxy`] in front of the app: each request is forwarded unchanged and each
//! response is matched to its operation (path template, method, status, content type) and its JSON body
//! validated against the documented schema. A response the document does not describe is a violation; the
//! proxy then answers 598 with the reason (so the test that made the call fails where it looks) and the
//! `TestApp` panics when dropped. The validator implements the keywords the document uses and refuses any
//! other, so a schema it cannot check fails loudly instead of passing.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;

/// The committed document, loaded once per test process.
static DOC: LazyLock<Value> = LazyLock::new(|| {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi/openapi.json");
    let text = std::fs::read_to_string(path).expect("openapi/openapi.json is readable");
    serde_json::from_str(&text).expect("openapi/openapi.json is JSON")
});

/// Responses validated in this test process (for the summary test).
pub static CHECKED: AtomicUsize = AtomicUsize::new(0);

/// Paths served on purpose outside the document: the Swagger UI and its assets (the dashboard, `/ui`, is
/// checked separately).
const UNDOCUMENTED_PREFIXES: &[&str] = &["/docs", "/openapi.json"];

/// Schema keywords that only annotate and never constrain a value.
const ANNOTATIONS: &[&str] = &[
    "description",
    "example",
    "examples",
    "title",
    "default",
    "deprecated",
    "readOnly",
    "writeOnly",
    "discriminator",
    "externalDocs",
];

/// Where one response does not match the document, or `None` when it does.
pub fn check_response(
    method: &str,
    path: &str,
    status: u16,
    content_type: Option<&str>,
    body: &[u8],
) -> Option<String> {
    check_response_in(&DOC, method, path, status, content_type, body)
}

fn check_response_in(
    doc: &Value,
    method: &str,
    path: &str,
    status: u16,
    content_type: Option<&str>,
    body: &[u8],
) -> Option<String> {
    let what = format!("{method} {path} -> {status}");
    let media = media_type(content_type);
    // A Host not on the allow-list is refused before routing, on every path, in the problem shape.
    if status == 421 {
        return check_problem(doc, &what, &media, body);
    }
    let Some((template, item)) = find_path(doc, path) else {
        if UNDOCUMENTED_PREFIXES.iter().any(|p| path.starts_with(p)) {
            return None;
        }
        // The dashboard is for browsers, not part of the API: its own page, style, script and icon types only.
        if path == "/ui" || path.starts_with("/ui/") {
            let browser = [
                "text/html",
                "text/css",
                "text/javascript",
                "application/javascript",
                "image/svg+xml",
            ];
            return (!body.is_empty() && !browser.contains(&media.as_str()))
                .then(|| format!("{what}: dashboard answered {media:?}"));
        }
        // Unknown routes answer the API's problem shape; nothing else may appear outside the document.
        return if status == 404 || status == 405 {
            check_problem(doc, &what, &media, body)
        } else {
            Some(format!("{what}: path not in the OpenAPI document"))
        };
    };
    let Some(op) = item.get(method.to_ascii_lowercase()) else {
        return if status == 405 {
            check_problem(doc, &what, &media, body)
        } else {
            Some(format!("{what}: method not documented for {template}"))
        };
    };
    let responses = &op["responses"];
    let Some(response) = responses
        .get(status.to_string())
        .or_else(|| responses.get(format!("{}XX", status / 100)))
        .or_else(|| responses.get("default"))
    else {
        return Some(format!(
            "{what}: status not documented for {method} {template} (documented: {})",
            responses
                .as_object()
                .map(|o| o.keys().cloned().collect::<Vec<_>>().join(", "))
                .unwrap_or_default()
        ));
    };
    let response = resolve(doc, response);
    let Some(content) = response.get("content").and_then(Value::as_object) else {
        return (!body.is_empty()).then(|| format!("{what}: a body where the document says none"));
    };
    let documented = content
        .iter()
        .find(|(ct, _)| ct.split(';').next().unwrap_or("").trim() == media);
    let Some((_, media_obj)) = documented else {
        return Some(format!(
            "{what}: content type {media:?} not documented (documented: {})",
            content.keys().cloned().collect::<Vec<_>>().join(", ")
        ));
    };
    if !media.ends_with("json") {
        return None;
    }
    let schema = media_obj.get("schema")?;
    let value: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => return Some(format!("{what}: body is not JSON ({e})")),
    };
    let mut errors = Vec::new();
    validate(doc, schema, &value, "$", &mut errors);
    (!errors.is_empty()).then(|| format!("{what}: {}", errors.join("; ")))
}

/// Where a response to a request no route saw (a protocol-level error) is not the documented problem shape.
pub fn check_protocol_error(content_type: Option<&str>, body: &[u8]) -> Option<String> {
    let media = media_type(content_type);
    check_problem(&DOC, "protocol-level error", &media, body)
}

/// The media type of a `Content-Type` value, without parameters, lower-cased (empty when absent).
fn media_type(content_type: Option<&str>) -> String {
    content_type
        .map(|c| {
            c.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default()
}

fn check_problem(doc: &Value, what: &str, media: &str, body: &[u8]) -> Option<String> {
    if media != "application/problem+json" {
        return Some(format!("{what}: expected problem+json, got {media:?}"));
    }
    let value: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => return Some(format!("{what}: problem body is not JSON ({e})")),
    };
    let mut errors = Vec::new();
    let schema = serde_json::json!({"$ref": "#/components/schemas/Problem"});
    validate(doc, &schema, &value, "$", &mut errors);
    (!errors.is_empty()).then(|| format!("{what}: {}", errors.join("; ")))
}

/// The path item whose template matches `path` (literal segments before templated ones).
fn find_path<'a>(doc: &'a Value, path: &str) -> Option<(&'a str, &'a Value)> {
    let path = path.split('?').next().unwrap_or(path);
    let segs: Vec<&str> = path.split('/').collect();
    let mut best: Option<(usize, &str, &Value)> = None;
    for (template, item) in doc["paths"].as_object()? {
        let tsegs: Vec<&str> = template.split('/').collect();
        if tsegs.len() != segs.len() {
            continue;
        }
        let mut literals = 0;
        let matches = tsegs.iter().zip(&segs).all(|(t, s)| {
            if t.starts_with('{') && t.ends_with('}') {
                !s.is_empty()
            } else {
                literals += 1;
                t == s
            }
        });
        if matches && best.as_ref().is_none_or(|(l, _, _)| literals > *l) {
            best = Some((literals, template, item));
        }
    }
    best.map(|(_, t, i)| (t, i))
}

fn resolve<'a>(doc: &'a Value, node: &'a Value) -> &'a Value {
    match node.get("$ref").and_then(Value::as_str) {
        Some(r) => lookup(doc, r),
        None => node,
    }
}

fn lookup<'a>(doc: &'a Value, reference: &str) -> &'a Value {
    let pointer = reference
        .strip_prefix('#')
        .unwrap_or_else(|| panic!("only local $refs are supported, got {reference}"));
    doc.pointer(pointer)
        .unwrap_or_else(|| panic!("$ref {reference} points at nothing"))
}

/// Validates `value` against `schema`, pushing one message per violation (JSON Schema 2020-12 subset).
pub fn validate(doc: &Value, schema: &Value, value: &Value, at: &str, errors: &mut Vec<String>) {
    let Some(obj) = schema.as_object() else {
        if schema == &Value::Bool(false) {
            errors.push(format!("{at}: no value allowed here"));
        }
        return;
    };
    for key in obj.keys() {
        let known = matches!(
            key.as_str(),
            "$ref"
                | "type"
                | "properties"
                | "required"
                | "additionalProperties"
                | "items"
                | "enum"
                | "const"
                | "oneOf"
                | "anyOf"
                | "allOf"
                | "format"
                | "minimum"
                | "maximum"
                | "minLength"
                | "maxLength"
                | "minItems"
                | "maxItems"
        ) || ANNOTATIONS.contains(&key.as_str());
        assert!(
            known,
            "the response validator does not implement the schema keyword {key:?} (at {at}); add it"
        );
    }
    if let Some(r) = obj.get("$ref").and_then(Value::as_str) {
        validate(doc, lookup(doc, r), value, at, errors);
    }
    if let Some(t) = obj.get("type") {
        let types: Vec<&str> = match t {
            Value::String(s) => vec![s.as_str()],
            Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
            _ => panic!("bad type keyword at {at}: {t}"),
        };
        if !types.iter().any(|t| has_type(value, t)) {
            errors.push(format!(
                "{at}: expected {}, got {}",
                types.join(" or "),
                short(value)
            ));
            return;
        }
    }
    if let Some(allowed) = obj.get("enum").and_then(Value::as_array)
        && !allowed.contains(value)
    {
        errors.push(format!(
            "{at}: {} is not one of {}",
            short(value),
            Value::Array(allowed.clone())
        ));
    }
    if let Some(c) = obj.get("const")
        && c != value
    {
        errors.push(format!("{at}: expected {c}, got {}", short(value)));
    }
    if let Some(format) = obj.get("format").and_then(Value::as_str)
        && let Some(s) = value.as_str()
    {
        check_format(format, s, at, errors);
    }
    if let Some(n) = value.as_f64() {
        if let Some(min) = obj.get("minimum").and_then(Value::as_f64)
            && n < min
        {
            errors.push(format!("{at}: {n} is below the minimum {min}"));
        }
        if let Some(max) = obj.get("maximum").and_then(Value::as_f64)
            && n > max
        {
            errors.push(format!("{at}: {n} is above the maximum {max}"));
        }
    }
    if let Some(s) = value.as_str() {
        let len = s.chars().count() as u64;
        if let Some(min) = obj.get("minLength").and_then(Value::as_u64)
            && len < min
        {
            errors.push(format!("{at}: shorter than {min} characters"));
        }
        if let Some(max) = obj.get("maxLength").and_then(Value::as_u64)
            && len > max
        {
            errors.push(format!("{at}: longer than {max} characters"));
        }
    }
    if let Some(items) = value.as_array() {
        if let Some(min) = obj.get("minItems").and_then(Value::as_u64)
            && (items.len() as u64) < min
        {
            errors.push(format!("{at}: fewer than {min} items"));
        }
        if let Some(max) = obj.get("maxItems").and_then(Value::as_u64)
            && (items.len() as u64) > max
        {
            errors.push(format!("{at}: more than {max} items"));
        }
        if let Some(item_schema) = obj.get("items") {
            for (i, item) in items.iter().enumerate() {
                validate(doc, item_schema, item, &format!("{at}[{i}]"), errors);
            }
        }
    }
    if let Some(map) = value.as_object() {
        let props = obj.get("properties").and_then(Value::as_object);
        for name in obj
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let name = name.as_str().unwrap_or_default();
            if !map.contains_key(name) {
                errors.push(format!("{at}: required property {name:?} missing"));
            }
        }
        for (name, v) in map {
            let here = format!("{at}.{name}");
            match props.and_then(|p| p.get(name)) {
                Some(s) => validate(doc, s, v, &here, errors),
                None => match obj.get("additionalProperties") {
                    Some(Value::Bool(false)) => {
                        errors.push(format!("{at}: property {name:?} is not documented"))
                    }
                    Some(s @ Value::Object(_)) => validate(doc, s, v, &here, errors),
                    _ => {}
                },
            }
        }
    }
    if let Some(all) = obj.get("allOf").and_then(Value::as_array) {
        for s in all {
            validate(doc, s, value, at, errors);
        }
    }
    if let Some(any) = obj.get("anyOf").and_then(Value::as_array)
        && !any.iter().any(|s| passes(doc, s, value, at))
    {
        errors.push(format!("{at}: {} matches none of anyOf", short(value)));
    }
    if let Some(one) = obj.get("oneOf").and_then(Value::as_array) {
        let n = one.iter().filter(|s| passes(doc, s, value, at)).count();
        if n != 1 {
            errors.push(format!(
                "{at}: {} matches {n} of oneOf, not exactly one",
                short(value)
            ));
        }
    }
}

fn passes(doc: &Value, schema: &Value, value: &Value, at: &str) -> bool {
    let mut e = Vec::new();
    validate(doc, schema, value, at, &mut e);
    e.is_empty()
}

fn has_type(value: &Value, t: &str) -> bool {
    match t {
        "null" => value.is_null(),
        "boolean" => value.is_boolean(),
        "string" => value.is_string(),
        "array" => value.is_array(),
        "object" => value.is_object(),
        "number" => value.is_number(),
        "integer" => value.is_i64() || value.is_u64(),
        other => panic!("unknown JSON Schema type {other:?}"),
    }
}

fn check_format(format: &str, s: &str, at: &str, errors: &mut Vec<String>) {
    let ok = match format {
        "uuid" => uuid::Uuid::parse_str(s).is_ok(),
        "date-time" => chrono::DateTime::parse_from_rfc3339(s).is_ok(),
        "uri" => url::Url::parse(s).is_ok(),
        // Numeric formats describe integers; other string formats are annotations here.
        _ => true,
    };
    if !ok {
        errors.push(format!("{at}: {s:?} is not a valid {format}"));
    }
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 80 {
        format!("{}…", s.chars().take(80).collect::<String>())
    } else {
        s
    }
}

/// A reverse proxy in front of a test app that validates every response against the document.
pub struct SchemaProxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    /// What did not match, in order.
    pub violations: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl SchemaProxy {
    /// Starts the proxy for the app at `upstream` (`http://host:port`).
    pub async fn start(upstream: String) -> SchemaProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the schema proxy");
        let addr = listener.local_addr().expect("proxy address");
        let violations = Arc::new(Mutex::new(Vec::new()));
        // No redirects, no decompression: the test sees exactly what the app sent.
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("proxy client");
        let state = Arc::new((upstream, client, violations.clone()));
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let state = state.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let state = state.clone();
                        async move {
                            Ok::<_, Infallible>(forward(&state.0, &state.1, &state.2, req).await)
                        }
                    });
                    let mut builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    // Let oversized requests through to the app, which decides what to answer.
                    builder.http1().max_buf_size(8 << 20).max_headers(1000);
                    let _ = builder
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        SchemaProxy {
            addr,
            violations,
            task,
        }
    }

    /// The violations seen so far, which then no longer fail the test on drop.
    pub fn take_violations(&self) -> Vec<String> {
        std::mem::take(&mut *self.violations.lock().expect("violations lock"))
    }
}

impl Drop for SchemaProxy {
    /// Fails the test that owned the app when any response broke the document.
    fn drop(&mut self) {
        self.task.abort();
        let seen = self.take_violations();
        if !seen.is_empty() && !std::thread::panicking() {
            panic!(
                "{} response(s) do not match openapi/openapi.json:\n{}",
                seen.len(),
                seen.join("\n")
            );
        }
    }
}

async fn forward(
    upstream: &str,
    client: &reqwest::Client,
    violations: &Mutex<Vec<String>>,
    req: hyper::Request<Incoming>,
) -> hyper::Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let method = parts.method.clone();
    let path_and_query = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    let body = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return plain(502, format!("schema proxy: reading the request body: {e}")),
    };
    let mut out = client.request(method.clone(), format!("{upstream}{path_and_query}"));
    for (name, value) in &parts.headers {
        if !is_hop_by_hop(name.as_str()) {
            out = out.header(name, value);
        }
    }
    let resp = match out.body(body).send().await {
        Ok(r) => r,
        Err(e) => return plain(502, format!("schema proxy: the app did not answer: {e}")),
    };
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp.bytes().await.unwrap_or_default();
    let content_type = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    CHECKED.fetch_add(1, Ordering::Relaxed);
    let path = parts.uri.path();
    if let Some(v) = check_response(method.as_str(), path, status.as_u16(), content_type, &bytes) {
        violations.lock().expect("violations lock").push(v.clone());
        return plain(598, format!("response schema violation: {v}"));
    }
    let mut response = hyper::Response::new(Full::new(bytes));
    *response.status_mut() = status;
    for (name, value) in &headers {
        if !is_hop_by_hop(name.as_str()) && name != http::header::CONTENT_LENGTH {
            response.headers_mut().append(name, value.clone());
        }
    }
    response
}

fn is_hop_by_hop(name: &str) -> bool {
    matches!(
        name,
        "connection"
            | "keep-alive"
            | "transfer-encoding"
            | "te"
            | "trailer"
            | "upgrade"
            | "proxy-connection"
    )
}

fn plain(status: u16, text: String) -> hyper::Response<Full<Bytes>> {
    let mut r = hyper::Response::new(Full::new(Bytes::from(text)));
    *r.status_mut() = hyper::StatusCode::from_u16(status).expect("valid status");
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn doc() -> Value {
        json!({
            "paths": {
                "/v1/things/{id}": {"get": {"responses": {
                    "200": {"description": "", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Thing"}}}},
                    "404": {"description": "", "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}}
                }}},
                "/v1/things/special": {"get": {"responses": {"204": {"description": ""}}}}
            },
            "components": {"schemas": {
                "Thing": {"type": "object", "required": ["id", "state"], "additionalProperties": false, "properties": {
                    "id": {"type": "string", "format": "uuid"},
                    "state": {"type": "string", "enum": ["on", "off"]},
                    "count": {"type": "integer", "minimum": 0},
                    "note": {"type": ["string", "null"]},
                    "tags": {"type": "array", "items": {"type": "string"}},
                    "kind": {"oneOf": [{"type": "string", "enum": ["a"]}, {"type": "integer"}]}
                }},
                "Problem": {"type": "object", "required": ["title"], "properties": {"title": {"type": "string"}}}
            }}
        })
    }

    fn check(path: &str, status: u16, ct: &str, body: Value) -> Option<String> {
        check_response_in(
            &doc(),
            "GET",
            path,
            status,
            Some(ct),
            body.to_string().as_bytes(),
        )
    }

    const ID: &str = "0190c6d2-8e3c-7c2a-9a4b-2f1e3d4c5b6a";

    #[test]
    fn a_conforming_response_passes() {
        let body =
            json!({"id": ID, "state": "on", "count": 3, "note": null, "tags": ["x"], "kind": 2});
        assert_eq!(
            check(&format!("/v1/things/{ID}"), 200, "application/json", body),
            None
        );
    }

    #[test]
    fn each_kind_of_mismatch_is_reported() {
        let cases = [
            (json!({"state": "on"}), "required property \"id\" missing"),
            (json!({"id": ID, "state": "dim"}), "is not one of"),
            (json!({"id": "nope", "state": "on"}), "not a valid uuid"),
            (
                json!({"id": ID, "state": "on", "count": -1}),
                "below the minimum",
            ),
            (
                json!({"id": ID, "state": "on", "extra": 1}),
                "\"extra\" is not documented",
            ),
            (
                json!({"id": ID, "state": "on", "tags": [1]}),
                "$.tags[0]: expected string",
            ),
            (
                json!({"id": ID, "state": "on", "kind": true}),
                "matches 0 of oneOf",
            ),
            (
                json!({"id": ID, "state": "on", "note": 5}),
                "expected string or null",
            ),
        ];
        for (body, expected) in cases {
            let got = check(
                &format!("/v1/things/{ID}"),
                200,
                "application/json",
                body.clone(),
            )
            .unwrap_or_else(|| panic!("{body} passed"));
            assert!(got.contains(expected), "{body}: {got}");
        }
    }

    #[test]
    fn undocumented_statuses_content_types_and_paths_are_reported() {
        let ok = json!({"id": ID, "state": "on"});
        let got = check(
            &format!("/v1/things/{ID}"),
            500,
            "application/json",
            ok.clone(),
        )
        .unwrap();
        assert!(got.contains("status not documented"), "{got}");
        let got = check(&format!("/v1/things/{ID}"), 200, "text/html", ok.clone()).unwrap();
        assert!(
            got.contains("content type \"text/html\" not documented"),
            "{got}"
        );
        let got = check("/v1/other", 200, "application/json", ok).unwrap();
        assert!(got.contains("path not in the OpenAPI document"), "{got}");
        // An unknown route may answer 404, in the problem shape only.
        assert_eq!(
            check(
                "/nope",
                404,
                "application/problem+json",
                json!({"title": "Not Found"})
            ),
            None
        );
        assert!(check("/nope", 404, "text/plain", json!("x")).is_some());
    }

    #[test]
    fn literal_segments_win_over_templates_and_bodiless_responses_stay_empty() {
        assert_eq!(
            check_response_in(&doc(), "GET", "/v1/things/special", 204, None, b""),
            None
        );
        assert!(check_response_in(&doc(), "GET", "/v1/things/special", 204, None, b"x").is_some());
    }

    #[test]
    #[should_panic(expected = "does not implement the schema keyword \"pattern\"")]
    fn an_unimplemented_keyword_fails_loudly() {
        let schema = json!({"type": "string", "pattern": "^a$"});
        validate(&doc(), &schema, &json!("a"), "$", &mut Vec::new());
    }

    #[test]
    fn the_committed_document_uses_only_keywords_the_validator_implements() {
        fn walk(doc: &Value, node: &Value, at: &str) {
            let Some(obj) = node.as_object() else { return };
            // `validate` asserts on unknown keywords before looking at the value.
            validate(doc, node, &Value::Null, at, &mut Vec::new());
            for (k, v) in obj {
                match k.as_str() {
                    "properties" => {
                        for (name, s) in v.as_object().into_iter().flatten() {
                            walk(doc, s, &format!("{at}.{name}"));
                        }
                    }
                    "items" | "additionalProperties" => walk(doc, v, &format!("{at}/{k}")),
                    "oneOf" | "anyOf" | "allOf" => {
                        for (i, s) in v.as_array().into_iter().flatten().enumerate() {
                            walk(doc, s, &format!("{at}/{k}[{i}]"));
                        }
                    }
                    _ => {}
                }
            }
        }
        let doc = &*DOC;
        for (name, schema) in doc["components"]["schemas"].as_object().expect("schemas") {
            walk(doc, schema, name);
        }
    }

    /// The proxy itself: a wrong answer from the app reaches the test as 598 and is recorded.
    #[tokio::test]
    async fn the_proxy_turns_a_wrong_response_into_a_recorded_violation() {
        use axum::routing::get;
        let app = axum::Router::new()
            .route(
                "/v1/deprovisions/{id}",
                get(|| async { axum::Json(json!({"id": 1})) }),
            )
            .route(
                "/healthz",
                get(|| async { axum::Json(json!({"status": "ok"})) }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let proxy = SchemaProxy::start(upstream).await;
        let r = reqwest::get(format!("http://{}/v1/deprovisions/{ID}", proxy.addr))
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 598);
        let text = r.text().await.unwrap();
        assert!(text.contains("GET /v1/deprovisions/"), "{text}");
        assert_eq!(proxy.take_violations().len(), 1);
    }
}

//! The committed OpenAPI document must match the code.

#[test]
fn committed_openapi_matches_the_code() {
    let generated = deprovisiond::http::openapi_json();
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi/openapi.json");
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        committed == generated,
        "openapi/openapi.json is out of date with the code; refresh it with:\n    \
         cargo run -- openapi --out openapi/openapi.json\nand commit the result"
    );
}

#[test]
fn every_route_documents_its_errors_as_problem_json() {
    let doc: serde_json::Value = serde_json::from_str(&deprovisiond::http::openapi_json()).unwrap();
    let paths = doc["paths"].as_object().unwrap();
    for p in [
        "/v1/deprovisions",
        "/v1/deprovisions/{id}",
        "/v1/deprovisions/{id}/cancel",
        "/healthz",
        "/readyz",
    ] {
        assert!(paths.contains_key(p), "missing {p}");
    }
    for (path, item) in paths {
        for (method, op) in item.as_object().unwrap() {
            for (code, resp) in op["responses"].as_object().unwrap() {
                if code.starts_with('4') || code.starts_with('5') {
                    assert!(
                        resp["content"].get("application/problem+json").is_some(),
                        "{method} {path} {code} is not problem+json"
                    );
                }
            }
        }
    }
}

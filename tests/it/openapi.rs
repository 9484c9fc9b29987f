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

/// Swagger UI's "Try it out" starts from the first example of the request body in the document: it must be a
/// reversible change to one device, and every example acting on a whole group must say so in its summary.
#[test]
fn try_it_out_starts_from_a_harmless_single_device_disable() {
    let text = deprovisiond::http::openapi_json();
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    let examples = doc["paths"]["/v1/deprovisions"]["post"]["requestBody"]["content"]
        ["application/json"]["examples"]
        .as_object()
        .expect("POST /v1/deprovisions has request examples");
    // The order Swagger UI sees is the order in the text, whatever map type parsed it here.
    let after = text
        .find("\"/v1/deprovisions\": {")
        .expect("path in document");
    let first = examples
        .keys()
        .min_by_key(|k| {
            text[after..]
                .find(&format!("\"{k}\": {{"))
                .expect("example name in text")
        })
        .unwrap();
    let value = &examples[first]["value"];
    assert_eq!(
        value["target"]["kind"], "individual_enrollment",
        "first example {first} must target one device: {value}"
    );
    for step in ["revoke", "registry"] {
        assert!(
            value.get(step).is_none_or(|v| v == "disable"),
            "first example {first} must only disable ({step}: {})",
            value[step]
        );
    }
    for key in ["delete_registrations", "delete_group", "force"] {
        assert!(value.get(key).is_none_or(|v| v == false), "{first}: {key}");
    }
    for (name, example) in examples {
        if example["value"]["target"]["kind"] == "enrollment_group" {
            let summary = example["summary"].as_str().unwrap_or_default();
            assert!(
                summary.to_lowercase().contains("every device of the group"),
                "group example {name} must say it acts on every device of the group: {summary:?}"
            );
        }
    }
}

//! Checks the simulator's routes and response bodies against the official swagger files.
//!
//! The folder comes from `AZURE_SPECS_DIR` (the test command sets it to `../shared/azure-specs` when
//! that exists); without it these tests say they are skipped and pass, except under `CI=true`, where they fail.

use std::path::PathBuf;

use azure_iot_sim::sas;
use azure_iot_sim::{SimConfig, Simulator};
use reqwest::Method;
use serde_json::{Value, json};

const DPS: &str = "demo-dps";
const DPS_HOST: &str = "demo-dps.azure-devices-provisioning.net";
const HUB: &str = "demo-hub-1.azure-devices.net";

mod common;

fn specs_dir() -> Option<PathBuf> {
    common::specs_dir("swagger conformance")
}

fn load(dir: &std::path::Path, file: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join(file)).unwrap()).unwrap()
}

/// Follows `$ref: "#/definitions/X"`.
fn resolve<'a>(spec: &'a Value, schema: &'a Value) -> &'a Value {
    match schema.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let name = r.trim_start_matches("#/definitions/");
            &spec["definitions"][name]
        }
        None => schema,
    }
}

/// Every field of `value` must be declared by `schema` with a compatible type (nulls allowed).
fn check(spec: &Value, schema: &Value, value: &Value, path: &str, errors: &mut Vec<String>) {
    let schema = resolve(spec, schema);
    if value.is_null() {
        return;
    }
    let ty = schema.get("type").and_then(Value::as_str);
    match value {
        Value::Object(map) => {
            if ty.is_some_and(|t| t != "object") {
                errors.push(format!("{path}: object where the spec says {ty:?}"));
                return;
            }
            let props = schema.get("properties").and_then(Value::as_object);
            let open = schema
                .get("additionalProperties")
                .is_some_and(|a| a != &Value::Bool(false));
            for (k, v) in map {
                match props.and_then(|p| p.get(k)) {
                    Some(s) => check(spec, s, v, &format!("{path}.{k}"), errors),
                    None if open || props.is_none() => {}
                    None => errors.push(format!("{path}.{k}: not in the spec")),
                }
            }
        }
        Value::Array(items) => {
            if ty.is_some_and(|t| t != "array") {
                errors.push(format!("{path}: array where the spec says {ty:?}"));
                return;
            }
            if let Some(item_schema) = schema.get("items") {
                for (i, v) in items.iter().enumerate() {
                    check(spec, item_schema, v, &format!("{path}[{i}]"), errors);
                }
            }
        }
        Value::String(s) => {
            if ty.is_some_and(|t| t != "string") {
                errors.push(format!("{path}: string where the spec says {ty:?}"));
            }
            if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
                && !allowed.iter().any(|a| a == s)
            {
                errors.push(format!("{path}: '{s}' is not one of {allowed:?}"));
            }
        }
        Value::Bool(_) if ty.is_some_and(|t| t != "boolean") => {
            errors.push(format!("{path}: boolean where the spec says {ty:?}"))
        }
        Value::Number(n) => {
            let ok = match ty {
                Some("integer") => n.is_i64() || n.is_u64(),
                Some("number") | None => true,
                _ => false,
            };
            if !ok {
                errors.push(format!("{path}: number where the spec says {ty:?}"));
            }
        }
        _ => {}
    }
}

fn def<'a>(spec: &'a Value, name: &str) -> &'a Value {
    &spec["definitions"][name]
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test]
async fn responses_match_the_swagger_definitions() {
    let Some(dir) = specs_dir() else { return };
    let dps_spec = load(&dir, "dps-service-2021-10-01.json");
    let hub_spec = load(&dir, "iothub-service-2021-04-12.json");
    let sim = Simulator::start(SimConfig::single(DPS, &[HUB]))
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let d = sim.state().dps(DPS).unwrap();
    let dkey = sas::key_bytes(
        d.policy("provisioningserviceowner")
            .unwrap()
            .primary_key
            .expose(),
    )
    .unwrap();
    let dtok = sas::mint(
        DPS_HOST,
        &dkey,
        Some("provisioningserviceowner"),
        now() + 600,
    );
    let h = sim.state().hub(HUB).unwrap();
    let hkey = sas::key_bytes(h.policy("iothubowner").unwrap().primary_key.expose()).unwrap();
    let htok = sas::mint(HUB, &hkey, Some("iothubowner"), now() + 600);
    let call =
        |base: String, tok: String, method: Method, path: &str, body: Option<Value>, api: &str| {
            let http = http.clone();
            let sep = if path.contains('?') { '&' } else { '?' };
            let url = format!("{base}{path}{sep}api-version={api}");
            async move {
                let mut rb = http.request(method, url).header("authorization", tok);
                if let Some(b) = body {
                    rb = rb.json(&b);
                }
                let resp = rb.send().await.unwrap();
                let text = resp.text().await.unwrap();
                if text.is_empty() {
                    Value::Null
                } else {
                    serde_json::from_str::<Value>(&text).unwrap()
                }
            }
        };
    let dps = |m: Method, p: &str, b: Option<Value>| {
        call(sim.dps_base_url(DPS), dtok.clone(), m, p, b, "2021-10-01")
    };
    let hub = |m: Method, p: &str, b: Option<Value>| {
        call(sim.hub_base_url(HUB), htok.clone(), m, p, b, "2021-04-12")
    };

    let ca = rcgen::generate_simple_self_signed(vec!["ca".to_string()]).unwrap();
    let mut checks: Vec<(&Value, &Value, Value, &str)> = Vec::new();
    let sym = json!({"registrationId": "e1", "deviceId": "e1", "attestation": {"type": "symmetricKey"}, "iotHubs": [HUB], "allocationPolicy": "hashed"});
    checks.push((
        &dps_spec,
        def(&dps_spec, "IndividualEnrollment"),
        dps(Method::PUT, "/enrollments/e1", Some(sym)).await,
        "PUT enrollment",
    ));
    d.upsert_registration(None, json!({"registrationId": "e1", "assignedHub": HUB, "deviceId": "e1", "status": "assigned", "substatus": "initialAssignment"})).unwrap();
    checks.push((
        &dps_spec,
        def(&dps_spec, "IndividualEnrollment"),
        dps(Method::GET, "/enrollments/e1", None).await,
        "GET enrollment",
    ));
    checks.push((
        &dps_spec,
        def(&dps_spec, "AttestationMechanism"),
        dps(Method::POST, "/enrollments/e1/attestationmechanism", None).await,
        "attestation",
    ));
    let grp = json!({"enrollmentGroupId": "g1", "attestation": {"type": "x509", "x509": {"signingCertificates": {"primary": {"certificate": ca.cert.pem()}}}}});
    checks.push((
        &dps_spec,
        def(&dps_spec, "EnrollmentGroup"),
        dps(Method::PUT, "/enrollmentGroups/g1", Some(grp)).await,
        "PUT group",
    ));
    d.upsert_registration(Some("g1"), json!({"registrationId": "g1-d1", "assignedHub": HUB, "deviceId": "g1-d1", "status": "assigned"})).unwrap();
    let regs = dps(Method::POST, "/registrations/g1/query", None).await;
    checks.push((
        &dps_spec,
        def(&dps_spec, "DeviceRegistrationState"),
        regs[0].clone(),
        "registration query",
    ));
    checks.push((
        &dps_spec,
        def(&dps_spec, "EnrollmentGroup"),
        dps(
            Method::POST,
            "/enrollmentGroups/query",
            Some(json!({"query": "SELECT *"})),
        )
        .await[0]
            .clone(),
        "group query",
    ));
    let bulk = json!({"mode": "create", "enrollments": [{"registrationId": "e1", "attestation": {"type": "symmetricKey"}}]});
    checks.push((
        &dps_spec,
        def(&dps_spec, "BulkEnrollmentOperationResult"),
        dps(Method::POST, "/enrollments", Some(bulk)).await,
        "DPS bulk",
    ));
    checks.push((
        &dps_spec,
        def(&dps_spec, "ProvisioningServiceErrorDetails"),
        dps(Method::GET, "/enrollments/none", None).await,
        "DPS error",
    ));

    checks.push((
        &hub_spec,
        def(&hub_spec, "Device"),
        hub(Method::PUT, "/devices/d1", Some(json!({"deviceId": "d1"}))).await,
        "PUT device",
    ));
    checks.push((
        &hub_spec,
        def(&hub_spec, "Device"),
        hub(Method::GET, "/devices/d1", None).await,
        "GET device",
    ));
    checks.push((
        &hub_spec,
        def(&hub_spec, "Twin"),
        hub(
            Method::POST,
            "/devices/query",
            Some(json!({"query": "SELECT * FROM devices"})),
        )
        .await[0]
            .clone(),
        "twin",
    ));
    let bulk = json!([{"id": "d1", "importMode": "create"}]);
    checks.push((
        &hub_spec,
        def(&hub_spec, "BulkRegistryOperationResult"),
        hub(Method::POST, "/devices", Some(bulk)).await,
        "hub bulk",
    ));
    checks.push((
        &hub_spec,
        def(&hub_spec, "RegistryStatistics"),
        hub(Method::GET, "/statistics/devices", None).await,
        "device statistics",
    ));
    // Import/export jobs: the blob service named here does not exist, so the job ends `failed`
    // with a failureReason, which is part of the checked shape too.
    let job = hub(
        Method::POST,
        "/jobs/create",
        Some(json!({"type": "export", "outputBlobContainerUri": "http://127.0.0.1:9/acct/c?sig=x", "excludeKeysInExport": true})),
    )
    .await;
    let job_id = job["jobId"].as_str().unwrap_or_default().to_string();
    checks.push((
        &hub_spec,
        def(&hub_spec, "JobProperties"),
        job,
        "create job",
    ));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let ended = loop {
        let j = hub(Method::GET, &format!("/jobs/{job_id}"), None).await;
        if j["status"] == "failed" || std::time::Instant::now() > deadline {
            break j;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert!(ended["failureReason"].is_string(), "{ended}");
    checks.push((&hub_spec, def(&hub_spec, "JobProperties"), ended, "get job"));
    checks.push((
        &hub_spec,
        &hub_spec["paths"]["/jobs"]["get"]["responses"]["200"]["schema"],
        hub(Method::GET, "/jobs", None).await,
        "list jobs",
    ));

    let mut errors = Vec::new();
    for (spec, schema, value, what) in &checks {
        assert!(!value.is_null(), "{what}: empty response");
        check(spec, schema, value, what, &mut errors);
    }
    assert!(errors.is_empty(), "{errors:#?}");
    sim.shutdown().await;
}

#[test]
fn every_dps_spec_operation_is_routed_and_hub_routes_exist_in_the_spec() {
    let Some(dir) = specs_dir() else { return };
    let dps_spec = load(&dir, "dps-service-2021-10-01.json");
    for (path, ops) in dps_spec["paths"].as_object().unwrap() {
        for method in ops
            .as_object()
            .unwrap()
            .keys()
            .filter(|m| *m != "parameters")
        {
            let concrete = path.replace("{id}", "some-id");
            let m = Method::from_bytes(method.to_ascii_uppercase().as_bytes()).unwrap();
            assert!(
                azure_iot_sim::dps_service::route(&m, &concrete).is_ok(),
                "{method} {path} is not routed"
            );
        }
    }
    let hub_spec = load(&dir, "iothub-service-2021-04-12.json");
    for (m, p) in [
        ("get", "/devices/{id}"),
        ("put", "/devices/{id}"),
        ("delete", "/devices/{id}"),
        ("get", "/devices"),
        ("post", "/devices"),
        ("post", "/devices/query"),
        ("post", "/jobs/create"),
        ("get", "/jobs"),
        ("get", "/jobs/{id}"),
        ("delete", "/jobs/{id}"),
        ("get", "/statistics/devices"),
    ] {
        assert!(
            hub_spec["paths"][p][m].is_object(),
            "{m} {p} is not in the hub spec"
        );
        let method = Method::from_bytes(m.to_ascii_uppercase().as_bytes()).unwrap();
        assert!(azure_iot_sim::hub::route(&method, &p.replace("{id}", "x")).is_ok());
    }
}

#[test]
fn the_checker_flags_unknown_fields_wrong_types_and_enums() {
    let Some(dir) = specs_dir() else { return };
    let spec = load(&dir, "iothub-service-2021-04-12.json");
    let mut errors = Vec::new();
    let bad = json!({"deviceId": 5, "status": "paused", "bogus": true, "capabilities": {"iotEdge": false}});
    check(&spec, def(&spec, "Device"), &bad, "device", &mut errors);
    assert_eq!(errors.len(), 3, "{errors:#?}");
}

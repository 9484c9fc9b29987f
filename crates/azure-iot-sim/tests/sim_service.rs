//! The simulator's DPS service and IoT Hub registry APIs, driven over HTTP with hand-made SAS tokens.

use std::sync::Arc;
use std::time::Duration;

use azure_iot_sim::sas;
use azure_iot_sim::throttle::ThrottlePatch;
use azure_iot_sim::{
    FakeClock, FaultAction, FaultRule, HubConfig, HubTier, PolicyConfig, RunningSimulator,
    SimConfig, Simulator, ThrottleConfig,
};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const DPS: &str = "demo-dps";
const DPS_HOST: &str = "demo-dps.azure-devices-provisioning.net";
const HUB: &str = "demo-hub-1.azure-devices.net";
const API_DPS: &str = "2021-10-01";
const API_HUB: &str = "2021-04-12";

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

struct Env {
    sim: RunningSimulator,
    http: reqwest::Client,
}

impl Env {
    async fn start(cfg: SimConfig) -> Self {
        let sim = Simulator::start(cfg).await.unwrap();
        Self {
            sim,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
        }
    }

    async fn default() -> Self {
        Self::start(SimConfig::single(DPS, &[HUB])).await
    }

    fn dps_token(&self, policy: &str) -> String {
        let d = self.sim.state().dps(DPS).unwrap();
        let key = sas::key_bytes(d.policy(policy).unwrap().primary_key.expose()).unwrap();
        sas::mint(DPS_HOST, &key, Some(policy), now_unix() + 600)
    }

    fn hub_token(&self, policy: &str) -> String {
        let h = self.sim.state().hub(HUB).unwrap();
        let key = sas::key_bytes(h.policy(policy).unwrap().primary_key.expose()).unwrap();
        sas::mint(HUB, &key, Some(policy), now_unix() + 600)
    }

    async fn dps(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> (StatusCode, reqwest::header::HeaderMap, Value) {
        let url = format!(
            "{}{}?api-version={API_DPS}",
            self.sim.dps_base_url(DPS),
            path
        );
        self.send(
            method,
            &url,
            self.dps_token("provisioningserviceowner"),
            body,
            headers,
        )
        .await
    }

    async fn hub(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> (StatusCode, reqwest::header::HeaderMap, Value) {
        let sep = if path.contains('?') { '&' } else { '?' };
        let url = format!(
            "{}{}{sep}api-version={API_HUB}",
            self.sim.hub_base_url(HUB),
            path
        );
        self.send(method, &url, self.hub_token("iothubowner"), body, headers)
            .await
    }

    async fn send(
        &self,
        method: Method,
        url: &str,
        token: String,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> (StatusCode, reqwest::header::HeaderMap, Value) {
        let mut rb = self
            .http
            .request(method, url)
            .header("authorization", token);
        for (k, v) in headers {
            rb = rb.header(*k, *v);
        }
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        let resp = rb.send().await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap();
        let v = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap()
        };
        (status, headers, v)
    }
}

fn sym_enrollment(id: &str) -> Value {
    json!({"registrationId": id, "attestation": {"type": "symmetricKey"}, "customField": {"kept": true}})
}

#[tokio::test]
async fn dps_individual_enrollment_lifecycle_with_etags_and_hidden_keys() {
    let env = Env::default().await;
    let (s, _, created) = env
        .dps(
            Method::PUT,
            "/enrollments/dev-1",
            Some(sym_enrollment("dev-1")),
            &[],
        )
        .await;
    assert_eq!(s, 200, "{created}");
    let key = created["attestation"]["symmetricKey"]["primaryKey"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(sas::key_bytes(&key).unwrap().len(), 64);
    assert_eq!(created["provisioningStatus"], "enabled");
    assert_eq!(
        created["customField"]["kept"], true,
        "unknown fields round-trip"
    );
    let etag1 = created["etag"].as_str().unwrap().to_string();

    let (s, _, got) = env.dps(Method::GET, "/enrollments/DEV-1", None, &[]).await;
    assert_eq!(s, 200);
    assert_eq!(got["etag"], etag1.as_str());
    assert!(
        got["attestation"]["symmetricKey"]
            .get("primaryKey")
            .is_none(),
        "GET hides keys: {got}"
    );

    let (s, _, att) = env
        .dps(
            Method::POST,
            "/enrollments/dev-1/attestationmechanism",
            None,
            &[],
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(att["symmetricKey"]["primaryKey"], key.as_str());

    // Wrong etag: 412 with the DPS error shape.
    let mut body = got.clone();
    body["provisioningStatus"] = json!("disabled");
    body["attestation"] = att.clone();
    let (s, h, err) = env
        .dps(
            Method::PUT,
            "/enrollments/dev-1",
            Some(body.clone()),
            &[("if-match", "\"bogus\"")],
        )
        .await;
    assert_eq!(s, 412);
    assert_eq!(err["errorCode"], 412001);
    assert!(err["trackingId"].is_string() && err["timestampUtc"].is_string());
    assert_eq!(h["x-ms-error-code"], "412001");

    // Right etag, unquoted as the CLI sends it: the etag changes, keys kept because they were sent back.
    let (s, _, updated) = env
        .dps(
            Method::PUT,
            "/enrollments/dev-1",
            Some(body.clone()),
            &[("if-match", &etag1)],
        )
        .await;
    assert_eq!(s, 200, "{updated}");
    assert_eq!(updated["provisioningStatus"], "disabled");
    assert_ne!(updated["etag"], etag1.as_str());
    assert_eq!(
        updated["attestation"]["symmetricKey"]["primaryKey"],
        key.as_str()
    );
    assert_eq!(updated["createdDateTimeUtc"], created["createdDateTimeUtc"]);

    // A PUT without keys regenerates them (what a careless full replace does).
    let (s, _, regen) = env
        .dps(
            Method::PUT,
            "/enrollments/dev-1",
            Some(sym_enrollment("dev-1")),
            &[("if-match", "*")],
        )
        .await;
    assert_eq!(s, 200);
    assert_ne!(
        regen["attestation"]["symmetricKey"]["primaryKey"],
        key.as_str()
    );

    let (s, _, _) = env
        .dps(
            Method::DELETE,
            "/enrollments/dev-1",
            None,
            &[("if-match", &etag1)],
        )
        .await;
    assert_eq!(s, 412, "stale etag refused on delete");
    let (s, _, _) = env
        .dps(
            Method::DELETE,
            "/enrollments/dev-1",
            None,
            &[("if-match", "*")],
        )
        .await;
    assert_eq!(s, 204);
    let (s, h, err) = env.dps(Method::GET, "/enrollments/dev-1", None, &[]).await;
    assert_eq!(s, 404);
    assert_eq!(err["errorCode"], 404201);
    assert_eq!(h["x-ms-error-code"], "404201");
    assert_eq!(err["trackingId"], h["x-ms-request-id"].to_str().unwrap());
    env.sim.shutdown().await;
}

#[tokio::test]
async fn dps_validation_and_api_version() {
    let env = Env::default().await;
    let url = format!("{}/enrollments/x", env.sim.dps_base_url(DPS));
    let resp = env
        .http
        .get(&url)
        .header("authorization", env.dps_token("provisioningserviceowner"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400, "api-version is required");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["errorCode"], 400004);

    for (path, body) in [
        ("/enrollments/bad%20id", sym_enrollment("bad id")),
        ("/enrollments/a", sym_enrollment("b")),
        ("/enrollments/a", json!({"registrationId": "a"})),
        (
            "/enrollments/a",
            json!({"registrationId": "a", "attestation": {"type": "tpm", "tpm": {}}}),
        ),
        (
            "/enrollments/a",
            json!({"registrationId": "a", "attestation": {"type": "x509", "x509": {"clientCertificates": {"primary": {"certificate": "junk"}}}}}),
        ),
        (
            "/enrollmentGroups/g",
            json!({"enrollmentGroupId": "g", "attestation": {"type": "tpm", "tpm": {"endorsementKey": "x"}}}),
        ),
    ] {
        let (s, _, err) = env.dps(Method::PUT, path, Some(body), &[]).await;
        assert_eq!(s, 400, "{path}: {err}");
        assert_eq!(err["errorCode"], 400004);
    }
    let long = "a".repeat(129);
    let (s, _, _) = env
        .dps(
            Method::PUT,
            &format!("/enrollments/{long}"),
            Some(sym_enrollment(&long)),
            &[],
        )
        .await;
    assert_eq!(s, 400);
    let (s, _, _) = env.dps(Method::PATCH, "/enrollments/a", None, &[]).await;
    assert_eq!(s, 405);
    env.sim.shutdown().await;
}

#[tokio::test]
async fn dps_x509_group_returns_info_not_the_certificate_and_accepts_an_echo() {
    let env = Env::default().await;
    let ca = rcgen::generate_simple_self_signed(vec!["Intermediate CA".to_string()]).unwrap();
    let pem = ca.cert.pem();
    let group = json!({
        "enrollmentGroupId": "fleet-a",
        "attestation": {"type": "x509", "x509": {"signingCertificates": {"primary": {"certificate": pem}}}},
        "iotHubs": [HUB],
    });
    let (s, _, created) = env
        .dps(Method::PUT, "/enrollmentGroups/fleet-a", Some(group), &[])
        .await;
    assert_eq!(s, 200, "{created}");
    let primary = &created["attestation"]["x509"]["signingCertificates"]["primary"];
    assert!(primary.get("certificate").is_none());
    let der = ca.cert.der().to_vec();
    assert_eq!(
        primary["info"]["sha1Thumbprint"],
        azure_iot_sim::x509::sha1_thumbprint(&der)
    );
    assert_eq!(primary["info"]["version"], 3);

    // Echo the GET body with only the status changed: no certificate re-upload needed.
    let (_, _, mut got) = env
        .dps(Method::GET, "/enrollmentGroups/fleet-a", None, &[])
        .await;
    got["provisioningStatus"] = json!("disabled");
    let etag = got["etag"].as_str().unwrap().to_string();
    let (s, _, updated) = env
        .dps(
            Method::PUT,
            "/enrollmentGroups/fleet-a",
            Some(got),
            &[("if-match", &format!("\"{etag}\""))],
        )
        .await;
    assert_eq!(s, 200, "{updated}");
    let stored = env
        .sim
        .state()
        .dps(DPS)
        .unwrap()
        .find_group("fleet-a")
        .unwrap();
    assert_eq!(stored["provisioningStatus"], "disabled");
    assert_eq!(
        stored["attestation"]["x509"]["signingCertificates"]["primary"]["certificate"],
        pem.as_str()
    );

    // An unlinked hub is refused.
    let bad = json!({"enrollmentGroupId": "g2", "attestation": {"type": "symmetricKey"}, "iotHubs": ["nope.azure-devices.net"]});
    let (s, _, _) = env
        .dps(Method::PUT, "/enrollmentGroups/g2", Some(bad), &[])
        .await;
    assert_eq!(s, 400);
    env.sim.shutdown().await;
}

async fn collect_pages(
    env: &Env,
    path: &str,
    max: &str,
    body: Option<Value>,
    hub: bool,
) -> Vec<Vec<Value>> {
    let mut pages = Vec::new();
    let mut cont: Option<String> = None;
    loop {
        let mut headers = vec![("x-ms-max-item-count", max)];
        let c;
        if let Some(t) = &cont {
            c = t.clone();
            headers.push(("x-ms-continuation", &c));
        }
        let (s, h, v) = if hub {
            env.hub(Method::POST, path, body.clone(), &headers).await
        } else {
            env.dps(Method::POST, path, body.clone(), &headers).await
        };
        assert_eq!(s, 200, "{v}");
        assert!(h.contains_key("x-ms-item-type"));
        pages.push(v.as_array().unwrap().clone());
        match h.get("x-ms-continuation") {
            Some(t) => cont = Some(t.to_str().unwrap().to_string()),
            None => break,
        }
        assert!(pages.len() < 50, "paging does not end");
    }
    pages
}

#[tokio::test]
async fn dps_queries_page_with_continuation_tokens() {
    let env = Env::default().await;
    for i in 0..25 {
        let id = format!("dev-{i:02}");
        let (s, _, _) = env
            .dps(
                Method::PUT,
                &format!("/enrollments/{id}"),
                Some(sym_enrollment(&id)),
                &[],
            )
            .await;
        assert_eq!(s, 200);
    }
    let pages = collect_pages(
        &env,
        "/enrollments/query",
        "10",
        Some(json!({"query": "SELECT *"})),
        false,
    )
    .await;
    assert_eq!(
        pages.iter().map(Vec::len).collect::<Vec<_>>(),
        vec![10, 10, 5]
    );
    let ids: Vec<&str> = pages
        .iter()
        .flatten()
        .map(|e| e["registrationId"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 25);
    assert!(
        pages
            .iter()
            .flatten()
            .all(|e| e["attestation"]["symmetricKey"].get("primaryKey").is_none())
    );

    // Registration states of a group, written the way the device API does.
    let dps = env.sim.state().dps(DPS).unwrap();
    for i in 0..7 {
        let st = json!({"registrationId": format!("g-dev-{i}"), "assignedHub": HUB, "deviceId": format!("g-dev-{i}"), "status": "assigned"});
        dps.upsert_registration(Some("fleet"), st).unwrap();
    }
    dps.upsert_registration(
        Some("other"),
        json!({"registrationId": "x-1", "status": "assigned"}),
    )
    .unwrap();
    let pages = collect_pages(
        &env,
        "/registrations/fleet/query",
        "3",
        Some(json!({"query": "SELECT *"})),
        false,
    )
    .await;
    assert_eq!(
        pages.iter().map(Vec::len).collect::<Vec<_>>(),
        vec![3, 3, 1]
    );
    assert!(
        pages
            .iter()
            .flatten()
            .all(|r| r["etag"].is_string() && r["assignedHub"] == HUB)
    );

    let (s, _, reg) = env
        .dps(Method::GET, "/registrations/g-dev-3", None, &[])
        .await;
    assert_eq!(s, 200);
    assert_eq!(reg["deviceId"], "g-dev-3");
    let (s, _, _) = env
        .dps(
            Method::DELETE,
            "/registrations/g-dev-3",
            None,
            &[("if-match", "nope")],
        )
        .await;
    assert_eq!(s, 412);
    let (s, _, _) = env
        .dps(Method::DELETE, "/registrations/g-dev-3", None, &[])
        .await;
    assert_eq!(s, 204);
    let (s, _, err) = env
        .dps(Method::GET, "/registrations/g-dev-3", None, &[])
        .await;
    assert_eq!((s.as_u16(), err["errorCode"].as_u64()), (404, Some(404201)));
    let (s, _, _) = env
        .dps(
            Method::POST,
            "/enrollments/query",
            Some(json!({"query": "SELECT *"})),
            &[("x-ms-continuation", "garbage!")],
        )
        .await;
    assert_eq!(s, 400);
    env.sim.shutdown().await;
}

#[tokio::test]
async fn dps_bulk_reports_per_item_errors_and_caps_at_ten() {
    let env = Env::default().await;
    env.dps(
        Method::PUT,
        "/enrollments/b-1",
        Some(sym_enrollment("b-1")),
        &[],
    )
    .await;
    let body = json!({"mode": "create", "enrollments": [sym_enrollment("b-1"), sym_enrollment("b-2"), sym_enrollment("b-3")]});
    let (s, _, res) = env.dps(Method::POST, "/enrollments", Some(body), &[]).await;
    assert_eq!(s, 200);
    assert_eq!(res["isSuccessful"], false);
    let errs = res["errors"].as_array().unwrap();
    assert_eq!(errs.len(), 1);
    assert_eq!(errs[0]["registrationId"], "b-1");
    assert_eq!(errs[0]["errorCode"], 409201);
    assert!(errs[0]["errorStatus"].is_string());
    assert!(
        env.sim
            .state()
            .dps(DPS)
            .unwrap()
            .find_enrollment("b-3")
            .is_some()
    );

    let body =
        json!({"mode": "delete", "enrollments": [sym_enrollment("b-2"), sym_enrollment("zz")]});
    let (_, _, res) = env.dps(Method::POST, "/enrollments", Some(body), &[]).await;
    assert_eq!(res["errors"][0]["registrationId"], "zz");
    assert_eq!(res["errors"][0]["errorCode"], 404201);

    let many: Vec<Value> = (0..11).map(|i| sym_enrollment(&format!("m-{i}"))).collect();
    let (s, _, _) = env
        .dps(
            Method::POST,
            "/enrollments",
            Some(json!({"mode": "create", "enrollments": many})),
            &[],
        )
        .await;
    assert_eq!(s, 400);
    let g = json!({"enrollmentGroupId": "g1", "attestation": {"type": "symmetricKey"}});
    let (s, _, res) = env
        .dps(
            Method::POST,
            "/enrollmentGroups",
            Some(json!({"mode": "update", "enrollmentGroups": [g]})),
            &[],
        )
        .await;
    assert_eq!(
        (s.as_u16(), res["isSuccessful"].as_bool()),
        (200, Some(true))
    );
    env.sim.shutdown().await;
}

#[tokio::test]
async fn hub_device_crud_full_replace_and_errors() {
    let env = Env::default().await;
    let (s, _, created) = env
        .hub(
            Method::PUT,
            "/devices/dev-1",
            Some(json!({"deviceId": "dev-1"})),
            &[],
        )
        .await;
    assert_eq!(s, 200, "{created}");
    assert_eq!(created["authentication"]["type"], "sas");
    let key = created["authentication"]["symmetricKey"]["primaryKey"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(created["status"], "enabled");
    assert!(created["generationId"].is_string() && created["etag"].is_string());

    let (s, h, err) = env
        .hub(
            Method::PUT,
            "/devices/dev-1",
            Some(json!({"deviceId": "dev-1"})),
            &[],
        )
        .await;
    assert_eq!(s, 409);
    assert_eq!(h["iothub-errorcode"], "DeviceAlreadyExists");
    assert!(
        err["Message"]
            .as_str()
            .unwrap()
            .starts_with("ErrorCode:DeviceAlreadyExists;")
    );
    assert!(
        err["ExceptionMessage"]
            .as_str()
            .unwrap()
            .starts_with("Tracking ID:")
    );

    // Full GET body back with only the status changed: keys and generationId survive.
    let (_, _, mut got) = env.hub(Method::GET, "/devices/dev-1", None, &[]).await;
    got["status"] = json!("disabled");
    got["statusReason"] = json!("job 42");
    let etag = format!("\"{}\"", got["etag"].as_str().unwrap());
    let (s, _, upd) = env
        .hub(
            Method::PUT,
            "/devices/dev-1",
            Some(got.clone()),
            &[("if-match", &etag)],
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(
        upd["authentication"]["symmetricKey"]["primaryKey"],
        key.as_str()
    );
    assert_eq!(upd["generationId"], created["generationId"]);
    assert_eq!(upd["status"], "disabled");
    assert_ne!(upd["statusUpdatedTime"], created["statusUpdatedTime"]);
    assert_ne!(upd["etag"], created["etag"]);

    let (s, h, _) = env
        .hub(
            Method::PUT,
            "/devices/dev-1",
            Some(got.clone()),
            &[("if-match", &etag)],
        )
        .await;
    assert_eq!(s, 412, "stale etag");
    assert_eq!(h["iothub-errorcode"], "PreconditionFailed");

    // A partial PUT resets the keys, as a real hub does.
    let (s, _, partial) = env
        .hub(
            Method::PUT,
            "/devices/dev-1",
            Some(json!({"deviceId": "dev-1", "status": "disabled"})),
            &[("if-match", "\"*\"")],
        )
        .await;
    assert_eq!(s, 200);
    assert_ne!(
        partial["authentication"]["symmetricKey"]["primaryKey"],
        key.as_str()
    );

    let long = "r".repeat(129);
    let (s, _, _) = env
        .hub(
            Method::PUT,
            "/devices/dev-1",
            Some(json!({"deviceId": "dev-1", "statusReason": long})),
            &[("if-match", "\"*\"")],
        )
        .await;
    assert_eq!(s, 400);
    let (s, _, _) = env.hub(Method::PUT, "/devices/x509-1", Some(json!({"authentication": {"type": "selfSigned", "x509Thumbprint": {"primaryThumbprint": "ab".repeat(20)}}})), &[]).await;
    assert_eq!(s, 200);
    let (s, _, _) = env
        .hub(
            Method::PUT,
            "/devices/x509-2",
            Some(json!({"authentication": {"type": "selfSigned"}})),
            &[],
        )
        .await;
    assert_eq!(s, 400);

    let (s, _, list) = env.hub(Method::GET, "/devices?top=1", None, &[]).await;
    assert_eq!((s.as_u16(), list.as_array().unwrap().len()), (200, 1));

    let (s, h, _) = env.hub(Method::DELETE, "/devices/dev-1", None, &[]).await;
    assert_eq!(
        (s.as_u16(), h["iothub-errorcode"].to_str().unwrap()),
        (400, "ArgumentNull")
    );
    let (s, _, _) = env
        .hub(
            Method::DELETE,
            "/devices/dev-1",
            None,
            &[("if-match", "\"AAAA\"")],
        )
        .await;
    assert_eq!(s, 412);
    let (s, _, _) = env
        .hub(
            Method::DELETE,
            "/devices/dev-1",
            None,
            &[("if-match", "\"*\"")],
        )
        .await;
    assert_eq!(s, 204);
    let (s, h, err) = env.hub(Method::GET, "/devices/dev-1", None, &[]).await;
    assert_eq!(s, 404);
    assert_eq!(h["iothub-errorcode"], "DeviceNotFound");
    assert!(err["Message"].as_str().unwrap().contains("DeviceNotFound"));
    env.sim.shutdown().await;
}

#[tokio::test]
async fn hub_bulk_and_twin_query_paging() {
    let env = Env::default().await;
    let items: Vec<Value> = (0..100)
        .map(|i| json!({"id": format!("d-{i:03}"), "importMode": "create"}))
        .collect();
    let (s, _, res) = env
        .hub(Method::POST, "/devices", Some(Value::Array(items)), &[])
        .await;
    assert_eq!(s, 200, "{res}");
    assert_eq!(
        res,
        json!({"isSuccessful": true, "errors": [], "warnings": []})
    );
    let items: Vec<Value> = (100..250)
        .map(|i| json!({"id": format!("d-{i:03}"), "importMode": "create"}))
        .collect();
    let (s, h, _) = env
        .hub(
            Method::POST,
            "/devices",
            Some(Value::Array(items.clone())),
            &[],
        )
        .await;
    assert_eq!(
        (s.as_u16(), h["iothub-errorcode"].to_str().unwrap()),
        (413, "TooManyDevices")
    );
    for chunk in items.chunks(100) {
        let (s, _, _) = env
            .hub(
                Method::POST,
                "/devices",
                Some(Value::Array(chunk.to_vec())),
                &[],
            )
            .await;
        assert_eq!(s, 200);
    }
    let etag = env
        .sim
        .state()
        .hub(HUB)
        .unwrap()
        .get_device("d-001")
        .unwrap()["etag"]
        .as_str()
        .unwrap()
        .to_string();
    let mixed = json!([
        {"id": "d-000", "importMode": "update", "status": "disabled", "statusReason": "bulk"},
        {"id": "d-001", "importMode": "updateIfMatchETag", "eTag": etag, "status": "disabled"},
        {"id": "d-002", "importMode": "updateIfMatchETag", "eTag": "stale", "status": "disabled"},
        {"id": "missing", "importMode": "delete"},
        {"id": "d-003", "importMode": "create"},
    ]);
    let (s, _, res) = env.hub(Method::POST, "/devices", Some(mixed), &[]).await;
    assert_eq!(s, 400);
    assert_eq!(res["isSuccessful"], false);
    let codes: Vec<(&str, &str)> = res["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["deviceId"].as_str().unwrap(),
                e["errorCode"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        codes,
        vec![
            ("d-002", "PreconditionFailed"),
            ("missing", "DeviceNotFound"),
            ("d-003", "DeviceAlreadyExists")
        ]
    );
    let (s, _, _) = env
        .hub(
            Method::POST,
            "/devices",
            Some(json!([{"id": "a", "importMode": "create"}, {"id": "a", "importMode": "delete"}])),
            &[],
        )
        .await;
    assert_eq!(s, 400);

    let pages = collect_pages(
        &env,
        "/devices/query",
        "100",
        Some(json!({"query": "SELECT * FROM devices"})),
        true,
    )
    .await;
    assert_eq!(
        pages.iter().map(Vec::len).collect::<Vec<_>>(),
        vec![100, 100, 50]
    );
    assert!(pages[0][0]["deviceEtag"].is_string() && pages[0][0]["authenticationType"] == "sas");
    let disabled = collect_pages(
        &env,
        "/devices/query",
        "1",
        Some(json!({"query": "SELECT * FROM devices WHERE status = 'disabled'"})),
        true,
    )
    .await;
    assert_eq!(
        disabled.iter().map(Vec::len).collect::<Vec<_>>(),
        vec![1, 1]
    );
    let (s, _, _) = env
        .hub(
            Method::POST,
            "/devices/query",
            Some(json!({"query": "SELECT deviceId FROM devices GROUP BY x"})),
            &[],
        )
        .await;
    assert_eq!(s, 400);
    env.sim.shutdown().await;
}

#[tokio::test]
async fn hub_device_statistics_count_devices_by_status_and_spend_no_quota() {
    let env = Env::default().await;
    let (s, _, empty) = env.hub(Method::GET, "/statistics/devices", None, &[]).await;
    assert_eq!(s, 200, "{empty}");
    assert_eq!(
        empty,
        json!({"totalDeviceCount": 0, "enabledDeviceCount": 0, "disabledDeviceCount": 0})
    );
    for id in ["dev-1", "dev-2", "dev-3"] {
        let (s, _, _) = env
            .hub(
                Method::PUT,
                &format!("/devices/{id}"),
                Some(json!({"deviceId": id})),
                &[],
            )
            .await;
        assert_eq!(s, 200);
    }
    let (s, _, _) = env
        .hub(
            Method::PUT,
            "/devices/dev-2",
            Some(json!({"deviceId": "dev-2", "status": "disabled"})),
            &[("if-match", "\"*\"")],
        )
        .await;
    assert_eq!(s, 200);
    let (s, h, stats) = env.hub(Method::GET, "/statistics/devices", None, &[]).await;
    assert_eq!(s, 200);
    assert!(
        h["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    assert_eq!(
        stats,
        json!({"totalDeviceCount": 3, "enabledDeviceCount": 2, "disabledDeviceCount": 1})
    );

    // The registry routes' authentication: RegistryRead is needed, ServiceConnect is not enough.
    let url = format!(
        "{}/statistics/devices?api-version={API_HUB}",
        env.sim.hub_base_url(HUB)
    );
    let with = |token: Option<String>| {
        let mut rb = env.http.get(&url);
        if let Some(t) = token {
            rb = rb.header("authorization", t);
        }
        async move { rb.send().await.unwrap().status() }
    };
    assert_eq!(with(None).await, 401);
    assert_eq!(with(Some(env.hub_token("service"))).await, 401);
    assert_eq!(with(Some(env.hub_token("registryRead"))).await, 200);
    let (s, _, _) = env
        .hub(Method::POST, "/statistics/devices", Some(json!({})), &[])
        .await;
    assert_eq!(s, 405);

    let calls: Vec<_> = env
        .sim
        .calls()
        .into_iter()
        .filter(|c| c.operation == "GetDeviceStatistics" && c.status == Some(200))
        .collect();
    assert_eq!(calls.len(), 3);
    assert!(
        calls.iter().all(|c| c.cost == 0.0 && c.quota.is_none()),
        "not counted against any quota: {calls:?}"
    );
    env.sim.shutdown().await;

    // With the registry quota spent, the counts still come.
    let clock = FakeClock::new(chrono::Utc::now());
    let mut cfg = SimConfig::single(DPS, &[HUB]);
    cfg.throttle = ThrottleConfig::default();
    let sim = Simulator::start_with_clock(cfg, Arc::new(clock))
        .await
        .unwrap();
    let env = Env {
        sim,
        http: reqwest::Client::new(),
    };
    for _ in 0..100 {
        env.hub(Method::GET, "/devices/none", None, &[]).await;
    }
    assert_eq!(
        env.hub(Method::GET, "/devices/none", None, &[]).await.0,
        429
    );
    for _ in 0..3 {
        let (s, _, stats) = env.hub(Method::GET, "/statistics/devices", None, &[]).await;
        assert_eq!(s, 200, "{stats}");
    }
    env.sim.shutdown().await;
}

#[tokio::test]
async fn auth_refuses_bad_signature_expiry_scope_and_missing_rights() {
    let env = Env::default().await;
    let h = env.sim.state().hub(HUB).unwrap();
    let key = sas::key_bytes(h.policy("iothubowner").unwrap().primary_key.expose()).unwrap();
    let url = format!(
        "{}/devices/x?api-version={API_HUB}",
        env.sim.hub_base_url(HUB)
    );
    let wrong_key = sas::key_bytes("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=").unwrap();
    let cases = [
        (
            "bad signature",
            sas::mint(HUB, &wrong_key, Some("iothubowner"), now_unix() + 600),
        ),
        (
            "expired",
            sas::mint(HUB, &key, Some("iothubowner"), now_unix() - 1),
        ),
        (
            "wrong sr",
            sas::mint(
                "other-hub.azure-devices.net",
                &key,
                Some("iothubowner"),
                now_unix() + 600,
            ),
        ),
        (
            "unknown policy",
            sas::mint(HUB, &key, Some("nobody"), now_unix() + 600),
        ),
    ];
    for (what, token) in cases {
        let resp = env
            .http
            .get(&url)
            .header("authorization", token)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401, "{what}");
        assert_eq!(
            resp.headers()["iothub-errorcode"],
            "IotHubUnauthorizedAccess"
        );
        let body: Value = resp.json().await.unwrap();
        let inner: Value = serde_json::from_str(body["Message"].as_str().unwrap()).unwrap();
        assert_eq!(inner["errorCode"], 401002, "{what}");
    }
    let resp = env.http.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 401, "no header");

    // A path-scoped token works; rights are per policy.
    let scoped = sas::mint(
        &format!("{HUB}/devices"),
        &key,
        Some("iothubowner"),
        now_unix() + 600,
    );
    assert_eq!(
        env.http
            .get(&url)
            .header("authorization", scoped)
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    let read = env.hub_token("registryRead");
    let put = env
        .http
        .put(&url)
        .header("authorization", &read)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 401, "registryRead cannot write");
    let rw = env.hub_token("registryReadWrite");
    let q = format!(
        "{}/devices/query?api-version={API_HUB}",
        env.sim.hub_base_url(HUB)
    );
    let resp = env
        .http
        .post(&q)
        .header("authorization", &rw)
        .json(&json!({"query": "SELECT * FROM devices"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401, "queries need ServiceConnect");
    let svc = env.hub_token("service");
    let resp = env
        .http
        .post(&q)
        .header("authorization", &svc)
        .json(&json!({"query": "SELECT * FROM devices"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    let dps_url = format!(
        "{}/enrollments/x?api-version={API_DPS}",
        env.sim.dps_base_url(DPS)
    );
    let reader = env.dps_token("enrollmentread");
    let resp = env
        .http
        .delete(&dps_url)
        .header("authorization", &reader)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["errorCode"], 401002);
    let resp = env
        .http
        .get(&dps_url)
        .header("authorization", &reader)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404, "read right is enough for GET");
    env.sim.shutdown().await;
}

#[tokio::test]
async fn throttling_with_a_fake_clock_and_retry_after_toggle() {
    let clock = FakeClock::new(chrono::Utc::now());
    let mut cfg = SimConfig::single(DPS, &[HUB]);
    cfg.throttle = ThrottleConfig::default();
    let sim = Simulator::start_with_clock(cfg, Arc::new(clock.clone()))
        .await
        .unwrap();
    let env = Env {
        sim,
        http: reqwest::Client::new(),
    };
    for i in 0..100 {
        let (s, _, _) = env.hub(Method::GET, "/devices/none", None, &[]).await;
        assert_eq!(s, 404, "call {i} within quota");
    }
    let (s, h, body) = env.hub(Method::GET, "/devices/none", None, &[]).await;
    assert_eq!(s, 429);
    assert_eq!(h["iothub-errorcode"], "ThrottlingException");
    assert_eq!(h["retry-after"], "1");
    assert!(
        body["Message"]
            .as_str()
            .unwrap()
            .starts_with("ErrorCode:ThrottlingException;")
    );
    clock.advance(Duration::from_millis(600));
    assert_eq!(
        env.hub(Method::GET, "/devices/none", None, &[]).await.0,
        404
    );
    env.sim.handle().patch_throttle(&ThrottlePatch {
        retry_after: Some(false),
        ..Default::default()
    });
    // The patch refilled the bucket: spend it again.
    for _ in 0..100 {
        env.hub(Method::GET, "/devices/none", None, &[]).await;
    }
    let (s, h, _) = env.hub(Method::GET, "/devices/none", None, &[]).await;
    assert_eq!(s, 429);
    assert!(!h.contains_key("retry-after"));
    // Bulk items cost one op each: a 100-item bulk fails after one refill of 1 op.
    clock.advance(Duration::from_millis(600));
    let items: Vec<Value> = (0..5)
        .map(|i| json!({"id": format!("b{i}"), "importMode": "create"}))
        .collect();
    assert_eq!(
        env.hub(
            Method::POST,
            "/devices",
            Some(Value::Array(items.clone())),
            &[]
        )
        .await
        .0,
        429
    );
    let throttled = env
        .sim
        .calls()
        .iter()
        .filter(|c| c.status == Some(429) && c.fault.as_deref() == Some("throttled"))
        .count();
    assert_eq!(throttled, 3);
    env.sim.shutdown().await;
}

#[tokio::test]
async fn throttling_time_scale_lets_quota_return_in_wall_time() {
    let mut cfg = SimConfig::single(DPS, &[HUB]);
    cfg.hubs = vec![HubConfig::new(HUB).with_tier(HubTier::S1, 1)];
    cfg.throttle = ThrottleConfig::default();
    cfg.time_scale = 6.0;
    let env = Env::start(cfg).await;
    let q = Some(json!({"query": "SELECT * FROM devices"}));
    // 20 queries/min/unit at 6x = 2 per wall second after a burst of 20: a loop must hit the limit
    // even on a slow machine.
    let mut first_429 = None;
    for i in 0..200 {
        let (s, h, _) = env
            .hub(Method::POST, "/devices/query", q.clone(), &[])
            .await;
        if s == 429 {
            first_429 = Some((i, h["retry-after"].to_str().unwrap().to_string()));
            break;
        }
    }
    let (i, retry_after) = first_429.expect("queries are throttled");
    assert!(i >= 20, "at least the burst passes ({i})");
    assert_eq!(retry_after, "1");
    // 700 ms of wall time is 4.2 s of quota time: more than one query (3 s) is back.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        env.hub(Method::POST, "/devices/query", q.clone(), &[])
            .await
            .0,
        200
    );
    // Registry ops have their own bucket.
    assert_eq!(
        env.hub(Method::GET, "/devices/none", None, &[]).await.0,
        404
    );
    env.sim.shutdown().await;
}

#[tokio::test]
async fn scripted_faults_call_log_and_admin_api() {
    let env = Env::default().await;
    for id in ["x", "y"] {
        env.hub(Method::PUT, &format!("/devices/{id}"), Some(json!({})), &[])
            .await;
    }
    // The 3rd DELETE of device x fails with 503.
    env.sim.add_fault(
        FaultRule::new(
            "DELETE",
            "/devices/*",
            FaultAction::Status {
                status: 503,
                message: None,
            },
        )
        .on_instance(HUB)
        .on_entity("x")
        .nth(3),
    );
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(
            env.hub(
                Method::DELETE,
                "/devices/x",
                None,
                &[("if-match", "\"AAAA\"")],
            )
            .await
            .0
            .as_u16(),
        );
    }
    assert_eq!(statuses, vec![412, 412, 503, 412]);

    // Added over HTTP: the next PUT of enrollment e1 returns 500 with the DPS body.
    let admin = format!("{}/_sim/faults", env.sim.dps_base_url(DPS));
    let rule = json!({"instance": DPS, "method": "PUT", "path": "/enrollments/*", "entity_id": "e1", "action": {"type": "status", "status": 500}});
    let resp = env.http.post(&admin).json(&rule).send().await.unwrap();
    assert_eq!(resp.status(), 201);
    let (s, h, body) = env
        .dps(
            Method::PUT,
            "/enrollments/e1",
            Some(sym_enrollment("e1")),
            &[],
        )
        .await;
    assert_eq!(
        (s.as_u16(), body["errorCode"].as_u64()),
        (500, Some(500001))
    );
    assert_eq!(h["x-ms-error-code"], "500001");
    assert_eq!(
        env.dps(
            Method::PUT,
            "/enrollments/e1",
            Some(sym_enrollment("e1")),
            &[]
        )
        .await
        .0,
        200
    );

    // Dropped connection: the client sees a transport error, the log a call without status.
    env.sim
        .add_fault(FaultRule::new("GET", "/devices/y", FaultAction::Drop));
    let url = format!(
        "{}/devices/y?api-version={API_HUB}",
        env.sim.hub_base_url(HUB)
    );
    let err = env
        .http
        .get(&url)
        .header("authorization", env.hub_token("iothubowner"))
        .send()
        .await;
    assert!(err.is_err(), "connection must be dropped");
    // A hang longer than the client's timeout.
    env.sim.add_fault(FaultRule::new(
        "GET",
        "/devices/y",
        FaultAction::Hang { ms: Some(3_000) },
    ));
    let quick = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let err = quick
        .get(&url)
        .header("authorization", env.hub_token("iothubowner"))
        .send()
        .await
        .unwrap_err();
    assert!(err.is_timeout());

    let calls = env.sim.calls();
    let faulted: Vec<_> = calls.iter().filter(|c| c.fault.is_some()).collect();
    assert_eq!(faulted.len(), 4, "{faulted:?}");
    assert!(
        faulted
            .iter()
            .any(|c| c.status.is_none() && c.entity_id.as_deref() == Some("y"))
    );
    assert!(calls.windows(2).all(|w| w[0].seq < w[1].seq));
    let last = calls.last().unwrap().seq;

    let resp: Value = env
        .http
        .get(format!(
            "{}/_sim/calls?since={}",
            env.sim.hub_base_url(HUB),
            last - 2
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(resp["calls"].as_array().unwrap().len(), 2);
    assert_eq!(resp["calls"][0]["instance"], HUB);
    let state: Value = env
        .http
        .get(format!("{}/_sim/state", env.sim.hub_base_url(HUB)))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(state["hubs"][0]["devices"].as_array().unwrap().len(), 2);
    assert_eq!(state["dps"][0]["enrollments"][0]["registrationId"], "e1");
    assert_eq!(
        env.http
            .post(format!("{}/_sim/reset-log", env.sim.hub_base_url(HUB)))
            .send()
            .await
            .unwrap()
            .status(),
        204
    );
    assert!(env.sim.calls().is_empty());
    let resp = env
        .http
        .patch(format!("{}/_sim/throttle", env.sim.hub_base_url(HUB)))
        .json(&json!({"time_scale": 10.0}))
        .send()
        .await
        .unwrap();
    let settings: Value = resp.json().await.unwrap();
    assert_eq!(settings["time_scale"], 10.0);
    assert_eq!(env.http.delete(admin).send().await.unwrap().status(), 204);
    assert!(env.sim.handle().faults().is_empty());
    env.sim.shutdown().await;
}

#[tokio::test]
async fn connection_strings_and_custom_policies() {
    let cfg = SimConfig::single(DPS, &[HUB]).with_hub(
        HubConfig::new("hub-2.azure-devices.net").with_policy(
            PolicyConfig::new("ops", &["RegistryRead"])
                .with_key("MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="),
        ),
    );
    let env = Env::start(cfg).await;
    let cs = env
        .sim
        .hub_connection_string("hub-2.azure-devices.net", "ops")
        .unwrap();
    assert_eq!(
        cs,
        "HostName=hub-2.azure-devices.net;SharedAccessKeyName=ops;SharedAccessKey=MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="
    );
    assert!(
        env.sim
            .hub_connection_string("hub-2.azure-devices.net", "iothubowner")
            .is_none()
    );
    let dcs = env
        .sim
        .dps_connection_string(DPS, "provisioningserviceowner")
        .unwrap();
    assert!(dcs.starts_with(&format!(
        "HostName={DPS_HOST};SharedAccessKeyName=provisioningserviceowner;SharedAccessKey="
    )));
    assert_eq!(env.sim.state().dps(DPS).unwrap().id_scope, "0ne00000001");
    assert_eq!(
        env.sim.state().dps_by_id_scope("0NE00000001").unwrap().name,
        DPS
    );
    assert_ne!(
        env.sim.hub_base_url(HUB),
        env.sim.hub_base_url("hub-2.azure-devices.net")
    );
    env.sim.shutdown().await;
}

#[tokio::test]
async fn registration_state_shows_on_the_enrollment_and_goes_with_it() {
    let env = Env::default().await;
    env.dps(
        Method::PUT,
        "/enrollments/solo",
        Some(sym_enrollment("solo")),
        &[],
    )
    .await;
    let dps = env.sim.state().dps(DPS).unwrap();
    dps.upsert_registration(None, json!({"registrationId": "solo", "assignedHub": HUB, "deviceId": "solo", "status": "assigned"}))
        .unwrap();
    let (_, _, got) = env.dps(Method::GET, "/enrollments/solo", None, &[]).await;
    assert_eq!(got["registrationState"]["assignedHub"], HUB);
    assert_eq!(got["registrationState"]["status"], "assigned");
    // Deleting the individual enrollment removes its registration record.
    assert_eq!(
        env.dps(Method::DELETE, "/enrollments/solo", None, &[])
            .await
            .0,
        204
    );
    assert_eq!(
        env.dps(Method::GET, "/registrations/solo", None, &[])
            .await
            .0,
        404
    );
    // Deleting a group leaves its records behind.
    let g = json!({"enrollmentGroupId": "g", "attestation": {"type": "symmetricKey"}});
    env.dps(Method::PUT, "/enrollmentGroups/g", Some(g), &[])
        .await;
    dps.upsert_registration(
        Some("g"),
        json!({"registrationId": "g-1", "status": "assigned"}),
    )
    .unwrap();
    assert_eq!(
        env.dps(Method::DELETE, "/enrollmentGroups/g", None, &[])
            .await
            .0,
        204
    );
    assert_eq!(
        env.dps(Method::GET, "/registrations/g-1", None, &[])
            .await
            .0,
        200
    );
    env.sim.shutdown().await;
}

#[tokio::test]
async fn conflict_policy_for_put_without_if_match_is_configurable() {
    let mut cfg = SimConfig::single(DPS, &[HUB]);
    cfg.dps_behavior.put_existing_without_if_match = azure_iot_sim::ExistingPutPolicy::Conflict;
    let env = Env::start(cfg).await;
    assert_eq!(
        env.dps(
            Method::PUT,
            "/enrollments/c",
            Some(sym_enrollment("c")),
            &[]
        )
        .await
        .0,
        200
    );
    let (s, _, err) = env
        .dps(
            Method::PUT,
            "/enrollments/c",
            Some(sym_enrollment("c")),
            &[],
        )
        .await;
    assert_eq!((s.as_u16(), err["errorCode"].as_u64()), (409, Some(409201)));
    assert_eq!(
        env.dps(
            Method::PUT,
            "/enrollments/c",
            Some(sym_enrollment("c")),
            &[("if-match", "*")]
        )
        .await
        .0,
        200
    );
    // If-Match with an etag on a missing record cannot match.
    assert_eq!(
        env.dps(
            Method::PUT,
            "/enrollments/new",
            Some(sym_enrollment("new")),
            &[("if-match", "abc")]
        )
        .await
        .0,
        412
    );
    env.sim.shutdown().await;
}

#[tokio::test]
async fn concurrent_conditional_updates_let_exactly_one_win() {
    let env = Arc::new(Env::default().await);
    let (_, _, dev) = env
        .hub(Method::PUT, "/devices/race", Some(json!({})), &[])
        .await;
    let etag = format!("\"{}\"", dev["etag"].as_str().unwrap());
    let mut tasks = Vec::new();
    for i in 0..16 {
        let env = env.clone();
        let etag = etag.clone();
        let mut body = dev.clone();
        body["statusReason"] = json!(format!("writer {i}"));
        tasks.push(tokio::spawn(async move {
            env.hub(
                Method::PUT,
                "/devices/race",
                Some(body),
                &[("if-match", &etag)],
            )
            .await
            .0
        }));
    }
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap().as_u16() {
            200 => ok += 1,
            412 => {}
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(ok, 1);
}

#[tokio::test]
async fn chaos_latency_and_random_faults_apply_and_clear() {
    let env = Env::default().await;
    env.sim.handle().set_chaos(azure_iot_sim::ChaosConfig {
        latency_fixed_ms: 150,
        ..Default::default()
    });
    let t = std::time::Instant::now();
    assert_eq!(env.hub(Method::GET, "/devices/a", None, &[]).await.0, 404);
    assert!(t.elapsed() >= Duration::from_millis(150));

    let resp = env
        .http
        .put(format!("{}/_sim/chaos", env.sim.hub_base_url(HUB)))
        .json(&json!({"p_503": 1.0}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let (s, h, _) = env.hub(Method::GET, "/devices/a", None, &[]).await;
    assert_eq!(
        (s.as_u16(), h["iothub-errorcode"].to_str().unwrap()),
        (503, "ServiceUnavailable")
    );
    let (s, _, body) = env.dps(Method::GET, "/enrollments/a", None, &[]).await;
    assert_eq!(
        (s.as_u16(), body["errorCode"].as_u64()),
        (503, Some(503001))
    );
    assert_eq!(
        env.sim.calls().last().unwrap().fault.as_deref(),
        Some("random 503")
    );
    env.sim.handle().clear_faults();
    assert_eq!(env.hub(Method::GET, "/devices/a", None, &[]).await.0, 404);
    env.sim.shutdown().await;
}

#[tokio::test]
async fn endpoints_summary_lists_urls_scopes_and_connection_strings() {
    let env = Env::default().await;
    let v: Value = env
        .http
        .get(format!("{}/_sim/endpoints", env.sim.dps_base_url(DPS)))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["dps"][0]["idScope"], "0ne00000001");
    assert_eq!(v["dps"][0]["urls"][0], env.sim.dps_base_url(DPS).as_str());
    assert_eq!(v["dps"][0]["linkedHubs"][0]["host"], HUB);
    assert_eq!(v["hubs"][0]["urls"][0], env.sim.hub_base_url(HUB).as_str());
    assert_eq!(
        v["hubs"][0]["connectionStrings"]["registryReadWrite"],
        env.sim
            .hub_connection_string(HUB, "registryReadWrite")
            .unwrap()
            .as_str()
    );
    // DPS, hub, and the device registration API (started by default).
    assert_eq!(v["listeners"].as_array().unwrap().len(), 3);
    assert_eq!(v["listeners"][2]["endpoint"], json!({"kind": "device_api"}));
    assert_eq!(
        v["deviceApi"]["urls"][0],
        env.sim.device_api_base_url().as_str()
    );
    assert_eq!(
        v["listeners"][1]["endpoint"],
        json!({"kind": "hub", "name": HUB})
    );
    env.sim.shutdown().await;
}

#[tokio::test]
async fn a_token_expires_mid_run_on_the_simulator_clock() {
    let clock = FakeClock::new(chrono::Utc::now());
    let sim = Simulator::start_with_clock(SimConfig::single(DPS, &[HUB]), Arc::new(clock.clone()))
        .await
        .unwrap();
    let env = Env {
        sim,
        http: reqwest::Client::new(),
    };
    // hub_token() signs for now + 600 s.
    assert_eq!(env.hub(Method::GET, "/devices/a", None, &[]).await.0, 404);
    let token = env.hub_token("iothubowner");
    clock.advance(Duration::from_secs(601));
    let url = format!(
        "{}/devices/a?api-version={API_HUB}",
        env.sim.hub_base_url(HUB)
    );
    let resp = env
        .http
        .get(&url)
        .header("authorization", token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    env.sim.shutdown().await;
}

#[tokio::test]
async fn admin_state_per_instance_and_reset() {
    let env = Env::default().await;
    env.hub(Method::PUT, "/devices/s1", Some(json!({})), &[])
        .await;
    env.dps(
        Method::PUT,
        "/enrollments/s1",
        Some(sym_enrollment("s1")),
        &[],
    )
    .await;
    let base = env.sim.dps_base_url(DPS);
    let hub: Value = env
        .http
        .get(format!("{base}/_sim/state/hubs/{HUB}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(hub["devices"][0]["deviceId"], "s1");
    assert_eq!(hub["tier"], "S1");
    let dps: Value = env
        .http
        .get(format!("{base}/_sim/state/dps/{DPS}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(dps["idScope"], "0ne00000001");
    assert_eq!(dps["enrollments"][0]["registrationId"], "s1");
    assert_eq!(
        env.http
            .get(format!("{base}/_sim/state/dps/nope"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    assert_eq!(
        env.http
            .delete(format!("{base}/_sim/state"))
            .send()
            .await
            .unwrap()
            .status(),
        204
    );
    assert_eq!(env.sim.state().hub(HUB).unwrap().device_count(), 0);
    assert_eq!(env.sim.state().dps(DPS).unwrap().counts(), (0, 0, 0));
    // Admin calls are not logged, throttled or faulted.
    let logged = env
        .sim
        .calls()
        .iter()
        .filter(|c| c.path.starts_with("/_sim"))
        .count();
    assert_eq!(logged, 0);
    env.sim.shutdown().await;
}

#[tokio::test]
async fn a_bad_fault_rule_is_refused_with_the_expected_shape() {
    let env = Env::default().await;
    let admin = format!("{}/_sim/faults", env.sim.dps_base_url(DPS));
    for (rule, says) in [
        (json!({"path": "/x"}), "missing field `action`"),
        (
            json!({"action": {"type": "explode"}}),
            "unknown variant `explode`",
        ),
        (
            json!({"actoin": {"type": "drop"}}),
            "unknown field `actoin`",
        ),
        (
            json!({"nth": 0, "action": {"type": "drop"}}),
            "nth counts from 1",
        ),
        (
            json!({"probability": 2.0, "action": {"type": "drop"}}),
            "probability 2",
        ),
        (
            json!({"method": "GE T", "action": {"type": "drop"}}),
            "not an HTTP method",
        ),
        (
            json!({"action": {"type": "status", "status": 200}}),
            "not an error status",
        ),
    ] {
        let resp = env.http.post(&admin).json(&rule).send().await.unwrap();
        assert_eq!(resp.status(), 400, "{rule}");
        let body: Value = resp.json().await.unwrap();
        let error = body["error"].as_str().unwrap();
        assert!(error.contains(says), "{rule}: {error}");
        assert!(body["expected"]["action"].is_string(), "{body}");
        assert_eq!(body["actions"].as_array().unwrap().len(), 5, "{body}");
        assert!(body["example"]["action"]["type"].is_string(), "{body}");
    }
    let listed: Value = env
        .http
        .get(&admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        listed["rules"].as_array().unwrap().len(),
        0,
        "nothing was added"
    );
    // A configuration file with such a rule is refused at start.
    let err =
        SimConfig::from_json(r#"{"scripted_faults": [{"nth": 0, "action": {"type": "drop"}}]}"#)
            .unwrap_err();
    assert!(err.to_string().contains("nth counts from 1"), "{err}");
}

#[tokio::test]
async fn keys_are_random_per_run_unless_a_seed_is_given() {
    let key_of = |sim: &RunningSimulator| {
        sim.state()
            .hub(HUB)
            .unwrap()
            .policy("iothubowner")
            .unwrap()
            .primary_key
            .expose()
            .to_string()
    };
    let a = Env::default().await;
    let b = Env::default().await;
    assert_ne!(
        key_of(&a.sim),
        key_of(&b.sim),
        "two runs must not share keys"
    );
    let seeded = |seed| SimConfig {
        seed: Some(seed),
        ..SimConfig::single(DPS, &[HUB])
    };
    let c = Env::start(seeded(7)).await;
    let d = Env::start(seeded(7)).await;
    assert_eq!(
        key_of(&c.sim),
        key_of(&d.sim),
        "the same seed reproduces a run"
    );
    // Tracking ids differ between unseeded runs too.
    let (_, ha, _) = a.dps(Method::GET, "/enrollments/nobody", None, &[]).await;
    let (_, hb, _) = b.dps(Method::GET, "/enrollments/nobody", None, &[]).await;
    assert_ne!(ha["x-ms-request-id"], hb["x-ms-request-id"]);
}

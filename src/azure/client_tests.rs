//! The DPS and hub clients against a small scripted HTTP server: exact request lines, headers and bodies,
//! and how canned answers come back.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body as AxumBody;
use axum::extract::{Request, State};
use axum::response::Response;
use futures::TryStreamExt;
use http::HeaderMap;
use serde_json::{Value, json};

use super::connection_string::ConnectionString;
use super::dps::DpsClient;
use super::error::AzureError;
use super::hub::{HubClient, IfMatch};
use super::models::*;
use super::transport::ClientOptions;
use crate::domain::clock::ManualClock;

const KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
/// The sas.rs vector: this host, key and policy with expiry 1_700_000_000.
const DPS_AUTH: &str = "SharedAccessSignature sr=mydps.azure-devices-provisioning.net\
                        &sig=xXBqEKztXMACe9dg1gMBreO%2F8CMn3ovt%2B%2BxDvPb6Xl0%3D&se=1700000000&skn=provisioningserviceowner";

#[derive(Debug, Clone)]
struct Recorded {
    method: String,
    uri: String,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Recorded {
    fn line(&self) -> String {
        format!("{} {}", self.method, self.uri)
    }
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

struct Canned {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: String,
    delay: Duration,
}

fn canned(status: u16, body: Value) -> Canned {
    Canned {
        status,
        headers: vec![],
        body: body.to_string(),
        delay: Duration::ZERO,
    }
}

impl Canned {
    fn header(mut self, name: &'static str, value: &str) -> Self {
        self.headers.push((name, value.to_string()));
        self
    }
    fn empty(status: u16) -> Self {
        Canned {
            status,
            headers: vec![],
            body: String::new(),
            delay: Duration::ZERO,
        }
    }
}

#[derive(Clone, Default)]
struct Script {
    requests: Arc<Mutex<Vec<Recorded>>>,
    responses: Arc<Mutex<VecDeque<Canned>>>,
}

async fn answer(State(script): State<Script>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap()
        .to_vec();
    script.requests.lock().unwrap().push(Recorded {
        method: parts.method.to_string(),
        uri: parts.uri.to_string(),
        headers: parts.headers,
        body,
    });
    let next = script.responses.lock().unwrap().pop_front();
    let c = next.unwrap_or_else(|| canned(599, json!({"message": "no canned response left"})));
    tokio::time::sleep(c.delay).await;
    let mut r = Response::builder().status(c.status);
    if !c.body.is_empty() {
        r = r.header("content-type", "application/json; charset=utf-8");
    }
    for (k, v) in c.headers {
        r = r.header(k, v);
    }
    r.body(AxumBody::from(c.body)).unwrap()
}

struct Server {
    addr: SocketAddr,
    script: Script,
}

impl Server {
    async fn start() -> Self {
        let script = Script::default();
        let app = Router::new().fallback(answer).with_state(script.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { addr, script }
    }

    fn push(&self, c: Canned) -> &Self {
        self.script.responses.lock().unwrap().push_back(c);
        self
    }

    fn requests(&self) -> Vec<Recorded> {
        self.script.requests.lock().unwrap().clone()
    }

    fn options(&self) -> ClientOptions {
        ClientOptions {
            base_url: Some(format!("http://{}", self.addr).parse().unwrap()),
            clock: Arc::new(ManualClock::at_unix(1_700_000_000 - 3600)),
            request_timeout: Duration::from_secs(5),
            ..ClientOptions::default()
        }
    }

    fn dps(&self) -> DpsClient {
        let cs = ConnectionString::parse(&format!(
            "HostName=MyDps.azure-devices-provisioning.net;SharedAccessKeyName=provisioningserviceowner;SharedAccessKey={KEY}"
        ))
        .unwrap();
        DpsClient::new(&cs, self.options()).unwrap()
    }

    fn hub(&self) -> HubClient {
        let cs = ConnectionString::parse(&format!(
            "HostName=MyHub.azure-devices.net;SharedAccessKeyName=registryReadWrite;SharedAccessKey={KEY}"
        ))
        .unwrap();
        HubClient::new(&cs, self.options()).unwrap()
    }
}

fn symmetric_enrollment_get() -> Value {
    json!({
        "registrationId": "dev-1", "deviceId": "dev-1",
        "attestation": {"type": "symmetricKey", "symmetricKey": {}},
        "provisioningStatus": "enabled", "etag": "\"3100a4e2-0000-0300-0000-6543a1b20000\"",
        "iotHubs": ["myhub.azure-devices.net"], "allocationPolicy": "static",
        "reprovisionPolicy": {"updateHubAssignment": true, "migrateDeviceData": true},
        "capabilities": {"iotEdge": false},
        "createdDateTimeUtc": "2026-11-01T10:00:00Z", "lastUpdatedDateTimeUtc": "2026-11-01T10:00:00Z"
    })
}

#[tokio::test]
async fn dps_get_sends_api_version_sas_and_user_agent() {
    let s = Server::start().await;
    s.push(canned(200, symmetric_enrollment_get()));
    let e = s.dps().get_enrollment("dev-1").await.unwrap();
    assert_eq!(e.registration_id, "dev-1");
    let r = &s.requests()[0];
    assert_eq!(r.line(), "GET /enrollments/dev-1?api-version=2021-10-01");
    assert_eq!(r.header("authorization"), Some(DPS_AUTH));
    assert_eq!(
        r.header("user-agent"),
        Some(concat!("deprovisiond/", env!("CARGO_PKG_VERSION")))
    );
    assert_eq!(r.header("content-type"), None);
    assert_eq!(r.header("if-match"), None);
}

#[tokio::test]
async fn dps_disable_symmetric_enrollment_echoes_keys_and_everything_else() {
    let s = Server::start().await;
    let get = symmetric_enrollment_get();
    let attestation = json!({"type": "symmetricKey", "symmetricKey": {"primaryKey": "cHJpbWFyeQ==", "secondaryKey": "c2Vjb25kYXJ5"}});
    let mut put_answer = get.clone();
    put_answer["provisioningStatus"] = json!("disabled");
    put_answer["etag"] = json!("\"new\"");
    s.push(canned(200, get.clone()))
        .push(canned(200, attestation.clone()))
        .push(canned(200, put_answer));

    let out = s
        .dps()
        .set_enrollment_status("dev-1", ProvisioningStatus::Disabled)
        .await
        .unwrap();
    assert_eq!(
        out.stored.provisioning_status,
        Some(ProvisioningStatus::Disabled)
    );
    assert!(out.written);
    assert_eq!(out.calls, 3);

    let reqs = s.requests();
    assert_eq!(reqs.len(), 3);
    assert_eq!(
        reqs[1].line(),
        "POST /enrollments/dev-1/attestationmechanism?api-version=2021-10-01"
    );
    assert_eq!(reqs[1].header("content-length"), Some("0"));
    assert_eq!(
        reqs[2].line(),
        "PUT /enrollments/dev-1?api-version=2021-10-01"
    );
    assert_eq!(
        reqs[2].header("if-match"),
        Some("\"3100a4e2-0000-0300-0000-6543a1b20000\"")
    );
    assert_eq!(reqs[2].header("content-type"), Some("application/json"));
    assert_eq!(reqs[2].header("authorization"), Some(DPS_AUTH));
    let mut expected = get;
    expected["provisioningStatus"] = json!("disabled");
    expected["attestation"] = attestation;
    assert_eq!(reqs[2].json(), expected);
}

#[tokio::test]
async fn dps_an_enrollment_already_disabled_is_not_written_again() {
    let s = Server::start().await;
    let mut get = symmetric_enrollment_get();
    get["provisioningStatus"] = json!("disabled");
    s.push(canned(200, get));
    let out = s
        .dps()
        .set_enrollment_status("dev-1", ProvisioningStatus::Disabled)
        .await
        .unwrap();
    assert_eq!(out.stored.status(), ProvisioningStatus::Disabled);
    assert_eq!((out.written, out.calls), (false, 1));
    let reqs = s.requests();
    assert_eq!(reqs.len(), 1, "one GET: no attestation read, no PUT");
    assert_eq!(
        reqs[0].line(),
        "GET /enrollments/dev-1?api-version=2021-10-01"
    );
}

#[tokio::test]
async fn dps_group_operations_and_if_match_on_delete() {
    let s = Server::start().await;
    let group = json!({"enrollmentGroupId": "g1", "attestation": {"type": "x509", "x509": {"signingCertificates":
        {"primary": {"info": {"subjectName": "CN=int", "sha1Thumbprint": "AA", "sha256Thumbprint": "BB",
        "issuerName": "CN=root", "notBeforeUtc": "2026-01-01T00:00:00Z", "notAfterUtc": "2030-01-01T00:00:00Z",
        "serialNumber": "0A", "version": 3}}}}}, "provisioningStatus": "enabled", "etag": "E1"});
    let mut disabled = group.clone();
    disabled["provisioningStatus"] = json!("disabled");
    s.push(canned(200, group.clone()))
        .push(canned(200, disabled))
        .push(Canned::empty(204))
        .push(Canned::empty(204));
    let dps = s.dps();
    let g = dps
        .set_enrollment_group_status("g1", ProvisioningStatus::Disabled)
        .await
        .unwrap();
    assert_eq!(g.stored.status(), ProvisioningStatus::Disabled);
    assert_eq!((g.written, g.calls), (true, 2));
    dps.delete_enrollment_group("g1", Some("E2")).await.unwrap();
    dps.delete_registration("dev 1", None).await.unwrap();
    let reqs = s.requests();
    assert_eq!(reqs.len(), 4, "x509: no attestation mechanism call");
    assert_eq!(
        reqs[1].line(),
        "PUT /enrollmentGroups/g1?api-version=2021-10-01"
    );
    assert_eq!(
        reqs[1].header("if-match"),
        Some("E1"),
        "DPS etag sent as returned"
    );
    let mut expected = group;
    expected["provisioningStatus"] = json!("disabled");
    assert_eq!(
        reqs[1].json(),
        expected,
        "certificate info echoed unchanged"
    );
    assert_eq!(
        reqs[2].line(),
        "DELETE /enrollmentGroups/g1?api-version=2021-10-01"
    );
    assert_eq!(reqs[2].header("if-match"), Some("E2"));
    assert_eq!(
        reqs[3].line(),
        "DELETE /registrations/dev%201?api-version=2021-10-01"
    );
    assert_eq!(reqs[3].header("if-match"), None);
}

#[tokio::test]
async fn dps_registration_query_follows_three_pages() {
    let s = Server::start().await;
    let state = |id: &str| {
        json!({"registrationId": id, "assignedHub": "myhub.azure-devices.net", "deviceId": id,
        "status": "assigned", "etag": "x"})
    };
    s.push(canned(200, json!([state("a"), state("b")])).header("x-ms-continuation", "c1"))
        .push(canned(200, json!([state("c"), state("d")])).header("x-ms-continuation", "c2"))
        .push(canned(200, json!([state("e")])));
    let all: Vec<DeviceRegistrationState> = s
        .dps()
        .query_registrations("g1", Some(2))
        .try_collect()
        .await
        .unwrap();
    let ids: Vec<&str> = all.iter().map(|r| r.registration_id.as_str()).collect();
    assert_eq!(ids, ["a", "b", "c", "d", "e"]);
    let reqs = s.requests();
    assert_eq!(reqs.len(), 3);
    for r in &reqs {
        assert_eq!(
            r.line(),
            "POST /registrations/g1/query?api-version=2021-10-01"
        );
        assert_eq!(r.header("x-ms-max-item-count"), Some("2"));
        assert!(r.body.is_empty());
    }
    assert_eq!(reqs[0].header("x-ms-continuation"), None);
    assert_eq!(reqs[1].header("x-ms-continuation"), Some("c1"));
    assert_eq!(reqs[2].header("x-ms-continuation"), Some("c2"));
}

#[tokio::test]
async fn dps_page_call_returns_the_token_and_group_query_sends_select() {
    let s = Server::start().await;
    s.push(canned(200, json!([{"registrationId": "a"}])).header("x-ms-continuation", "tok/+=="))
        .push(canned(
            200,
            json!([{"enrollmentGroupId": "g", "attestation": {"type": "x509"}}]),
        ));
    let dps = s.dps();
    let (page, next) = dps
        .query_registrations_page("g1", None, Some("prev"))
        .await
        .unwrap();
    assert_eq!(page.len(), 1);
    assert_eq!(next.as_deref(), Some("tok/+=="));
    let groups: Vec<EnrollmentGroup> = dps
        .query_enrollment_groups(Some(50))
        .try_collect()
        .await
        .unwrap();
    assert_eq!(groups[0].enrollment_group_id, "g");
    let reqs = s.requests();
    assert_eq!(reqs[0].header("x-ms-max-item-count"), None);
    assert_eq!(reqs[0].header("x-ms-continuation"), Some("prev"));
    assert_eq!(
        reqs[1].line(),
        "POST /enrollmentGroups/query?api-version=2021-10-01"
    );
    assert_eq!(reqs[1].json(), json!({"query": "SELECT *"}));
    assert_eq!(reqs[1].header("x-ms-max-item-count"), Some("50"));
}

#[tokio::test]
async fn throttled_with_and_without_retry_after() {
    let s = Server::start().await;
    let body = json!({"errorCode": 429001, "trackingId": "t-429", "message": "Operations are being throttled",
        "timestampUtc": "2026-11-28T05:00:00Z"});
    s.push(
        canned(429, body.clone())
            .header("retry-after", "3")
            .header("x-ms-error-code", "429001"),
    )
    .push(canned(429, body));
    let dps = s.dps();
    let e = dps.get_registration("r1").await.unwrap_err();
    assert!(matches!(e, AzureError::Throttled { .. }), "{e:?}");
    assert_eq!(e.retry_after(), Some(Duration::from_secs(3)));
    assert_eq!(e.tracking_id(), Some("t-429"));
    assert_eq!(e.code().as_deref(), Some("429001"));
    let e = dps.get_registration("r1").await.unwrap_err();
    assert!(e.is_retryable());
    assert_eq!(e.retry_after(), None);
}

#[tokio::test]
async fn every_error_class_from_canned_answers() {
    let s = Server::start().await;
    let dps_err =
        |code: i64| json!({"errorCode": code, "trackingId": format!("t{code}"), "message": "m"});
    for (status, code) in [
        (400, 400004),
        (401, 401002),
        (403, 403001),
        (404, 404201),
        (409, 409201),
        (412, 412002),
        (408, 408001),
        (500, 500001),
        (503, 503001),
    ] {
        s.push(canned(status, dps_err(code)));
    }
    let dps = s.dps();
    let mut classes = vec![];
    for _ in 0..9 {
        let e = dps.get_enrollment("x").await.unwrap_err();
        assert!(e.tracking_id().unwrap().starts_with('t'));
        classes.push(e.class());
    }
    assert_eq!(
        classes,
        [
            "bad_request",
            "unauthorized",
            "forbidden",
            "not_found",
            "conflict",
            "precondition_failed",
            "transient",
            "transient",
            "transient"
        ]
    );
}

#[tokio::test]
async fn dps_bulk_limits_are_checked_before_sending() {
    let s = Server::start().await;
    let e = |i: usize| {
        IndividualEnrollment::new(
            format!("d{i}"),
            AttestationMechanism {
                kind: AttestationType::SymmetricKey,
                tpm: None,
                x509: None,
                symmetric_key: None,
                extra: Default::default(),
            },
            ProvisioningStatus::Disabled,
        )
    };
    let too_many = BulkEnrollmentOperation {
        mode: BulkEnrollmentMode::Create,
        enrollments: (0..11).map(e).collect(),
    };
    let err = s.dps().bulk_enrollments(&too_many).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid request: a bulk operation takes at most 10 enrollments, got 11"
    );
    assert!(s.requests().is_empty());

    s.push(canned(200, json!({"isSuccessful": false, "errors": [{"registrationId": "d1", "errorCode": 409201, "errorStatus": "exists"}]})));
    let ok = BulkEnrollmentOperation {
        mode: BulkEnrollmentMode::Create,
        enrollments: (0..10).map(e).collect(),
    };
    let result = s.dps().bulk_enrollments(&ok).await.unwrap();
    assert!(!result.is_successful);
    assert_eq!(result.errors[0].registration_id, "d1");
    let r = &s.requests()[0];
    assert_eq!(r.line(), "POST /enrollments?api-version=2021-10-01");
    assert_eq!(r.json()["mode"], "create");
    assert_eq!(r.json()["enrollments"].as_array().unwrap().len(), 10);
}

fn hub_device() -> Value {
    json!({"deviceId": "dev-1", "generationId": "638000000000000001", "etag": "AAAAAAAAAAE=",
        "connectionState": "Connected", "status": "enabled", "statusReason": "",
        "authentication": {"symmetricKey": {"primaryKey": "cHJpbWFyeQ==", "secondaryKey": "c2Vjb25kYXJ5"},
            "x509Thumbprint": {}, "type": "sas"},
        "capabilities": {"iotEdge": false}, "deviceScope": "ms-azure-iot-edge://e-1", "parentScopes": [],
        "cloudToDeviceMessageCount": 0})
}

#[tokio::test]
async fn hub_disable_puts_the_full_body_with_quoted_if_match() {
    let s = Server::start().await;
    let mut after = hub_device();
    after["status"] = json!("disabled");
    after["etag"] = json!("AAAAAAAAAAI=");
    s.push(canned(200, hub_device())).push(canned(200, after));
    let hub = s.hub();
    let d = hub
        .set_device_status("dev-1", DeviceStatus::Disabled, Some("deprovision job 42"))
        .await
        .unwrap();
    assert_eq!(d.etag.as_deref(), Some("AAAAAAAAAAI="));
    let reqs = s.requests();
    assert_eq!(reqs[0].line(), "GET /devices/dev-1?api-version=2021-04-12");
    let auth = reqs[0].header("authorization").unwrap();
    assert!(
        auth.starts_with("SharedAccessSignature sr=myhub.azure-devices.net&sig="),
        "{auth}"
    );
    assert!(
        auth.ends_with("&se=1700000000&skn=registryReadWrite"),
        "{auth}"
    );
    assert_eq!(reqs[1].line(), "PUT /devices/dev-1?api-version=2021-04-12");
    assert_eq!(reqs[1].header("if-match"), Some("\"AAAAAAAAAAE=\""));
    let mut expected = hub_device();
    expected["status"] = json!("disabled");
    expected["statusReason"] = json!("deprovision job 42");
    assert_eq!(reqs[1].json(), expected);
}

#[tokio::test]
async fn hub_create_delete_and_escaped_ids() {
    let s = Server::start().await;
    s.push(canned(200, hub_device()))
        .push(Canned::empty(204))
        .push(Canned::empty(204));
    let hub = s.hub();
    let new = Device {
        device_id: "dev-1".into(),
        ..Device::default()
    };
    hub.create_device(&new).await.unwrap();
    hub.delete_device("dev#1 x", IfMatch::Any).await.unwrap();
    hub.delete_device("dev-1", IfMatch::ETag("AAAAAAAAAAE=".into()))
        .await
        .unwrap();
    let reqs = s.requests();
    assert_eq!(reqs[0].line(), "PUT /devices/dev-1?api-version=2021-04-12");
    assert_eq!(reqs[0].header("if-match"), None, "no If-Match = create");
    assert_eq!(reqs[0].json(), json!({"deviceId": "dev-1"}));
    assert_eq!(
        reqs[1].line(),
        "DELETE /devices/dev%231%20x?api-version=2021-04-12"
    );
    assert_eq!(reqs[1].header("if-match"), Some("\"*\""));
    assert_eq!(reqs[2].header("if-match"), Some("\"AAAAAAAAAAE=\""));
}

#[tokio::test]
async fn hub_not_found_parses_the_message_json() {
    let s = Server::start().await;
    let message =
        json!({"errorCode": 404001, "trackingId": "abc-G:1-TimeStamp:11/28/2026 05:00:00",
        "message": "Device dev-9 not found", "timestampUtc": "2026-11-28T05:00:00Z"})
        .to_string();
    s.push(
        canned(404, json!({"Message": message, "ExceptionMessage": ""}))
            .header("iothub-errorcode", "DeviceNotFound"),
    );
    let e = s.hub().get_device("dev-9").await.unwrap_err();
    assert!(e.is_not_found());
    assert_eq!(e.code().as_deref(), Some("404001"));
    assert_eq!(
        e.details().unwrap().code_name.as_deref(),
        Some("DeviceNotFound")
    );
    assert_eq!(
        e.tracking_id(),
        Some("abc-G:1-TimeStamp:11/28/2026 05:00:00")
    );
}

#[tokio::test]
async fn hub_bulk_returns_per_item_errors_from_a_400() {
    let s = Server::start().await;
    let items: Vec<ExportImportDevice> = (0..101)
        .map(|i| ExportImportDevice::delete(format!("d{i}"), None))
        .collect();
    let err = s.hub().bulk(&items).await.unwrap_err();
    assert!(matches!(err, AzureError::InvalidRequest(_)), "{err:?}");
    assert!(s.requests().is_empty());

    s.push(canned(
        400,
        json!({"isSuccessful": false, "errors": [{"deviceId": "d3", "errorCode": "DeviceNotFound",
        "errorStatus": "Device d3 not found", "operation": "delete"}], "warnings": []}),
    ));
    s.push(canned(400, json!({"Message": "ErrorCode:ArgumentInvalid;bad body", "ExceptionMessage": "Tracking ID:x1-TimeStamp:now"})));
    let result = s.hub().bulk(&items[..100]).await.unwrap();
    assert!(!result.is_successful);
    assert!(result.errors[0].to_error().is_not_found());
    let r = &s.requests()[0];
    assert_eq!(r.line(), "POST /devices?api-version=2021-04-12");
    assert_eq!(r.json()[0], json!({"id": "d0", "importMode": "delete"}));
    let err = s.hub().bulk(&items[..1]).await.unwrap_err();
    assert!(matches!(err, AzureError::BadRequest(_)));
    assert_eq!(err.code().as_deref(), Some("ArgumentInvalid"));
    assert_eq!(err.tracking_id(), Some("x1"));
}

#[tokio::test]
async fn hub_twin_query_pages() {
    let s = Server::start().await;
    s.push(
        canned(200, json!([{"deviceId": "a", "status": "enabled"}]))
            .header("x-ms-continuation", "n1"),
    )
    .push(
        canned(200, json!([{"deviceId": "b", "status": "disabled"}]))
            .header("x-ms-continuation", "n2"),
    )
    .push(canned(200, json!([])).header("x-ms-continuation", ""));
    let q = "SELECT * FROM devices WHERE status = 'enabled'";
    let twins: Vec<Twin> = s.hub().query_twins(q, Some(1)).try_collect().await.unwrap();
    assert_eq!(
        twins
            .iter()
            .map(|t| t.device_id.as_str())
            .collect::<Vec<_>>(),
        ["a", "b"]
    );
    let reqs = s.requests();
    assert_eq!(reqs.len(), 3);
    assert_eq!(reqs[0].line(), "POST /devices/query?api-version=2021-04-12");
    assert_eq!(reqs[0].json(), json!({"query": q}));
    assert_eq!(reqs[2].header("x-ms-continuation"), Some("n2"));
    assert_eq!(reqs[2].header("x-ms-max-item-count"), Some("1"));
}

#[tokio::test]
async fn repeated_continuation_token_stops_the_stream() {
    let s = Server::start().await;
    s.push(canned(200, json!([])).header("x-ms-continuation", "same"))
        .push(canned(200, json!([])).header("x-ms-continuation", "same"));
    let err = s
        .dps()
        .query_registrations("g", None)
        .try_collect::<Vec<_>>()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("same continuation token"), "{err}");
}

#[tokio::test]
async fn api_version_and_path_prefix_overrides() {
    let s = Server::start().await;
    s.push(canned(200, hub_device()));
    let cs = ConnectionString::parse(&format!(
        "HostName=h.azure-devices.us;SharedAccessKeyName=p;SharedAccessKey={KEY}"
    ))
    .unwrap();
    let options = ClientOptions {
        api_version: Some("2024-03-31".into()),
        base_url: Some(format!("http://{}/proxy/", s.addr).parse().unwrap()),
        ..s.options()
    };
    let hub = HubClient::new(&cs, options).unwrap();
    hub.get_device("dev-1").await.unwrap();
    let r = &s.requests()[0];
    assert_eq!(r.line(), "GET /proxy/devices/dev-1?api-version=2024-03-31");
    assert!(
        r.header("authorization")
            .unwrap()
            .contains("sr=h.azure-devices.us&"),
        "sovereign host signed"
    );
    assert_eq!(r.header("host"), Some(s.addr.to_string().as_str()));
}

#[tokio::test]
async fn transport_failures_are_transient() {
    let s = Server::start().await;
    s.push(Canned {
        delay: Duration::from_millis(1500),
        ..canned(200, hub_device())
    });
    let options = ClientOptions {
        request_timeout: Duration::from_millis(300),
        ..s.options()
    };
    let cs = ConnectionString::parse(&format!(
        "HostName=h;SharedAccessKeyName=p;SharedAccessKey={KEY}"
    ))
    .unwrap();
    let e = HubClient::new(&cs, options)
        .unwrap()
        .get_device("d")
        .await
        .unwrap_err();
    assert!(matches!(e, AzureError::Transient(_)), "timeout: {e:?}");
    assert_eq!(e.status(), None);

    // A port nothing listens on: bind, read the port, close.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let options = ClientOptions {
        base_url: Some(format!("http://127.0.0.1:{port}").parse().unwrap()),
        ..s.options()
    };
    let e = HubClient::new(&cs, options)
        .unwrap()
        .get_device("d")
        .await
        .unwrap_err();
    assert!(matches!(e, AzureError::Transient(_)), "refused: {e:?}");
    assert!(e.is_retryable());
}

#[tokio::test]
async fn token_is_renewed_between_calls_when_the_clock_moves() {
    let s = Server::start().await;
    s.push(canned(200, hub_device()))
        .push(canned(200, hub_device()))
        .push(canned(200, hub_device()));
    let clock = Arc::new(ManualClock::at_unix(1_000_000));
    let options = ClientOptions {
        clock: clock.clone(),
        ..s.options()
    };
    let cs = ConnectionString::parse(&format!(
        "HostName=h;SharedAccessKeyName=p;SharedAccessKey={KEY}"
    ))
    .unwrap();
    let hub = HubClient::new(&cs, options).unwrap();
    hub.get_device("d").await.unwrap();
    clock.advance_secs(60);
    hub.get_device("d").await.unwrap();
    clock.advance_secs(3600);
    hub.get_device("d").await.unwrap();
    let se: Vec<String> = s
        .requests()
        .iter()
        .map(|r| {
            r.header("authorization")
                .unwrap()
                .split("&se=")
                .nth(1)
                .unwrap()[..7]
                .to_string()
        })
        .collect();
    assert_eq!(se, ["1003600", "1003600", "1007260"]);
}

#[test]
fn clients_and_their_futures_can_cross_threads() {
    fn clone_send_sync<T: Clone + Send + Sync + 'static>() {}
    fn send<T: Send>(_: &T) {}
    clone_send_sync::<DpsClient>();
    clone_send_sync::<HubClient>();
    clone_send_sync::<super::clients::AzureClients>();
    clone_send_sync::<AzureError>();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let s = Server::start().await;
        let (dps, hub) = (s.dps(), s.hub());
        send(&dps.get_enrollment("x"));
        send(&dps.set_enrollment_status("x", ProvisioningStatus::Disabled));
        send(&dps.query_registrations("g", None));
        send(&hub.set_device_status("x", DeviceStatus::Disabled, None));
        send(&hub.bulk(&[]));
    });
}

#[tokio::test]
async fn a_refused_token_is_not_reused() {
    let s = Server::start().await;
    s.push(canned(
        401,
        json!({"errorCode": 401002, "trackingId": "t", "message": "Unauthorized"}),
    ))
    .push(canned(200, symmetric_enrollment_get()));
    let dps = s.dps();
    assert!(matches!(
        dps.get_enrollment("dev-1").await,
        Err(AzureError::Unauthorized(_))
    ));
    assert_eq!(
        dps.token_provider().cached_expiry(),
        None,
        "dropped after the 401"
    );
    dps.get_enrollment("dev-1").await.unwrap();
    assert_eq!(dps.token_provider().cached_expiry(), Some(1_700_000_000));
}

/// An HTTPS server with a self-signed certificate for 127.0.0.1, answering 200 `{"deviceId": "tls"}`.
async fn tls_server() -> (SocketAddr, Vec<u8>) {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

    let ck =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .unwrap();
    let cert_pem = ck.cert.pem().into_bytes();
    let chain = vec![CertificateDer::from(ck.cert.der().to_vec())];
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der()));
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(
                        http::Response::builder()
                            .header("content-type", "application/json")
                            .body(http_body_util::Full::new(bytes::Bytes::from_static(
                                br#"{"deviceId":"tls"}"#,
                            )))
                            .unwrap(),
                    )
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (addr, cert_pem)
}

#[tokio::test]
async fn https_with_an_extra_trusted_root() {
    let (addr, ca_pem) = tls_server().await;
    let cs = ConnectionString::parse(&format!(
        "HostName=h.azure-devices.net;SharedAccessKeyName=p;SharedAccessKey={KEY}"
    ))
    .unwrap();
    let base_url = Some(
        format!("https://127.0.0.1:{}", addr.port())
            .parse()
            .unwrap(),
    );
    let untrusted = HubClient::new(
        &cs,
        ClientOptions {
            base_url: base_url.clone(),
            ..ClientOptions::default()
        },
    )
    .unwrap();
    let err = untrusted.get_device("tls").await.unwrap_err();
    assert!(
        matches!(err, AzureError::Other(_)) && !err.is_retryable(),
        "unknown CA refused, not retried: {err:?}"
    );
    assert!(
        err.to_string().contains("invalid peer certificate"),
        "{err}"
    );
    let trusted = HubClient::new(
        &cs,
        ClientOptions {
            base_url,
            extra_root_certificates_pem: vec![ca_pem],
            ..ClientOptions::default()
        },
    )
    .unwrap();
    assert_eq!(trusted.get_device("tls").await.unwrap().device_id, "tls");
}

/// Ids a caller (or a corrupted record) could hand the clients: none may change which resource is addressed.
const HOSTILE_IDS: &[&str] = &[
    "..",
    ".",
    "",
    "%2e%2e",
    "%2E%2E",
    ".%2e",
    "a/b",
    "../x",
    "a?b",
    "a#b",
    "a%2Fb",
    "a b",
    "a\\b",
    "a;b",
    "a&api-version=1",
    "dév",
    "デバイス",
    "a\u{0}b",
    "a\nb",
    "a\tb",
    "...",
    "+",
];

/// Decodes `%XX` escapes (the server side of what the client encoded).
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 3 <= b.len() {
            if let Some(v) = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8(out).unwrap()
}

#[tokio::test]
async fn no_id_can_change_the_url_the_clients_send() {
    let s = Server::start().await;
    let dps = s.dps();
    let hub = s.hub();
    for id in HOSTILE_IDS {
        let before = s.requests().len();
        for _ in 0..4 {
            s.push(canned(
                404,
                json!({"errorCode": 404201, "message": "not found"}),
            ));
        }
        let results = [
            ("enrollments", dps.get_enrollment(id).await.err()),
            ("enrollmentGroups", dps.get_enrollment_group(id).await.err()),
            ("registrations", dps.get_registration(id).await.err()),
            ("devices", hub.get_device(id).await.err()),
        ];
        let sent = s.requests()[before..].to_vec();
        // These cannot travel in a URL path unchanged (parsers drop or resolve them): refused unsent.
        if id.is_empty() || matches!(*id, "." | "..") || id.contains(['\t', '\n', '\r']) {
            assert!(sent.is_empty(), "{id:?} was sent: {sent:?}");
            for (_, e) in &results {
                assert!(
                    matches!(e, Some(AzureError::InvalidRequest(_))),
                    "{id:?}: {e:?}"
                );
            }
            // What was pushed for this id is not consumed; drop it.
            s.script.responses.lock().unwrap().clear();
            continue;
        }
        assert_eq!(sent.len(), 4, "{id:?}");
        for ((collection, _), r) in results.iter().zip(&sent) {
            let (path, query) = r.uri.split_once('?').unwrap_or((&r.uri, ""));
            assert!(query.starts_with("api-version="), "{id:?}: {}", r.uri);
            assert!(
                !query.contains('&'),
                "{id:?} added a query parameter: {}",
                r.uri
            );
            let segments: Vec<String> = path
                .trim_start_matches('/')
                .split('/')
                .map(percent_decode)
                .collect();
            assert_eq!(
                segments,
                [collection.to_string(), id.to_string()],
                "{}",
                r.uri
            );
        }
    }
}

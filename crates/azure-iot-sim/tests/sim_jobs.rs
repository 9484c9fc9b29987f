//! The hubs' import/export jobs API against a real Blob service (Azurite).
//!
//! Azurite comes from `DEPROVISIOND_TEST_AZURITE_URL` (the account's blob endpoint; `scripts/azurite.sh`
//! starts one and sets it, the test command does so before the tests). Without it the tests that need
//! blobs say they are skipped and pass, except under `CI=true`, where they fail.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use azure_iot_sim::blob::AccountKey;
use azure_iot_sim::sas;
use azure_iot_sim::throttle::ThrottlePatch;
use azure_iot_sim::{
    HubConfig, HubTier, JobsConfig, PolicyConfig, RunningSimulator, SimConfig, Simulator,
    ThrottleConfig,
};
use chrono::Utc;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

mod common;

const HUB: &str = "jobs-hub.azure-devices.net";
const API: &str = "2021-04-12";

/// The Azurite the environment names.
struct Azurite {
    /// `http://127.0.0.1:port/devstoreaccount1`.
    url: String,
    key: AccountKey,
    http: reqwest::Client,
}

static CONTAINERS: AtomicU32 = AtomicU32::new(0);

impl Azurite {
    fn from_env() -> Option<Self> {
        let Some(url) = std::env::var("DEPROVISIOND_TEST_AZURITE_URL")
            .ok()
            .filter(|u| !u.is_empty())
        else {
            common::skip(
                "DEPROVISIOND_TEST_AZURITE_URL is not set (scripts/azurite.sh -- cargo test starts Azurite)",
                "the import/export jobs against a real Blob service",
            );
            return None;
        };
        let url = url.trim_end_matches('/').to_string();
        let account = url.rsplit('/').next().unwrap().to_string();
        let key = match std::env::var("DEPROVISIOND_TEST_AZURITE_KEY") {
            Ok(k) if !k.is_empty() => AccountKey::new(&account, &k).unwrap(),
            _ => AccountKey::azurite(),
        };
        Some(Self {
            url,
            key,
            http: reqwest::Client::new(),
        })
    }

    fn admin_sas(&self) -> String {
        self.key
            .account_sas("rwdlac", Utc::now() + chrono::Duration::hours(1))
    }

    /// A new, empty container.
    async fn container(&self) -> String {
        let name = format!(
            "jobs-{}-{}",
            std::process::id(),
            CONTAINERS.fetch_add(1, Ordering::SeqCst)
        );
        let resp = self
            .http
            .put(format!(
                "{}/{name}?restype=container&{}",
                self.url,
                self.admin_sas()
            ))
            .header("x-ms-version", "2021-08-06")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 201, "{}", resp.text().await.unwrap());
        name
    }

    /// A container SAS URI as a job takes it.
    fn sas_uri(&self, container: &str, perms: &str, valid_for: chrono::Duration) -> String {
        format!(
            "{}/{container}?{}",
            self.url,
            self.key
                .container_sas(container, perms, Utc::now() + valid_for)
        )
    }

    fn rw(&self, container: &str) -> String {
        self.sas_uri(container, "rwdl", chrono::Duration::hours(1))
    }

    async fn put(&self, container: &str, blob: &str, body: String) {
        let resp = self
            .http
            .put(format!(
                "{}/{container}/{blob}?{}",
                self.url,
                self.admin_sas()
            ))
            .header("x-ms-version", "2021-08-06")
            .header("x-ms-blob-type", "BlockBlob")
            // reqwest sends no Content-Length for an empty body, which Put Blob requires.
            .header("content-length", body.len())
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 201, "{}", resp.text().await.unwrap());
    }

    /// Status and text of a blob.
    async fn get(&self, container: &str, blob: &str) -> (u16, String) {
        let resp = self
            .http
            .get(format!(
                "{}/{container}/{blob}?{}",
                self.url,
                self.admin_sas()
            ))
            .header("x-ms-version", "2021-08-06")
            .send()
            .await
            .unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    }

    /// Ids of the committed blocks of a blob.
    async fn block_count(&self, container: &str, blob: &str) -> usize {
        let resp = self
            .http
            .get(format!(
                "{}/{container}/{blob}?comp=blocklist&blocklisttype=committed&{}",
                self.url,
                self.admin_sas()
            ))
            .header("x-ms-version", "2021-08-06")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        resp.text().await.unwrap().matches("<Block>").count()
    }
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Jobs run as fast as the blob service allows unless a test slows them.
fn fast_jobs() -> JobsConfig {
    JobsConfig {
        devices_per_second: 0.0,
        queue_seconds: 0.0,
        ..JobsConfig::default()
    }
}

fn config(jobs: JobsConfig) -> SimConfig {
    let mut hub = HubConfig::new(HUB);
    let mut policies = PolicyConfig::hub_defaults();
    policies.push(PolicyConfig::new("readOnly", &["RegistryRead"]));
    hub.policies = policies;
    SimConfig {
        hubs: vec![hub],
        throttle: ThrottleConfig {
            enabled: false,
            ..ThrottleConfig::default()
        },
        jobs,
        ..SimConfig::default()
    }
}

struct Env {
    sim: RunningSimulator,
    http: reqwest::Client,
}

impl Env {
    async fn start(cfg: SimConfig) -> Self {
        Self {
            sim: Simulator::start(cfg).await.unwrap(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(20))
                .build()
                .unwrap(),
        }
    }

    fn token(&self, policy: &str) -> String {
        let h = self.sim.state().hub(HUB).unwrap();
        let key = sas::key_bytes(h.policy(policy).unwrap().primary_key.expose()).unwrap();
        sas::mint(HUB, &key, Some(policy), now_unix() + 600)
    }

    async fn call_as(
        &self,
        policy: &str,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, reqwest::header::HeaderMap, Value) {
        let url = format!("{}{path}?api-version={API}", self.sim.hub_base_url(HUB));
        let mut rb = self
            .http
            .request(method, url)
            .header("authorization", self.token(policy));
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
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, headers, v)
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, reqwest::header::HeaderMap, Value) {
        self.call_as("iothubowner", method, path, body).await
    }

    /// Creates a job; panics unless the hub accepts it.
    async fn create(&self, body: Value) -> Value {
        let (s, _, job) = self.call(Method::POST, "/jobs/create", Some(body)).await;
        assert_eq!(s, 200, "{job}");
        job
    }

    async fn job(&self, id: &str) -> Value {
        let (s, _, job) = self.call(Method::GET, &format!("/jobs/{id}"), None).await;
        assert_eq!(s, 200, "{job}");
        job
    }

    /// Polls a job until it ends; every status seen, in order, without repeats.
    async fn wait(&self, id: &str) -> (Value, Vec<String>) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut seen: Vec<String> = Vec::new();
        loop {
            let job = self.job(id).await;
            let status = job["status"].as_str().unwrap().to_string();
            if seen.last() != Some(&status) {
                seen.push(status.clone());
            }
            if !["enqueued", "running"].contains(&status.as_str()) {
                return (job, seen);
            }
            assert!(Instant::now() < deadline, "job {id} still {status}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Creates `n` SAS devices `dev-0000`…; answers their stored JSON.
    fn seed(&self, n: usize) -> Vec<Value> {
        let hub = self.sim.state().hub(HUB).unwrap();
        (0..n)
            .map(|i| {
                let id = format!("dev-{i:04}");
                hub.upsert_device(&id, json!({"deviceId": id})).unwrap()
            })
            .collect()
    }

    fn device(&self, id: &str) -> Option<Value> {
        self.sim.state().hub(HUB).unwrap().get_device(id)
    }
}

fn lines(text: &str) -> Vec<Value> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test]
async fn export_writes_every_identity_with_its_keys_in_blocks() {
    let Some(az) = Azurite::from_env() else {
        return;
    };
    let env = Env::start(config(JobsConfig {
        block_size: 1024,
        ..fast_jobs()
    }))
    .await;
    let devices = env.seed(40);
    let hub = env.sim.state().hub(HUB).unwrap();
    hub.set_twin("dev-0003", Some(json!({"site": "lyon"})), None)
        .unwrap();
    let c = az.container().await;
    let job = env
        .create(json!({"type": "export", "outputBlobContainerUri": az.rw(&c), "excludeKeysInExport": false}))
        .await;
    assert_eq!(job["type"], "export");
    assert_eq!(job["status"], "enqueued");
    assert_eq!(job["progress"], 0);
    assert!(
        job["jobId"].as_str().is_some_and(|s| s.len() == 36),
        "{job}"
    );
    assert!(job["startTimeUtc"].is_string());
    let (done, _) = env.wait(job["jobId"].as_str().unwrap()).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["progress"], 100);
    assert!(done["endTimeUtc"].is_string());
    assert!(done.get("failureReason").is_none());

    let (s, text) = az.get(&c, "devices.txt").await;
    assert_eq!(s, 200);
    let exported = lines(&text);
    assert_eq!(exported.len(), 40);
    for (line, dev) in exported.iter().zip(&devices) {
        assert_eq!(line["id"], dev["deviceId"]);
        assert_eq!(line["eTag"], dev["etag"]);
        assert_eq!(line["status"], "enabled");
        assert_eq!(line["authentication"]["type"], "sas");
        assert_eq!(
            line["authentication"]["symmetricKey"], dev["authentication"]["symmetricKey"],
            "keys are exported"
        );
        assert!(line["twinETag"].is_string());
    }
    assert_eq!(exported[3]["tags"]["site"], "lyon");
    assert!(
        az.block_count(&c, "devices.txt").await > 1,
        "1 KiB blocks: the export is uploaded with Put Block + Put Block List"
    );

    // The job calls are in the call log, charged to the jobs throttle, never to the registry.
    let calls: Vec<_> = env
        .sim
        .calls()
        .into_iter()
        .filter(|c| c.path.starts_with("/jobs"))
        .collect();
    assert!(calls.iter().any(|c| c.operation == "CreateImportExportJob"
        && c.status == Some(200)
        && c.quota.as_deref() == Some("hub:jobs-hub.azure-devices.net:jobs")));
    assert!(
        calls.iter().any(|c| c.operation == "GetImportExportJob"
            && c.entity_id.as_deref() == job["jobId"].as_str())
    );
    assert!(
        env.sim
            .calls()
            .iter()
            .all(|c| c.quota.as_deref() != Some("hub:jobs-hub.azure-devices.net:registry")),
        "no registry operation was charged"
    );
}

#[tokio::test]
async fn export_without_keys_to_a_named_blob() {
    let Some(az) = Azurite::from_env() else {
        return;
    };
    let env = Env::start(config(fast_jobs())).await;
    env.seed(3);
    let c = az.container().await;
    let job = env
        .create(
            json!({"type": "export", "outputBlobContainerUri": az.rw(&c),
            "outputBlobName": "snapshots/before.txt", "excludeKeysInExport": true}),
        )
        .await;
    assert_eq!(job["outputBlobName"], "snapshots/before.txt");
    assert_eq!(job["excludeKeysInExport"], true);
    let (done, _) = env.wait(job["jobId"].as_str().unwrap()).await;
    assert_eq!(done["status"], "completed", "{done}");
    let (s, text) = az.get(&c, "snapshots/before.txt").await;
    assert_eq!(s, 200);
    let exported = lines(&text);
    assert_eq!(exported.len(), 3);
    assert_eq!(
        exported[0]["authentication"]["symmetricKey"],
        json!({"primaryKey": null, "secondaryKey": null})
    );
    assert_eq!(az.get(&c, "devices.txt").await.0, 404);
}

#[tokio::test]
async fn import_applies_every_mode_and_logs_each_refused_device() {
    let Some(az) = Azurite::from_env() else {
        return;
    };
    let env = Env::start(config(fast_jobs())).await;
    let seeded = env.seed(12);
    let etag = |i: usize| seeded[i]["etag"].as_str().unwrap().to_string();
    let keys = seeded[2]["authentication"].clone();
    let items = [
        json!({"id": "new-1", "importMode": "create", "tags": {"t": 1}}),
        json!({"id": "dev-0000", "importMode": "create"}),
        json!({"id": "new-2"}),
        json!({"id": "dev-0001", "importMode": "createOrUpdate", "status": "disabled"}),
        json!({"id": "dev-0002", "importMode": "updateIfMatchETag", "eTag": etag(2),
            "status": "disabled", "statusReason": "job 42", "authentication": keys}),
        json!({"id": "dev-0003", "importMode": "updateIfMatchETag", "eTag": "c3RhbGU=", "status": "disabled"}),
        json!({"id": "dev-0004", "importMode": "update", "status": "disabled"}),
        json!({"id": "ghost", "importMode": "update"}),
        json!({"id": "ghost-2", "importMode": "UpdateIfMatchETag", "eTag": "x"}),
        json!({"id": "dev-0005", "importMode": "delete"}),
        json!({"id": "ghost-3", "importMode": "delete"}),
        json!({"id": "dev-0006", "importMode": "deleteIfMatchETag", "eTag": format!("\"{}\"", etag(6))}),
        json!({"id": "dev-0007", "importMode": "deleteIfMatchETag", "eTag": "c3RhbGU="}),
        json!({"id": "dev-0008", "importMode": "createOrUpdateIfMatchETag", "eTag": "c3RhbGU="}),
        json!({"id": "new-3", "importMode": "createOrUpdateIfMatchETag"}),
        json!({"id": "dev-0009", "importMode": "updateTwin", "tags": {"zone": "b"}}),
        json!({"id": "dev-0010", "importMode": "updateTwinIfMatchETag", "twinETag": "AAAAAAAAAAk=", "tags": {"x": 1}}),
        json!({"id": "dev-0011", "importMode": "replace"}),
    ];
    let mut body: String = items.iter().map(|i| format!("{i}\n")).collect();
    body.push_str("this is not json\n\n");
    let input = az.container().await;
    let output = az.container().await;
    az.put(&input, "devices.txt", body).await;
    let job = env
        .create(
            json!({"type": "import", "inputBlobContainerUri": az.rw(&input),
            "outputBlobContainerUri": az.rw(&output)}),
        )
        .await;
    assert_eq!(job["type"], "import");
    let (done, _) = env.wait(job["jobId"].as_str().unwrap()).await;
    assert_eq!(
        done["status"], "completed",
        "per-device refusals do not fail the job: {done}"
    );

    // The registry.
    assert!(env.device("new-1").is_some() && env.device("new-2").is_some());
    assert!(env.device("new-3").is_some());
    assert_eq!(env.device("dev-0001").unwrap()["status"], "disabled");
    let d2 = env.device("dev-0002").unwrap();
    assert_eq!(d2["status"], "disabled");
    assert_eq!(d2["statusReason"], "job 42");
    assert_eq!(
        d2["authentication"], seeded[2]["authentication"],
        "authentication sent back: keys kept"
    );
    assert_eq!(env.device("dev-0003").unwrap()["status"], "enabled");
    let d4 = env.device("dev-0004").unwrap();
    assert_eq!(d4["status"], "disabled");
    assert_ne!(
        d4["authentication"]["symmetricKey"]["primaryKey"],
        seeded[4]["authentication"]["symmetricKey"]["primaryKey"],
        "an update without authentication makes the hub generate new keys"
    );
    assert!(env.device("ghost").is_none() && env.device("ghost-2").is_none());
    assert!(env.device("dev-0005").is_none() && env.device("dev-0006").is_none());
    assert!(env.device("dev-0007").is_some());
    let hub = env.sim.state().hub(HUB).unwrap();
    assert_eq!(hub.get_stored("new-1").unwrap().tags, json!({"t": 1}));
    assert_eq!(
        hub.get_stored("dev-0009").unwrap().tags,
        json!({"zone": "b"})
    );
    assert_eq!(hub.get_stored("dev-0010").unwrap().tags, json!({}));

    // importErrors.log: one line per refused device, with the numeric code Azure writes.
    let (s, text) = az.get(&output, "importErrors.log").await;
    assert_eq!(s, 200);
    let errors = lines(&text);
    let code_of = |id: &str| {
        errors
            .iter()
            .find(|e| e["deviceId"] == id)
            .map(|e| e["errorCode"].as_u64().unwrap())
    };
    assert_eq!(code_of("dev-0000"), Some(409_001));
    assert_eq!(code_of("dev-0003"), Some(412_001));
    assert_eq!(code_of("ghost"), Some(404_001));
    assert_eq!(code_of("ghost-2"), Some(404_001));
    assert_eq!(code_of("ghost-3"), Some(404_001));
    assert_eq!(code_of("dev-0007"), Some(412_001));
    assert_eq!(code_of("dev-0008"), Some(412_001));
    assert_eq!(code_of("dev-0010"), Some(412_001));
    assert_eq!(code_of("dev-0011"), Some(400_004));
    let bad_line = errors.iter().find(|e| e.get("deviceId").is_none()).unwrap();
    assert_eq!(bad_line["errorCode"], 400_012);
    assert!(
        bad_line["errorStatus"]
            .as_str()
            .unwrap()
            .contains("this is not json")
    );
    assert_eq!(errors.len(), 10, "{text}");
    for e in &errors {
        assert!(e["errorStatus"].is_string());
    }
}

#[tokio::test]
async fn import_from_a_named_blob_writes_an_empty_error_log() {
    let Some(az) = Azurite::from_env() else {
        return;
    };
    let env = Env::start(config(fast_jobs())).await;
    let c = az.container().await;
    let body: String = (0..250)
        .map(|i| {
            format!(
                "{}\r\n",
                json!({"id": format!("bulk-{i}"), "importMode": "create"})
            )
        })
        .collect();
    az.put(&c, "in/batch-1.txt", body).await;
    let job = env
        .create(json!({"type": "import", "inputBlobContainerUri": az.rw(&c),
            "inputBlobName": "in/batch-1.txt", "outputBlobContainerUri": az.rw(&c)}))
        .await;
    let (done, _) = env.wait(job["jobId"].as_str().unwrap()).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(env.sim.state().hub(HUB).unwrap().device_count(), 250);
    assert_eq!(az.get(&c, "importErrors.log").await, (200, String::new()));
}

#[tokio::test]
async fn an_export_then_an_import_round_trips_the_registry_with_its_keys() {
    let Some(az) = Azurite::from_env() else {
        return;
    };
    let env = Env::start(config(fast_jobs())).await;
    let seeded = env.seed(5);
    let c = az.container().await;
    let job = env
        .create(json!({"type": "export", "outputBlobContainerUri": az.rw(&c)}))
        .await;
    env.wait(job["jobId"].as_str().unwrap()).await;
    env.sim.handle().reset_state();
    // The export's lines carry no importMode: createOrUpdate re-creates every identity, keys included.
    let job = env
        .create(json!({"type": "import", "inputBlobContainerUri": az.rw(&c), "outputBlobContainerUri": az.rw(&c)}))
        .await;
    let (done, _) = env.wait(job["jobId"].as_str().unwrap()).await;
    assert_eq!(done["status"], "completed", "{done}");
    for d in &seeded {
        let back = env.device(d["deviceId"].as_str().unwrap()).unwrap();
        assert_eq!(back["authentication"], d["authentication"]);
    }
}

#[tokio::test]
async fn statuses_progress_over_the_modelled_duration_and_one_job_is_active_per_hub() {
    let Some(az) = Azurite::from_env() else {
        return;
    };
    // 40 devices at 40 a second: about a second of running after half a second enqueued.
    let env = Env::start(config(JobsConfig {
        devices_per_second: 40.0,
        queue_seconds: 0.5,
        ..JobsConfig::default()
    }))
    .await;
    env.seed(40);
    let c = az.container().await;
    let t0 = Instant::now();
    let job = env
        .create(json!({"type": "export", "outputBlobContainerUri": az.rw(&c)}))
        .await;
    let id = job["jobId"].as_str().unwrap().to_string();

    // A second import/export job while one is active: 403 JobQuotaExceeded, in the hub's error shape.
    let (s, h, err) = env
        .call(
            Method::POST,
            "/jobs/create",
            Some(json!({"type": "import", "inputBlobContainerUri": az.rw(&c), "outputBlobContainerUri": az.rw(&c)})),
        )
        .await;
    assert_eq!(s, 403, "{err}");
    assert_eq!(h["iothub-errorcode"], "JobQuotaExceeded");
    assert!(
        err["Message"]
            .as_str()
            .unwrap()
            .contains("JobQuotaExceeded")
    );

    let mut progress = Vec::new();
    let done = loop {
        let j = env.job(&id).await;
        progress.push(j["progress"].as_u64().unwrap());
        if j["status"] == "completed" {
            break j;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let elapsed = t0.elapsed();
    assert_eq!(done["status"], "completed");
    assert!(
        elapsed >= Duration::from_millis(1300),
        "0.5 s enqueued + 1 s running, took {elapsed:?}"
    );
    assert!(progress.windows(2).all(|w| w[0] <= w[1]), "{progress:?}");
    assert!(
        progress.iter().any(|p| *p > 0 && *p < 100),
        "progress moves while running: {progress:?}"
    );

    // Ended: the next job is accepted, and the list shows both, oldest first.
    let second = env
        .create(json!({"type": "export", "outputBlobContainerUri": az.rw(&c)}))
        .await;
    let (s, _, list) = env.call(Method::GET, "/jobs", None).await;
    assert_eq!(s, 200);
    let ids: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["jobId"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [id.as_str(), second["jobId"].as_str().unwrap()]);

    // Time scale: the same job at 20x quota speed is over in a fraction of the time.
    env.sim.handle().patch_throttle(&ThrottlePatch {
        time_scale: Some(20.0),
        ..ThrottlePatch::default()
    });
    env.wait(second["jobId"].as_str().unwrap()).await;
    let t1 = Instant::now();
    let third = env
        .create(json!({"type": "export", "outputBlobContainerUri": az.rw(&c)}))
        .await;
    let (done, seen) = env.wait(third["jobId"].as_str().unwrap()).await;
    assert_eq!(done["status"], "completed");
    assert_eq!(seen.last().map(String::as_str), Some("completed"));
    assert!(
        t1.elapsed() < Duration::from_millis(900),
        "time-scaled: {:?}",
        t1.elapsed()
    );
}

#[tokio::test]
async fn enqueued_then_running_then_completed() {
    let Some(az) = Azurite::from_env() else {
        return;
    };
    let env = Env::start(config(JobsConfig {
        devices_per_second: 20.0,
        queue_seconds: 0.3,
        ..JobsConfig::default()
    }))
    .await;
    env.seed(10);
    let c = az.container().await;
    let job = env
        .create(json!({"type": "export", "outputBlobContainerUri": az.rw(&c)}))
        .await;
    let (done, seen) = env.wait(job["jobId"].as_str().unwrap()).await;
    assert_eq!(seen, ["enqueued", "running", "completed"], "{done}");
}

#[tokio::test]
async fn cancel_stops_a_running_job() {
    let Some(az) = Azurite::from_env() else {
        return;
    };
    let env = Env::start(config(JobsConfig {
        devices_per_second: 10.0,
        queue_seconds: 0.0,
        ..JobsConfig::default()
    }))
    .await;
    env.seed(100);
    let c = az.container().await;
    let job = env
        .create(json!({"type": "export", "outputBlobContainerUri": az.rw(&c)}))
        .await;
    let id = job["jobId"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(10);
    while env.job(&id).await["status"] != "running" {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (s, _, _) = env.call(Method::DELETE, &format!("/jobs/{id}"), None).await;
    assert_eq!(s, 204);
    let j = env.job(&id).await;
    assert_eq!(j["status"], "cancelled");
    assert!(j["endTimeUtc"].is_string());
    assert!(j["progress"].as_u64().unwrap() < 100);
    // The runner stops and leaves it so; nothing was committed, and a new job may start.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(env.job(&id).await["status"], "cancelled");
    assert_eq!(az.get(&c, "devices.txt").await.0, 404);
    env.create(json!({"type": "export", "outputBlobContainerUri": az.rw(&c)}))
        .await;
    // Cancelling an ended job changes nothing.
    let (s, _, _) = env.call(Method::DELETE, &format!("/jobs/{id}"), None).await;
    assert_eq!(s, 204);
    assert_eq!(env.job(&id).await["status"], "cancelled");
}

#[tokio::test]
async fn blob_problems_fail_the_job_with_a_reason_naming_them() {
    let Some(az) = Azurite::from_env() else {
        return;
    };
    let env = Env::start(config(fast_jobs())).await;
    env.seed(3);
    let c = az.container().await;
    let run = |body: Value| {
        let env = &env;
        async move {
            let job = env.create(body).await;
            env.wait(job["jobId"].as_str().unwrap()).await.0
        }
    };
    let reason = |j: &Value| j["failureReason"].as_str().unwrap_or_default().to_string();

    let expired = az.sas_uri(&c, "rwdl", chrono::Duration::hours(-1));
    let j = run(json!({"type": "export", "outputBlobContainerUri": expired})).await;
    assert_eq!(j["status"], "failed", "{j}");
    // Azure says AuthenticationFailed, Azurite AuthorizationFailure: both are a 403 naming the blob.
    assert!(reason(&j).contains("403"), "{j}");
    assert!(reason(&j).contains("devices.txt"), "{j}");
    assert!(j["endTimeUtc"].is_string());

    let missing = az.rw("no-such-container");
    let j = run(json!({"type": "export", "outputBlobContainerUri": missing})).await;
    assert_eq!(j["status"], "failed", "{j}");
    assert!(reason(&j).contains("ContainerNotFound"), "{j}");

    let read_only = az.sas_uri(&c, "rl", chrono::Duration::hours(1));
    let j = run(json!({"type": "export", "outputBlobContainerUri": read_only})).await;
    assert_eq!(j["status"], "failed", "{j}");
    assert!(reason(&j).contains("Cannot write the export blob"), "{j}");
    assert!(reason(&j).contains("403"), "{j}");

    let j = run(json!({"type": "import", "inputBlobContainerUri": az.rw(&c), "outputBlobContainerUri": az.rw(&c)})).await;
    assert_eq!(j["status"], "failed", "{j}");
    assert!(reason(&j).contains("BlobNotFound"), "{j}");

    az.put(
        &c,
        "devices.txt",
        format!("{}\n", json!({"id": "x", "importMode": "delete"})),
    )
    .await;
    let j = run(json!({"type": "import", "inputBlobContainerUri": az.rw(&c),
        "outputBlobContainerUri": az.rw("no-such-container")}))
    .await;
    assert_eq!(j["status"], "failed", "{j}");
    assert!(reason(&j).contains("importErrors.log"), "{j}");
    assert!(reason(&j).contains("ContainerNotFound"), "{j}");

    // A blob service that is not there at all: each call is tried again, then the job fails, and the
    // reason names the call without its URL (which holds the SAS).
    let j = run(
        json!({"type": "export", "outputBlobContainerUri": "http://127.0.0.1:9/acct/c?sv=2021-08-06&sig=s3cr3t"}),
    )
    .await;
    assert_eq!(j["status"], "failed", "{j}");
    assert!(reason(&j).contains("Put Blob"), "{j}");
    assert!(!reason(&j).contains("s3cr3t"), "{j}");
    assert!(!reason(&j).contains("sig="), "{j}");
}

#[tokio::test]
async fn jobs_are_not_charged_to_the_registry_quota() {
    let Some(az) = Azurite::from_env() else {
        return;
    };
    let mut cfg = config(fast_jobs());
    cfg.throttle.enabled = true;
    cfg.hubs[0].tier = HubTier::S1;
    let env = Env::start(cfg).await;
    let c = az.container().await;
    // 150 creates: more than an S1 unit's 100 registry operations a minute.
    let body: String = (0..150)
        .map(|i| {
            format!(
                "{}\n",
                json!({"id": format!("q-{i}"), "importMode": "create"})
            )
        })
        .collect();
    az.put(&c, "devices.txt", body).await;
    let job = env
        .create(json!({"type": "import", "inputBlobContainerUri": az.rw(&c), "outputBlobContainerUri": az.rw(&c)}))
        .await;
    let (done, _) = env.wait(job["jobId"].as_str().unwrap()).await;
    assert_eq!(done["status"], "completed");
    assert_eq!(env.sim.state().hub(HUB).unwrap().device_count(), 150);
    // The registry bucket is untouched: a full minute of registry operations still passes (150
    // registry operations would have emptied it).
    for i in 0..100 {
        let (s, _, _) = env
            .call(Method::GET, &format!("/devices/q-{i}"), None)
            .await;
        assert_eq!(s, 200, "registry call {i}");
    }
}

#[tokio::test]
async fn the_blob_client_reads_lines_across_ranges_and_writes_in_blocks() {
    use azure_iot_sim::blob::{BlobClient, BlobLines, BlockWriter, ContainerUrl};
    let Some(az) = Azurite::from_env() else {
        return;
    };
    let c = az.container().await;
    let url = ContainerUrl::parse(&az.rw(&c)).unwrap();
    let client = BlobClient::new().unwrap();
    let text = "first\r\n\nsecond line, longer than a range\nlast without newline";
    az.put(&c, "lines.txt", text.to_string()).await;
    for chunk in [1, 3, 7, 1000] {
        let mut r = BlobLines::new(client.clone(), url.clone(), "lines.txt").with_chunk_size(chunk);
        let mut got = Vec::new();
        while let Some(l) = r.next_line().await.unwrap() {
            got.push(l);
        }
        assert_eq!(
            got,
            [
                "first",
                "",
                "second line, longer than a range",
                "last without newline"
            ],
            "chunk {chunk}"
        );
        assert_eq!(r.position(), (text.len() as u64, Some(text.len() as u64)));
    }
    az.put(&c, "empty.txt", String::new()).await;
    let mut r = BlobLines::new(client.clone(), url.clone(), "empty.txt");
    assert_eq!(r.next_line().await.unwrap(), None);

    let mut w = BlockWriter::new(
        client.clone(),
        url.clone(),
        "blocks.txt",
        1024,
        "text/plain",
    );
    let lines: Vec<String> = (0..300)
        .map(|i| format!("line {i:05} {}", "x".repeat(i % 50)))
        .collect();
    for l in &lines {
        w.write_line(l).await.unwrap();
    }
    assert!(w.blocks_staged() > 3);
    assert_eq!(
        az.get(&c, "blocks.txt").await.0,
        404,
        "nothing visible before finish"
    );
    w.finish().await.unwrap();
    let (s, body) = az.get(&c, "blocks.txt").await;
    assert_eq!(s, 200);
    assert_eq!(body.lines().collect::<Vec<_>>(), lines);
}

#[tokio::test]
async fn a_fleet_of_many_blocks_round_trips_through_export_and_import() {
    let Some(az) = Azurite::from_env() else {
        return;
    };
    let env = Env::start(config(JobsConfig {
        block_size: 64 * 1024,
        ..fast_jobs()
    }))
    .await;
    let n = 5_000;
    env.seed(n);
    let c = az.container().await;
    let t0 = Instant::now();
    let job = env
        .create(json!({"type": "export", "outputBlobContainerUri": az.rw(&c)}))
        .await;
    let (done, _) = env.wait(job["jobId"].as_str().unwrap()).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert!(az.block_count(&c, "devices.txt").await > 10);
    // Disable every device through an import of the export's lines with importMode added.
    let (_, text) = az.get(&c, "devices.txt").await;
    let body: String = lines(&text)
        .into_iter()
        .map(|mut l| {
            l["importMode"] = json!("updateIfMatchETag");
            l["status"] = json!("disabled");
            format!("{l}\n")
        })
        .collect();
    az.put(&c, "disable.txt", body).await;
    let job = env
        .create(json!({"type": "import", "inputBlobContainerUri": az.rw(&c),
            "inputBlobName": "disable.txt", "outputBlobContainerUri": az.rw(&c)}))
        .await;
    let (done, _) = env.wait(job["jobId"].as_str().unwrap()).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(az.get(&c, "importErrors.log").await, (200, String::new()));
    let hub = env.sim.state().hub(HUB).unwrap();
    assert_eq!(hub.device_count(), n);
    assert!(
        hub.list_devices(Some(1000))
            .iter()
            .all(|d| d["status"] == "disabled")
    );
    eprintln!("{n} devices exported and imported in {:?}", t0.elapsed());
}

// --- No blob service needed below ---------------------------------------------------------------

#[tokio::test]
async fn create_validates_the_request_and_the_rights() {
    let env = Env::start(config(fast_jobs())).await;
    let out = "http://127.0.0.1:9/devstoreaccount1/c?sig=x";
    for (body, name) in [
        (
            json!({"type": "backup", "outputBlobContainerUri": out}),
            "ArgumentInvalid",
        ),
        (json!({"outputBlobContainerUri": out}), "ArgumentNull"),
        (json!({"type": "export"}), "ArgumentNull"),
        (
            json!({"type": "import", "outputBlobContainerUri": out}),
            "ArgumentNull",
        ),
        (
            json!({"type": "export", "outputBlobContainerUri": "not a url"}),
            "ArgumentInvalid",
        ),
        (
            json!({"type": "export", "outputBlobContainerUri": out, "storageAuthenticationType": "identityBased"}),
            "ArgumentInvalid",
        ),
        (
            json!({"type": "export", "outputBlobContainerUri": out, "excludeKeysInExport": "yes"}),
            "ArgumentInvalid",
        ),
    ] {
        let (s, h, err) = env
            .call(Method::POST, "/jobs/create", Some(body.clone()))
            .await;
        assert_eq!(s, 400, "{body} → {err}");
        assert_eq!(h["iothub-errorcode"], name, "{body}");
    }
    // Not a JobProperties object.
    let (s, h, _) = env
        .call(Method::POST, "/jobs/create", Some(json!("export")))
        .await;
    assert_eq!(s, 400);
    assert_eq!(h["iothub-errorcode"], "IotHubFormatError");

    // RegistryRead may export and read jobs, not import or cancel.
    let (s, _, job) = env
        .call_as(
            "readOnly",
            Method::POST,
            "/jobs/create",
            Some(json!({"type": "export", "outputBlobContainerUri": out})),
        )
        .await;
    assert_eq!(s, 200, "{job}");
    let id = job["jobId"].as_str().unwrap();
    let (s, _, _) = env
        .call_as("readOnly", Method::GET, &format!("/jobs/{id}"), None)
        .await;
    assert_eq!(s, 200);
    let (s, _, _) = env
        .call_as("readOnly", Method::DELETE, &format!("/jobs/{id}"), None)
        .await;
    assert_eq!(s, 401);
    let (s, _, _) = env
        .call_as("readOnly", Method::POST, "/jobs/create",
            Some(json!({"type": "import", "inputBlobContainerUri": out, "outputBlobContainerUri": out})))
        .await;
    assert_eq!(s, 401);

    let (s, h, _) = env.call(Method::GET, "/jobs/no-such-job", None).await;
    assert_eq!(s, 404);
    assert_eq!(h["iothub-errorcode"], "JobNotFound");
    let (s, _, _) = env.call(Method::DELETE, "/jobs/no-such-job", None).await;
    assert_eq!(s, 404);
}

#[tokio::test]
async fn job_settings_change_at_run_time_through_the_admin_api() {
    let env = Env::start(config(fast_jobs())).await;
    let url = format!("{}/_sim/jobs", env.sim.hub_base_url(HUB));
    let resp = env
        .http
        .patch(&url)
        .json(&json!({"devices_per_second": 123.0}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let got: Value = env
        .http
        .get(&url)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(got["settings"]["devices_per_second"], 123.0);
    assert!(got["jobs"].is_object());
    let resp = env
        .http
        .patch(&url)
        .json(&json!({"speed": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
}

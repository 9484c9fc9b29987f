//! Test support: throwaway databases on both stores, and the real app on a random port.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use deprovisiond::app::{App, AppConfig, WorkflowChoice};
use deprovisiond::domain::backoff::BackoffPolicy;
use deprovisiond::domain::clock::{Clock, Millis, SharedClock, SystemClock};
use deprovisiond::domain::job::{DeprovisionRequest, Target};
use deprovisiond::domain::lane::{Outcome, StepError};
use deprovisiond::domain::plan::{ItemStep, JobStep, LaneStep, Plan};
use deprovisiond::http::auth::{ApiKeyEntry, AuthConfig, Role, keys};
use deprovisiond::store::{ItemRecord, JobRecord, NewItem, StepEffects, Store};
use deprovisiond::worker::{EngineConfig, StepResult, Workflow};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

/// Says a check is skipped because `missing` is not there; under `CI=true` nothing may pass by
/// skipping, so there it fails the test instead, naming what is missing.
pub fn skip(missing: &str, unchecked: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{missing}, and CI=true forbids skipping: {unchecked} would go unchecked");
    }
    eprintln!("SKIPPED: {missing}; {unchecked} not checked");
}

/// A fresh, empty database for one test.
pub struct TestDb {
    pub url: String,
    _dir: Option<tempfile::TempDir>,
    /// The PostgreSQL server and database to drop afterwards: every empty database costs about 8 MB,
    /// and a run creates hundreds on a disk CI shares.
    pg: Option<(String, String)>,
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some((server, name)) = self.pg.take() else {
            return;
        };
        // Drop runs inside the test's runtime, which cannot be blocked on: a thread with its own runtime.
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                let admin = Store::connect(&server).await?;
                // FORCE ends the connections the app under test may still hold.
                let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                sqlx::query(sqlx::AssertSqlSafe(sql))
                    .execute(admin.pool())
                    .await?;
                admin.close().await;
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
            })
        })
        .join();
        if let Ok(Err(e)) = dropped {
            eprintln!("note: could not drop a test database: {e}");
        }
    }
}

impl TestDb {
    pub fn sqlite() -> TestDb {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("test.db").display());
        TestDb {
            url,
            _dir: Some(dir),
            pg: None,
        }
    }

    /// A new database on the server named by `DEPROVISIOND_TEST_PG_URL`; `None` (and a loud note) when unset.
    pub async fn postgres() -> Option<TestDb> {
        let Ok(server) = std::env::var("DEPROVISIOND_TEST_PG_URL") else {
            skip(
                "DEPROVISIOND_TEST_PG_URL is not set (scripts/test.sh sets it)",
                "the PostgreSQL variant",
            );
            return None;
        };
        let name = format!("dp_test_{}", uuid::Uuid::new_v4().simple());
        let admin = Store::connect(&server)
            .await
            .expect("connect to the test PostgreSQL server");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(admin.pool())
            .await
            .expect("create test database");
        admin.close().await;
        let mut url = url::Url::parse(&server).expect("DEPROVISIOND_TEST_PG_URL is a URL");
        url.set_path(&name);
        Some(TestDb {
            url: url.to_string(),
            _dir: None,
            pg: Some((server, name)),
        })
    }

    pub async fn store(&self) -> Store {
        let s = Store::connect(&self.url).await.expect("connect");
        s.migrate().await.expect("migrate");
        s
    }
}

/// Runs a test body on SQLite and on PostgreSQL, as two test functions.
#[macro_export]
macro_rules! both_stores {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    super::$name($crate::support::TestDb::sqlite()).await
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    if let Some(db) = $crate::support::TestDb::postgres().await {
                        super::$name(db).await
                    }
                }
            }
        )*
    };
}

/// Engine settings for fast tests.
pub fn fast_engine() -> EngineConfig {
    EngineConfig {
        concurrency: 8,
        lease: Duration::from_secs(5),
        renew_every: Duration::from_millis(500),
        poll_every: Duration::from_millis(50),
        backoff: BackoffPolicy {
            base: Duration::from_millis(20),
            cap: Duration::from_millis(200),
            max_attempts: 4,
        },
        grace: Duration::from_secs(2),
        rng_seed: Some(42),
        ..EngineConfig::default()
    }
}

/// API keys of the test app's default callers (`key:test-admin`, …); `ADMIN2_KEY` is a second admin, for
/// the two-person rule.
pub const ADMIN_KEY: &str = "dpk_test-admin-0123456789abcdefghijklmnopqrstuv";
pub const ADMIN2_KEY: &str = "dpk_test-admin2-0123456789abcdefghijklmnopqrstu";
pub const OPERATOR_KEY: &str = "dpk_test-operator-0123456789abcdefghijklmnopqr";
pub const READER_KEY: &str = "dpk_test-reader-0123456789abcdefghijklmnopqrstu";

/// Authentication of the test app: the four keys above, nothing else.
pub fn test_auth() -> AuthConfig {
    let entry = |name: &str, role, key: &str| ApiKeyEntry {
        name: name.into(),
        role,
        sha256: keys::hash(key),
    };
    AuthConfig::with_keys(vec![
        entry("test-admin", Role::Admin, ADMIN_KEY),
        entry("test-admin2", Role::Admin, ADMIN2_KEY),
        entry("test-operator", Role::Operator, OPERATOR_KEY),
        entry("test-reader", Role::Reader, READER_KEY),
    ])
}

/// A client that sends `key` as its bearer token on every request (`None`: no credential).
pub fn client_with(key: Option<&str>) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(k) = key {
        headers.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {k}").parse().expect("header value"),
        );
    }
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .expect("client")
}

/// The app, running on a random port.
pub struct TestApp {
    /// Where tests call the app: through the schema proxy, which checks every response.
    pub base: String,
    /// Sends [`ADMIN_KEY`] on every request, so tests about something else need not think about auth.
    pub http: reqwest::Client,
    proxy: crate::response_schema::SchemaProxy,
    /// The key `http` sends (for the client binary and raw requests).
    pub token: String,

    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl TestApp {
    pub async fn spawn(db: &TestDb, workflow: Arc<dyn Workflow>) -> TestApp {
        Self::spawn_with(db, workflow, fast_engine(), true).await
    }

    pub async fn spawn_with(
        db: &TestDb,
        workflow: Arc<dyn Workflow>,
        engine: EngineConfig,
        worker: bool,
    ) -> TestApp {
        let choice = WorkflowChoice::Custom(workflow, vec!["default".into()]);
        Self::spawn_choice(db, choice, engine, worker).await
    }

    pub async fn spawn_choice(
        db: &TestDb,
        choice: WorkflowChoice,
        engine: EngineConfig,
        worker: bool,
    ) -> TestApp {
        Self::spawn_clocked(db, choice, engine, worker, Arc::new(SystemClock)).await
    }

    /// The app with its own clock (a replica whose clock is off).
    pub async fn spawn_clocked(
        db: &TestDb,
        choice: WorkflowChoice,
        engine: EngineConfig,
        worker: bool,
        clock: SharedClock,
    ) -> TestApp {
        Self::spawn_auth(db, choice, engine, worker, clock, test_auth()).await
    }

    /// The app with these authentication settings.
    pub async fn spawn_auth(
        db: &TestDb,
        choice: WorkflowChoice,
        engine: EngineConfig,
        worker: bool,
        clock: SharedClock,
        auth: AuthConfig,
    ) -> TestApp {
        let config = AppConfig {
            database_url: db.url.clone(),
            listen: "127.0.0.1:0".parse().expect("addr"),
            run_worker: worker,
            engine,
            tombstone_audit_every: None,
            body_limit: deprovisiond::http::BODY_LIMIT_BYTES,
            auth,
        };
        let app = App::build(config, choice, clock).await.expect("app builds");
        let direct = format!("http://{}", app.local_addr());
        let proxy = crate::response_schema::SchemaProxy::start(direct.clone()).await;
        let base = format!("http://{}", proxy.addr);
        let stop = CancellationToken::new();
        let s = stop.clone();
        let task = tokio::spawn(async move {
            app.run_until_stopped(async move { s.cancelled().await })
                .await
                .expect("app runs");
        });
        TestApp {
            base,
            proxy,
            http: client_with(Some(ADMIN_KEY)),
            token: ADMIN_KEY.into(),
            stop,
            task,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn post(&self, path: &str, body: &Value) -> reqwest::Response {
        self.http
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .expect("request")
    }

    pub async fn get_json(&self, path: &str) -> Value {
        let r = self.http.get(self.url(path)).send().await.expect("request");
        assert!(r.status().is_success(), "GET {path}: {}", r.status());
        r.json().await.expect("json")
    }

    /// Polls a job until `done` holds, returning it; panics after `timeout`.
    pub async fn wait_job(
        &self,
        id: &str,
        timeout: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let start = std::time::Instant::now();
        loop {
            let job = self.get_json(&format!("/v1/deprovisions/{id}")).await;
            if done(&job) {
                return job;
            }
            assert!(
                start.elapsed() < timeout,
                "job {id} did not reach the expected state in time: {job:#}"
            );
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
    }

    pub async fn wait_status(&self, id: &str, status: &str) -> Value {
        self.wait_job(id, Duration::from_secs(30), |j| j["status"] == status)
            .await
    }

    pub async fn events(&self, id: &str) -> Vec<Value> {
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let path = match &cursor {
                Some(c) => format!("/v1/deprovisions/{id}/events?limit=1000&cursor={c}"),
                None => format!("/v1/deprovisions/{id}/events?limit=1000"),
            };
            let page = self.get_json(&path).await;
            out.extend(page["items"].as_array().cloned().unwrap_or_default());
            match page["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_string()),
                None => return out,
            }
        }
    }

    pub async fn stop(self) {
        self.stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
        // Dropping the proxy fails the test if any response broke the document.
        drop(self.proxy);
    }
}

/// A request body for an individual enrollment.
pub fn individual(reg: &str) -> Value {
    serde_json::json!({
        "target": {"kind": "individual_enrollment", "registration_id": reg},
        "reason": {"code": "stolen", "text": "test"},
        "ticket": {"system": "jira", "key": "OPS-1"}
    })
}

/// A request body for a whole group.
pub fn group(id: &str) -> Value {
    serde_json::json!({
        "target": {"kind": "enrollment_group", "group_id": id},
        "reason": {"code": "compromised"}
    })
}

/// What a scripted step does on its n-th run (1-based); runs past the script succeed.
#[derive(Debug, Clone)]
pub enum Act {
    Succeed,
    Retry(Option<Duration>),
    Fail,
    Hang(Duration),
    /// The step had nothing to do.
    Skip,
    /// The step waits (a hub job still running): run it again after this long.
    Wait(Duration),
}

/// The system clock moved by a fixed offset: a replica whose clock is wrong.
#[derive(Debug, Clone, Copy)]
pub struct Skewed(pub Millis);

impl Clock for Skewed {
    fn now_ms(&self) -> Millis {
        SystemClock.now_ms() + self.0
    }
}

/// One recorded step execution.
#[derive(Debug, Clone)]
pub struct Run {
    pub step: String,
    pub item: Option<String>,
    pub attempt: u32,
    pub at: std::time::Instant,
}

/// A workflow driven by scripts, recording every run: the engine's test double.
#[derive(Default)]
pub struct Scripted {
    /// Per (step, registration id or "-"): what each run does.
    pub scripts: Mutex<std::collections::HashMap<(String, String), Vec<Act>>>,
    pub runs: Mutex<Vec<Run>>,
    /// Steps whose `Hang` ran to its end (a step stopped early never appears here).
    pub hangs_finished: Mutex<Vec<String>>,
    pub devices: usize,
}

impl Scripted {
    pub fn new(devices: usize) -> Arc<Self> {
        Arc::new(Self {
            devices,
            ..Self::default()
        })
    }

    pub fn script(&self, step: &str, who: &str, acts: Vec<Act>) {
        self.scripts
            .lock()
            .unwrap()
            .insert((step.into(), who.into()), acts);
    }

    pub fn runs_of(&self, step: &str, who: Option<&str>) -> Vec<Run> {
        self.runs
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.step == step && r.item.as_deref() == who)
            .cloned()
            .collect()
    }

    async fn act(&self, step: &str, who: &str, attempt: u32) -> Outcome {
        let n = {
            let mut runs = self.runs.lock().unwrap();
            runs.push(Run {
                step: step.into(),
                item: (who != "-").then(|| who.to_string()),
                attempt,
                at: std::time::Instant::now(),
            });
            runs.iter()
                .filter(|r| r.step == step && r.item.as_deref().unwrap_or("-") == who)
                .count()
        };
        let act = self
            .scripts
            .lock()
            .unwrap()
            .get(&(step.to_string(), who.to_string()))
            .and_then(|s| s.get(n - 1).cloned());
        match act.unwrap_or(Act::Succeed) {
            Act::Succeed => Outcome::Done,
            Act::Retry(after) => Outcome::Retry {
                error: StepError {
                    message: format!("scripted transient failure #{n}"),
                    code: Some("ServiceUnavailable".into()),
                    tracking_id: Some(format!("track-{n}")),
                    http_status: Some(503),
                },
                retry_after: after,
            },
            Act::Fail => Outcome::Fail(StepError {
                message: "scripted permanent failure".into(),
                code: Some("403002".into()),
                tracking_id: Some("track-fail".into()),
                http_status: Some(403),
            }),
            Act::Hang(d) => {
                tokio::time::sleep(d).await;
                self.hangs_finished.lock().unwrap().push(step.to_string());
                Outcome::Done
            }
            Act::Skip => Outcome::Skipped("scripted: nothing to do".into()),
            Act::Wait(delay) => Outcome::Paced { hub: None, delay },
        }
    }
}

#[async_trait]
impl Workflow for Scripted {
    fn plan(&self, _r: &DeprovisionRequest) -> Plan {
        Plan::new(
            vec![
                JobStep::Resolve,
                JobStep::Revoke,
                JobStep::Items,
                JobStep::DeleteRegistrations,
            ],
            vec![ItemStep::Registry],
        )
        .expect("a valid plan")
    }

    async fn run_job_step(&self, job: &JobRecord, step: JobStep) -> StepResult {
        let outcome = self.act(step.as_str(), "-", job.attempt).await;
        let mut effects = StepEffects::default();
        if step == JobStep::Resolve && outcome == Outcome::Done {
            let n = if matches!(job.request.target, Target::EnrollmentGroup(_)) {
                self.devices
            } else {
                1
            };
            effects.new_items = (0..n)
                .map(|i| NewItem {
                    registration_id: format!("dev-{i:04}"),
                    device_id: Some(format!("dev-{i:04}")),
                    hub: Some(format!("hub-{}.azure-devices.net", i % 2)),
                    data: None,
                })
                .collect();
        }
        StepResult { outcome, effects }
    }

    async fn run_item_step(
        &self,
        _job: &JobRecord,
        item: &ItemRecord,
        step: ItemStep,
    ) -> StepResult {
        self.act(step.as_str(), &item.registration_id, item.attempt)
            .await
            .into()
    }
}

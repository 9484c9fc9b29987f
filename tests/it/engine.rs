//! The engine: retries and backoff, Retry-After, lease renewal, graceful shutdown, and crash recovery
//! of the real binary killed with SIGKILL mid-step.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use deprovisiond::domain::lane::LaneState;
use deprovisiond::domain::plan::JobStep;
use serde_json::Value;

use crate::both_stores;
use crate::support::{Act, Scripted, Skewed, TestApp, TestDb, fast_engine, individual};

both_stores!(
    transient_failures_back_off_then_succeed,
    attempts_are_bounded,
    retry_after_hint_is_honoured,
    lease_is_renewed_while_a_long_step_runs,
    shutdown_lets_short_steps_finish,
    shutdown_releases_leases_of_steps_past_the_grace_period,
    sigkill_mid_step_reruns_that_step_at_most_once,
    an_item_at_a_step_its_plan_lacks_fails_instead_of_looping,
    a_skipped_job_step_moves_the_job_on,
    a_job_step_that_waits_less_than_the_poll_runs_again_when_due,
);

async fn transient_failures_back_off_then_succeed(db: TestDb) {
    let wf = Scripted::new(1);
    wf.script(
        "registry",
        "dev-0000",
        vec![Act::Retry(None), Act::Retry(None), Act::Retry(None)],
    );
    let app = TestApp::spawn(&db, wf.clone()).await;
    let job: Value = app
        .post("/v1/deprovisions", &individual("dev-0000"))
        .await
        .json()
        .await
        .unwrap();
    let id = job["id"].as_str().unwrap();
    app.wait_status(id, "succeeded").await;
    let runs = wf.runs_of("registry", Some("dev-0000"));
    assert_eq!(
        runs.iter().map(|r| r.attempt).collect::<Vec<_>>(),
        [1, 2, 3, 4]
    );
    // Full jitter: each scheduled wait is at most the ceiling for that attempt (recorded, not timed).
    let policy = fast_engine().backoff;
    let events = app.events(id).await;
    for e in events
        .iter()
        .filter(|e| e["kind"] == "step_retry_scheduled")
    {
        let attempt = e["attempt"].as_u64().unwrap() as u32;
        let waited = e["detail"]["retry_in_ms"].as_i64().unwrap();
        assert!(
            (0..=policy.ceiling(attempt).as_millis() as i64).contains(&waited),
            "attempt {attempt} scheduled {waited} ms"
        );
    }
    let retries: Vec<&Value> = events
        .iter()
        .filter(|e| e["kind"] == "step_retry_scheduled")
        .collect();
    assert_eq!(retries.len(), 3);
    assert_eq!(
        retries
            .iter()
            .map(|e| e["attempt"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [1, 2, 3]
    );
    assert_eq!(retries[0]["detail"]["code"], "ServiceUnavailable");
    assert_eq!(retries[0]["detail"]["tracking_id"], "track-1");
    app.stop().await;
}

async fn attempts_are_bounded(db: TestDb) {
    let wf = Scripted::new(1);
    wf.script("registry", "dev-0000", vec![Act::Retry(None); 10]);
    let app = TestApp::spawn(&db, wf.clone()).await;
    let job: Value = app
        .post("/v1/deprovisions", &individual("dev-0000"))
        .await
        .json()
        .await
        .unwrap();
    let id = job["id"].as_str().unwrap();
    app.wait_status(id, "failed").await;
    assert_eq!(
        wf.runs_of("registry", Some("dev-0000")).len(),
        fast_engine().backoff.max_attempts as usize
    );
    let devices = app
        .get_json(&format!("/v1/deprovisions/{id}/devices"))
        .await;
    let err = devices["items"][0]["last_error"]["message"]
        .as_str()
        .unwrap();
    assert!(err.starts_with("gave up after 4 attempts"), "{err}");
    app.stop().await;
}

async fn retry_after_hint_is_honoured(db: TestDb) {
    let wf = Scripted::new(1);
    wf.script(
        "revoke",
        "-",
        vec![Act::Retry(Some(Duration::from_millis(700)))],
    );
    let app = TestApp::spawn(&db, wf.clone()).await;
    let job: Value = app
        .post("/v1/deprovisions", &individual("dev-0000"))
        .await
        .json()
        .await
        .unwrap();
    app.wait_status(job["id"].as_str().unwrap(), "succeeded")
        .await;
    let runs = wf.runs_of("revoke", None);
    assert_eq!(runs.len(), 2);
    // The backoff ceiling is 20 ms here; only the hint explains a wait of 700 ms.
    assert!(
        runs[1].at - runs[0].at >= Duration::from_millis(690),
        "{:?}",
        runs[1].at - runs[0].at
    );
    app.stop().await;
}

async fn lease_is_renewed_while_a_long_step_runs(db: TestDb) {
    let wf = Scripted::new(1);
    wf.script("revoke", "-", vec![Act::Hang(Duration::from_millis(3_000))]);
    let mut engine = fast_engine();
    engine.lease = Duration::from_millis(1_200);
    engine.renew_every = Duration::from_millis(200);
    let app = TestApp::spawn_with(&db, wf.clone(), engine, true).await;
    let job: Value = app
        .post("/v1/deprovisions", &individual("dev-0000"))
        .await
        .json()
        .await
        .unwrap();
    app.wait_status(job["id"].as_str().unwrap(), "succeeded")
        .await;
    // Without renewal the 1.2 s lease would have expired twice and the step re-run.
    assert_eq!(wf.runs_of("revoke", None).len(), 1);
    app.stop().await;
}

async fn shutdown_lets_short_steps_finish(db: TestDb) {
    let wf = Scripted::new(1);
    wf.script("revoke", "-", vec![Act::Hang(Duration::from_millis(1_200))]);
    let app = TestApp::spawn(&db, wf.clone()).await;
    let job: Value = app
        .post("/v1/deprovisions", &individual("dev-0000"))
        .await
        .json()
        .await
        .unwrap();
    let id = job["id"].as_str().unwrap().to_string();
    app.wait_job(&id, Duration::from_secs(10), |j| {
        j["steps"][1]["state"] == "running"
    })
    .await;
    app.stop().await;
    let store = db.store().await;
    // The step finished within the grace period and was recorded; nothing new was claimed.
    let j = store.get_job(&id).await.unwrap().unwrap();
    assert_eq!(j.current_step(), Some(JobStep::Items));
    assert_eq!(j.lane_state, LaneState::WaitingItems);
    assert_eq!(store.item_counts(&id).await.unwrap().pending, 1);
}

async fn shutdown_releases_leases_of_steps_past_the_grace_period(db: TestDb) {
    let wf = Scripted::new(1);
    wf.script("revoke", "-", vec![Act::Hang(Duration::from_secs(30))]);
    let mut engine = fast_engine();
    engine.grace = Duration::from_millis(300);
    let app = TestApp::spawn_with(&db, wf.clone(), engine, true).await;
    let job: Value = app
        .post("/v1/deprovisions", &individual("dev-0000"))
        .await
        .json()
        .await
        .unwrap();
    let id = job["id"].as_str().unwrap().to_string();
    app.wait_job(&id, Duration::from_secs(10), |j| {
        j["steps"][1]["state"] == "running"
    })
    .await;
    let started = Instant::now();
    app.stop().await;
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "shutdown waited for the hanging step"
    );
    let store = db.store().await;
    let j = store.get_job(&id).await.unwrap().unwrap();
    assert_eq!(
        (j.lane_state, j.lease_owner.as_deref(), j.attempt),
        (LaneState::Pending, None, 0)
    );
    // The next process picks it up at once instead of waiting for a lease to expire.
    let app = TestApp::spawn(&db, wf.clone()).await;
    app.wait_status(&id, "succeeded").await;
    assert_eq!(wf.runs_of("revoke", None).len(), 2);
    app.stop().await;
}

/// Starts the real binary on `db`; returns the child and its base URL.
fn start_binary(db: &TestDb, journal: &std::path::Path) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_deprovisiond"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("DATABASE_URL", &db.url)
        .env("DEPROVISIOND_WORKFLOW", "rehearsal")
        .env("DEPROVISIOND_REHEARSAL_STEP_MS", "1500")
        .env("DEPROVISIOND_REHEARSAL_JOURNAL", journal)
        .env("DEPROVISIOND_LEASE_SECS", "2")
        .env("DEPROVISIOND_POLL_MS", "50")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start deprovisiond");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read the listening line");
    let addr = line
        .split("http://")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .expect("address")
        .to_string();
    (child, format!("http://{addr}"))
}

fn journal_count(journal: &std::path::Path, job: &str, step: &str) -> usize {
    std::fs::read_to_string(journal)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.split(' ').nth(1) == Some(job) && l.split(' ').nth(2) == Some(step))
        .count()
}

async fn sigkill_mid_step_reruns_that_step_at_most_once(db: TestDb) {
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("journal");
    let http = reqwest::Client::new();
    let (mut child, base) = start_binary(&db, &journal);
    let job: Value = http
        .post(format!("{base}/v1/deprovisions"))
        .json(&individual("dev-0000"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = job["id"].as_str().unwrap().to_string();
    // Wait until the revoke step has started, then kill the process without warning.
    let start = Instant::now();
    while journal_count(&journal, &id, "revoke") == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "revoke never started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.kill().expect("SIGKILL");
    child.wait().expect("reap");
    let (mut child, base) = start_binary(&db, &journal);
    let start = Instant::now();
    let job = loop {
        let j: Value = http
            .get(format!("{base}/v1/deprovisions/{id}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if j["status"] == "succeeded" {
            break j;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "job did not finish after restart: {j:#}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(job["progress"]["registry_done"], 1);
    assert_eq!(journal_count(&journal, &id, "resolve"), 1);
    assert_eq!(
        journal_count(&journal, &id, "revoke"),
        2,
        "the killed step re-ran exactly once"
    );
    assert_eq!(journal_count(&journal, &id, "registry"), 1);
    // The timeline shows the revoke step succeeding on its second attempt (the expired lease counted).
    let events: Value = http
        .get(format!("{base}/v1/deprovisions/{id}/events"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let revoke_ok = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "step_succeeded" && e["step"] == "revoke")
        .expect("revoke recorded");
    assert_eq!(revoke_ok["attempt"], 2);
    child.kill().ok();
    child.wait().ok();
}

async fn an_item_at_a_step_its_plan_lacks_fails_instead_of_looping(db: TestDb) {
    let wf = Scripted::new(1);
    wf.script("revoke", "-", vec![Act::Hang(Duration::from_millis(800))]);
    let app = TestApp::spawn(&db, wf.clone()).await;
    let job: Value = app
        .post("/v1/deprovisions", &individual("dev-0000"))
        .await
        .json()
        .await
        .unwrap();
    let id = job["id"].as_str().unwrap().to_string();
    app.wait_job(&id, Duration::from_secs(10), |j| {
        j["steps"][1]["state"] == "running"
    })
    .await;
    // While the device waits for revoke, its row is moved to a step this build's plan does not have.
    let store = db.store().await;
    sqlx::query("UPDATE job_items SET step_index = 7 WHERE job_id = $1")
        .bind(&id)
        .execute(store.pool())
        .await
        .unwrap();
    store.close().await;
    let end = app.wait_status(&id, "failed").await;
    let devices = app
        .get_json(&format!("/v1/deprovisions/{id}/devices"))
        .await;
    let err = devices["items"][0]["last_error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(err.contains("step 7"), "{err} / {end:#}");
    assert!(wf.runs_of("registry", Some("dev-0000")).is_empty());
    app.stop().await;
}

async fn a_skipped_job_step_moves_the_job_on(db: TestDb) {
    let wf = Scripted::new(1);
    wf.script("delete_registrations", "-", vec![Act::Skip]);
    let app = TestApp::spawn(&db, wf.clone()).await;
    let job: Value = app
        .post("/v1/deprovisions", &individual("dev-0000"))
        .await
        .json()
        .await
        .unwrap();
    let id = job["id"].as_str().unwrap();
    app.wait_status(id, "succeeded").await;
    let kinds: Vec<Value> = app
        .events(id)
        .await
        .into_iter()
        .map(|e| e["kind"].clone())
        .collect();
    assert!(kinds.contains(&Value::from("step_skipped")), "{kinds:?}");
    app.stop().await;
}

/// A job step that asks to run again in 50 ms (as the import path does while a hub job runs) is run
/// again then, not at the engine's next poll, here 5 s away each time.
async fn a_job_step_that_waits_less_than_the_poll_runs_again_when_due(db: TestDb) {
    let wf = Scripted::new(1);
    let wait = Act::Wait(Duration::from_millis(50));
    wf.script("revoke", "-", vec![wait.clone(), wait.clone(), wait]);
    let mut engine = fast_engine();
    engine.poll_every = Duration::from_secs(5);
    let app = TestApp::spawn_with(&db, wf.clone(), engine, true).await;
    let job: Value = app
        .post("/v1/deprovisions", &individual("dev-0000"))
        .await
        .json()
        .await
        .unwrap();
    app.wait_status(job["id"].as_str().unwrap(), "succeeded")
        .await;
    let runs = wf.runs_of("revoke", None);
    assert_eq!(runs.len(), 4, "three waits, then done");
    for pair in runs.windows(2) {
        let gap = pair[1].at - pair[0].at;
        assert!(
            gap >= Duration::from_millis(50) && gap < Duration::from_millis(2_500),
            "run again {gap:?} later: when due, not at the next poll"
        );
    }
    app.stop().await;
}

/// Runs `body` on PostgreSQL only: what it checks (row locks, several replicas) is not real on SQLite.
macro_rules! postgres_only {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
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

postgres_only!(
    a_step_is_stopped_when_its_lease_runs_out_unrenewed,
    a_replica_with_a_fast_clock_does_not_steal_live_leases,
);

async fn a_step_is_stopped_when_its_lease_runs_out_unrenewed(db: TestDb) {
    let wf = Scripted::new(1);
    wf.script("revoke", "-", vec![Act::Hang(Duration::from_millis(4_000))]);
    let mut engine = fast_engine();
    engine.lease = Duration::from_millis(1_000);
    engine.renew_every = Duration::from_millis(200);
    let app = TestApp::spawn_with(&db, wf.clone(), engine, true).await;
    let job: Value = app
        .post("/v1/deprovisions", &individual("dev-0000"))
        .await
        .json()
        .await
        .unwrap();
    let id = job["id"].as_str().unwrap().to_string();
    app.wait_job(&id, Duration::from_secs(10), |j| {
        j["steps"][1]["state"] == "running"
    })
    .await;
    // Hold the job's row so every renewal hangs (as on a stalled database) for 2.5 s.
    let store = db.store().await;
    let mut tx = store.pool().begin().await.unwrap();
    sqlx::query("SELECT id FROM jobs WHERE id = $1 FOR UPDATE")
        .bind(&id)
        .execute(&mut *tx)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    tx.rollback().await.unwrap();
    app.wait_status(&id, "succeeded").await;
    // The first run was stopped when its unrenewed lease ran out, not left running beside the second.
    assert!(
        wf.hangs_finished.lock().unwrap().is_empty(),
        "the step ran on past its lease"
    );
    assert_eq!(wf.runs_of("revoke", None).len(), 2);
    store.close().await;
    app.stop().await;
}

async fn a_replica_with_a_fast_clock_does_not_steal_live_leases(db: TestDb) {
    let wf = Scripted::new(1);
    wf.script("revoke", "-", vec![Act::Hang(Duration::from_millis(3_000))]);
    let a = TestApp::spawn(&db, wf.clone()).await;
    let job: Value = a
        .post("/v1/deprovisions", &individual("dev-0000"))
        .await
        .json()
        .await
        .unwrap();
    let id = job["id"].as_str().unwrap().to_string();
    a.wait_job(&id, Duration::from_secs(10), |j| {
        j["steps"][1]["state"] == "running"
    })
    .await;
    // A second replica whose clock runs 20 s ahead (its leases would look long expired).
    let choice = deprovisiond::app::WorkflowChoice::Custom(wf.clone(), vec!["default".into()]);
    let b = TestApp::spawn_clocked(
        &db,
        choice,
        fast_engine(),
        true,
        std::sync::Arc::new(Skewed(20_000)),
    )
    .await;
    a.wait_status(&id, "succeeded").await;
    assert_eq!(
        wf.runs_of("revoke", None).len(),
        1,
        "the fast replica took over a live lease"
    );
    b.stop().await;
    a.stop().await;
}

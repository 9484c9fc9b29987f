//! The store suite: the same tests on SQLite and PostgreSQL.

use std::collections::HashSet;
use std::time::Duration;

use deprovisiond::domain::backoff::BackoffPolicy;
use deprovisiond::domain::job::{DeprovisionRequest, JobStatus};
use deprovisiond::domain::lane::{self, LaneState, Outcome, Position, StepError};
use deprovisiond::domain::plan::{ItemStep, JobStep, LaneStep, Plan};
use deprovisiond::store::{
    Created, ItemCompletion, JobFilter, JobRecord, NewEvent, NewItem, NewJob, StepEffects, Store,
    StoreError,
};
use rand::SeedableRng;
use rand::rngs::StdRng;

use crate::both_stores;
use crate::support::{TestDb, group, individual};

both_stores!(
    create_get_and_idempotency,
    one_active_job_per_target,
    expired_lease_is_reclaimed_and_stale_writer_fenced,
    items_wait_for_the_barrier_then_finish_the_job,
    concurrent_claimers_never_share_work,
    release_gives_work_back_without_an_attempt,
    migrations_are_idempotent_and_ready,
    claim_quarantines_undecodable_rows,
    a_cancel_racing_a_failure_is_either_refused_or_wins,
    retry_after_a_cancel_that_raced_a_failure_runs_again,
    a_delayed_settle_cannot_undo_a_retry,
    retry_racing_a_delayed_settle_keeps_the_retry,
    event_pages_never_skip_events_during_concurrent_inserts,
    a_cancelled_job_inserts_no_items,
    one_bad_job_does_not_stop_the_settle_sweep,
    the_sweep_skips_jobs_with_open_items,
    a_single_device_job_is_not_starved_by_a_big_one,
    concurrent_claimers_across_jobs_never_share_work,
    the_database_clock_corrects_a_skewed_replica,
    pool_size_statement_timeout_and_durability,
    concurrent_identical_posts_make_one_job,
    a_batch_of_results_records_each_and_fences_only_the_stale_one,
    kept_counts_match_the_items_through_concurrent_changes,
    hub_job_batches_find_mark_move_and_finish_devices_by_id,
    a_page_of_devices_is_inserted_in_order_and_a_repeat_adds_nothing,
    the_job_paths_lookups_use_the_device_index_once_statistics_are_refreshed,
);

fn plan() -> Plan {
    Plan::new(
        vec![
            JobStep::Resolve,
            JobStep::Revoke,
            JobStep::Items,
            JobStep::DeleteRegistrations,
        ],
        vec![ItemStep::Registry],
    )
    .unwrap()
}

fn new_job(body: serde_json::Value, key: Option<(&str, &str)>) -> NewJob {
    let request: DeprovisionRequest = serde_json::from_value(body).unwrap();
    NewJob {
        dps: "default".into(),
        request,
        plan: plan(),
        idempotency: key.map(|(k, h)| (k.into(), h.into())),
    }
}

fn done(steps: &[impl LaneStep], index: usize, attempt: u32, now: i64) -> lane::Transition {
    let mut rng = StdRng::seed_from_u64(1);
    lane::advance(
        steps,
        Position {
            step_index: index,
            attempt,
        },
        Outcome::Done,
        now,
        &BackoffPolicy::default(),
        &mut rng,
    )
}

async fn create_get_and_idempotency(db: TestDb) {
    let s = db.store().await;
    let Created::New(job) = s
        .create_job(new_job(individual("dev-1"), Some(("k1", "h1"))), 1_000)
        .await
        .unwrap()
    else {
        panic!("expected a new job")
    };
    assert_eq!(job.status, JobStatus::Queued);
    assert_eq!(job.lane_state, LaneState::Pending);
    assert_eq!(job.created_at, 1_000);
    assert_eq!(s.get_job(&job.id).await.unwrap().unwrap(), job);
    let Created::Replayed(again) = s
        .create_job(new_job(individual("dev-1"), Some(("k1", "h1"))), 2_000)
        .await
        .unwrap()
    else {
        panic!("expected a replay")
    };
    assert_eq!(again.id, job.id);
    match s
        .create_job(new_job(individual("dev-2"), Some(("k1", "h2"))), 2_000)
        .await
    {
        Err(StoreError::IdempotencyMismatch { job_id }) => assert_eq!(job_id, job.id),
        other => panic!("expected a mismatch, got {other:?}"),
    }
    let page = s.list_jobs(&JobFilter::default(), None, 10).await.unwrap();
    assert_eq!(page.rows.len(), 1);
    let events = s.list_events(&job.id, None, 10).await.unwrap();
    assert_eq!(events.rows[0].kind, "created");
    assert!(
        s.get_job("00000000-0000-0000-0000-000000000000")
            .await
            .unwrap()
            .is_none()
    );
}

async fn one_active_job_per_target(db: TestDb) {
    let s = db.store().await;
    let Created::New(a) = s.create_job(new_job(group("g"), None), 1).await.unwrap() else {
        panic!()
    };
    match s.create_job(new_job(group("G"), None), 2).await {
        Err(StoreError::ActiveJobExists { job_id }) => assert_eq!(job_id, a.id),
        other => panic!("expected a conflict, got {other:?}"),
    }
    s.cancel_job(&a.id, 3).await.unwrap();
    assert_eq!(
        s.get_job(&a.id).await.unwrap().unwrap().status,
        JobStatus::Cancelled
    );
    assert!(matches!(
        s.create_job(new_job(group("g"), None), 4).await.unwrap(),
        Created::New(_)
    ));
}

async fn expired_lease_is_reclaimed_and_stale_writer_fenced(db: TestDb) {
    let s = db.store().await;
    let lease = Duration::from_secs(5);
    let Created::New(job) = s
        .create_job(new_job(individual("dev-1"), None), 1_000)
        .await
        .unwrap()
    else {
        panic!()
    };
    let a = s.claim_jobs("worker-a", 1_000, lease, 10).await.unwrap();
    assert_eq!(a.len(), 1);
    let a = a.into_iter().next().unwrap();
    assert_eq!(
        (a.attempt, a.fence, a.lane_state),
        (1, 1, LaneState::Running)
    );
    assert_eq!(a.status, JobStatus::Running);
    // While the lease holds, nobody else gets the job; renewal extends it.
    assert!(
        s.claim_jobs("worker-b", 5_000, lease, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(s.renew_job(&a.id, a.fence, 9_000).await.unwrap());
    assert!(
        s.claim_jobs("worker-b", 8_000, lease, 10)
            .await
            .unwrap()
            .is_empty()
    );
    // Worker A goes silent; after expiry, B takes over and that counts as an attempt.
    let b = s
        .claim_jobs("worker-b", 9_001, lease, 10)
        .await
        .unwrap()
        .into_iter()
        .next()
        .expect("reclaimed");
    assert_eq!(
        (b.attempt, b.fence, b.lease_owner.as_deref()),
        (2, 2, Some("worker-b"))
    );
    // A wakes up: it can neither renew nor record its (stale) result.
    assert!(!s.renew_job(&a.id, a.fence, 20_000).await.unwrap());
    let t = done(a.plan.job_steps(), 0, a.attempt, 9_100);
    assert!(matches!(
        s.complete_job_step(&a, &t, &StepEffects::default(), 9_100)
            .await,
        Err(StoreError::Fenced)
    ));
    let after = s.get_job(&job.id).await.unwrap().unwrap();
    assert_eq!((after.step_index, after.fence), (0, 2));
    // B's write goes through.
    let t = done(b.plan.job_steps(), 0, b.attempt, 9_200);
    s.complete_job_step(&b, &t, &StepEffects::default(), 9_200)
        .await
        .unwrap();
    let after = s.get_job(&job.id).await.unwrap().unwrap();
    assert_eq!(
        (after.step_index, after.lane_state, after.attempt),
        (1, LaneState::Pending, 0)
    );
}

async fn items_wait_for_the_barrier_then_finish_the_job(db: TestDb) {
    let s = db.store().await;
    let lease = Duration::from_secs(30);
    let Created::New(job) = s
        .create_job(new_job(group("fleet"), None), 0)
        .await
        .unwrap()
    else {
        panic!()
    };
    // resolve: discovers 3 devices (one twice: re-adding is a no-op).
    let j = s.claim_jobs("w", 1, lease, 1).await.unwrap().remove(0);
    let effects = StepEffects {
        new_items: ["d1", "d2", "d3", "d2"]
            .iter()
            .map(|r| NewItem {
                registration_id: r.to_string(),
                device_id: Some(r.to_string()),
                hub: Some("h".into()),
                data: None,
            })
            .collect(),
        ..StepEffects::default()
    };
    s.complete_job_step(&j, &done(j.plan.job_steps(), 0, 1, 2), &effects, 2)
        .await
        .unwrap();
    let counts = s.item_counts(&job.id).await.unwrap();
    assert_eq!((counts.total, counts.waiting), (3, 3));
    // Items are held until revoke succeeds.
    assert!(s.claim_items("w", 3, lease, 10).await.unwrap().is_empty());
    let j = s.claim_jobs("w", 3, lease, 1).await.unwrap().remove(0);
    assert_eq!(j.current_step(), Some(JobStep::Revoke));
    s.complete_job_step(
        &j,
        &done(j.plan.job_steps(), 1, 1, 4),
        &StepEffects::default(),
        4,
    )
    .await
    .unwrap();
    assert_eq!(
        s.get_job(&job.id).await.unwrap().unwrap().lane_state,
        LaneState::WaitingItems
    );
    let items = s.claim_items("w", 5, lease, 10).await.unwrap();
    assert_eq!(items.len(), 3);
    // Two succeed, one fails permanently: the job fails at the barrier.
    for it in &items {
        let t = if it.registration_id == "d2" {
            let mut rng = StdRng::seed_from_u64(1);
            lane::advance(
                j.plan.item_steps(),
                Position {
                    step_index: 0,
                    attempt: 1,
                },
                Outcome::Fail(StepError::msg("no")),
                6,
                &BackoffPolicy::default(),
                &mut rng,
            )
        } else {
            done(j.plan.item_steps(), 0, 1, 6)
        };
        s.complete_item_step(it, &t, &StepEffects::default(), 6)
            .await
            .unwrap();
    }
    let failed = s.get_job(&job.id).await.unwrap().unwrap();
    assert_eq!(failed.status, JobStatus::Failed);
    assert_eq!(failed.current_step(), Some(JobStep::Items));
    // Retry: only the failed item runs again, then the job moves past the barrier to `delete_registrations`.
    let retried = s.retry_job(&job.id, 10).await.unwrap();
    assert_eq!(
        (retried.status, retried.lane_state),
        (JobStatus::Queued, LaneState::WaitingItems)
    );
    let again = s.claim_items("w", 11, lease, 10).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].registration_id, "d2");
    assert_eq!(
        s.get_job(&job.id).await.unwrap().unwrap().status,
        JobStatus::Running
    );
    s.complete_item_step(
        &again[0],
        &done(j.plan.item_steps(), 0, 1, 12),
        &StepEffects::default(),
        12,
    )
    .await
    .unwrap();
    let j = s.claim_jobs("w", 13, lease, 1).await.unwrap().remove(0);
    assert_eq!(j.current_step(), Some(JobStep::DeleteRegistrations));
    s.complete_job_step(
        &j,
        &done(j.plan.job_steps(), 3, 1, 14),
        &StepEffects::default(),
        14,
    )
    .await
    .unwrap();
    let end = s.get_job(&job.id).await.unwrap().unwrap();
    assert_eq!(
        (end.status, end.finished_at),
        (JobStatus::Succeeded, Some(14))
    );
    let c = s.item_counts(&job.id).await.unwrap();
    assert_eq!((c.succeeded, c.failed), (3, 0));
}

async fn concurrent_claimers_never_share_work(db: TestDb) {
    let s = db.store().await;
    let lease = Duration::from_secs(30);
    let devices = (0..200)
        .map(|i| NewItem {
            registration_id: format!("d{i}"),
            device_id: None,
            hub: None,
            data: None,
        })
        .collect();
    let (job, _) = group_job_at_the_barrier(&s, devices, lease).await;
    let mut tasks = Vec::new();
    for w in 0..4 {
        let s: Store = s.clone();
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let got = s.claim_items(&format!("w{w}"), 5, lease, 7).await.unwrap();
                if got.is_empty() {
                    return mine;
                }
                mine.extend(got.into_iter().map(|i| i.id));
            }
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let unique: HashSet<_> = all.iter().collect();
    assert_eq!(all.len(), 200);
    assert_eq!(unique.len(), 200);
    assert_eq!(s.item_counts(&job.id).await.unwrap().running, 200);
}

async fn release_gives_work_back_without_an_attempt(db: TestDb) {
    let s = db.store().await;
    let lease = Duration::from_secs(30);
    let Created::New(job) = s
        .create_job(new_job(individual("d"), None), 0)
        .await
        .unwrap()
    else {
        panic!()
    };
    let j = s.claim_jobs("w", 1, lease, 1).await.unwrap().remove(0);
    assert!(s.release_job(&j.id, j.fence, 2).await.unwrap());
    let back = s.get_job(&job.id).await.unwrap().unwrap();
    assert_eq!(
        (back.lane_state, back.attempt, back.lease_owner),
        (LaneState::Pending, 0, None)
    );
    let again = s.claim_jobs("w2", 3, lease, 1).await.unwrap().remove(0);
    assert_eq!((again.attempt, again.fence), (1, 2));
    assert!(
        !s.release_job(&j.id, j.fence, 4).await.unwrap(),
        "a stale fence cannot release"
    );
}

async fn migrations_are_idempotent_and_ready(db: TestDb) {
    let s = db.store().await;
    s.migrate().await.unwrap();
    assert!(s.ready().await.unwrap());
}

async fn created(s: &Store, body: serde_json::Value, now: i64) -> String {
    match s.create_job(new_job(body, None), now).await.unwrap() {
        Created::New(j) => j.id,
        Created::Replayed(_) => panic!("expected a new job"),
    }
}

/// Creates a job and runs it to its items barrier with `n` devices `d0…` pending.
/// No other job may be pending meanwhile (the claims here take whatever is due).
async fn at_barrier(s: &Store, body: serde_json::Value, n: usize, now: i64) -> String {
    let lease = Duration::from_secs(30);
    let id = created(s, body, now).await;
    let j = s
        .claim_jobs("setup", now, lease, 1)
        .await
        .unwrap()
        .remove(0);
    assert_eq!(j.id, id);
    let effects = StepEffects {
        new_items: (0..n)
            .map(|i| NewItem {
                registration_id: format!("d{i}"),
                device_id: None,
                hub: None,
                data: None,
            })
            .collect(),
        ..StepEffects::default()
    };
    s.complete_job_step(&j, &done(j.plan.job_steps(), 0, 1, now), &effects, now)
        .await
        .unwrap();
    let j = s
        .claim_jobs("setup", now, lease, 1)
        .await
        .unwrap()
        .remove(0);
    s.complete_job_step(
        &j,
        &done(j.plan.job_steps(), 1, 1, now),
        &StepEffects::default(),
        now,
    )
    .await
    .unwrap();
    id
}

/// Rewrites a job's stored request as a newer version might have written it (an unknown field).
async fn write_request_from_the_future(s: &Store, id: &str) {
    let raw: String = sqlx::query_scalar("SELECT request_json FROM jobs WHERE id = $1")
        .bind(id)
        .fetch_one(s.pool())
        .await
        .unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&raw).unwrap();
    v["field_from_the_future"] = serde_json::json!("high");
    sqlx::query("UPDATE jobs SET request_json = $1 WHERE id = $2")
        .bind(v.to_string())
        .bind(id)
        .execute(s.pool())
        .await
        .unwrap();
}

/// status, lane state, last error and lease owner of a job, read without decoding the row.
async fn raw_job(s: &Store, id: &str) -> (String, String, String, Option<String>) {
    let r = sqlx::query(
        "SELECT status, lane_state, COALESCE(last_error, '') AS e, lease_owner FROM jobs WHERE id = $1",
    )
    .bind(id)
    .fetch_one(s.pool())
    .await
    .unwrap();
    use sqlx::Row;
    (
        r.get("status"),
        r.get("lane_state"),
        r.get("e"),
        r.get("lease_owner"),
    )
}

async fn raw_items(s: &Store, job: &str) -> Vec<(String, String, String)> {
    use sqlx::Row;
    sqlx::query(
        "SELECT registration_id, state, COALESCE(last_error, '') AS e FROM job_items WHERE job_id = $1 ORDER BY seq",
    )
    .bind(job)
    .fetch_all(s.pool())
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get("registration_id"), r.get("state"), r.get("e")))
    .collect()
}

fn failed_step(steps: &[impl LaneStep], index: usize, now: i64) -> lane::Transition {
    let mut rng = StdRng::seed_from_u64(1);
    lane::advance(
        steps,
        Position {
            step_index: index,
            attempt: 1,
        },
        Outcome::Fail(StepError::msg("403")),
        now,
        &BackoffPolicy::default(),
        &mut rng,
    )
}

/// A job whose step failed permanently and that settled as failed.
async fn failed_job(s: &Store, body: serde_json::Value, now: i64) -> String {
    let id = created(s, body, now).await;
    let j = s
        .claim_jobs("w", now, Duration::from_secs(30), 1)
        .await
        .unwrap()
        .remove(0);
    assert_eq!(j.id, id);
    s.complete_job_step(
        &j,
        &failed_step(j.plan.job_steps(), 0, now),
        &StepEffects::default(),
        now,
    )
    .await
    .unwrap();
    assert_eq!(
        s.get_job(&id).await.unwrap().unwrap().status,
        JobStatus::Failed
    );
    id
}

async fn claim_quarantines_undecodable_rows(db: TestDb) {
    let s = db.store().await;
    let lease = Duration::from_secs(5);
    let fleet = at_barrier(&s, group("fleet"), 3, 0).await;
    // One device's data as a newer version (or a broken hand edit) left it.
    sqlx::query(
        "UPDATE job_items SET data_json = '{not json' WHERE job_id = $1 AND registration_id = 'd1'",
    )
    .bind(&fleet)
    .execute(s.pool())
    .await
    .unwrap();
    // A job whose items are due but whose own row cannot be read any more.
    let broken = at_barrier(&s, group("broken"), 2, 0).await;
    write_request_from_the_future(&s, &broken).await;
    let good = created(&s, individual("dev-1"), 10).await;
    let bad = created(&s, individual("dev-2"), 10).await;
    write_request_from_the_future(&s, &bad).await;

    let jobs = s.claim_jobs("w", 20, lease, 10).await.unwrap();
    assert_eq!(jobs.iter().map(|j| &j.id).collect::<Vec<_>>(), [&good]);
    let items = s.claim_items("w", 20, lease, 10).await.unwrap();
    let mut got: Vec<_> = items
        .iter()
        .map(|i| (i.job_id.clone(), i.registration_id.clone()))
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            (fleet.clone(), "d0".to_string()),
            (fleet.clone(), "d2".into())
        ]
    );

    // What could not be read is failed with a reason, not left running to come back forever.
    let (status, lane, err, owner) = raw_job(&s, &bad).await;
    assert_eq!(
        (status.as_str(), lane.as_str(), owner),
        ("failed", "failed", None)
    );
    assert!(err.contains("cannot be read"), "{err}");
    let d1 = raw_items(&s, &fleet).await.remove(1);
    assert_eq!((d1.0.as_str(), d1.1.as_str()), ("d1", "failed"));
    assert!(d1.2.contains("cannot be read"), "{}", d1.2);
    let (status, _, err, _) = raw_job(&s, &broken).await;
    assert_eq!(status, "failed");
    assert!(err.contains("cannot be read"), "{err}");
    for (reg, state, _) in raw_items(&s, &broken).await {
        assert_eq!(state, "failed", "{reg}");
    }
    // Long after every lease expired, only the readable work comes back.
    let later = s.claim_jobs("w", 100_000, lease, 10).await.unwrap();
    assert_eq!(later.iter().map(|j| &j.id).collect::<Vec<_>>(), [&good]);
    assert_eq!(
        s.claim_items("w", 100_000, lease, 10).await.unwrap().len(),
        2
    );
}

async fn a_cancel_racing_a_failure_is_either_refused_or_wins(db: TestDb) {
    let s = db.store().await;
    for round in 0..20 {
        let id = created(&s, individual(&format!("race-{round}")), 0).await;
        let j = s
            .claim_jobs("w", 1, Duration::from_secs(30), 1)
            .await
            .unwrap()
            .remove(0);
        let (a, b) = (s.clone(), s.clone());
        let cid = id.clone();
        let cancel = tokio::spawn(async move { a.cancel_job(&cid, 2).await });
        let fail = tokio::spawn(async move {
            let t = failed_step(j.plan.job_steps(), 0, 2);
            b.complete_job_step(&j, &t, &StepEffects::default(), 2)
                .await
        });
        let cancelled = cancel.await.unwrap();
        fail.await.unwrap().unwrap();
        let end = s.get_job(&id).await.unwrap().unwrap();
        match cancelled {
            Ok(_) => assert_eq!(end.status, JobStatus::Cancelled, "round {round}"),
            Err(StoreError::InvalidTransition { .. }) => {
                assert_eq!(end.status, JobStatus::Failed, "round {round}");
                assert!(
                    !end.cancel_requested,
                    "round {round}: a refused cancel left its flag"
                );
            }
            Err(e) => panic!("round {round}: {e}"),
        }
    }
}

async fn retry_after_a_cancel_that_raced_a_failure_runs_again(db: TestDb) {
    let s = db.store().await;
    let id = failed_job(&s, individual("dev-1"), 0).await;
    // What a cancel landing just after the failure used to leave behind.
    sqlx::query("UPDATE jobs SET cancel_requested = 1 WHERE id = $1")
        .bind(&id)
        .execute(s.pool())
        .await
        .unwrap();
    let retried = s.retry_job(&id, 10).await.unwrap();
    assert!(!retried.cancel_requested);
    let again = s
        .claim_jobs("w", 11, Duration::from_secs(30), 1)
        .await
        .unwrap();
    assert_eq!(
        again.len(),
        1,
        "the retried job runs instead of being cancelled"
    );
    s.settle_waiting(12).await.unwrap();
    assert_eq!(
        s.get_job(&id).await.unwrap().unwrap().status,
        JobStatus::Running
    );
}

async fn a_delayed_settle_cannot_undo_a_retry(db: TestDb) {
    let s = db.store().await;
    let id = failed_job(&s, individual("dev-1"), 0).await;
    // What a second settle read just before the first one finished the job.
    let mut stale = s.get_job(&id).await.unwrap().unwrap();
    stale.status = JobStatus::Running;
    stale.finished_at = None;
    s.retry_job(&id, 10).await.unwrap();
    s.settle_job(&stale, 11).await.unwrap();
    let now = s.get_job(&id).await.unwrap().unwrap();
    assert_eq!(
        (now.status, now.lane_state),
        (JobStatus::Queued, LaneState::Pending)
    );
}

async fn retry_racing_a_delayed_settle_keeps_the_retry(db: TestDb) {
    let s = db.store().await;
    for round in 0..20 {
        let id = failed_job(&s, individual(&format!("r-{round}")), 0).await;
        let mut stale = s.get_job(&id).await.unwrap().unwrap();
        stale.status = JobStatus::Running;
        let (a, b) = (s.clone(), s.clone());
        let rid = id.clone();
        let retry = tokio::spawn(async move { a.retry_job(&rid, 10).await });
        let settle = tokio::spawn(async move { b.settle_job(&stale, 10).await });
        retry.await.unwrap().unwrap();
        settle.await.unwrap().unwrap();
        let j = s.get_job(&id).await.unwrap().unwrap();
        assert_eq!(j.status, JobStatus::Queued, "round {round}");
        s.cancel_job(&id, 20).await.unwrap();
    }
}

async fn event_pages_never_skip_events_during_concurrent_inserts(db: TestDb) {
    let s = db.store().await;
    let id = created(&s, individual("dev-1"), 0).await;
    let writers = 6;
    let per_writer = 60;
    let mut tasks = Vec::new();
    for w in 0..writers {
        let (s, id) = (s.clone(), id.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..per_writer {
                let events: Vec<_> = (0..3)
                    .map(|k| deprovisiond::store::NewEvent::new("test", format!("{w}-{i}-{k}")))
                    .collect();
                s.append_events(&id, 1, &events).await.unwrap();
            }
        }));
    }
    // Page through the timeline while it grows, as a client following it would.
    let mut seen: Vec<String> = Vec::new();
    let mut cursor: Option<i64> = None;
    let mut finished = false;
    loop {
        let page = s.list_events(&id, cursor, 7).await.unwrap();
        for e in &page.rows {
            seen.push(e.message.clone().unwrap_or_default());
        }
        if let Some(c) = &page.next_cursor {
            cursor = Some(c.parse().unwrap());
        } else if let Some(last) = page.rows.last() {
            cursor = Some(last.id);
        }
        if page.next_cursor.is_none() {
            if finished {
                break;
            }
            if tasks.iter().all(|t| t.is_finished()) {
                // One more pass after the last writer finished.
                finished = true;
            }
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    let unique: HashSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "an event was listed twice");
    // The `created` event plus every appended one.
    assert_eq!(
        seen.len(),
        1 + writers * per_writer * 3,
        "events were skipped"
    );
}

async fn a_cancelled_job_inserts_no_items(db: TestDb) {
    let s = db.store().await;
    let id = created(&s, group("fleet"), 0).await;
    let j = s
        .claim_jobs("w", 1, Duration::from_secs(30), 1)
        .await
        .unwrap()
        .remove(0);
    s.cancel_job(&id, 2).await.unwrap();
    let effects = StepEffects {
        new_items: (0..3)
            .map(|i| NewItem {
                registration_id: format!("d{i}"),
                device_id: None,
                hub: None,
                data: None,
            })
            .collect(),
        ..StepEffects::default()
    };
    s.complete_job_step(&j, &done(j.plan.job_steps(), 0, 1, 3), &effects, 3)
        .await
        .unwrap();
    let end = s.get_job(&id).await.unwrap().unwrap();
    assert_eq!(end.status, JobStatus::Cancelled);
    assert_eq!(s.item_counts(&id).await.unwrap().total, 0);
}

async fn one_bad_job_does_not_stop_the_settle_sweep(db: TestDb) {
    let s = db.store().await;
    // Two jobs whose settle was missed (their last step's writer died right after recording it).
    let bad = created(&s, individual("dev-1"), 0).await;
    let good = created(&s, individual("dev-2"), 1).await;
    sqlx::query("UPDATE jobs SET status = 'running', lane_state = 'succeeded'")
        .execute(s.pool())
        .await
        .unwrap();
    write_request_from_the_future(&s, &bad).await;
    s.settle_waiting(10).await.unwrap();
    assert_eq!(
        s.get_job(&good).await.unwrap().unwrap().status,
        JobStatus::Succeeded
    );
    assert_eq!(raw_job(&s, &bad).await.0, "failed");
}

async fn the_sweep_skips_jobs_with_open_items(db: TestDb) {
    let s = db.store().await;
    let busy = at_barrier(&s, group("busy"), 2, 0).await;
    let idle = at_barrier(&s, group("idle"), 1, 0).await;
    let items = s
        .claim_items("w", 1, Duration::from_secs(30), 10)
        .await
        .unwrap();
    // The idle job's item finished but the settle after it was missed.
    let it = items.iter().find(|i| i.job_id == idle).unwrap();
    sqlx::query("UPDATE job_items SET state = 'succeeded' WHERE id = $1")
        .bind(&it.id)
        .execute(s.pool())
        .await
        .unwrap();
    assert_eq!(
        s.jobs_to_settle().await.unwrap(),
        std::slice::from_ref(&idle)
    );
    s.settle_waiting(2).await.unwrap();
    let j = s.get_job(&idle).await.unwrap().unwrap();
    assert_eq!(j.current_step(), Some(JobStep::DeleteRegistrations));
    assert_eq!(
        s.get_job(&busy).await.unwrap().unwrap().lane_state,
        LaneState::WaitingItems
    );
}

async fn a_single_device_job_is_not_starved_by_a_big_one(db: TestDb) {
    let s = db.store().await;
    let big = at_barrier(&s, group("big"), 200, 0).await;
    let small = at_barrier(&s, individual("late"), 1, 10).await;
    let got = s
        .claim_items("w", 20, Duration::from_secs(30), 4)
        .await
        .unwrap();
    assert_eq!(got.len(), 4);
    assert!(
        got.iter().any(|i| i.job_id == small),
        "the later job waits behind every device of the big one"
    );
    assert!(got.iter().any(|i| i.job_id == big));
}

async fn concurrent_claimers_across_jobs_never_share_work(db: TestDb) {
    let s = db.store().await;
    let lease = Duration::from_secs(5);
    let mut jobs = Vec::new();
    for g in 0..3 {
        jobs.push(at_barrier(&s, group(&format!("g{g}")), 40, 0).await);
    }
    let mut tasks = Vec::new();
    for w in 0..4 {
        let s: Store = s.clone();
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let got = s.claim_items(&format!("w{w}"), 5, lease, 5).await.unwrap();
                if got.is_empty() {
                    return mine;
                }
                mine.extend(got.into_iter().map(|i| (i.id, i.fence)));
            }
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let unique: HashSet<_> = all.iter().map(|(id, _)| id).collect();
    assert_eq!(all.len(), 120, "every item handed out exactly once");
    assert_eq!(unique.len(), 120);
    assert!(all.iter().all(|(_, fence)| *fence == 1));
}

async fn the_database_clock_corrects_a_skewed_replica(db: TestDb) {
    use deprovisiond::domain::clock::Clock;
    let s = db.store().await;
    let skewed = std::sync::Arc::new(crate::support::Skewed(20_000));
    let clock = deprovisiond::store::DbClock::synced(s.clone(), skewed)
        .await
        .unwrap();
    let db_now = s.db_now_ms().await.unwrap();
    // Within a generous bound of the database's time, not 20 s ahead of it.
    assert!(
        (clock.now_ms() - db_now).abs() < 5_000,
        "{} vs {db_now}",
        clock.now_ms()
    );
}

async fn pool_size_statement_timeout_and_durability(db: TestDb) {
    use sqlx::Row;
    let opts = deprovisiond::store::StoreOptions {
        max_connections: 23,
        statement_timeout: Duration::from_millis(1_500),
    };
    let s = deprovisiond::store::Store::connect_with(&db.url, &opts)
        .await
        .unwrap();
    s.migrate().await.unwrap();
    match s.backend() {
        deprovisiond::store::Backend::Postgres => {
            assert_eq!(s.pool().options().get_max_connections(), 23);
            let r = sqlx::query("SHOW statement_timeout")
                .fetch_one(s.pool())
                .await
                .unwrap();
            assert_eq!(r.get::<String, _>(0), "1500ms");
            // A runaway statement is stopped instead of holding a connection for ever.
            assert!(
                sqlx::query("SELECT pg_sleep(5)")
                    .execute(s.pool())
                    .await
                    .is_err()
            );
        }
        deprovisiond::store::Backend::Sqlite => {
            assert_eq!(s.pool().options().get_max_connections(), 1);
            let r = sqlx::query("PRAGMA synchronous")
                .fetch_one(s.pool())
                .await
                .unwrap();
            // FULL: a committed job survives a power cut, not only a process crash.
            assert_eq!(r.get::<i64, _>(0), 2);
        }
    }
}

async fn concurrent_identical_posts_make_one_job(db: TestDb) {
    let s = db.store().await;
    // The same request, retried by a client in a hurry: with an idempotency key, then without.
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            s.create_job(new_job(individual("dev-1"), Some(("k", "h"))), 1)
                .await
        }));
    }
    let mut new = 0;
    let mut ids = HashSet::new();
    for t in tasks {
        match t.await.unwrap().unwrap() {
            Created::New(j) => {
                new += 1;
                ids.insert(j.id);
            }
            Created::Replayed(j) => {
                ids.insert(j.id);
            }
        }
    }
    assert_eq!((new, ids.len()), (1, 1), "one job, the others replayed");
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            s.create_job(new_job(group("fleet"), None), 2).await
        }));
    }
    let mut new = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(Created::New(_)) => new += 1,
            Err(StoreError::ActiveJobExists { .. }) => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(new, 1, "one active job per target");
}

/// The group commit: several device results in one transaction. A result whose lease a newer claim took
/// is refused alone; the others are recorded with their events, and the job settles once all are done.
async fn a_batch_of_results_records_each_and_fences_only_the_stale_one(db: TestDb) {
    let s = db.store().await;
    let lease = Duration::from_secs(1);
    let devices: Vec<NewItem> = ["d1", "d2", "d3"]
        .iter()
        .map(|r| NewItem {
            registration_id: r.to_string(),
            device_id: Some(r.to_string()),
            hub: Some("h".into()),
            data: None,
        })
        .collect();
    let (job, j) = group_job_at_the_barrier(&s, devices, lease).await;
    let stale = s.claim_items("old", 5, lease, 10).await.unwrap();
    assert_eq!(stale.len(), 3);
    // d3's lease expires and another worker takes it: the old claim of d3 is stale now.
    let d3 = stale.iter().find(|i| i.registration_id == "d3").unwrap();
    for i in stale.iter().filter(|i| i.registration_id != "d3") {
        assert!(s.renew_item(&i.id, i.fence, 60_000).await.unwrap());
    }
    let retaken = s.claim_items("new", 5 + 2_000, lease, 10).await.unwrap();
    assert_eq!(
        retaken.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(),
        vec![d3.id.as_str()]
    );
    let result = |item: &deprovisiond::store::ItemRecord, now| ItemCompletion {
        item: item.clone(),
        transition: done(j.plan.item_steps(), 0, 1, now),
        effects: StepEffects {
            events: vec![NewEvent::new(
                "step_succeeded",
                format!("{} done", item.registration_id),
            )],
            ..StepEffects::default()
        },
        now,
    };
    let batch: Vec<ItemCompletion> = stale.iter().map(|i| result(i, 2_100)).collect();
    let results = s.complete_item_steps(&batch).await.unwrap();
    let by_device: Vec<(&str, bool)> = stale
        .iter()
        .zip(&results)
        .map(|(i, r)| (i.registration_id.as_str(), r.is_ok()))
        .collect();
    for (device, ok) in &by_device {
        assert_eq!(*ok, *device != "d3", "{by_device:?}");
    }
    assert!(matches!(
        results[stale
            .iter()
            .position(|i| i.registration_id == "d3")
            .unwrap()],
        Err(StoreError::Fenced)
    ));
    let counts = s.item_counts(&job.id).await.unwrap();
    assert_eq!((counts.succeeded, counts.running), (2, 1));
    let events = s.list_events(&job.id, None, 1000).await.unwrap().rows;
    let mut done_events: Vec<&str> = events
        .iter()
        .filter(|e| e.kind == "step_succeeded")
        .filter_map(|e| e.message.as_deref())
        .collect();
    // Claims hand items out in no particular order; what matters is which devices have an event.
    done_events.sort_unstable();
    assert_eq!(
        done_events,
        vec!["d1 done", "d2 done"],
        "the stale result left no event"
    );
    assert_eq!(
        s.get_job(&job.id).await.unwrap().unwrap().status,
        JobStatus::Running,
        "one device is still running"
    );
    // The new claim's result ends the last device, and the job moves past the barrier.
    let last = s
        .complete_item_steps(&[result(&retaken[0], 2_200)])
        .await
        .unwrap();
    assert!(last[0].is_ok());
    let after = s.get_job(&job.id).await.unwrap().unwrap();
    assert_eq!(
        (after.current_step(), after.lane_state),
        (Some(JobStep::DeleteRegistrations), LaneState::Pending),
        "the barrier passed"
    );
}

/// A group job whose resolve step found `devices` and whose revoke step succeeded (at t = 2 and 4):
/// it waits at the barrier with its devices pending. Returns the job as created and as last claimed.
async fn group_job_at_the_barrier(
    s: &Store,
    devices: Vec<NewItem>,
    lease: Duration,
) -> (JobRecord, JobRecord) {
    group_job_at_the_barrier_of(s, "fleet", devices, lease).await
}

/// [`group_job_at_the_barrier`] for group `group_id`.
async fn group_job_at_the_barrier_of(
    s: &Store,
    group_id: &str,
    devices: Vec<NewItem>,
    lease: Duration,
) -> (JobRecord, JobRecord) {
    let Created::New(job) = s
        .create_job(new_job(group(group_id), None), 0)
        .await
        .unwrap()
    else {
        panic!("a new job")
    };
    let j = s.claim_jobs("w", 1, lease, 1).await.unwrap().remove(0);
    let effects = StepEffects {
        new_items: devices,
        ..StepEffects::default()
    };
    s.complete_job_step(&j, &done(j.plan.job_steps(), 0, 1, 2), &effects, 2)
        .await
        .unwrap();
    let j = s.claim_jobs("w", 3, lease, 1).await.unwrap().remove(0);
    s.complete_job_step(
        &j,
        &done(j.plan.job_steps(), 1, 1, 4),
        &StepEffects::default(),
        4,
    )
    .await
    .unwrap();
    (job, j)
}

/// The counts by state and by hub, counted from the items themselves.
async fn counted(s: &Store, job_id: &str) -> Vec<(String, String, i64)> {
    let rows = sqlx::query(
        "SELECT COALESCE(hub, ''), state, COUNT(*) FROM job_items WHERE job_id = $1 GROUP BY 1, 2",
    )
    .bind(job_id.to_string())
    .fetch_all(s.pool())
    .await
    .unwrap();
    let mut out: Vec<(String, String, i64)> = rows
        .iter()
        .map(|r| {
            use sqlx::Row;
            (r.get(0), r.get(1), r.get(2))
        })
        .collect();
    out.sort();
    out
}

/// The counts the store keeps (what the job view, the list and settling read), in the same shape.
async fn kept(s: &Store, job_id: &str) -> Vec<(String, String, i64)> {
    let mut out = Vec::new();
    for (hub, c) in s.hub_counts(job_id).await.unwrap() {
        let hub = hub.unwrap_or_default();
        for (state, n) in [
            ("waiting", c.waiting),
            ("pending", c.pending),
            ("running", c.running),
            ("succeeded", c.succeeded),
            ("skipped", c.skipped),
            ("failed", c.failed),
            ("cancelled", c.cancelled),
        ] {
            if n > 0 {
                out.push((hub.clone(), state.to_string(), n as i64));
            }
        }
    }
    out.sort();
    out
}

async fn kept_counts_match_the_items_through_concurrent_changes(db: TestDb) {
    let s = db.store().await;
    let lease = Duration::from_secs(60);
    let devices = |prefix: &str| -> Vec<NewItem> {
        (0..60)
            .map(|i| NewItem {
                registration_id: format!("{prefix}-{i}"),
                device_id: None,
                // Three hubs and devices whose record names none: each completion batch spans hubs.
                hub: ["h1", "h2", "h3"].get(i % 4).map(|h| h.to_string()),
                data: None,
            })
            .collect()
    };
    let (job, j) = group_job_at_the_barrier_of(&s, "fleet", devices("a"), lease).await;
    assert_eq!(kept(&s, &job.id).await, counted(&s, &job.id).await);
    // Four workers claim and finish devices at once: most succeed, every fifth fails, every seventh
    // is handed back for a retry.
    let work = |owner: &'static str| {
        let s = s.clone();
        let steps = j.plan.item_steps().to_vec();
        async move {
            let mut now = 10;
            loop {
                now += 1;
                let claimed = s.claim_items(owner, now, lease, 5).await.unwrap();
                if claimed.is_empty() {
                    break;
                }
                let batch: Vec<ItemCompletion> = claimed
                    .iter()
                    .map(|item| {
                        let n: usize = item.registration_id[2..].parse().unwrap();
                        let outcome = if n % 5 == 0 {
                            Outcome::Fail(StepError::msg("refused"))
                        } else if n % 7 == 0 && item.attempt < 2 {
                            Outcome::Retry {
                                error: StepError::msg("busy"),
                                retry_after: Some(Duration::ZERO),
                            }
                        } else {
                            Outcome::Done
                        };
                        let mut rng = StdRng::seed_from_u64(n as u64);
                        let transition = lane::advance(
                            &steps,
                            Position {
                                step_index: 0,
                                attempt: item.attempt,
                            },
                            outcome,
                            now,
                            &BackoffPolicy::default(),
                            &mut rng,
                        );
                        ItemCompletion {
                            item: item.clone(),
                            transition,
                            effects: StepEffects::default(),
                            now,
                        }
                    })
                    .collect();
                for r in s.complete_item_steps(&batch).await.unwrap() {
                    r.unwrap();
                }
            }
        }
    };
    tokio::join!(work("w1"), work("w2"), work("w3"), work("w4"));
    let after = counted(&s, &job.id).await;
    assert_eq!(kept(&s, &job.id).await, after);
    let failed: i64 = after.iter().filter(|c| c.1 == "failed").map(|c| c.2).sum();
    assert_eq!(failed, 12, "{after:?}");
    let counts = s.item_counts(&job.id).await.unwrap();
    assert_eq!(
        (counts.total, counts.failed, counts.succeeded),
        (60, 12, 48)
    );
    // A cancel ends another job's pending devices in one statement.
    let (other, _) = group_job_at_the_barrier_of(&s, "other", devices("b"), lease).await;
    s.cancel_job(&other.id, 100).await.unwrap();
    let cancelled = counted(&s, &other.id).await;
    assert_eq!(kept(&s, &other.id).await, cancelled);
    assert!(
        cancelled.iter().all(|c| c.1 == "cancelled"),
        "{cancelled:?}"
    );
    // The job list reads the same counts.
    let both = s
        .item_counts_of(&[job.id.clone(), other.id.clone()])
        .await
        .unwrap();
    assert_eq!(both[&other.id].cancelled, 60);
    assert_eq!(both[&job.id].failed, 12);
}

/// The statements a hub job's passes over an export run, a batch of device ids (one JSON parameter, far more
/// than either engine's parameter limit would allow one by one) at a time.
async fn hub_job_batches_find_mark_move_and_finish_devices_by_id(db: TestDb) {
    use sqlx::Row;
    let s = db.store().await;
    // 4,000 devices on h1, 500 on h2; one id needs escaping in JSON.
    let device = |i: usize| {
        if i == 7 {
            "dev-\"q'uote\\".to_string()
        } else {
            format!("dev-{i:05}")
        }
    };
    let items = (0..4500)
        .map(|i| NewItem {
            registration_id: format!("reg-{i}"),
            device_id: Some(device(i)),
            hub: Some(if i < 4000 { "h1" } else { "h2" }.into()),
            data: None,
        })
        .collect();
    let job = job_with_devices(&s, items).await;

    // A batch of 3,000 ids: 2,000 on h1, 500 on h2, 500 unknown.
    let ids: Vec<String> = (2000..4500)
        .map(device)
        .chain((0..500).map(|i| format!("nobody-{i}")))
        .collect();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    let found = s.waiting_devices(&job.id, "h1", &ids).await.unwrap();
    assert_eq!(found.len(), 2000);
    assert!(
        found
            .iter()
            .all(|d| d.as_str() >= "dev-02000" && d.as_str() < "dev-04000")
    );
    assert!(
        s.waiting_devices(&job.id, "h1", &[])
            .await
            .unwrap()
            .is_empty()
    );
    let quoted = device(7);
    let one = s
        .waiting_on_hub(&job.id, "h1", &[quoted.as_str()])
        .await
        .unwrap();
    assert_eq!(one.len(), 1);
    assert_eq!(
        (one[0].device_id.as_str(), one[0].registration_id.as_str()),
        (quoted.as_str(), "reg-7")
    );
    assert_eq!(one[0].hub_job, None);

    // Marks: 1,500 changed, 500 already so; h2's devices are never touched by h1's run.
    let h1: Vec<String> = (0..4000).map(device).collect();
    let h1: Vec<&str> = h1.iter().map(String::as_str).collect();
    let h2: Vec<String> = (4000..4500).map(device).collect();
    let h2: Vec<&str> = h2.iter().map(String::as_str).collect();
    assert_eq!(
        s.mark_hub_devices(&job.id, "h1", "run", true, &h1[..1500], 5)
            .await
            .unwrap(),
        1500
    );
    assert_eq!(
        s.mark_hub_devices(&job.id, "h1", "run", false, &h1[1500..2000], 5)
            .await
            .unwrap(),
        500
    );
    assert_eq!(
        s.mark_hub_devices(&job.id, "h1", "run", true, &h2, 5)
            .await
            .unwrap(),
        0
    );
    let rows = sqlx::query(
        "SELECT COALESCE(hub_job, ''), COALESCE(changed, -1), COUNT(*) FROM job_items WHERE job_id = $1 GROUP BY 1, 2 ORDER BY 1, 2",
    )
    .bind(job.id.clone())
    .fetch_all(s.pool())
    .await
    .unwrap();
    let got: Vec<(String, i64, i64)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        got,
        [
            ("".into(), -1, 2500),
            ("run".into(), 0, 500),
            ("run".into(), 1, 1500)
        ]
    );

    // Back to their own step (only those the run marked), then finished by device id.
    assert_eq!(
        s.move_hub_devices(&job.id, "h1", "run", None, &h1[1990..2010], 6)
            .await
            .unwrap(),
        10
    );
    assert_eq!(
        s.move_hub_devices(&job.id, "h1", "other", None, &h1[..100], 6)
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        s.finish_hub_devices(&job.id, "h1", "run", "import-1", 1, &h1[..1200], 7)
            .await
            .unwrap(),
        1200
    );
    assert_eq!(
        s.finish_hub_devices(&job.id, "h1", "run", "import-1", 1, &h1[..1200], 8)
            .await
            .unwrap(),
        0,
        "once"
    );
    // The rest of the run as the verification's end does it.
    assert_eq!(
        s.finish_hub_job(&job.id, "h1", "run", "import-1", 1, 9)
            .await
            .unwrap(),
        790
    );
    assert_eq!(kept(&s, &job.id).await, counted(&s, &job.id).await);
    assert_eq!(
        counted(&s, &job.id).await,
        [
            ("h1".into(), "succeeded".into(), 1990),
            ("h1".into(), "waiting".into(), 2010),
            ("h2".into(), "waiting".into(), 500),
        ]
    );
    let marks: Vec<(String, i64)> = sqlx::query(
        "SELECT COALESCE(hub_job, ''), COUNT(*) FROM job_items WHERE job_id = $1 AND state = 'succeeded' GROUP BY 1",
    )
    .bind(job.id.clone())
    .fetch_all(s.pool())
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect();
    assert_eq!(
        marks,
        [("import-1".into(), 1990)],
        "finished devices keep the import job as their mark"
    );
}

/// Items go in a hundred per statement: a page longer than that keeps its order in `seq`, and a
/// registration named twice, in one statement or in two, stays as it was first added.
async fn a_page_of_devices_is_inserted_in_order_and_a_repeat_adds_nothing(db: TestDb) {
    let s = db.store().await;
    let item = |r: String, hub: &str| NewItem {
        registration_id: r.clone(),
        device_id: Some(format!("dev-{r}")),
        hub: Some(hub.into()),
        data: Some(serde_json::json!({"n": r})),
    };
    // 250 registrations; reg-5 again inside the first hundred, reg-150 again in the third.
    let mut page: Vec<NewItem> = (0..250).map(|i| item(format!("reg-{i}"), "h1")).collect();
    page.insert(50, item("reg-5".into(), "h2"));
    page.insert(220, item("reg-150".into(), "h2"));
    let job = job_with_devices(&s, page).await;
    let items = s.list_items(&job.id, None, 1_000).await.unwrap().rows;
    let regs: Vec<String> = items.iter().map(|i| i.registration_id.clone()).collect();
    let want: Vec<String> = (0..250).map(|i| format!("reg-{i}")).collect();
    assert_eq!(regs, want, "in the page's order, each once");
    assert!(items.windows(2).all(|w| w[0].seq < w[1].seq));
    assert!(
        items.iter().all(|i| i.hub.as_deref() == Some("h1")),
        "the first stays"
    );
    assert!(items.iter().all(|i| i.state == LaneState::Waiting));
    assert_eq!(items[7].device_id.as_deref(), Some("dev-reg-7"));
    assert_eq!(items[7].data, Some(serde_json::json!({"n": "reg-7"})));
    assert_eq!(s.item_counts(&job.id).await.unwrap().total, 250);
}

/// A job that has just added its devices is planned from statistics that do not know them: on PostgreSQL
/// the job path's batch lookup then scans every device of the job on the hub for each batch (27 s per
/// batch of 2,000 among 100,000). Refreshing the statistics, as the import_jobs step does when it plans,
/// gives the lookup by device id. SQLite picks the device index without statistics.
async fn the_job_paths_lookups_use_the_device_index_once_statistics_are_refreshed(db: TestDb) {
    use sqlx::Row;
    let s = db.store().await;
    let job = job_with_devices(
        &s,
        (0..20_000)
            .map(|i| NewItem {
                registration_id: format!("reg-{i}"),
                device_id: Some(format!("dev-{i}")),
                hub: Some("h1".into()),
                data: None,
            })
            .collect(),
    )
    .await;
    s.refresh_item_statistics().await.unwrap();
    let ids: Vec<String> = (0..2_000).map(|i| format!("dev-{i}")).collect();
    let list = serde_json::to_string(&ids).unwrap();
    let (explain, list_of) = match s.backend() {
        deprovisiond::store::Backend::Postgres => {
            ("EXPLAIN", "(SELECT jsonb_array_elements_text($3::jsonb))")
        }
        deprovisiond::store::Backend::Sqlite => {
            ("EXPLAIN QUERY PLAN", "(SELECT value FROM json_each($3))")
        }
    };
    // The statement shape of Store::waiting_devices and the batch updates.
    let sql = format!(
        "{explain} SELECT device_id FROM job_items WHERE job_id = $1 AND hub = $2 AND device_id IN {list_of} \
         AND finished_at IS NULL AND (state || '') = 'waiting'"
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(&job.id)
        .bind("h1")
        .bind(list)
        .fetch_all(s.pool())
        .await
        .unwrap();
    let plan: Vec<String> = rows
        .iter()
        .map(|r| match s.backend() {
            deprovisiond::store::Backend::Postgres => r.get::<String, _>(0),
            deprovisiond::store::Backend::Sqlite => r.get::<String, _>("detail"),
        })
        .collect();
    // PostgreSQL: the index condition names the device (a scan of the job's devices on the hub filters
    // them instead); SQLite: the index is searched by all three columns.
    let by_device = plan.iter().any(|l| {
        (l.contains("Index Cond") && l.contains("device_id"))
            || l.contains("job_items_unfinished_device (job_id=? AND hub=? AND device_id=?)")
    });
    let used_index = plan
        .iter()
        .any(|l| l.contains("job_items_unfinished_device"));
    assert!(
        by_device && used_index,
        "each id looked up through the device index:\n{}",
        plan.join("\n")
    );
}

/// A new group job whose first step found `items`, which now wait for the barrier.
async fn job_with_devices(s: &Store, items: Vec<NewItem>) -> JobRecord {
    let Created::New(job) = s
        .create_job(new_job(group("fleet"), None), 0)
        .await
        .unwrap()
    else {
        panic!("a new job")
    };
    let j = s
        .claim_jobs("w", 1, Duration::from_secs(30), 1)
        .await
        .unwrap()
        .remove(0);
    let effects = StepEffects {
        new_items: items,
        ..StepEffects::default()
    };
    s.complete_job_step(&j, &done(j.plan.job_steps(), 0, 1, 2), &effects, 2)
        .await
        .unwrap();
    job
}

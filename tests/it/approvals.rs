//! The two-person rule: jobs a policy holds wait in `awaiting_approval` until an admin other than the
//! requester approves or rejects them, or they expire.

use std::sync::Arc;
use std::time::Duration;

use deprovisiond::app::WorkflowChoice;
use deprovisiond::domain::clock::SystemClock;
use deprovisiond::domain::job::ApprovalPolicy;
use serde_json::{Value, json};

use crate::both_stores;
use crate::support::{
    ADMIN2_KEY, OPERATOR_KEY, Scripted, TestApp, TestDb, client_with, fast_engine, group,
    individual, test_auth,
};

both_stores!(
    an_approved_job_runs_and_the_requester_cannot_approve_it,
    a_rejected_or_withdrawn_job_does_nothing,
    an_unapproved_job_expires_and_frees_its_target,
    a_group_of_unknown_size_is_held_by_the_device_threshold,
);

const TTL: Duration = Duration::from_secs(3600);

async fn spawn(db: &TestDb, wf: Arc<Scripted>) -> TestApp {
    let mut auth = test_auth();
    auth.approvals = ApprovalPolicy {
        group_wide: true,
        any_delete: true,
        more_than_devices: None,
        ttl: TTL,
    };
    TestApp::spawn_auth(
        db,
        WorkflowChoice::Custom(wf, vec!["default".into()]),
        fast_engine(),
        true,
        Arc::new(SystemClock),
        auth,
    )
    .await
}

async fn post(client: &reqwest::Client, url: String, body: Option<Value>) -> (u16, Value) {
    let mut rb = client.post(url);
    if let Some(b) = body {
        rb = rb.json(&b);
    }
    let r = rb.send().await.unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

async fn an_approved_job_runs_and_the_requester_cannot_approve_it(db: TestDb) {
    let wf = Scripted::new(3);
    let app = spawn(&db, wf.clone()).await;
    // An individual disable is not held.
    let (s, job) = post(
        &app.http,
        app.url("/v1/deprovisions"),
        Some(individual("dev-0000")),
    )
    .await;
    assert_eq!(s, 202);
    assert_eq!(job["status"], "queued");
    assert!(job.get("approval").is_none());
    // A whole group is.
    let (s, job) = post(&app.http, app.url("/v1/deprovisions"), Some(group("fleet"))).await;
    assert_eq!(s, 202);
    assert_eq!(job["status"], "awaiting_approval");
    assert_eq!(job["approval"]["rule"], "group-wide job");
    assert_eq!(job["requested_by"], "key:test-admin");
    let id = job["id"].as_str().unwrap().to_string();
    let approve = app.url(&format!("/v1/deprovisions/{id}/approve"));
    // An operator may not approve; the requester, an admin, may not either.
    let (s, _) = post(&client_with(Some(OPERATOR_KEY)), approve.clone(), None).await;
    assert_eq!(s, 403);
    let (s, p) = post(&app.http, approve.clone(), None).await;
    assert_eq!(s, 403, "{p}");
    assert_eq!(p["type"], "urn:deprovisiond:problem:self-approval");
    let held = app.get_json(&format!("/v1/deprovisions/{id}")).await;
    assert_eq!(held["status"], "awaiting_approval");
    assert!(
        wf.runs_of("resolve", None).len() <= 1,
        "only the individual job ran"
    );
    // A second admin approves: the job runs to the end.
    let (s, job) = post(
        &client_with(Some(ADMIN2_KEY)),
        approve.clone(),
        Some(json!({"comment": "checked with the fleet owner"})),
    )
    .await;
    assert_eq!(s, 200, "{job}");
    assert_eq!(job["approval"]["decided_by"], "key:test-admin2");
    app.wait_status(&id, "succeeded").await;
    let (s, _) = post(&client_with(Some(ADMIN2_KEY)), approve, None).await;
    assert_eq!(s, 409, "a decided job cannot be decided again");
    let events = app.events(&id).await;
    let kinds: Vec<&str> = events.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    let at = |k: &str| {
        kinds
            .iter()
            .position(|x| *x == k)
            .unwrap_or_else(|| panic!("{k}: {kinds:?}"))
    };
    assert!(at("created") < at("approval_required"));
    assert!(at("approval_required") < at("approved"));
    let approved = &events[at("approved")];
    assert_eq!(approved["detail"]["by"], "key:test-admin2");
    assert_eq!(
        approved["detail"]["comment"],
        "checked with the fleet owner"
    );
    // Nothing of the job ran before its approval.
    let first_step = kinds.iter().position(|k| k.starts_with("step_")).unwrap();
    assert!(at("approved") < first_step, "{kinds:?}");
    app.stop().await;
}

async fn a_rejected_or_withdrawn_job_does_nothing(db: TestDb) {
    let wf = Scripted::new(1);
    let app = spawn(&db, wf.clone()).await;
    let operator = client_with(Some(OPERATOR_KEY));
    let mut body = individual("dev-0001");
    body["registry"] = json!("delete");
    let (s, job) = post(&operator, app.url("/v1/deprovisions"), Some(body)).await;
    assert_eq!(s, 202);
    assert_eq!(job["approval"]["rule"], "any delete");
    let id = job["id"].as_str().unwrap().to_string();
    let (s, job) = post(
        &app.http,
        app.url(&format!("/v1/deprovisions/{id}/reject")),
        Some(json!({"comment": "wrong device"})),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(job["status"], "rejected");
    assert_eq!(job["approval"]["decided_by"], "key:test-admin");
    let (s, _) = post(
        &app.http,
        app.url(&format!("/v1/deprovisions/{id}/approve")),
        None,
    )
    .await;
    assert_eq!(s, 409);
    let events = app.events(&id).await;
    let rejected = events.iter().find(|e| e["kind"] == "rejected").unwrap();
    assert_eq!(rejected["detail"]["by"], "key:test-admin");
    // Its requester withdraws another held job with a cancel.
    let (_, job) = post(&operator, app.url("/v1/deprovisions"), Some(group("fleet"))).await;
    let id2 = job["id"].as_str().unwrap().to_string();
    let (s, job) = post(
        &operator,
        app.url(&format!("/v1/deprovisions/{id2}/cancel")),
        None,
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(job["status"], "cancelled");
    assert!(
        wf.runs.lock().unwrap().is_empty(),
        "no step of either job ran"
    );
    app.stop().await;
}

async fn an_unapproved_job_expires_and_frees_its_target(db: TestDb) {
    let app = spawn(&db, Scripted::new(1)).await;
    let (s, job) = post(&app.http, app.url("/v1/deprovisions"), Some(group("fleet"))).await;
    assert_eq!(s, 202);
    let id = job["id"].as_str().unwrap().to_string();
    // While held it holds the target.
    let (s, _) = post(&app.http, app.url("/v1/deprovisions"), Some(group("fleet"))).await;
    assert_eq!(s, 409);
    // The expiry sweep, at a time of the test's choosing: not before the TTL, then after it.
    let store = db.store().await;
    let now = chrono::Utc::now().timestamp_millis();
    assert!(store.expire_approvals(now).await.unwrap().is_empty());
    let later = now + TTL.as_millis() as i64 + 1000;
    assert_eq!(
        store.expire_approvals(later).await.unwrap(),
        vec![id.clone()]
    );
    let job = app.get_json(&format!("/v1/deprovisions/{id}")).await;
    assert_eq!(job["status"], "expired");
    let (s, _) = post(
        &client_with(Some(ADMIN2_KEY)),
        app.url(&format!("/v1/deprovisions/{id}/approve")),
        None,
    )
    .await;
    assert_eq!(s, 409, "an expired job cannot be approved");
    assert!(
        app.events(&id)
            .await
            .iter()
            .any(|e| e["kind"] == "job_expired")
    );
    let (s, _) = post(&app.http, app.url("/v1/deprovisions"), Some(group("fleet"))).await;
    assert_eq!(s, 202, "the target is free again");
    store.close().await;
    app.stop().await;
}

async fn a_group_of_unknown_size_is_held_by_the_device_threshold(db: TestDb) {
    let mut auth = test_auth();
    auth.approvals = ApprovalPolicy {
        more_than_devices: Some(10),
        ..ApprovalPolicy::default()
    };
    let app = TestApp::spawn_auth(
        &db,
        WorkflowChoice::Custom(Scripted::new(1), vec!["default".into()]),
        fast_engine(),
        true,
        Arc::new(SystemClock),
        auth,
    )
    .await;
    // One device is under the threshold.
    let (_, job) = post(
        &app.http,
        app.url("/v1/deprovisions"),
        Some(individual("dev-0002")),
    )
    .await;
    assert_eq!(job["status"], "queued");
    // This workflow cannot count a group's devices (no DPS to read): an unknown count is held.
    let (_, job) = post(&app.http, app.url("/v1/deprovisions"), Some(group("fleet"))).await;
    assert_eq!(job["status"], "awaiting_approval");
    let rule = job["approval"]["rule"].as_str().unwrap();
    assert!(rule.starts_with("more than 10 devices"), "{rule}");
    app.stop().await;
}

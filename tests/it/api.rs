//! The API over HTTP, on both stores.

use std::time::Duration;

use serde_json::{Value, json};

use crate::both_stores;
use crate::support::{Act, Scripted, TestApp, TestDb, group, individual};

both_stores!(
    job_runs_through_every_step_and_get_shows_it,
    idempotency_key_replays_or_refuses,
    second_active_job_for_a_target_conflicts,
    cancel_stops_new_work,
    retry_resumes_failed_devices_only,
    list_filters_and_paginates,
    devices_and_events_paginate,
    validation_errors_are_problems,
    probes_answer,
);

async fn job_runs_through_every_step_and_get_shows_it(db: TestDb) {
    let wf = Scripted::new(3);
    wf.script("revoke", "-", vec![Act::Hang(Duration::from_millis(1_500))]);
    let app = TestApp::spawn(&db, wf.clone()).await;
    let r = app.post("/v1/deprovisions", &group("fleet-a")).await;
    assert_eq!(r.status(), 202);
    let location = r.headers()["location"].to_str().unwrap().to_string();
    let job: Value = r.json().await.unwrap();
    let id = job["id"].as_str().unwrap();
    assert_eq!(location, format!("/v1/deprovisions/{id}"));
    assert_eq!(job["status"], "queued");
    assert_eq!(
        job["target"],
        json!({"kind": "enrollment_group", "group_id": "fleet-a"})
    );
    assert_eq!(job["revoke"], "disable");
    assert_eq!(job["registry"], "disable");
    assert_eq!(job["dps"], "default");

    // While the revoke step hangs, GET shows it running and the devices waiting.
    let mid = app
        .wait_job(id, Duration::from_secs(10), |j| {
            j["steps"][1]["state"] == "running" && j["status"] == "running"
        })
        .await;
    assert_eq!(
        mid["steps"][0],
        json!({"name": "resolve", "state": "succeeded"})
    );
    assert_eq!(mid["progress"]["total"], 3);
    assert_eq!(mid["progress"]["revoked"], 0);
    assert_eq!(mid["progress"]["pending"], 3);

    let done = app.wait_status(id, "succeeded").await;
    assert_eq!(done["progress"]["registry_done"], 3);
    assert_eq!(done["progress"]["revoked"], 3);
    assert!(
        done["steps"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["state"] == "succeeded"),
        "{done:#}"
    );
    assert!(done["finished_at"].is_string());

    // The registry step of every device started only after the revoke step finished.
    let revoke_end = wf.runs_of("revoke", None)[0].at + Duration::from_millis(1_500);
    for i in 0..3 {
        let runs = wf.runs_of("registry", Some(&format!("dev-{i:04}")));
        assert_eq!(runs.len(), 1);
        assert!(runs[0].at >= revoke_end);
    }
    let kinds: Vec<String> = app
        .events(id)
        .await
        .iter()
        .map(|e| e["kind"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(kinds.first().map(String::as_str), Some("created"));
    assert_eq!(kinds.last().map(String::as_str), Some("job_succeeded"));
    assert_eq!(
        kinds.iter().filter(|k| *k == "step_succeeded").count(),
        3 + 3
    );
    app.stop().await;
}

async fn idempotency_key_replays_or_refuses(db: TestDb) {
    let app =
        TestApp::spawn_with(&db, Scripted::new(1), crate::support::fast_engine(), false).await;
    let send = |body: Value, key: &'static str| {
        let req = app
            .http
            .post(app.url("/v1/deprovisions"))
            .header("Idempotency-Key", key)
            .json(&body);
        async move { req.send().await.unwrap() }
    };
    let first = send(individual("dev-a"), "key-1").await;
    assert_eq!(first.status(), 202);
    let first: Value = first.json().await.unwrap();
    // Same key, same meaning (field order and case of the id differ): the same job, 200.
    let again = send(
        json!({"ticket": {"key": "OPS-1", "system": "jira"}, "reason": {"text": "test", "code": "stolen"},
               "target": {"registration_id": "DEV-A", "kind": "individual_enrollment"}}),
        "key-1",
    )
    .await;
    assert_eq!(again.status(), 200);
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["id"], first["id"]);
    // Same key, other body: 422 naming the job.
    let other = send(individual("dev-b"), "key-1").await;
    assert_eq!(other.status(), 422);
    let p: Value = other.json().await.unwrap();
    assert_eq!(p["type"], "urn:deprovisiond:problem:idempotency-key-reused");
    assert_eq!(p["job_id"], first["id"]);
    // A bad key is a 400.
    let bad = send(individual("dev-c"), "has space").await;
    assert_eq!(bad.status(), 400);
    app.stop().await;
}

async fn second_active_job_for_a_target_conflicts(db: TestDb) {
    let app =
        TestApp::spawn_with(&db, Scripted::new(1), crate::support::fast_engine(), false).await;
    let first: Value = app
        .post("/v1/deprovisions", &individual("dev-a"))
        .await
        .json()
        .await
        .unwrap();
    let r = app.post("/v1/deprovisions", &individual("Dev-A")).await;
    assert_eq!(r.status(), 409);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let p: Value = r.json().await.unwrap();
    assert_eq!(p["type"], "urn:deprovisiond:problem:active-job-exists");
    assert_eq!(p["job_id"], first["id"]);
    assert!(
        p["detail"]
            .as_str()
            .unwrap()
            .contains(first["id"].as_str().unwrap())
    );
    // A group device with the same registration id is the same target.
    let gd = json!({"target": {"kind": "group_device", "group_id": "g", "registration_id": "dev-a"}, "reason": {"code": "sold"}});
    assert_eq!(app.post("/v1/deprovisions", &gd).await.status(), 409);
    // Another target is fine; once the first is cancelled, the target is free again.
    assert_eq!(
        app.post("/v1/deprovisions", &individual("dev-b"))
            .await
            .status(),
        202
    );
    let id = first["id"].as_str().unwrap();
    assert_eq!(
        app.post(&format!("/v1/deprovisions/{id}/cancel"), &json!({}))
            .await
            .status(),
        200
    );
    assert_eq!(
        app.post("/v1/deprovisions", &individual("dev-a"))
            .await
            .status(),
        202
    );
    app.stop().await;
}

async fn cancel_stops_new_work(db: TestDb) {
    let wf = Scripted::new(4);
    wf.script("revoke", "-", vec![Act::Hang(Duration::from_millis(2_000))]);
    let app = TestApp::spawn(&db, wf.clone()).await;
    let job: Value = app
        .post("/v1/deprovisions", &group("fleet-c"))
        .await
        .json()
        .await
        .unwrap();
    let id = job["id"].as_str().unwrap();
    app.wait_job(id, Duration::from_secs(10), |j| {
        j["steps"][1]["state"] == "running"
    })
    .await;
    let r = app
        .post(&format!("/v1/deprovisions/{id}/cancel"), &json!({}))
        .await;
    assert_eq!(r.status(), 200);
    let cancelling: Value = r.json().await.unwrap();
    assert_eq!(cancelling["cancel_requested"], true);
    // The revoke call in flight completes and is recorded; nothing after it starts.
    let done = app.wait_status(id, "cancelled").await;
    assert_eq!(done["progress"]["cancelled"], 4);
    assert!(wf.runs_of("registry", Some("dev-0000")).is_empty());
    let kinds: Vec<Value> = app
        .events(id)
        .await
        .iter()
        .map(|e| e["kind"].clone())
        .collect();
    assert!(kinds.contains(&json!("cancel_requested")));
    assert!(
        kinds.contains(&json!("step_succeeded")),
        "the in-flight revoke is recorded: {kinds:?}"
    );
    assert_eq!(kinds.last(), Some(&json!("job_cancelled")));
    // Cancelling again is refused: the job is no longer active.
    let again = app
        .post(&format!("/v1/deprovisions/{id}/cancel"), &json!({}))
        .await;
    assert_eq!(again.status(), 409);
    let p: Value = again.json().await.unwrap();
    assert_eq!(p["type"], "urn:deprovisiond:problem:invalid-job-transition");
    app.stop().await;
}

async fn retry_resumes_failed_devices_only(db: TestDb) {
    let wf = Scripted::new(3);
    wf.script("registry", "dev-0001", vec![Act::Fail]);
    let app = TestApp::spawn(&db, wf.clone()).await;
    let job: Value = app
        .post("/v1/deprovisions", &group("fleet-r"))
        .await
        .json()
        .await
        .unwrap();
    let id = job["id"].as_str().unwrap();
    let failed = app.wait_status(id, "failed").await;
    assert_eq!(failed["progress"]["failed"], 1);
    assert_eq!(failed["progress"]["registry_done"], 2);
    assert!(
        failed["last_error"]["message"]
            .as_str()
            .unwrap()
            .contains("1 of 3 device(s) failed")
    );
    // The permanent failure is in the timeline with Azure's code and tracking id.
    let events = app.events(id).await;
    let fail = events
        .iter()
        .find(|e| e["kind"] == "step_failed")
        .expect("a step_failed event");
    assert_eq!(fail["detail"]["code"], "403002");
    assert_eq!(fail["detail"]["tracking_id"], "track-fail");
    // Devices page shows the failed device with its error.
    let devices = app
        .get_json(&format!("/v1/deprovisions/{id}/devices"))
        .await;
    let d1 = &devices["items"][1];
    assert_eq!(d1["registration_id"], "dev-0001");
    assert_eq!(d1["state"], "failed");
    assert_eq!(d1["last_error"]["http_status"], 403);

    // Retrying a non-failed job is refused; retrying the failed one resumes it.
    let r = app
        .post(&format!("/v1/deprovisions/{id}/retry"), &json!({}))
        .await;
    assert_eq!(r.status(), 200);
    let requeued: Value = r.json().await.unwrap();
    assert_eq!(requeued["status"], "queued");
    app.wait_status(id, "succeeded").await;
    // Succeeded steps never ran again; only the failed device did.
    assert_eq!(wf.runs_of("resolve", None).len(), 1);
    assert_eq!(wf.runs_of("revoke", None).len(), 1);
    assert_eq!(wf.runs_of("registry", Some("dev-0000")).len(), 1);
    assert_eq!(wf.runs_of("registry", Some("dev-0001")).len(), 2);
    assert_eq!(wf.runs_of("delete_registrations", None).len(), 1);
    assert_eq!(
        app.post(&format!("/v1/deprovisions/{id}/retry"), &json!({}))
            .await
            .status(),
        409
    );
    app.stop().await;
}

async fn list_filters_and_paginates(db: TestDb) {
    let app =
        TestApp::spawn_with(&db, Scripted::new(1), crate::support::fast_engine(), false).await;
    let mut ids = Vec::new();
    for i in 0..7 {
        let mut body = individual(&format!("dev-{i}"));
        body["ticket"]["key"] = json!(if i % 2 == 0 { "OPS-EVEN" } else { "OPS-ODD" });
        let j: Value = app
            .post("/v1/deprovisions", &body)
            .await
            .json()
            .await
            .unwrap();
        ids.push(j["id"].as_str().unwrap().to_string());
    }
    let _g: Value = app
        .post("/v1/deprovisions", &group("fleet"))
        .await
        .json()
        .await
        .unwrap();
    // Pages of 3, newest first, every job exactly once.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => {
                format!("/v1/deprovisions?limit=3&target_kind=individual_enrollment&cursor={c}")
            }
            None => "/v1/deprovisions?limit=3&target_kind=individual_enrollment".to_string(),
        };
        let page = app.get_json(&path).await;
        let items = page["items"].as_array().unwrap();
        assert!(items.len() <= 3);
        seen.extend(items.iter().map(|j| j["id"].as_str().unwrap().to_string()));
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    let mut expected = ids.clone();
    expected.reverse();
    assert_eq!(seen, expected);
    let even = app.get_json("/v1/deprovisions?ticket_key=OPS-EVEN").await;
    assert_eq!(even["items"].as_array().unwrap().len(), 4);
    let one = app.get_json("/v1/deprovisions?target_id=DEV-3").await;
    assert_eq!(one["items"][0]["id"], json!(ids[3]));
    let queued = app
        .get_json("/v1/deprovisions?status=queued&limit=200")
        .await;
    assert_eq!(queued["items"].as_array().unwrap().len(), 8);
    let none = app.get_json("/v1/deprovisions?status=succeeded").await;
    assert!(none["items"].as_array().unwrap().is_empty());
    assert!(none.get("next_cursor").is_none());
    let future = app
        .get_json("/v1/deprovisions?created_after=2999-01-01T00:00:00Z")
        .await;
    assert!(future["items"].as_array().unwrap().is_empty());
    let past =
        app.get_json("/v1/deprovisions?created_before=2999-01-01T00:00:00Z&created_after=2000-01-01T00:00:00Z").await;
    assert_eq!(past["items"].as_array().unwrap().len(), 8);
    // Bad filters are 422 problems naming the field.
    for (q, field) in [
        ("limit=0", "limit"),
        ("limit=201", "limit"),
        ("cursor=nope", "cursor"),
        ("created_after=yesterday", "created_after"),
    ] {
        let r = app
            .http
            .get(app.url(&format!("/v1/deprovisions?{q}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 422, "{q}");
        let p: Value = r.json().await.unwrap();
        assert_eq!(p["errors"][0]["field"], field, "{q}");
    }
    let r = app
        .http
        .get(app.url("/v1/deprovisions?status=bogus"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = app
        .http
        .get(app.url("/v1/deprovisions?unknown=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    app.stop().await;
}

async fn devices_and_events_paginate(db: TestDb) {
    let wf = Scripted::new(25);
    let app = TestApp::spawn(&db, wf).await;
    let job: Value = app
        .post("/v1/deprovisions", &group("fleet-p"))
        .await
        .json()
        .await
        .unwrap();
    let id = job["id"].as_str().unwrap();
    app.wait_status(id, "succeeded").await;
    let mut regs = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/deprovisions/{id}/devices?limit=10&cursor={c}"),
            None => format!("/v1/deprovisions/{id}/devices?limit=10"),
        };
        let page = app.get_json(&path).await;
        for d in page["items"].as_array().unwrap() {
            assert_eq!(d["state"], "succeeded");
            assert!(d["hub"].as_str().unwrap().ends_with(".azure-devices.net"));
            regs.push(d["registration_id"].as_str().unwrap().to_string());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    let expected: Vec<String> = (0..25).map(|i| format!("dev-{i:04}")).collect();
    assert_eq!(regs, expected);
    let first = app
        .get_json(&format!("/v1/deprovisions/{id}/events?limit=5"))
        .await;
    assert_eq!(first["items"].as_array().unwrap().len(), 5);
    let c = first["next_cursor"].as_str().unwrap();
    let second = app
        .get_json(&format!("/v1/deprovisions/{id}/events?limit=5&cursor={c}"))
        .await;
    assert!(second["items"][0]["id"].as_i64().unwrap() > first["items"][4]["id"].as_i64().unwrap());
    let all = app.events(id).await;
    assert!(all.len() >= 25 + 4);
    let r = app
        .http
        .get(app.url(&format!("/v1/deprovisions/{id}/devices?limit=5000")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    app.stop().await;
}

async fn validation_errors_are_problems(db: TestDb) {
    let app =
        TestApp::spawn_with(&db, Scripted::new(1), crate::support::fast_engine(), false).await;
    let cases: Vec<(Value, u16, &str)> = vec![
        (
            json!({"target": {"kind": "individual_enrollment", "registration_id": "bad id"}, "reason": {"code": "lost"}}),
            422,
            "target",
        ),
        (
            json!({"target": {"kind": "individual_enrollment", "registration_id": "a".repeat(129)}, "reason": {"code": "lost"}}),
            422,
            "target",
        ),
        (
            json!({"target": {"kind": "enrollment_group", "group_id": "g/1"}, "reason": {"code": "lost"}}),
            422,
            "target",
        ),
        (
            json!({"target": {"kind": "individual_enrollment", "registration_id": "a"}, "reason": {"code": "lost", "text": "x".repeat(1025)}}),
            422,
            "reason.text",
        ),
        (
            json!({"target": {"kind": "individual_enrollment", "registration_id": "a"}, "reason": {"code": "meh"}}),
            422,
            "reason.code",
        ),
        (
            json!({"target": {"kind": "individual_enrollment", "registration_id": "a"}, "reason": {"code": "lost"}, "extra": 1}),
            422,
            "extra",
        ),
        (
            json!({"target": {"kind": "individual_enrollment", "registration_id": "a", "x": 1}, "reason": {"code": "lost"}}),
            422,
            "target",
        ),
        (
            json!({"target": {"kind": "device"}, "reason": {"code": "lost"}}),
            422,
            "target",
        ),
        (json!({"reason": {"code": "lost"}}), 422, "target"),
        (
            json!({"target": {"kind": "enrollment_group", "group_id": "g"}, "revoke": "delete", "reason": {"code": "lost"}}),
            422,
            "revoke",
        ),
        (
            json!({"target": {"kind": "individual_enrollment", "registration_id": "a"}, "delete_group": true, "reason": {"code": "lost"}}),
            422,
            "delete_group",
        ),
        (
            json!({"target": {"kind": "group_device", "group_id": "g", "registration_id": "a", "certificate_pem": "nope"}, "reason": {"code": "lost"}}),
            422,
            "target.certificate_pem",
        ),
        (
            json!({"dps": "other", "target": {"kind": "individual_enrollment", "registration_id": "a"}, "reason": {"code": "lost"}}),
            422,
            "dps",
        ),
        (
            json!({"target": {"kind": "individual_enrollment", "registration_id": "a"}, "reason": {"code": "other"}}),
            422,
            "reason.text",
        ),
        (
            json!({"target": {"kind": "individual_enrollment", "registration_id": "a"}, "reason": {"code": "lost"}, "ticket": {"system": "jira", "key": "K", "url": "javascript:x"}}),
            422,
            "ticket.url",
        ),
    ];
    for (body, status, field) in cases {
        let r = app.post("/v1/deprovisions", &body).await;
        assert_eq!(r.status().as_u16(), status, "{body}");
        assert_eq!(r.headers()["content-type"], "application/problem+json");
        let p: Value = r.json().await.unwrap();
        assert_problem(&p, status);
        assert!(
            p["errors"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["field"].as_str().unwrap().starts_with(field)),
            "{body} -> {p:#}"
        );
    }
    // Malformed JSON, wrong content type, oversized body, unknown route and method, bad id.
    let raw = |path: &str, ct: &'static str, body: Vec<u8>| {
        let req = app
            .http
            .post(app.url(path))
            .header("content-type", ct)
            .body(body);
        async move { req.send().await.unwrap() }
    };
    let r = raw(
        "/v1/deprovisions",
        "application/json",
        b"{not json".to_vec(),
    )
    .await;
    assert_eq!(r.status(), 400);
    assert_problem(&r.json().await.unwrap(), 400);
    let r = raw("/v1/deprovisions", "text/plain", b"{}".to_vec()).await;
    assert_eq!(r.status(), 415);
    assert_problem(&r.json().await.unwrap(), 415);
    let mut big =
        br#"{"target":{"kind":"individual_enrollment","registration_id":"a"},"reason":{"code":"lost","text":""#
            .to_vec();
    big.extend(std::iter::repeat_n(b'x', 1024 * 1024));
    big.extend(br#""}}"#);
    // The server answers 413 without reading the whole body and closes that connection, so the
    // oversized request goes on a client of its own rather than poisoning the shared pool.
    let r = reqwest::Client::new()
        .post(app.url("/v1/deprovisions"))
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert_problem(&r.json().await.unwrap(), 413);
    let r = app.http.get(app.url("/v2/nothing")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    assert_problem(&r.json().await.unwrap(), 404);
    let r = app
        .http
        .delete(app.url("/v1/deprovisions"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    assert_problem(&r.json().await.unwrap(), 405);
    let r = app
        .http
        .get(app.url("/v1/deprovisions/not-a-uuid"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_problem(&r.json().await.unwrap(), 400);
    let r = app
        .http
        .get(app.url(&format!("/v1/deprovisions/{}", uuid::Uuid::now_v7())))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let p: Value = r.json().await.unwrap();
    assert_problem(&p, 404);
    assert_eq!(p["type"], "urn:deprovisiond:problem:not-found");
    app.stop().await;
}

fn assert_problem(p: &Value, status: u16) {
    assert!(
        p["type"]
            .as_str()
            .unwrap()
            .starts_with("urn:deprovisiond:problem:"),
        "{p:#}"
    );
    assert!(!p["title"].as_str().unwrap().is_empty());
    assert_eq!(p["status"], status);
    assert!(!p["detail"].as_str().unwrap().is_empty());
}

async fn probes_answer(db: TestDb) {
    let app =
        TestApp::spawn_with(&db, Scripted::new(1), crate::support::fast_engine(), false).await;
    assert_eq!(app.get_json("/healthz").await, json!({"status": "ok"}));
    assert_eq!(app.get_json("/readyz").await, json!({"status": "ok"}));
    let doc = app.get_json("/openapi.json").await;
    assert_eq!(doc["openapi"], "3.1.0");
    let docs = app.http.get(app.url("/docs/")).send().await.unwrap();
    assert_eq!(docs.status(), 200);
    assert!(docs.text().await.unwrap().contains("swagger"));
    app.stop().await;
}

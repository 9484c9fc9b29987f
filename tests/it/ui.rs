//! The `/ui` dashboard over HTTP, on both stores: pages render from the store, hostile values stay text,
//! filters and paging work, the form previews before it creates, and cross-site writes are refused.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use deprovisiond::domain::job::DeprovisionRequest;
use deprovisiond::domain::lane::{Outcome, StepError};
use deprovisiond::domain::plan::{ItemStep, JobStep, Plan};
use deprovisiond::store::{ItemRecord, JobRecord, NewItem, StepEffects};
use deprovisiond::worker::{StepResult, Workflow};
use serde_json::{Value, json};

use azure_iot_sim::Simulator;
use azure_iot_sim::seed::seed_fleet;
use deprovisiond::app::WorkflowChoice;
use deprovisiond::azure::AzureClients;
use deprovisiond::demo::{azure_config_for, demo_fleet, demo_sim_config};

use crate::both_stores;
use crate::support::{Act, Scripted, TestApp, TestDb, group, individual};

both_stores!(
    pages_render_and_keep_hostile_values_as_text,
    job_list_filters_by_status,
    devices_page_and_filter_by_state,
    form_previews_then_confirms_once,
    whole_group_needs_its_id_typed_to_confirm,
    form_errors_come_back_escaped,
    cross_site_writes_are_refused,
    login_sets_a_strict_http_only_cookie,
    preview_shows_what_azure_holds_and_refusals_return_to_the_form,
);

/// Registration ids, device ids and hubs come from Azure: the dashboard must show them as text.
const HOSTILE_ID: &str = "<img src=x onerror=alert(1)>";
const HOSTILE_ERROR: &str = "<script>alert('step')</script>";

/// Discovers devices with markup in their ids and fails one with markup in its error.
struct HostileFleet;

#[async_trait]
impl Workflow for HostileFleet {
    fn plan(&self, _r: &DeprovisionRequest) -> Plan {
        Plan::new(
            vec![JobStep::Resolve, JobStep::Revoke, JobStep::Items],
            vec![ItemStep::Registry],
        )
        .expect("a valid plan")
    }

    async fn run_job_step(&self, _job: &JobRecord, step: JobStep) -> StepResult {
        let mut effects = StepEffects::default();
        if step == JobStep::Resolve {
            effects.new_items = vec![
                NewItem {
                    registration_id: HOSTILE_ID.into(),
                    device_id: Some("\"quoted\" & 'single'".into()),
                    hub: Some("<b>hub</b>.azure-devices.net".into()),
                    data: None,
                },
                NewItem {
                    registration_id: "plain-device".into(),
                    device_id: None,
                    hub: None,
                    data: None,
                },
            ];
        }
        StepResult {
            outcome: Outcome::Done,
            effects,
        }
    }

    async fn run_item_step(
        &self,
        _job: &JobRecord,
        item: &ItemRecord,
        _step: ItemStep,
    ) -> StepResult {
        if item.registration_id == HOSTILE_ID {
            Outcome::Fail(StepError {
                message: HOSTILE_ERROR.into(),
                code: Some("<i>code</i>".into()),
                tracking_id: None,
                http_status: Some(403),
            })
            .into()
        } else {
            Outcome::Done.into()
        }
    }
}

/// A client that shows redirects instead of following them, logged in as an admin through the session
/// cookie (as a browser is after `/ui/login`).
fn browser() -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::COOKIE,
        format!("deprovisiond_session={}", crate::support::ADMIN_KEY)
            .parse()
            .expect("cookie header"),
    );
    reqwest::Client::builder()
        .default_headers(headers)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

async fn page(app: &TestApp, path: &str) -> (u16, String) {
    let r = browser().get(app.url(path)).send().await.expect("request");
    let status = r.status().as_u16();
    let ct = r.headers()["content-type"].to_str().unwrap().to_string();
    assert!(ct.starts_with("text/html"), "{path}: {ct}");
    (status, r.text().await.expect("body"))
}

async fn html(app: &TestApp, path: &str) -> String {
    let (status, body) = page(app, path).await;
    assert_eq!(status, 200, "GET {path}: {body}");
    body
}

/// A form POST as a browser on the dashboard's own page sends it.
async fn post_form(app: &TestApp, path: &str, fields: &[(&str, &str)]) -> reqwest::Response {
    post_form_from(app, path, fields, Some(&app.base)).await
}

async fn post_form_from(
    app: &TestApp,
    path: &str,
    fields: &[(&str, &str)],
    origin: Option<&str>,
) -> reqwest::Response {
    let body = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(fields)
        .finish();
    let mut req = browser()
        .post(app.url(path))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body);
    if let Some(o) = origin {
        req = req.header("origin", o);
    }
    req.send().await.expect("request")
}

async fn create_and_finish(app: &TestApp, body: &Value) -> Value {
    let r = app.post("/v1/deprovisions", body).await;
    assert_eq!(r.status(), 202, "{body}");
    let job: Value = r.json().await.unwrap();
    let id = job["id"].as_str().unwrap().to_string();
    app.wait_job(&id, Duration::from_secs(60), |j| {
        !matches!(j["status"].as_str(), Some("queued" | "running"))
    })
    .await
}

async fn job_count(app: &TestApp) -> usize {
    app.get_json("/v1/deprovisions").await["items"]
        .as_array()
        .unwrap()
        .len()
}

/// The value of the hidden input `name` in a page (maud escapes `&`, `<`, `>` and `"` in attributes).
fn hidden(body: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = body
        .find(&marker)
        .unwrap_or_else(|| panic!("no {name} in {body}"))
        + marker.len();
    let end = start + body[start..].find('"').unwrap();
    body[start..end]
        .replace("&quot;", "\"")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

async fn pages_render_and_keep_hostile_values_as_text(db: TestDb) {
    let app = TestApp::spawn(&db, Arc::new(HostileFleet)).await;
    let mut body = group("fleet-a");
    body["reason"]["text"] = json!("<script>alert('reason')</script>");
    body["ticket"] = json!({"system": "jira", "key": "<u>OPS-1</u>", "url": "https://jira.example/browse/OPS-1?\"><script>alert('url')</script>"});
    let job = create_and_finish(&app, &body).await;
    let id = job["id"].as_str().unwrap();

    let list = html(&app, "/ui").await;
    assert!(list.contains(&format!("/ui/jobs/{id}")), "{list}");
    assert!(list.contains("fleet-a"));

    let r = browser()
        .get(app.url(&format!("/ui/jobs/{id}")))
        .send()
        .await
        .unwrap();
    let csp = r.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    assert_eq!(r.headers()["x-frame-options"], "DENY");
    let page = r.text().await.unwrap();
    for shown in [
        "&lt;img src=x onerror=alert(1)&gt;",
        "&lt;script&gt;alert('step')&lt;/script&gt;",
        "&lt;script&gt;alert('reason')&lt;/script&gt;",
        "&lt;b&gt;hub&lt;/b&gt;.azure-devices.net",
        "&quot;quoted&quot; &amp; 'single'",
        "&lt;u&gt;OPS-1&lt;/u&gt;",
        "plain-device",
    ] {
        assert!(page.contains(shown), "missing {shown} in {page}");
    }
    for raw in [
        "<img src=x",
        "<script>alert",
        "\"><script>",
        "<b>hub",
        "<u>OPS",
        "<i>code",
    ] {
        assert!(
            !page.contains(raw),
            "{raw} reached the page as markup: {page}"
        );
    }
    // The only scripts are the dashboard's own file.
    assert_eq!(page.matches("<script").count(), 1, "{page}");

    let (status, missing) = page_of(&app, "/ui/jobs/00000000-0000-0000-0000-000000000000").await;
    assert_eq!(status, 404, "{missing}");
    let (status, _) = page_of(&app, "/ui/jobs/%3Cscript%3E").await;
    assert_eq!(status, 404);
    let css = browser()
        .get(app.url("/ui/static/app.css"))
        .send()
        .await
        .unwrap();
    assert_eq!(css.status(), 200);
    assert!(
        css.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/css")
    );
    app.stop().await;
}

async fn page_of(app: &TestApp, path: &str) -> (u16, String) {
    page(app, path).await
}

async fn job_list_filters_by_status(db: TestDb) {
    let wf = Scripted::new(2);
    wf.script("revoke", "-", vec![Act::Fail]);
    let app = TestApp::spawn(&db, wf.clone()).await;
    let failed = create_and_finish(&app, &individual("dev-failing")).await;
    assert_eq!(failed["status"], "failed");
    let ok = create_and_finish(&app, &individual("dev-fine")).await;
    assert_eq!(ok["status"], "succeeded");
    let failed_id = failed["id"].as_str().unwrap();
    let ok_id = ok["id"].as_str().unwrap();

    let all = html(&app, "/ui").await;
    assert!(all.contains(failed_id) && all.contains(ok_id));
    let only_failed = html(&app, "/ui?status=failed").await;
    assert!(
        only_failed.contains(failed_id) && !only_failed.contains(ok_id),
        "{only_failed}"
    );
    assert!(
        only_failed.contains("<option value=\"failed\" selected>"),
        "{only_failed}"
    );
    let only_ok = html(&app, "/ui?status=succeeded").await;
    assert!(only_ok.contains(ok_id) && !only_ok.contains(failed_id));
    let none = html(&app, "/ui?status=cancelled").await;
    assert!(none.contains("No jobs with status cancelled"), "{none}");
    // A finished list does not refresh itself; progress bars are there.
    assert!(!all.contains("data-refresh") && all.contains("<progress"));

    let (status, body) = page(&app, "/ui?status=%3Cscript%3E").await;
    assert_eq!(status, 400);
    assert!(
        body.contains("&lt;script&gt;") && !body.contains("<script>"),
        "{body}"
    );
    let (status, _) = page(&app, "/ui?cursor=not-a-cursor").await;
    assert_eq!(status, 400);
    app.stop().await;
}

async fn devices_page_and_filter_by_state(db: TestDb) {
    let wf = Scripted::new(120);
    wf.script("registry", "dev-0007", vec![Act::Fail]);
    wf.script("registry", "dev-0093", vec![Act::Skip]);
    let app = TestApp::spawn(&db, wf.clone()).await;
    let job = create_and_finish(&app, &group("fleet-big")).await;
    let id = job["id"].as_str().unwrap();
    let base = format!("/ui/jobs/{id}");

    let first = html(&app, &base).await;
    // `>id<`: the device table's cells, not the timeline's details.
    assert!(first.contains(">dev-0000<") && first.contains(">dev-0049<"));
    assert!(!first.contains(">dev-0050<"), "a page holds 50 devices");
    // Per-hub progress: the double spreads devices over two hubs.
    assert!(first.contains("hub-0.azure-devices.net") && first.contains("hub-1.azure-devices.net"));
    assert!(
        first.contains("failed (1)") && first.contains("skipped (1)"),
        "{first}"
    );
    // The timeline.
    assert!(
        first.contains("step_failed") || first.contains("created"),
        "{first}"
    );

    let next = format!("{base}?cursor=49");
    assert!(
        first.contains(&format!("href=\"{next}#devices\"")),
        "{first}"
    );
    let second = html(&app, &next).await;
    assert!(second.contains(">dev-0050<") && second.contains(">dev-0099<"));
    assert!(!second.contains(">dev-0049<"));
    let last = html(&app, &format!("{base}?cursor=99")).await;
    assert!(last.contains(">dev-0119<") && !last.contains("More devices"));

    let failed = html(&app, &format!("{base}?state=failed")).await;
    assert!(failed.contains(">dev-0007<"), "{failed}");
    for other in [">dev-0000<", ">dev-0093<", ">dev-0119<"] {
        assert!(!failed.contains(other), "{other} is not failed");
    }
    assert!(failed.contains("scripted permanent failure"));
    let skipped = html(&app, &format!("{base}?state=skipped")).await;
    assert!(skipped.contains(">dev-0093<") && !skipped.contains(">dev-0007<"));
    // Filtered paging continues after the last device read.
    let succeeded = html(&app, &format!("{base}?state=succeeded")).await;
    // dev-0007 failed, so the first 50 succeeded devices end at dev-0050.
    assert!(
        succeeded.contains(">dev-0050<") && !succeeded.contains(">dev-0051<"),
        "{succeeded}"
    );
    assert!(!succeeded.contains(">dev-0007<"));
    let more = format!("{base}?state=succeeded&amp;cursor=50#devices");
    assert!(succeeded.contains(&more), "{succeeded}");
    let rest = html(&app, &format!("{base}?state=succeeded&cursor=50")).await;
    // dev-0093 was skipped: the second page runs from dev-0051 to dev-0101.
    assert!(
        rest.contains(">dev-0051<") && rest.contains(">dev-0101<"),
        "{rest}"
    );
    assert!(
        !rest.contains(">dev-0093<") && !rest.contains(">dev-0102<"),
        "{rest}"
    );

    let (status, _) = page(&app, &format!("{base}?state=waiting_items")).await;
    assert_eq!(
        status, 400,
        "waiting_items is a job state, not a device state"
    );
    let (status, _) = page(&app, &format!("{base}?cursor=-1")).await;
    assert_eq!(status, 400);
    app.stop().await;
}

fn filled(kind: &str, id_fields: &[(&'static str, &'static str)]) -> Vec<(&'static str, String)> {
    let mut f: Vec<(&'static str, String)> = vec![
        ("kind", kind.to_string()),
        ("revoke", "disable".into()),
        ("registry", "disable".into()),
        ("sweep", "assigned".into()),
        ("reason_code", "stolen".into()),
        ("reason_text", "from the dashboard".into()),
        ("ticket_system", "jira".into()),
        ("ticket_key", "OPS-77".into()),
    ];
    f.extend(id_fields.iter().map(|(k, v)| (*k, v.to_string())));
    f
}

fn pairs<'a>(f: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    f.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

async fn form_previews_then_confirms_once(db: TestDb) {
    let wf = Scripted::new(1);
    let app = TestApp::spawn(&db, wf.clone()).await;
    let form = html(&app, "/ui/new").await;
    assert!(form.contains("action=\"/ui/new/preview\""), "{form}");

    let fields = filled(
        "individual_enrollment",
        &[("registration_id", "dash-dev-1")],
    );
    let r = post_form(&app, "/ui/new/preview", &pairs(&fields)).await;
    assert_eq!(r.status(), 200);
    let confirm = r.text().await.unwrap();
    assert!(confirm.contains("Confirm and create the job"), "{confirm}");
    assert!(confirm.contains("dash-dev-1"));
    // This double has no Azure to read: the page says there is no preview rather than pretending.
    assert!(confirm.contains("No preview"), "{confirm}");
    assert_eq!(job_count(&app).await, 0, "a preview creates nothing");

    let request = hidden(&confirm, "request");
    let key = hidden(&confirm, "idempotency_key");
    let sent: Value = serde_json::from_str(&request).unwrap();
    assert_eq!(sent["target"]["registration_id"], "dash-dev-1");
    assert_eq!(sent["ticket"]["key"], "OPS-77");

    // "Change the request" goes back to the filled form and creates nothing.
    let r = post_form(
        &app,
        "/ui/new/create",
        &[
            ("request", &request),
            ("idempotency_key", &key),
            ("action", "edit"),
        ],
    )
    .await;
    assert_eq!(r.status(), 200);
    let again = r.text().await.unwrap();
    assert!(
        again.contains("value=\"dash-dev-1\"") && again.contains("value=\"OPS-77\""),
        "{again}"
    );
    assert_eq!(job_count(&app).await, 0);

    let confirm_fields = [
        ("request", request.as_str()),
        ("idempotency_key", &key),
        ("action", "create"),
    ];
    let r = post_form(&app, "/ui/new/create", &confirm_fields).await;
    assert_eq!(r.status(), 303);
    let location = r.headers()["location"].to_str().unwrap().to_string();
    let id = location
        .strip_prefix("/ui/jobs/")
        .expect("redirect to the job page");
    let job = app.wait_status(id, "succeeded").await;
    assert_eq!(job["target"]["registration_id"], "dash-dev-1");
    assert_eq!(job["reason"]["text"], "from the dashboard");
    // A second click on the same confirmation is the same job.
    let r = post_form(&app, "/ui/new/create", &confirm_fields).await;
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"].to_str().unwrap(), location);
    assert_eq!(job_count(&app).await, 1);
    let shown = html(&app, &location).await;
    assert!(shown.contains("dash-dev-1") && shown.contains("succeeded"));
    app.stop().await;
}

async fn whole_group_needs_its_id_typed_to_confirm(db: TestDb) {
    let wf = Scripted::new(3);
    let app = TestApp::spawn(&db, wf.clone()).await;
    let fields = filled("enrollment_group", &[("group_id", "fleet-g")]);
    let r = post_form(&app, "/ui/new/preview", &pairs(&fields)).await;
    assert_eq!(r.status(), 200);
    let confirm = r.text().await.unwrap();
    assert!(
        confirm.contains("act on every device of group"),
        "{confirm}"
    );
    assert!(confirm.contains("name=\"confirm_target\""));
    let request = hidden(&confirm, "request");
    let key = hidden(&confirm, "idempotency_key");
    for typed in ["", "fleet-other"] {
        let r = post_form(
            &app,
            "/ui/new/create",
            &[
                ("request", &request),
                ("idempotency_key", &key),
                ("confirm_target", typed),
                ("action", "create"),
            ],
        )
        .await;
        assert_eq!(r.status(), 422, "typed {typed:?}");
        assert!(
            r.text()
                .await
                .unwrap()
                .contains("type the group id to confirm")
        );
    }
    assert_eq!(job_count(&app).await, 0);
    let r = post_form(
        &app,
        "/ui/new/create",
        &[
            ("request", &request),
            ("idempotency_key", &key),
            ("confirm_target", "FLEET-G"),
            ("action", "create"),
        ],
    )
    .await;
    assert_eq!(r.status(), 303);
    assert_eq!(job_count(&app).await, 1);
    app.stop().await;
}

async fn form_errors_come_back_escaped(db: TestDb) {
    let app = TestApp::spawn(&db, Scripted::new(1)).await;
    let fields = filled(
        "individual_enrollment",
        &[
            ("registration_id", "<script>alert(1)</script>"),
            ("requested_by", "\"><b>me</b>"),
        ],
    );
    let r = post_form(&app, "/ui/new/preview", &pairs(&fields)).await;
    assert_eq!(r.status(), 422);
    let body = r.text().await.unwrap();
    assert!(body.contains("target.registration_id"), "{body}");
    assert!(
        body.contains("value=\"&lt;script&gt;alert(1)&lt;/script&gt;\""),
        "{body}"
    );
    assert!(
        body.contains("value=\"&quot;&gt;&lt;b&gt;me&lt;/b&gt;\""),
        "{body}"
    );
    assert!(!body.contains("<script>alert") && !body.contains("<b>me"));
    // Missing fields are named, not a 500.
    let r = post_form(&app, "/ui/new/preview", &[("kind", "group_device")]).await;
    assert_eq!(r.status(), 422);
    let body = r.text().await.unwrap();
    assert!(
        body.contains("target.group_id") && body.contains("reason.code"),
        "{body}"
    );
    // A confirmation that is not one the page made.
    let r = post_form(
        &app,
        "/ui/new/create",
        &[("request", "{not json"), ("idempotency_key", "k")],
    )
    .await;
    assert_eq!(r.status(), 400);
    assert_eq!(job_count(&app).await, 0);
    app.stop().await;
}

async fn cross_site_writes_are_refused(db: TestDb) {
    let app = TestApp::spawn(&db, Scripted::new(1)).await;
    let request = json!({
        "target": {"kind": "individual_enrollment", "registration_id": "victim-1"},
        "reason": {"code": "stolen"}
    })
    .to_string();
    let fields = [
        ("request", request.as_str()),
        ("idempotency_key", "ui-x"),
        ("action", "create"),
    ];
    for origin in [Some("http://evil.example"), Some("null"), None] {
        let r = post_form_from(&app, "/ui/new/create", &fields, origin).await;
        assert_eq!(r.status(), 403, "origin {origin:?}");
        let body = r.text().await.unwrap();
        assert!(body.contains("Cross-site request refused"), "{body}");
    }
    // Another port of the same host is another origin.
    let other_port = app
        .base
        .rsplit_once(':')
        .map(|(h, p)| format!("{h}:{}", p.parse::<u16>().unwrap() ^ 1))
        .unwrap();
    let r = post_form_from(&app, "/ui/new/create", &fields, Some(&other_port)).await;
    assert_eq!(r.status(), 403);
    let r = post_form_from(
        &app,
        "/ui/login",
        &[("token", "stolen")],
        Some("http://evil.example"),
    )
    .await;
    assert_eq!(r.status(), 403);
    assert!(r.headers().get("set-cookie").is_none());
    assert_eq!(
        job_count(&app).await,
        0,
        "no cross-site request created a job"
    );
    // Without Origin, a same-origin Referer is accepted (older browsers, some privacy settings).
    let body = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(fields)
        .finish();
    let r = browser()
        .post(app.url("/ui/new/create"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("referer", app.url("/ui/new/preview"))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(job_count(&app).await, 1);
    app.stop().await;
}

async fn login_sets_a_strict_http_only_cookie(db: TestDb) {
    let app = TestApp::spawn(&db, Scripted::new(1)).await;
    let login = html(&app, "/ui/login").await;
    assert!(
        login.contains("type=\"password\" name=\"token\""),
        "{login}"
    );
    let r = post_form(&app, "/ui/login", &[("token", "dpk_test.abc-123")]).await;
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/ui");
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_string();
    assert_eq!(
        cookie,
        "deprovisiond_session=dpk_test.abc-123; Path=/ui; HttpOnly; SameSite=Strict"
    );

    let body = "token=dpk_test.abc-123";
    let r = browser()
        .post(app.url("/ui/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("origin", &app.base)
        .header("x-forwarded-proto", "https")
        .body(body)
        .send()
        .await
        .unwrap();
    assert!(
        r.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .ends_with("; Secure"),
        "behind a TLS proxy"
    );

    let r = post_form(&app, "/ui/login", &[("token", "two words; x=1")]).await;
    assert_eq!(r.status(), 422);
    assert!(r.headers().get("set-cookie").is_none());

    let r = post_form(&app, "/ui/logout", &[]).await;
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/ui/login");
    let cleared = r.headers()["set-cookie"].to_str().unwrap();
    assert!(
        cleared.starts_with("deprovisiond_session=;") && cleared.contains("Max-Age=0"),
        "{cleared}"
    );
    app.stop().await;
}

async fn preview_shows_what_azure_holds_and_refusals_return_to_the_form(db: TestDb) {
    let sim = Simulator::start(demo_sim_config())
        .await
        .expect("simulator starts");
    seed_fleet(sim.state(), &demo_fleet()).expect("fleet seeds");
    let clients = AzureClients::new(&azure_config_for(&sim).expect("config")).expect("clients");
    let app = TestApp::spawn_choice(
        &db,
        WorkflowChoice::Azure(Arc::new(clients)),
        crate::support::fast_engine(),
        true,
    )
    .await;

    let fields = filled("enrollment_group", &[("group_id", "fleet-sk")]);
    let r = post_form(&app, "/ui/new/preview", &pairs(&fields)).await;
    assert_eq!(r.status(), 200);
    let confirm = r.text().await.unwrap();
    for shown in [
        "exists",
        "demo-hub-1.azure-devices.net",
        "demo-hub-2.azure-devices.net",
        "group_kept",
        "<dd>50</dd>",
    ] {
        assert!(confirm.contains(shown), "missing {shown} in {confirm}");
    }
    assert!(!confirm.contains("No preview"));
    assert_eq!(job_count(&app).await, 0, "the preview changed nothing");
    let r = post_form(
        &app,
        "/ui/new/create",
        &[
            ("request", &hidden(&confirm, "request")),
            ("idempotency_key", &hidden(&confirm, "idempotency_key")),
            ("confirm_target", "fleet-sk"),
            ("action", "create"),
        ],
    )
    .await;
    assert_eq!(r.status(), 303);
    let location = r.headers()["location"].to_str().unwrap().to_string();
    let id = location.strip_prefix("/ui/jobs/").unwrap();
    app.wait_job(id, Duration::from_secs(60), |j| {
        !matches!(j["status"].as_str(), Some("queued" | "running"))
    })
    .await;
    let page = html(&app, &location).await;
    assert!(page.contains("succeeded (50)"), "{page}");
    assert!(
        page.contains("<code>demo-hub-1.azure-devices.net</code>"),
        "per-hub row: {page}"
    );

    // A target DPS does not have: the preview says so (as the API's dry run does), and confirming it comes
    // back to the form with admission's reason and the values kept.
    let fields = filled(
        "individual_enrollment",
        &[("registration_id", "no-such-device")],
    );
    let r = post_form(&app, "/ui/new/preview", &pairs(&fields)).await;
    assert_eq!(r.status(), 200);
    let confirm = r.text().await.unwrap();
    assert!(confirm.contains("not found"), "{confirm}");
    let r = post_form(
        &app,
        "/ui/new/create",
        &[
            ("request", &hidden(&confirm, "request")),
            ("idempotency_key", &hidden(&confirm, "idempotency_key")),
            ("action", "create"),
        ],
    )
    .await;
    assert_eq!(r.status(), 422);
    let body = r.text().await.unwrap();
    assert!(
        body.contains("<code>target") && body.contains("value=\"no-such-device\""),
        "{body}"
    );
    assert_eq!(job_count(&app).await, 1);
    app.stop().await;
    sim.shutdown().await;
}

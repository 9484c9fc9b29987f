//! The dashboard's HTML. maud escapes every `(value)` it splices in, so data from the database or Azure
//! (registration ids, reasons, error messages) cannot become markup; nothing here uses `PreEscaped`.

use std::collections::BTreeMap;

use axum::http::StatusCode;
use maud::{DOCTYPE, Markup, html};

use super::form::JobForm;
use super::pages::{DEVICE_STATES, HUB_SCAN_LIMIT, HubCounts, REFRESH_SECONDS};
use crate::domain::job::{
    DeprovisionRequest, FieldError, JobStatus, RegistryAction, RevokeAction, Target,
};
use crate::domain::lane::LaneState;
use crate::domain::settle::ItemCounts;
use crate::http::views::{DeviceView, EventView, JobView, Progress};
use crate::workflow::preview::Preview;

/// A whole page: `refresh` makes it reload itself (script, or `<noscript>` meta refresh) while work runs.
fn layout(title: &str, refresh: bool, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · deprovisiond" }
                link rel="icon" type="image/svg+xml" href="/ui/static/favicon.svg";
                link rel="stylesheet" href="/ui/static/app.css";
                script src="/ui/static/app.js" defer {}
                @if refresh {
                    noscript { meta http-equiv="refresh" content=(REFRESH_SECONDS); }
                }
            }
            body data-refresh=[refresh.then_some(REFRESH_SECONDS)] {
                header.top {
                    a.brand href="/ui" { "deprovisiond" }
                    nav {
                        a href="/ui" { "Jobs" }
                        a href="/ui/new" { "New job" }
                        a href="/docs" { "API" }
                    }
                    form.logout method="post" action="/ui/logout" {
                        button.link type="submit" { "Log out" }
                    }
                }
                main #live {
                    @if refresh {
                        p.live-note { "Updating every " (REFRESH_SECONDS) " s while work runs." }
                    }
                    (body)
                }
            }
        }
    }
}

/// A page saying what went wrong.
pub fn error_page(status: StatusCode, title: &str, detail: &str, job_id: Option<&str>) -> Markup {
    layout(
        title,
        false,
        html! {
            h1 { (title) }
            p.problem role="alert" { (detail) }
            @if let Some(id) = job_id {
                p { "See " a href={ "/ui/jobs/" (id) } { "job " (id) } "." }
            }
            p.muted { "HTTP " (status.as_u16()) " · " a href="/ui" { "back to the jobs" } }
        },
    )
}

/// The login form.
pub fn login_page(problem: Option<&str>) -> Markup {
    layout(
        "Log in",
        false,
        html! {
            h1 { "Log in" }
            @if let Some(p) = problem { p.problem role="alert" { (p) } }
            form.card method="post" action="/ui/login" {
                label for="token" { "API key or token" }
                input #token type="password" name="token" required autocomplete="off" autofocus;
                p.muted {
                    "Kept in an HttpOnly cookie for this browser session, sent only to /ui. "
                    "What you may do is what the key's role allows."
                }
                button type="submit" { "Log in" }
            }
        },
    )
}

fn finished(p: &Progress) -> u64 {
    p.registry_done + p.skipped + p.failed + p.cancelled
}

fn status_badge(s: JobStatus) -> Markup {
    html! { span class={ "badge s-" (s.as_str()) } { (s.as_str()) } }
}

fn state_badge(s: LaneState) -> Markup {
    html! { span class={ "badge s-" (s.as_str()) } { (s.as_str()) } }
}

fn target_text(t: &Target) -> Markup {
    html! {
        @match t {
            Target::IndividualEnrollment(i) => { "enrollment " code { (i.registration_id) } }
            Target::EnrollmentGroup(g) => { "whole group " code { (g.group_id) } }
            Target::GroupDevice(d) => { "device " code { (d.registration_id) } " of group " code { (d.group_id) } }
        }
    }
}

/// A progress bar of finished devices, with the counts in words.
fn progress(job: &JobView) -> Markup {
    let p = &job.progress;
    let done = finished(p);
    html! {
        div.progress {
            @if p.total > 0 {
                progress max=(p.total) value=(done) { (done) "/" (p.total) }
                span.counts {
                    (done) " of " (p.total) " done"
                    @if p.failed > 0 { " · " span.bad { (p.failed) " failed" } }
                    @if p.skipped > 0 { " · " (p.skipped) " skipped" }
                    @if p.running > 0 { " · " (p.running) " running" }
                }
            } @else if job.status == JobStatus::Succeeded {
                progress max="1" value="1" { "done" }
                span.counts { "done" }
            } @else {
                progress max="1" value="0" { "no devices yet" }
                span.counts { "no devices yet" }
            }
        }
    }
}

fn query_string(pairs: &[(&str, &str)]) -> String {
    let mut s = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        if !v.is_empty() {
            s.append_pair(k, v);
        }
    }
    let s = s.finish();
    if s.is_empty() { s } else { format!("?{s}") }
}

/// What the jobs list shows.
pub struct JobsPage<'a> {
    /// This page's jobs.
    pub jobs: &'a [JobView],
    /// The status filter.
    pub status: Option<JobStatus>,
    /// Cursor of the next page.
    pub next_cursor: Option<&'a str>,
    /// Whether this is the first page.
    pub first_page: bool,
}

const JOB_STATUSES: [JobStatus; 5] = [
    JobStatus::Queued,
    JobStatus::Running,
    JobStatus::Succeeded,
    JobStatus::Failed,
    JobStatus::Cancelled,
];

/// The jobs list.
pub fn jobs_page(p: &JobsPage) -> Markup {
    let refresh = p.jobs.iter().any(|j| j.status.is_active());
    let status = p.status.map(JobStatus::as_str).unwrap_or("");
    layout(
        "Jobs",
        refresh,
        html! {
            div.head {
                h1 { "Jobs" }
                a.button href="/ui/new" { "New job" }
            }
            form.filters method="get" action="/ui" {
                label for="status" { "Status" }
                select #status name="status" data-autosubmit {
                    option value="" selected[status.is_empty()] { "any" }
                    @for s in JOB_STATUSES {
                        option value=(s.as_str()) selected[status == s.as_str()] { (s.as_str()) }
                    }
                }
                button type="submit" { "Filter" }
            }
            @if p.jobs.is_empty() {
                p.empty { "No jobs" @if !status.is_empty() { " with status " (status) } "." }
            } @else {
                table.jobs {
                    thead { tr { th { "Job" } th { "Target" } th { "DPS" } th { "Status" } th { "Progress" } th { "Created" } } }
                    tbody {
                        @for j in p.jobs {
                            tr {
                                td { a href={ "/ui/jobs/" (j.id) } { code { (j.id.get(..8).unwrap_or(&j.id)) } } }
                                td { (target_text(&j.target)) }
                                td { (j.dps) }
                                td { (status_badge(j.status)) @if j.cancel_requested && j.status.is_active() { " cancelling" } }
                                td { (progress(j)) }
                                td { time datetime=(j.created_at) { (j.created_at) } }
                            }
                        }
                    }
                }
            }
            nav.pager {
                @if !p.first_page { a href={ "/ui" (query_string(&[("status", status)])) } { "Newest" } }
                @if let Some(c) = p.next_cursor {
                    a href={ "/ui" (query_string(&[("status", status), ("cursor", c)])) } { "Older jobs" }
                }
            }
        },
    )
}

/// What the job page shows.
pub struct JobPage<'a> {
    /// The job.
    pub job: &'a JobView,
    /// Its devices by state.
    pub counts: &'a ItemCounts,
    /// The device state filter.
    pub filter: Option<LaneState>,
    /// This page of devices.
    pub devices: &'a [DeviceView],
    /// Where this page of devices starts.
    pub devices_cursor: Option<i64>,
    /// Where the next page of devices starts.
    pub next_devices: Option<i64>,
    /// Devices per hub.
    pub hubs: &'a BTreeMap<Option<String>, HubCounts>,
    /// Whether `hubs` covers every device.
    pub hubs_complete: bool,
    /// This page of the timeline.
    pub events: &'a [EventView],
    /// Where this page of events starts.
    pub events_cursor: Option<i64>,
    /// Cursor of the next page of events.
    pub next_events: Option<&'a str>,
}

fn count_of(c: &ItemCounts, s: LaneState) -> u64 {
    match s {
        LaneState::Waiting => c.waiting,
        LaneState::Pending => c.pending,
        LaneState::Running => c.running,
        LaneState::Succeeded => c.succeeded,
        LaneState::Skipped => c.skipped,
        LaneState::Failed => c.failed,
        LaneState::Cancelled => c.cancelled,
        LaneState::WaitingItems => 0,
    }
}

/// A link to `http(s)` only: a ticket URL is caller input, and a `javascript:` link would run on click.
fn safe_link(url: &str) -> Option<&str> {
    let lower = url.to_ascii_lowercase();
    (lower.starts_with("https://") || lower.starts_with("http://")).then_some(url)
}

/// One job.
pub fn job_page(p: &JobPage) -> Markup {
    let j = p.job;
    let state = p.filter.map(LaneState::as_str).unwrap_or("");
    let base = format!("/ui/jobs/{}", j.id);
    let events_from = p.events_cursor.map(|c| c.to_string()).unwrap_or_default();
    let devices_from = p.devices_cursor.map(|c| c.to_string()).unwrap_or_default();
    layout(
        &format!("Job {}", j.id),
        j.status.is_active(),
        html! {
            p.crumbs { a href="/ui" { "Jobs" } " / " code { (j.id) } }
            div.head {
                h1 { (target_text(&j.target)) }
                (status_badge(j.status))
            }
            (progress(j))
            @if j.cancel_requested && j.status.is_active() { p.warn { "A cancel was asked for; the job stops after the calls in flight." } }
            @if let Some(e) = &j.last_error {
                p.problem role="alert" {
                    "Last error: " (e.message)
                    @if let Some(c) = &e.code { " (Azure code " code { (c) } ")" }
                    @if let Some(t) = &e.tracking_id { " tracking id " code { (t) } }
                }
            }
            section.grid {
                dl.facts {
                    dt { "DPS" } dd { (j.dps) }
                    dt { "Revoke at DPS" } dd { (revoke_words(j.revoke)) }
                    dt { "Hub identity" } dd { (registry_words(j.registry)) }
                    dt { "Sweep" } dd { (serde_name(&j.sweep)) }
                    @if j.delete_registrations { dt { "Registration records" } dd { "deleted at the end" } }
                    @if j.delete_group { dt { "Group" } dd { "deleted last" @if j.force { " (forced)" } } }
                    dt { "Reason" } dd { (j.reason.code.as_str()) @if let Some(t) = &j.reason.text { ": " (t) } }
                    @if let Some(t) = &j.ticket {
                        dt { "Ticket" }
                        dd {
                            (t.system) " "
                            @match t.url.as_deref().and_then(safe_link) {
                                Some(u) => { a href=(u) rel="noreferrer noopener" { (t.key) } }
                                None => { (t.key) }
                            }
                        }
                    }
                    @if let Some(r) = &j.requested_by { dt { "Requested by" } dd { (r) } }
                    dt { "Created" } dd { (j.created_at) }
                    @if let Some(t) = &j.started_at { dt { "Started" } dd { (t) } }
                    @if let Some(t) = &j.finished_at { dt { "Finished" } dd { (t) } }
                }
                div {
                    h2 { "Steps" }
                    ol.steps {
                        @for s in &j.steps {
                            li { (s.name) " " (state_badge(s.state)) @if let Some(a) = s.attempt { " attempt " (a) } }
                        }
                    }
                }
            }
            section #hubs {
                h2 { "Progress per hub" }
                @if p.hubs.is_empty() {
                    p.empty { "No devices yet." }
                } @else {
                    table {
                        thead { tr { th { "Hub" } th { "Devices" } th { "Progress" } th { "Done" } th { "Skipped" } th { "Failed" } th { "Open" } } }
                        tbody {
                            @for (hub, c) in p.hubs {
                                tr {
                                    td { @match hub { Some(h) => { code { (h) } } None => { span.muted { "not known yet" } } } }
                                    td { (c.total) }
                                    td { progress max=(c.total) value=(c.succeeded + c.skipped + c.failed + c.cancelled) {} }
                                    td { (c.succeeded) }
                                    td { (c.skipped) }
                                    td class=[(c.failed > 0).then_some("bad")] { (c.failed) }
                                    td { (c.open) }
                                }
                            }
                        }
                    }
                    @if !p.hubs_complete { p.muted { "Counted over the job's first " (HUB_SCAN_LIMIT) " devices." } }
                }
            }
            section #devices {
                h2 { "Devices" }
                form.filters method="get" action=(base) {
                    label for="state" { "State" }
                    select #state name="state" data-autosubmit {
                        option value="" selected[state.is_empty()] { "any (" (p.counts.total) ")" }
                        @for s in DEVICE_STATES {
                            option value=(s.as_str()) selected[state == s.as_str()] { (s.as_str()) " (" (count_of(p.counts, s)) ")" }
                        }
                    }
                    button type="submit" { "Filter" }
                }
                @if p.devices.is_empty() {
                    p.empty { "No devices" @if !state.is_empty() { " in state " (state) } @if p.devices_cursor.is_some() { " after this point" } "." }
                } @else {
                    table.devices {
                        thead { tr { th { "#" } th { "Registration id" } th { "Device id" } th { "Hub" } th { "State" } th { "Step" } th { "Note" } } }
                        tbody {
                            @for d in p.devices {
                                tr {
                                    td { (d.seq) }
                                    td { code { (d.registration_id) } }
                                    td { @if let Some(id) = &d.device_id { code { (id) } } }
                                    td { @if let Some(h) = &d.hub { (h) } }
                                    td { (state_badge(d.state)) }
                                    td { @if let Some(s) = &d.step { (s) @if d.attempt > 1 { " (attempt " (d.attempt) ")" } } }
                                    td {
                                        @if let Some(r) = &d.skip_reason { (r) }
                                        @if let Some(e) = &d.last_error { span.bad { (e.message) } }
                                    }
                                }
                            }
                        }
                    }
                }
                nav.pager {
                    @if p.devices_cursor.is_some() {
                        a href={ (base) (query_string(&[("state", state), ("events", &events_from)])) "#devices" } { "First devices" }
                    }
                    @if let Some(n) = p.next_devices {
                        a href={ (base) (query_string(&[("state", state), ("cursor", &n.to_string()), ("events", &events_from)])) "#devices" } { "More devices" }
                    }
                }
            }
            section #timeline {
                h2 { "Timeline" }
                @if p.events.is_empty() {
                    p.empty { "No events" @if p.events_cursor.is_some() { " after this point" } "." }
                } @else {
                    table.events {
                        thead { tr { th { "When" } th { "Event" } th { "Step" } th { "Message" } th { "Details" } } }
                        tbody {
                            @for e in p.events {
                                tr class={ "ev-" (e.kind) } {
                                    td { time datetime=(e.at) { (e.at) } }
                                    td { (e.kind) }
                                    td { @if let Some(s) = &e.step { (s) @if let Some(a) = e.attempt { " #" (a) } } }
                                    td { @if let Some(m) = &e.message { (m) } }
                                    td { @if let Some(d) = &e.detail { code.detail { (d.to_string()) } } }
                                }
                            }
                        }
                    }
                }
                nav.pager {
                    @if p.events_cursor.is_some() {
                        a href={ (base) (query_string(&[("state", state), ("cursor", &devices_from)])) "#timeline" } { "First events" }
                    }
                    @if let Some(n) = p.next_events {
                        a href={ (base) (query_string(&[("state", state), ("cursor", &devices_from), ("events", n)])) "#timeline" } { "Later events" }
                    }
                }
            }
        },
    )
}

fn serde_name(v: &impl serde::Serialize) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

fn revoke_words(r: RevokeAction) -> &'static str {
    match r {
        RevokeAction::Disable => "disable the enrollment (reversible)",
        RevokeAction::Delete => "delete the enrollment (permanent)",
    }
}

fn registry_words(r: RegistryAction) -> &'static str {
    match r {
        RegistryAction::Disable => "disable (reversible)",
        RegistryAction::Delete => "delete (permanent)",
    }
}

const REASONS: [&str; 7] = [
    "lost",
    "stolen",
    "sold",
    "compromised",
    "moved",
    "decommissioned",
    "other",
];

fn errors_for<'a>(
    errors: &'a [FieldError],
    prefix: &'a str,
) -> impl Iterator<Item = &'a FieldError> {
    errors
        .iter()
        .filter(move |e| e.field == prefix || e.field.starts_with(&format!("{prefix}.")))
}

/// A text input with its label and the errors of its field.
fn text_field(
    id: &str,
    label: &str,
    value: &str,
    field: &str,
    errors: &[FieldError],
    kinds: Option<&str>,
) -> Markup {
    let mine: Vec<&FieldError> = errors_for(errors, field).collect();
    html! {
        div.field data-kinds=[kinds] {
            label for=(id) { (label) }
            input id=(id) name=(id) type="text" value=(value) aria-invalid=[(!mine.is_empty()).then_some("true")];
            @for e in mine { span.field-error { (e.message) } }
        }
    }
}

fn radio(name: &str, value: &str, current: &str, label: &str) -> Markup {
    html! {
        label.choice {
            input type="radio" name=(name) value=(value) checked[current == value];
            " " (label)
        }
    }
}

/// The new-job form, filled with `f`, with `errors` next to their fields and a `problem` above them.
pub fn form_page(
    dps_names: &[String],
    f: &JobForm,
    errors: &[FieldError],
    problem: Option<&str>,
) -> Markup {
    let placed = [
        "target",
        "reason",
        "ticket",
        "dps",
        "revoke",
        "registry",
        "sweep",
        "requested_by",
    ];
    let unplaced: Vec<&FieldError> = errors
        .iter()
        .filter(|e| {
            !placed
                .iter()
                .any(|p| e.field == *p || e.field.starts_with(&format!("{p}.")))
        })
        .collect();
    layout(
        "New job",
        false,
        html! {
            h1 { "New deprovisioning job" }
            p.muted { "Nothing happens yet: the next page previews what the job would find and do, and asks you to confirm." }
            @if let Some(p) = problem { p.problem role="alert" { (p) } }
            @if !errors.is_empty() {
                div.problem role="alert" {
                    "The request is not valid:"
                    ul { @for e in errors { li { code { (e.field) } " " (e.message) } } }
                }
            }
            form.card #job-form method="post" action="/ui/new/preview" {
                @if dps_names.len() > 1 {
                    div.field {
                        label for="dps" { "DPS instance" }
                        select #dps name="dps" required {
                            option value="" { "choose…" }
                            @for d in dps_names { option value=(d) selected[f.dps == *d] { (d) } }
                        }
                        @for e in errors_for(errors, "dps") { span.field-error { (e.message) } }
                    }
                } @else if let Some(d) = dps_names.first() {
                    p { "DPS instance: " code { (d) } }
                }
                fieldset {
                    legend { "What to deprovision" }
                    div.field {
                        label for="kind" { "Target" }
                        select #kind name="kind" {
                            option value="individual_enrollment" selected[f.kind == "individual_enrollment"] { "One individual enrollment" }
                            option value="group_device" selected[f.kind == "group_device"] { "One device of an enrollment group" }
                            option value="enrollment_group" selected[f.kind == "enrollment_group"] { "A whole enrollment group (every device)" }
                        }
                        @for e in errors.iter().filter(|e| e.field == "target" || e.field == "target.kind") { span.field-error { (e.message) } }
                    }
                    (text_field("registration_id", "Registration id", &f.registration_id, "target.registration_id", errors, Some("individual_enrollment group_device")))
                    (text_field("group_id", "Group id", &f.group_id, "target.group_id", errors, Some("enrollment_group group_device")))
                    div.field data-kinds="group_device" {
                        label for="certificate_pem" { "Leaf certificate (PEM, X.509 group devices)" }
                        textarea #certificate_pem name="certificate_pem" rows="4" { (f.certificate_pem) }
                        @for e in errors_for(errors, "target.certificate_pem") { span.field-error { (e.message) } }
                    }
                }
                fieldset {
                    legend { "What to do" }
                    div.field data-kinds="individual_enrollment group_device" {
                        span.label { "Revoke at DPS" }
                        (radio("revoke", "disable", &f.revoke, "disable the enrollment (reversible)"))
                        (radio("revoke", "delete", &f.revoke, "delete the enrollment (permanent, individual enrollments only)"))
                        @for e in errors_for(errors, "revoke") { span.field-error { (e.message) } }
                    }
                    div.field {
                        span.label { "Hub identity" }
                        (radio("registry", "disable", &f.registry, "disable (reversible)"))
                        (radio("registry", "delete", &f.registry, "delete (permanent)"))
                        @for e in errors_for(errors, "registry") { span.field-error { (e.message) } }
                    }
                    div.field {
                        span.label { "Hubs checked" }
                        (radio("sweep", "assigned", &f.sweep, "the assigned hub"))
                        (radio("sweep", "all_hubs", &f.sweep, "every configured hub"))
                    }
                    div.field data-kinds="enrollment_group" {
                        label.choice { input type="checkbox" name="delete_registrations" checked[JobForm::checked(&f.delete_registrations)]; " delete the group's registration records at the end" }
                        label.choice { input type="checkbox" name="delete_group" checked[JobForm::checked(&f.delete_group)]; " delete the group itself, last" }
                    }
                    div.field data-kinds="enrollment_group group_device" {
                        label.choice { input type="checkbox" name="force" checked[JobForm::checked(&f.force)]; " force (override the higher-chain or certificate check)" }
                    }
                }
                fieldset {
                    legend { "Why" }
                    div.field {
                        label for="reason_code" { "Reason" }
                        select #reason_code name="reason_code" required {
                            option value="" { "choose…" }
                            @for r in REASONS { option value=(r) selected[f.reason_code == r] { (r) } }
                        }
                        @for e in errors_for(errors, "reason.code") { span.field-error { (e.message) } }
                    }
                    (text_field("reason_text", "Details", &f.reason_text, "reason.text", errors, None))
                    (text_field("ticket_system", "Ticket system", &f.ticket_system, "ticket.system", errors, None))
                    (text_field("ticket_key", "Ticket key", &f.ticket_key, "ticket.key", errors, None))
                    (text_field("ticket_url", "Ticket link", &f.ticket_url, "ticket.url", errors, None))
                    (text_field("requested_by", "Requested by", &f.requested_by, "requested_by", errors, None))
                }
                @for e in unplaced { p.field-error { code { (e.field) } " " (e.message) } }
                button type="submit" { "Preview" }
            }
        },
    )
}

/// What the confirmation page shows.
pub struct ConfirmPage<'a> {
    /// The request to create.
    pub request: &'a DeprovisionRequest,
    /// Its preview, when the workflow can make one.
    pub preview: Option<&'a Preview>,
    /// Why there is no preview.
    pub no_preview: Option<&'a str>,
    /// The key the confirm button posts, so a double submit creates one job.
    pub idempotency_key: &'a str,
    /// Why the last confirmation was refused.
    pub problem: Option<&'a str>,
}

/// The preview of a request and the button that creates it.
pub fn confirm_page(c: &ConfirmPage) -> Markup {
    let r = c.request;
    // Serialising a parsed request cannot fail: it is plain data.
    let json = serde_json::to_string(r).unwrap_or_default();
    let group = match &r.target {
        Target::EnrollmentGroup(g) => Some(g.group_id.as_str()),
        _ => None,
    };
    let permanent = r.revoke == RevokeAction::Delete
        || r.registry == RegistryAction::Delete
        || r.delete_group
        || r.delete_registrations;
    layout(
        "Confirm job",
        false,
        html! {
            h1 { "Confirm: " (target_text(&r.target)) }
            @if let Some(p) = c.problem { p.problem role="alert" { (p) } }
            div.danger {
                p { strong { "This job will:" } }
                ul {
                    @match &r.target {
                        Target::EnrollmentGroup(g) => { li { strong { "act on every device of group " code { (g.group_id) } } ": disable the group at DPS, then each device's hub identity" } }
                        Target::IndividualEnrollment(_) => { li { (revoke_words(r.revoke)) " at DPS" } }
                        Target::GroupDevice(_) => { li { "block this one device at DPS with a disabled individual enrollment; the group's other devices are untouched" } }
                    }
                    li { "hub identity: " (registry_words(r.registry)) }
                    @if r.delete_registrations { li { "delete the group's registration records" } }
                    @if r.delete_group { li { "delete the enrollment group" @if r.force { " even if a higher group would re-admit its devices (forced)" } } }
                }
                @if permanent { p.bad { "Some of this cannot be undone." } }
            }
            @if let Some(p) = c.preview { (preview_section(p)) }
            @if let Some(why) = c.no_preview { p.warn { "No preview: " (why) } }
            form.card #confirm-form method="post" action="/ui/new/create" {
                input type="hidden" name="request" value=(json);
                input type="hidden" name="idempotency_key" value=(c.idempotency_key);
                @if let Some(g) = group {
                    div.field {
                        label for="confirm_target" { "Type the group id " code { (g) } " to confirm" }
                        input #confirm_target type="text" name="confirm_target" required autocomplete="off";
                    }
                }
                div.actions {
                    button.danger-button type="submit" name="action" value="create" { "Confirm and create the job" }
                    button.secondary type="submit" name="action" value="edit" formnovalidate { "Change the request" }
                }
            }
        },
    )
}

fn preview_section(p: &Preview) -> Markup {
    html! {
        section #preview {
            h2 { "Preview" }
            dl.facts {
                dt { "Found at DPS" }
                dd {
                    (p.found.kind) " " code { (p.found.id) } ": "
                    @if p.found.exists { "exists" } @else { span.bad { "not found" } }
                    @if let Some(a) = &p.found.attestation { ", " (a) }
                    @if let Some(s) = &p.found.provisioning_status { ", " (s) }
                }
                dt { "Devices" }
                dd { (p.devices.total) @if p.devices.truncated { "+ (count stopped at the preview limit)" } }
                @if let Some(s) = p.estimated_seconds { dt { "Estimated duration" } dd { "at least " (format!("{s:.0}")) " s" } }
            }
            @if !p.warnings.is_empty() {
                div.warn {
                    strong { "Warnings" }
                    ul { @for w in &p.warnings { li { code { (w.code) } " " (w.message) } } }
                }
            }
            @if !p.hubs.is_empty() {
                table {
                    thead { tr { th { "Hub" } th { "Devices" } th { "Registry operations" } th { "Credentials" } th { "Estimate" } } }
                    tbody {
                        @for h in &p.hubs {
                            tr {
                                td { code { (h.hub) } }
                                td { (h.devices) }
                                td { (h.registry_operations) }
                                td { @if h.credentials { "yes" } @else { span.bad { "missing" } } }
                                td { @if let Some(s) = h.estimated_seconds { (format!("{s:.0}")) " s" } }
                            }
                        }
                    }
                }
            }
            h3 { "Steps" }
            ol.steps { @for s in &p.steps { li { strong { (s.name) } ": " (s.action) } } }
        }
    }
}

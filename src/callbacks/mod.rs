//! Completion callbacks: when a job that carries a callback reaches a final status, POST a signed JSON summary
//! to its destination (or comment on its Jira issue), retrying with backoff; every attempt goes into the job's
//! timeline.
//!
//! The sender polls the outbox ([`crate::store::DueCallback`]) for callbacks whose job has finished since their
//! last delivery, rather than being told by the engine: the engine stays unaware of callbacks, and a job that
//! finishes while no sender runs (a crash, a replica without webhooks) is still reported when one starts.
//! Delivery is at least once: receivers dedupe on `X-Deprovisiond-Delivery`.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::domain::backoff::BackoffPolicy;
use crate::domain::clock::{Millis, SharedClock};
use crate::http::views::JobView;
use crate::http::webhooks::WebhookConfig;
use crate::http::webhooks::signature::sign_generic;
use crate::store::{AttemptResult, DueCallback, NewEvent, Store};

/// Header carrying the delivery id of a callback: `<job id>:<finish time>`, the same on every retry.
pub const DELIVERY_HEADER: &str = "X-Deprovisiond-Delivery";
/// Header carrying the signature (the generic webhook's scheme).
pub const SIGNATURE_HEADER: &str = "X-Deprovisiond-Signature";

/// Errors setting the sender up.
#[derive(Debug, thiserror::Error)]
pub enum CallbackError {
    /// The HTTP client could not be built.
    #[error("cannot build the callback HTTP client: {0}")]
    Client(String),
}

/// Sends due callbacks.
pub struct CallbackSender {
    store: Store,
    config: Arc<WebhookConfig>,
    /// The store's clock: due times and finish times are on it.
    store_clock: SharedClock,
    /// The local clock: signed timestamps are compared with receivers' wall clocks.
    clock: SharedClock,
    http: reqwest::Client,
}

/// Why one attempt failed, and how long the destination asked us to wait.
struct Failure {
    message: String,
    status: Option<u16>,
    retry_after: Option<Duration>,
}

impl CallbackSender {
    /// A sender over `store` with the callback settings of `config`.
    pub fn new(
        store: Store,
        config: Arc<WebhookConfig>,
        store_clock: SharedClock,
        clock: SharedClock,
    ) -> Result<Self, CallbackError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(config.callbacks.timeout_secs.max(1)))
            .connect_timeout(Duration::from_secs(5))
            // A redirect could lead outside the allow-list.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("deprovisiond/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| CallbackError::Client(e.to_string()))?;
        Ok(Self {
            store,
            config,
            store_clock,
            clock,
            http,
        })
    }

    /// Sends due callbacks every `poll_ms` until stopped.
    pub async fn run(self, stop: CancellationToken) {
        let every = Duration::from_millis(self.config.callbacks.poll_ms.max(10));
        loop {
            if let Err(e) = self.run_once().await {
                tracing::warn!(error = %e, "callback sender: cannot read the outbox");
            }
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stop.cancelled() => return,
            }
        }
    }

    /// Sends what is due now; returns how many attempts were made.
    pub async fn run_once(&self) -> Result<usize, crate::store::StoreError> {
        let s = &self.config.callbacks;
        let lease_ms = (s.timeout_secs.max(1) as Millis + 30) * 1000;
        let due = self
            .store
            .claim_due_callbacks(self.store_clock.now_ms(), s.max_attempts, lease_ms, 16)
            .await?;
        let n = due.len();
        for d in due {
            self.attempt(&d).await?;
        }
        Ok(n)
    }

    async fn attempt(&self, due: &DueCallback) -> Result<(), crate::store::StoreError> {
        let attempt = due.attempts + 1;
        let (shown, sent) = match due.kind.as_str() {
            "http" => (shown_url(&due.destination), self.post_summary(due).await),
            "jira_comment" => (
                format!("jira issue {}", due.destination),
                self.jira_comment(due).await,
            ),
            other => (
                other.to_string(),
                Err(Failure {
                    message: format!("unknown callback kind `{other}`"),
                    status: None,
                    retry_after: None,
                }),
            ),
        };
        let now = self.store_clock.now_ms();
        let settings = &self.config.callbacks;
        let policy = BackoffPolicy {
            base: Duration::from_millis(settings.backoff_base_ms),
            cap: Duration::from_millis(settings.backoff_cap_ms.max(settings.backoff_base_ms)),
            max_attempts: settings.max_attempts,
        };
        let (result, event) = match sent {
            Ok(status) => (
                AttemptResult::Delivered,
                NewEvent {
                    kind: "callback_delivered".into(),
                    attempt: Some(attempt),
                    message: Some(format!("callback delivered to {shown}")),
                    detail: Some(
                        json!({"kind": due.kind, "destination": shown, "http_status": status}),
                    ),
                    ..NewEvent::default()
                },
            ),
            Err(f) if policy.allows_another(attempt) => {
                let delay = {
                    let mut rng = rand::rng();
                    policy.delay(attempt, f.retry_after, &mut rng)
                };
                let at = now + delay.as_millis() as Millis;
                (
                    AttemptResult::RetryAt(at, f.message.clone()),
                    NewEvent {
                        kind: "callback_retry_scheduled".into(),
                        attempt: Some(attempt),
                        message: Some(format!(
                            "callback to {shown} failed: {}; retrying",
                            f.message
                        )),
                        detail: Some(
                            json!({"kind": due.kind, "destination": shown, "http_status": f.status,
                            "next_attempt_at": crate::domain::clock::to_rfc3339(at)}),
                        ),
                        ..NewEvent::default()
                    },
                )
            }
            Err(f) => (
                AttemptResult::GaveUp(f.message.clone()),
                NewEvent {
                    kind: "callback_failed".into(),
                    attempt: Some(attempt),
                    message: Some(format!(
                        "callback to {shown} failed: {}; giving up after {attempt} attempts",
                        f.message
                    )),
                    detail: Some(
                        json!({"kind": due.kind, "destination": shown, "http_status": f.status}),
                    ),
                    ..NewEvent::default()
                },
            ),
        };
        self.store.append_events(&due.job_id, now, &[event]).await?;
        self.store
            .record_callback_attempt(due, attempt, &result)
            .await
    }

    async fn summary(&self, due: &DueCallback) -> Result<Value, Failure> {
        let fail = |e: crate::store::StoreError| Failure {
            message: format!("cannot read the job: {e}"),
            status: None,
            retry_after: None,
        };
        let job = self
            .store
            .get_job(&due.job_id)
            .await
            .map_err(fail)?
            .ok_or(Failure {
                message: "the job no longer exists".into(),
                status: None,
                retry_after: None,
            })?;
        let counts = self.store.item_counts(&due.job_id).await.map_err(fail)?;
        Ok(json!({
            "event": "deprovision.finished",
            "delivery_id": delivery_id(due),
            "job": JobView::new(&job, &counts),
        }))
    }

    async fn post_summary(&self, due: &DueCallback) -> Result<u16, Failure> {
        let refuse = |m: &str| Failure {
            message: m.to_string(),
            status: None,
            retry_after: None,
        };
        let url = url::Url::parse(&due.destination)
            .map_err(|_| refuse("the destination is not a URL"))?;
        if !self.config.callbacks.allows(&url) {
            return Err(refuse(
                "the destination's host is no longer in callbacks.allowed_hosts",
            ));
        }
        let secret = self
            .config
            .callbacks
            .secret
            .as_ref()
            .ok_or_else(|| refuse("callbacks.secret is not configured"))?;
        // Serialising a JSON value cannot fail.
        let body = serde_json::to_vec(&self.summary(due).await?).expect("JSON value serialises");
        let signature = sign_generic(secret.bytes(), self.clock.now_unix(), &body);
        let req = self
            .http
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(SIGNATURE_HEADER, signature)
            .header(DELIVERY_HEADER, delivery_id(due))
            .body(body);
        send(req).await
    }

    async fn jira_comment(&self, due: &DueCallback) -> Result<u16, Failure> {
        let refuse = |m: &str| Failure {
            message: m.to_string(),
            status: None,
            retry_after: None,
        };
        let Some(comment) = self.config.jira.as_ref().and_then(|j| j.comment.as_ref()) else {
            return Err(refuse("jira.comment is no longer configured"));
        };
        if !self.config.callbacks.allows(&comment.base_url) {
            return Err(refuse(
                "the Jira site's host is not in callbacks.allowed_hosts",
            ));
        }
        let mut url = comment.base_url.clone();
        url.path_segments_mut()
            .map_err(|_| refuse("jira.comment.base_url cannot be a base URL"))?
            .pop_if_empty()
            .extend(["rest", "api", "3", "issue", &due.destination, "comment"]);
        let summary = self.summary(due).await?;
        let req = self
            .http
            .post(url)
            .basic_auth(&comment.email, Some(comment.api_token.0.expose()))
            .header(reqwest::header::ACCEPT, "application/json")
            .json(&json!({"body": adf_comment(&summary)}));
        send(req).await
    }
}

async fn send(req: reqwest::RequestBuilder) -> Result<u16, Failure> {
    match req.send().await {
        Ok(resp) if resp.status().is_success() => Ok(resp.status().as_u16()),
        Ok(resp) => {
            let retry_after = resp
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            Err(Failure {
                message: format!("the destination answered {}", resp.status()),
                status: Some(resp.status().as_u16()),
                retry_after,
            })
        }
        // Without the URL: it may carry a token in its query.
        Err(e) => Err(Failure {
            message: e.without_url().to_string(),
            status: None,
            retry_after: None,
        }),
    }
}

/// The id receivers dedupe on: the same for every attempt at one finish of one job.
pub fn delivery_id(due: &DueCallback) -> String {
    format!("{}:{}", due.job_id, due.finished_at)
}

/// A destination as the timeline shows it: scheme, host, port and path, never the query (it may hold a token).
fn shown_url(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(u) => format!("{}{}", u.origin().ascii_serialization(), u.path()),
        Err(_) => "(not a URL)".into(),
    }
}

/// The job summary as an Atlassian Document Format comment: a heading line and one paragraph of facts.
pub fn adf_comment(summary: &Value) -> Value {
    let job = &summary["job"];
    let text = |v: &Value| {
        v.as_str()
            .map(str::to_string)
            .unwrap_or_else(|| v.to_string())
    };
    let headline = format!(
        "deprovisiond: job {} {}",
        text(&job["id"]),
        text(&job["status"])
    );
    let facts = format!(
        "Target: {} {}. Devices: {} found, {} done in their hub, {} failed, {} skipped.",
        text(&job["target"]["kind"]),
        text(
            job["target"]
                .get("registration_id")
                .or(job["target"].get("group_id"))
                .unwrap_or(&Value::Null)
        ),
        job["progress"]["total"],
        job["progress"]["registry_done"],
        job["progress"]["failed"],
        job["progress"]["skipped"],
    );
    json!({
        "type": "doc",
        "version": 1,
        "content": [
            {"type": "paragraph", "content": [{"type": "text", "text": headline, "marks": [{"type": "strong"}]}]},
            {"type": "paragraph", "content": [{"type": "text", "text": facts}]}
        ]
    })
}

//! HTTP calls to the service and its problem+json errors, as the client sees them.

use std::time::Duration;

use serde_json::Value;

/// A call that did not give an answer the client can use.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The service answered with an error (its problem+json, read for the person).
    #[error("{status} {detail}")]
    Problem {
        /// HTTP status.
        status: u16,
        /// The problem's title and detail, and any field errors.
        detail: String,
    },
    /// The service could not be reached or did not answer in time.
    #[error("cannot reach {url}: {reason}")]
    Unreachable {
        /// The URL asked.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// The answer was not the JSON the client expects.
    #[error("unexpected answer from {url}: {reason}")]
    Unexpected {
        /// The URL asked.
        url: String,
        /// What was wrong with it.
        reason: String,
    },
}

/// Percent-encodes one path segment (job ids are UUIDs, but a typo must not change the path).
pub fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A client of one service.
#[derive(Debug, Clone)]
pub struct ApiClient {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl ApiClient {
    /// A client of the service at `base` (e.g. `http://127.0.0.1:8080`).
    pub fn new(base: &str, token: Option<String>, timeout_secs: u64) -> anyhow::Result<Self> {
        let url = url::Url::parse(base)
            .map_err(|e| anyhow::anyhow!("--url {base:?} is not a URL: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") {
            anyhow::bail!("--url {base:?} must be http:// or https://");
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(timeout_secs.max(1)))
            .build()?;
        Ok(Self {
            base: base.trim_end_matches('/').to_string(),
            token,
            http,
        })
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> Result<Value, ClientError> {
        self.send(self.http.get(self.url(path)), path).await
    }

    /// `GET path?query`.
    pub async fn get_query(
        &self,
        path: &str,
        query: &[(String, String)],
    ) -> Result<Value, ClientError> {
        self.send(self.http.get(self.url(path)).query(query), path)
            .await
    }

    /// `POST path` with a JSON body and an optional `Idempotency-Key`.
    pub async fn post(
        &self,
        path: &str,
        body: &Value,
        idempotency_key: Option<&str>,
    ) -> Result<Value, ClientError> {
        let mut rb = self.http.post(self.url(path)).json(body);
        if let Some(k) = idempotency_key {
            rb = rb.header("Idempotency-Key", k);
        }
        self.send(rb, path).await
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn send(
        &self,
        mut rb: reqwest::RequestBuilder,
        path: &str,
    ) -> Result<Value, ClientError> {
        if let Some(t) = &self.token {
            rb = rb.bearer_auth(t);
        }
        let url = self.url(path);
        let resp = rb.send().await.map_err(|e| ClientError::Unreachable {
            url: url.clone(),
            reason: error_chain(&e),
        })?;
        let status = resp.status();
        let text = resp.text().await.map_err(|e| ClientError::Unreachable {
            url: url.clone(),
            reason: error_chain(&e),
        })?;
        let body: Option<Value> = serde_json::from_str(&text).ok();
        if status.is_success() {
            return body.ok_or_else(|| ClientError::Unexpected {
                url,
                reason: format!("{status} with a body that is not JSON"),
            });
        }
        Err(ClientError::Problem {
            status: status.as_u16(),
            detail: problem_text(status, body.as_ref(), &text),
        })
    }
}

/// `Conflict: job … is already active for this target (target.registration_id: …)`.
fn problem_text(status: reqwest::StatusCode, body: Option<&Value>, raw: &str) -> String {
    let Some(p) = body else {
        let raw = raw.trim();
        return if raw.is_empty() {
            status.to_string()
        } else {
            format!("{status}: {}", raw.chars().take(300).collect::<String>())
        };
    };
    let title = p["title"]
        .as_str()
        .unwrap_or_else(|| status.canonical_reason().unwrap_or("error"));
    let mut line = match p["detail"].as_str() {
        Some(d) if !d.is_empty() => format!("{title}: {d}"),
        _ => title.to_string(),
    };
    if let Some(errors) = p["errors"].as_array() {
        let fields: Vec<String> = errors
            .iter()
            .map(|e| {
                format!(
                    "{}: {}",
                    e["field"].as_str().unwrap_or("?"),
                    e["message"].as_str().unwrap_or("invalid")
                )
            })
            .collect();
        if !fields.is_empty() {
            line.push_str(&format!(" ({})", fields.join("; ")));
        }
    }
    line
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let c = cause.to_string();
        if !s.contains(&c) {
            s.push_str(": ");
            s.push_str(&c);
        }
        source = cause.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_cannot_change_the_path() {
        assert_eq!(segment("0193-ab_c.d~"), "0193-ab_c.d~");
        assert_eq!(segment("../x?y#z"), "..%2Fx%3Fy%23z");
    }

    #[test]
    fn problems_read_as_one_line() {
        let p = serde_json::json!({"title": "Unprocessable request", "detail": "the request is invalid",
            "errors": [{"field": "reason.code", "message": "unknown reason code"}]});
        assert_eq!(
            problem_text(reqwest::StatusCode::UNPROCESSABLE_ENTITY, Some(&p), ""),
            "Unprocessable request: the request is invalid (reason.code: unknown reason code)"
        );
        assert_eq!(
            problem_text(reqwest::StatusCode::BAD_GATEWAY, None, "upstream down"),
            "502 Bad Gateway: upstream down"
        );
    }
}

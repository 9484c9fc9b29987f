//! The `Host` allow-list: a browser tricked by DNS rebinding sends the attacker's host name, which is not
//! on the list, so its requests are refused before any route runs.

use std::net::SocketAddr;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::Response;

use crate::http::error::{Problem, problem_response};

/// Which `Host` names are served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPolicy {
    /// Any name (a network address with no list configured: authentication is what protects it).
    Any,
    /// Only these names (lowercase, no port); `*.example.com` matches any subdomain of example.com.
    Only(Vec<String>),
}

/// The names a loopback-bound service answers to.
pub const LOOPBACK_NAMES: [&str; 4] = ["localhost", "127.0.0.1", "[::1]", "::1"];

impl HostPolicy {
    /// The policy for `configured` names on `listen`: the names when given; the loopback names on a loopback
    /// address; otherwise any.
    pub fn for_listen(configured: &[String], listen: SocketAddr) -> Self {
        if !configured.is_empty() {
            HostPolicy::Only(
                configured
                    .iter()
                    .map(|h| strip_port(&h.to_ascii_lowercase()).to_string())
                    .collect(),
            )
        } else if listen.ip().is_loopback() {
            HostPolicy::Only(LOOPBACK_NAMES.iter().map(|s| s.to_string()).collect())
        } else {
            HostPolicy::Any
        }
    }

    /// Whether a request naming `host` (as sent: maybe with a port) is served.
    pub fn allows(&self, host: &str) -> bool {
        let HostPolicy::Only(names) = self else {
            return true;
        };
        let host = host.trim().to_ascii_lowercase();
        let host = strip_port(&host).trim_end_matches('.');
        names.iter().any(|n| match n.strip_prefix("*.") {
            Some(domain) => host
                .strip_suffix(domain)
                .is_some_and(|sub| sub.ends_with('.') && sub.len() > 1),
            None => n == host,
        })
    }
}

/// `name:port` → `name`, `[::1]:8080` → `[::1]`; a bare IPv6 address is left alone.
fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.find(']').map_or(host, |i| &host[..=i]);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if !name.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => {
            name
        }
        _ => host,
    }
}

fn refuse(status: StatusCode, detail: String) -> Response {
    problem_response(
        status,
        Problem {
            type_: "urn:deprovisiond:problem:host-not-allowed".into(),
            title: "Host not served".into(),
            status: status.as_u16(),
            detail,
            errors: Vec::new(),
            job_id: None,
        },
    )
}

/// Middleware: 421 for a `Host` not on the list, 400 when there is none. The probes are exempt: an
/// orchestrator calls them by IP, and they reveal nothing.
pub async fn check_host(
    State(policy): State<std::sync::Arc<HostPolicy>>,
    req: Request,
    next: Next,
) -> Response {
    if *policy == HostPolicy::Any || matches!(req.uri().path(), "/healthz" | "/readyz") {
        return next.run(req).await;
    }
    // HTTP/1.1 sends `Host`; HTTP/2 the `:authority`, which lands in the URI.
    let host = req
        .headers()
        .get(axum::http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri().authority().map(|a| a.as_str().to_string()));
    match host {
        None => refuse(
            StatusCode::BAD_REQUEST,
            "the request names no host (no `Host` header)".into(),
        ),
        Some(h) if policy.allows(&h) => next.run(req).await,
        Some(h) => {
            tracing::warn!(host = %h.chars().take(100).collect::<String>(), "request for a host not on the allow-list refused");
            refuse(
                StatusCode::MISDIRECTED_REQUEST,
                "this service does not answer to that host name; an operator can add it with \
                 DEPROVISIOND_ALLOWED_HOSTS"
                    .into(),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_names_with_any_port() {
        let p = HostPolicy::for_listen(&[], "127.0.0.1:8080".parse().unwrap());
        for ok in ["localhost:8080", "127.0.0.1", "[::1]:9", "LOCALHOST."] {
            assert!(p.allows(ok), "{ok}");
        }
        for bad in ["evil.example.com", "localhost.evil.com:8080", "127.0.0.2"] {
            assert!(!p.allows(bad), "{bad}");
        }
        assert_eq!(
            HostPolicy::for_listen(&[], "0.0.0.0:80".parse().unwrap()),
            HostPolicy::Any
        );
    }

    #[test]
    fn configured_names_and_wildcards() {
        let p = HostPolicy::for_listen(
            &["deprov.corp.example:443".into(), "*.svc.local".into()],
            "0.0.0.0:80".parse().unwrap(),
        );
        assert!(p.allows("deprov.corp.example"));
        assert!(p.allows("api.svc.local:8080"));
        assert!(!p.allows("svc.local"));
        assert!(!p.allows("evilsvc.local"));
        assert!(!p.allows("localhost"));
    }
}

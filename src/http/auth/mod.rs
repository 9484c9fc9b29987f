//! Who is calling: API keys and OIDC bearer tokens (Entra ID or any issuer), the three roles, the middleware
//! that requires a principal on every route but the public ones, and the `Host` allow-list.
//!
//! Authorization is decided in one place, [`required_role`], from the method and the matched route
//! template, so a new route is protected by default (GET: reader, anything else: operator) and only the
//! routes listed there are public or admin-only. Handlers that need more than the route gives (a
//! `force: true` body needs admin) take the [`Principal`] extractor and call [`Principal::require`].

pub mod config;
pub mod host;
pub mod jwt;
pub mod keys;

use std::sync::Arc;

use axum::extract::{FromRequestParts, MatchedPath, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::{Problem, problem_response};
pub use config::{ApiKeyEntry, AuthArgs, AuthConfig, ConfigError};
pub use host::HostPolicy;

/// Name of the cookie the dashboard keeps the bearer credential in (accepted on `/ui/*` routes only).
pub const SESSION_COOKIE: &str = "deprovisiond_session";

/// What a caller may do; ordered, so `role >= Role::Operator` reads as "operator or more".
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Reads jobs, devices, events, tombstones and metrics (GET).
    Reader,
    /// Reader, plus create, preview, cancel and retry.
    Operator,
    /// Operator, plus approvals, tombstone audits, forced group deletes and key management.
    Admin,
}

impl Role {
    /// The configuration and wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Reader => "reader",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    /// Parses a configuration name (case-insensitive).
    pub fn parse(s: &str) -> Option<Role> {
        match s.trim().to_ascii_lowercase().as_str() {
            "reader" => Some(Role::Reader),
            "operator" => Some(Role::Operator),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a principal proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Via {
    /// A configured API key (bearer token).
    ApiKey,
    /// A bearer JWT from the configured OIDC issuer.
    Jwt,
    /// A signed ticketing webhook (verified by the webhook routes, not by this module).
    Webhook,
    /// Nothing: no authentication is configured (loopback only, or `--insecure-no-auth`).
    Unauthenticated,
}

impl Via {
    /// Prefix of [`Principal::label`].
    pub fn as_str(self) -> &'static str {
        match self {
            Via::ApiKey => "key",
            Via::Jwt => "oidc",
            Via::Webhook => "webhook",
            Via::Unauthenticated => "anonymous",
        }
    }
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The key's configured name, the token's user or application name, or the webhook source.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// How it authenticated.
    pub via: Via,
}

impl Principal {
    /// The caller recorded as a job's requester and on every action of its timeline: `key:NAME`,
    /// `oidc:NAME`, `webhook:SOURCE` or `anonymous`. The prefix keeps a key named like a person from
    /// passing for that person's token.
    pub fn label(&self) -> String {
        match self.via {
            Via::Unauthenticated => "anonymous".into(),
            via => format!("{}:{}", via.as_str(), self.name),
        }
    }

    /// The principal of every request when no authentication is configured.
    pub fn anonymous() -> Self {
        Principal {
            name: "anonymous".into(),
            role: Role::Admin,
            via: Via::Unauthenticated,
        }
    }

    /// The principal of a job a verified webhook of `source` (e.g. `jira`) creates.
    pub fn webhook(source: &str) -> Self {
        Principal {
            name: source.into(),
            role: Role::Operator,
            via: Via::Webhook,
        }
    }

    /// Refuses (403) a principal whose role is below `needed`; `what` says what needs it.
    pub fn require(&self, needed: Role, what: &str) -> Result<(), AuthError> {
        if self.role >= needed {
            Ok(())
        } else {
            Err(AuthError::Forbidden {
                needed,
                have: self.role,
                what: what.into(),
            })
        }
    }
}

/// Why a request is refused by authentication or authorization.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No credential was sent.
    #[error(
        "this route needs a bearer credential (an API key or a token); send `Authorization: Bearer …`"
    )]
    Missing,
    /// A credential was sent and is not valid; the reason never quotes the credential.
    #[error("the bearer credential is not valid: {0}")]
    Invalid(String),
    /// The caller is known but its role is too low.
    #[error("{what} needs the {needed} role; this caller is {have}")]
    Forbidden {
        /// The role needed.
        needed: Role,
        /// The caller's role.
        have: Role,
        /// What needs it.
        what: String,
    },
    /// A valid token that maps to no role.
    #[error("the token is valid but carries no role this service knows: {0}")]
    NoRole(String),
    /// The requester of a job tried to approve or reject it.
    #[error("two-person rule: {0} requested this job, so another admin must decide it")]
    SelfApproval(String),
}

impl AuthError {
    /// 401 or 403.
    pub fn status(&self) -> StatusCode {
        match self {
            AuthError::Missing | AuthError::Invalid(_) => StatusCode::UNAUTHORIZED,
            AuthError::Forbidden { .. } | AuthError::NoRole(_) | AuthError::SelfApproval(_) => {
                StatusCode::FORBIDDEN
            }
        }
    }

    /// The problem type's slug.
    pub fn slug(&self) -> &'static str {
        match self {
            AuthError::Missing | AuthError::Invalid(_) => "unauthenticated",
            AuthError::SelfApproval(_) => "self-approval",
            _ => "forbidden",
        }
    }

    /// The problem's title.
    pub fn title(&self) -> &'static str {
        match self {
            AuthError::Missing | AuthError::Invalid(_) => "Authentication required",
            AuthError::SelfApproval(_) => "A job's requester cannot decide it",
            _ => "Role too low for this operation",
        }
    }
}

impl IntoResponse for AuthError {
    fn into_response(self) -> Response {
        let status = self.status();
        let (slug, title) = (self.slug(), self.title());
        let mut resp = problem_response(
            status,
            Problem {
                type_: format!("urn:deprovisiond:problem:{slug}"),
                title: title.into(),
                status: status.as_u16(),
                detail: self.to_string(),
                errors: Vec::new(),
                job_id: None,
            },
        );
        if status == StatusCode::UNAUTHORIZED {
            // RFC 6750 §3: say which scheme, and `invalid_token` when one was sent.
            let value = match self {
                AuthError::Missing => r#"Bearer realm="deprovisiond""#,
                _ => r#"Bearer realm="deprovisiond", error="invalid_token""#,
            };
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(value));
        }
        resp
    }
}

/// Checks credentials: the configured API keys, the OIDC verifier, or nothing (open mode).
pub struct Authenticator {
    keys: keys::KeyRing,
    jwt: Option<jwt::JwtVerifier>,
    open: bool,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("api_keys", &self.keys.len())
            .field("jwt", &self.jwt.is_some())
            .field("open", &self.open)
            .finish()
    }
}

impl Authenticator {
    /// Builds the checks `config` describes; a JWKS file is read now (and must parse), a JWKS URL is
    /// fetched now and again when due.
    pub async fn new(
        config: &AuthConfig,
        clock: crate::domain::clock::SharedClock,
    ) -> Result<Self, ConfigError> {
        let jwt = match &config.jwt {
            Some(j) => Some(jwt::JwtVerifier::new(j.clone(), clock).await?),
            None => None,
        };
        Ok(Authenticator {
            keys: keys::KeyRing::new(config.api_keys.clone()),
            open: !config.has_credentials(),
            jwt,
        })
    }

    /// Whether every request is let in as [`Principal::anonymous`] (no credentials configured).
    pub fn is_open(&self) -> bool {
        self.open
    }

    /// The principal `headers` prove: the `Authorization: Bearer` credential, or (when `allow_cookie`)
    /// the [`SESSION_COOKIE`] holding the same credential.
    pub async fn authenticate(
        &self,
        headers: &HeaderMap,
        allow_cookie: bool,
    ) -> Result<Principal, AuthError> {
        if self.open {
            return Ok(Principal::anonymous());
        }
        let token = match bearer(headers)? {
            Some(t) => t,
            None if allow_cookie => session_cookie(headers).ok_or(AuthError::Missing)?,
            None => return Err(AuthError::Missing),
        };
        self.verify(&token).await
    }

    /// Checks one bearer credential.
    pub async fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        if let Some(entry) = self.keys.find(token) {
            return Ok(Principal {
                name: entry.name.clone(),
                role: entry.role,
                via: Via::ApiKey,
            });
        }
        match &self.jwt {
            Some(v) if token.split('.').count() == 3 => v.verify(token).await,
            Some(_) => Err(AuthError::Invalid(
                "neither a configured API key nor a JWT".into(),
            )),
            None => Err(AuthError::Invalid("not a configured API key".into())),
        }
    }
}

/// The `Authorization: Bearer` credential, if one was sent.
fn bearer(headers: &HeaderMap) -> Result<Option<String>, AuthError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value
        .to_str()
        .map_err(|_| AuthError::Invalid("the Authorization header is not ASCII".into()))?;
    let (scheme, token) = value.trim().split_once(' ').ok_or_else(|| {
        AuthError::Invalid("the Authorization header must be `Bearer <credential>`".into())
    })?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::Invalid(
            "only the Bearer scheme is accepted".into(),
        ));
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(AuthError::Invalid("the bearer credential is empty".into()));
    }
    Ok(Some(token.to_string()))
}

/// The dashboard's session cookie value, if sent.
fn session_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, value)| value.trim().to_string())
        .filter(|v| !v.is_empty())
}

/// The role a route needs, from its method and route template (`None`: public).
///
/// Public: the probes, the documentation and the OpenAPI document, the webhooks (they authenticate by
/// signature) and the dashboard's login page and static files. Admin: approvals, the tombstone audit and
/// key management. Otherwise GET (and HEAD) needs reader and every other method operator, so a route
/// added later is never open by accident.
pub fn required_role(method: &Method, template: &str) -> Option<Role> {
    let public = matches!(
        template,
        "/healthz" | "/readyz" | "/openapi.json" | "/ui/login"
    ) || template == "/docs"
        || template.starts_with("/docs/")
        || template.starts_with("/v1/webhooks/")
        || template.starts_with("/ui/static/");
    if public {
        return None;
    }
    let admin = template == "/v1/tombstones/audit"
        || template.starts_with("/v1/keys")
        || (template.starts_with("/v1/deprovisions/")
            && (template.ends_with("/approve")
                || template.ends_with("/reject")
                || template.ends_with("/undo")));
    if admin {
        return Some(Role::Admin);
    }
    if method == Method::GET || method == Method::HEAD {
        Some(Role::Reader)
    } else {
        Some(Role::Operator)
    }
}

/// Whether a route may authenticate with the dashboard's session cookie.
fn cookie_allowed(template: &str) -> bool {
    template == "/ui" || template.starts_with("/ui/")
}

/// Middleware (a route layer: it needs the matched route): authenticates the request, checks the role its
/// route needs, and leaves the [`Principal`] in the request's extensions for handlers.
pub async fn require_principal(
    State(auth): State<Arc<Authenticator>>,
    mut req: Request,
    next: Next,
) -> Response {
    let template = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_else(|| req.uri().path().to_string());
    let Some(needed) = required_role(req.method(), &template) else {
        return next.run(req).await;
    };
    let principal = match auth
        .authenticate(req.headers(), cookie_allowed(&template))
        .await
    {
        Ok(p) => p,
        Err(e) => {
            tracing::info!(method = %req.method(), route = %template, reason = %e, "request refused: not authenticated");
            // A person opening a dashboard page is sent to its login form, not shown problem+json.
            if req.method() == axum::http::Method::GET && cookie_allowed(&template) {
                return axum::response::Redirect::to("/ui/login").into_response();
            }
            return e.into_response();
        }
    };
    if let Err(e) = principal.require(needed, &format!("{} {template}", req.method())) {
        tracing::info!(principal = %principal.label(), reason = %e, "request refused: role too low");
        return e.into_response();
    }
    req.extensions_mut().insert(principal);
    next.run(req).await
}

impl<S: Send + Sync> FromRequestParts<S> for Principal {
    type Rejection = AuthError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, AuthError> {
        // The middleware puts it there on every protected route; a public route has none.
        parts
            .extensions
            .get::<Principal>()
            .cloned()
            .ok_or(AuthError::Missing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_ordered() {
        assert!(Role::Admin > Role::Operator && Role::Operator > Role::Reader);
        assert_eq!(Role::parse(" Admin "), Some(Role::Admin));
        assert_eq!(Role::parse("root"), None);
    }

    #[test]
    fn routes_are_protected_by_default() {
        assert_eq!(required_role(&Method::GET, "/healthz"), None);
        assert_eq!(required_role(&Method::GET, "/docs/index.html"), None);
        assert_eq!(required_role(&Method::POST, "/v1/webhooks/jira"), None);
        assert_eq!(
            required_role(&Method::GET, "/v1/something-new"),
            Some(Role::Reader)
        );
        assert_eq!(
            required_role(&Method::DELETE, "/v1/something-new"),
            Some(Role::Operator)
        );
        assert_eq!(
            required_role(&Method::POST, "/v1/deprovisions/{id}/approve"),
            Some(Role::Admin)
        );
        assert_eq!(
            required_role(&Method::POST, "/v1/tombstones/audit"),
            Some(Role::Admin)
        );
    }

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; deprovisiond_session=dpk_x; b=2"),
        );
        assert_eq!(session_cookie(&h).as_deref(), Some("dpk_x"));
    }

    #[test]
    fn a_malformed_authorization_header_is_invalid_not_missing() {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert!(matches!(bearer(&h), Err(AuthError::Invalid(_))));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer  tok "),
        );
        assert_eq!(bearer(&h).unwrap().as_deref(), Some("tok"));
    }
}

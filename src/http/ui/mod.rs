//! `/ui`: the jobs dashboard. Server-rendered HTML (maud escapes every value it splices in), a stylesheet and
//! a little progressive JavaScript embedded in the binary; every page works without the script.
//!
//! It reads through the store exactly as the API handlers do and creates jobs only through
//! [`crate::http::deprovisions::submit`], so the dashboard cannot admit what the API would refuse. It is a plain
//! router, kept out of the OpenAPI document: it serves HTML for people, not an API.
//!
//! Authentication is not checked here: the API's auth layer accepts the token from the `deprovisiond_session`
//! cookie that `/ui/login` sets. Every non-GET request must come from a page of this origin (its `Origin`, or
//! else its `Referer`, names the `Host` it was sent to); the cookie is also `SameSite=Strict`.

mod csrf;
mod form;
mod pages;
mod templates;

use axum::Router;
use axum::body::Body;
use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, Method, Request, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};

use super::AppState;
use super::error::ApiError;

/// Name of the cookie holding the caller's API key or token for the browser.
pub const SESSION_COOKIE: &str = "deprovisiond_session";

const APP_CSS: &str = include_str!("static/app.css");
const APP_JS: &str = include_str!("static/app.js");
const FAVICON: &str = include_str!("static/favicon.svg");

/// The dashboard's routes, all under `/ui`.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/ui", get(pages::jobs))
        .route("/ui/", get(|| async { Redirect::permanent("/ui") }))
        .route("/ui/jobs/{id}", get(pages::job))
        .route("/ui/new", get(pages::new_job))
        .route("/ui/new/preview", post(pages::preview))
        .route("/ui/new/create", post(pages::create))
        .route("/ui/login", get(pages::login_form).post(login))
        .route("/ui/logout", post(logout))
        .route("/ui/static/{file}", get(static_file))
        .layer(middleware::from_fn(same_origin_writes))
        .layer(middleware::map_response(security_headers))
}

/// Errors of the dashboard: rendered as an HTML page with the right status, never as JSON.
#[derive(Debug, thiserror::Error)]
pub enum UiError {
    /// What the API layer would have answered.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// A query string or form the pages do not produce.
    #[error("{0}")]
    BadRequest(String),
    /// A write that did not come from a page of this origin.
    #[error("{0}")]
    CrossSite(String),
    /// No such page.
    #[error("{0}")]
    NotFound(String),
}

impl IntoResponse for UiError {
    fn into_response(self) -> Response {
        let (status, title, detail, job_id) = match &self {
            UiError::Api(e) => {
                if let ApiError::Internal(inner) = e {
                    // The chain goes to the log; the page shows the generic text of the problem.
                    tracing::error!(error = ?inner, "internal error in the dashboard");
                }
                let p = e.problem();
                let status =
                    StatusCode::from_u16(p.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                (status, p.title, p.detail, p.job_id)
            }
            UiError::BadRequest(d) => (
                StatusCode::BAD_REQUEST,
                "The request could not be read".to_string(),
                d.clone(),
                None,
            ),
            UiError::CrossSite(d) => (
                StatusCode::FORBIDDEN,
                "Cross-site request refused".to_string(),
                d.clone(),
                None,
            ),
            UiError::NotFound(d) => (
                StatusCode::NOT_FOUND,
                "Not found".to_string(),
                d.clone(),
                None,
            ),
        };
        (
            status,
            templates::error_page(status, &title, &detail, job_id.as_deref()),
        )
            .into_response()
    }
}

/// Refuses every write (POST) whose `Origin`, or `Referer` when there is no `Origin`, is not the `Host` it was
/// sent to: a page of another site cannot make a logged-in browser create a job.
async fn same_origin_writes(req: Request<Body>, next: Next) -> Response {
    if matches!(*req.method(), Method::GET | Method::HEAD) {
        return next.run(req).await;
    }
    match csrf::check(req.headers(), req.uri()) {
        Ok(()) => next.run(req).await,
        Err(why) => UiError::CrossSite(why).into_response(),
    }
}

/// Headers every dashboard answer carries: no inline script or style can run (the pages need none), no framing,
/// the `Referer` stays on this origin (the CSRF check falls back to it), and pages are not cached.
async fn security_headers(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    let fixed = [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; \
             form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "same-origin"),
    ];
    for (name, value) in fixed {
        h.insert(name, HeaderValue::from_static(value));
    }
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    resp
}

async fn static_file(Path(file): Path<String>) -> Result<Response, UiError> {
    let (body, content_type) = match file.as_str() {
        "app.css" => (APP_CSS, "text/css; charset=utf-8"),
        "app.js" => (APP_JS, "text/javascript; charset=utf-8"),
        // Linked from every page, so browsers do not ask for /favicon.ico (a 404 outside /ui).
        "favicon.svg" => (FAVICON, "image/svg+xml"),
        _ => return Err(UiError::NotFound(format!("no static file {file}"))),
    };
    Ok((
        [
            (header::CONTENT_TYPE, content_type),
            // Small and embedded: a short cache keeps an upgrade's new files from waiting long.
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        body,
    )
        .into_response())
}

/// The login form's fields.
#[derive(Debug, serde::Deserialize)]
struct LoginForm {
    token: String,
}

/// Stores the API key or token in the session cookie. It is not checked here: the auth layer checks it on every
/// request, so a wrong token shows up on the next page as a refusal.
async fn login(
    headers: HeaderMap,
    form: Result<axum::Form<LoginForm>, axum::extract::rejection::FormRejection>,
) -> Result<Response, UiError> {
    let axum::Form(LoginForm { token }) =
        form.map_err(|e| UiError::BadRequest(format!("the login form could not be read: {e}")))?;
    let token = token.trim();
    if let Err(problem) = check_cookie_token(token) {
        return Ok((
            StatusCode::UNPROCESSABLE_ENTITY,
            templates::login_page(Some(problem)),
        )
            .into_response());
    }
    let cookie = session_cookie(token, csrf::came_over_https(&headers), false);
    Ok(with_cookie(Redirect::to("/ui").into_response(), &cookie))
}

/// Clears the session cookie.
async fn logout(headers: HeaderMap) -> Response {
    let cookie = session_cookie("", csrf::came_over_https(&headers), true);
    with_cookie(Redirect::to("/ui/login").into_response(), &cookie)
}

fn with_cookie(mut resp: Response, cookie: &str) -> Response {
    // `check_cookie_token` leaves only cookie-safe bytes, so the value is a valid header.
    if let Ok(v) = HeaderValue::from_str(cookie) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    resp
}

/// Longest token the cookie takes; browsers keep cookies up to about 4 KiB.
const MAX_TOKEN_BYTES: usize = 3800;

/// A token must fit a cookie value as RFC 6265 defines it: API keys and JWTs (base64url and dots) do.
fn check_cookie_token(token: &str) -> Result<(), &'static str> {
    if token.is_empty() {
        return Err("Paste an API key or token.");
    }
    if token.len() > MAX_TOKEN_BYTES {
        return Err("That token is too long to keep in a browser cookie.");
    }
    let cookie_octet =
        |b: u8| matches!(b, 0x21 | 0x23..=0x2B | 0x2D..=0x3A | 0x3C..=0x5B | 0x5D..=0x7E);
    if !token.bytes().all(cookie_octet) {
        return Err(
            "That is not an API key or token: it contains spaces, quotes, commas, semicolons or backslashes.",
        );
    }
    Ok(())
}

/// The `Set-Cookie` value: readable by no script, sent on no cross-site request, only to `/ui`, and only
/// over TLS when the page was served over TLS.
fn session_cookie(token: &str, secure: bool, clear: bool) -> String {
    let mut c = format!("{SESSION_COOKIE}={token}; Path=/ui; HttpOnly; SameSite=Strict");
    if secure {
        c.push_str("; Secure");
    }
    if clear {
        c.push_str("; Max-Age=0");
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_session_cookie_is_http_only_strict_and_scoped_to_ui() {
        let c = session_cookie("key.abc-123", false, false);
        assert_eq!(
            c,
            "deprovisiond_session=key.abc-123; Path=/ui; HttpOnly; SameSite=Strict"
        );
        assert!(session_cookie("k", true, false).ends_with("; Secure"));
        assert!(session_cookie("", true, true).ends_with("; Secure; Max-Age=0"));
    }

    #[test]
    fn tokens_that_would_break_the_cookie_are_refused() {
        assert!(check_cookie_token("eyJhbGciOi.eyJzdWIi.sig_-").is_ok());
        for bad in ["", "a b", "a;b", "a,b", "a\"b", "a\\b", "a\nb", "é"] {
            assert!(check_cookie_token(bad).is_err(), "{bad:?}");
        }
    }
}

//! The HTTP API: routes, extractors, errors and the OpenAPI document.

pub mod auth;
pub mod deprovisions;
pub mod error;
pub mod extract;
pub mod health;
pub mod metrics;
pub mod tombstones;
pub mod ui;
pub mod views;
pub mod webhooks;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::DefaultBodyLimit;
use axum::http::{Request, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_swagger_ui::SwaggerUi;

use crate::domain::clock::SharedClock;
use crate::domain::job::FieldError;
use crate::store::Store;
use crate::worker::{Waker, Workflow};
use error::{ApiError, problem_response};

/// Content type of error responses, for the OpenAPI document.
pub const PROBLEM: &str = error::PROBLEM_JSON;

/// Largest accepted request body by default (`DEPROVISIOND_BODY_LIMIT_BYTES`).
pub const BODY_LIMIT_BYTES: usize = 1024 * 1024;

/// Shared application state, cheap to clone into every handler.
#[derive(Clone)]
pub struct AppState(Arc<AppInner>);

/// What handlers share.
pub struct AppInner {
    /// The database.
    pub store: Store,
    /// The steps of jobs (plans are made when a job is created).
    pub workflow: Arc<dyn Workflow>,
    /// The Azure workflow, for previews, admission checks and tombstones (absent in rehearsal mode).
    pub azure: Option<Arc<crate::workflow::AzureWorkflow>>,
    /// Time source.
    pub clock: SharedClock,
    /// Wakes the engine on new work.
    pub waker: Waker,
    /// Names of the configured DPS instances.
    pub dps_names: Vec<String>,
    /// The instance used when a request names none.
    pub default_dps: Option<String>,
    /// Checks callers' credentials.
    pub auth: Arc<auth::Authenticator>,
    /// Which `Host` names are served.
    pub hosts: Arc<auth::HostPolicy>,
    /// Which jobs wait for a second person's approval.
    pub approvals: crate::domain::job::ApprovalPolicy,
}

impl std::ops::Deref for AppState {
    type Target = AppInner;
    fn deref(&self) -> &AppInner {
        &self.0
    }
}

impl AppState {
    /// Wraps the shared parts.
    pub fn new(inner: AppInner) -> Self {
        Self(Arc::new(inner))
    }

    /// The DPS instance a request runs against: the named one, or the only one configured.
    pub fn resolve_dps(&self, requested: Option<&str>) -> Result<String, ApiError> {
        let known = self.dps_names.join(", ");
        match requested {
            Some(name) if self.dps_names.iter().any(|n| n == name) => Ok(name.to_string()),
            Some(name) => Err(ApiError::Validation(vec![FieldError::new(
                "dps",
                format!("unknown DPS instance `{name}`; configured: {known}"),
            )])),
            None if self.default_dps.is_some() => Ok(self.default_dps.clone().unwrap_or_default()),
            None => Err(ApiError::Validation(vec![FieldError::new(
                "dps",
                format!("is required because several DPS instances are configured: {known}"),
            )])),
        }
    }
}

/// The OpenAPI document's fixed parts; paths come from the routers.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "deprovisiond",
        description = "Deprovisions Azure IoT devices enrolled through the Device Provisioning Service: \
            revoke at DPS first, then disable or delete the identity in the assigned IoT hub. \
            Every error is an RFC 9457 problem document (application/problem+json).",
        license(name = "MIT", identifier = "MIT")
    ),
    tags(
        (name = "deprovisions", description = "Deprovisioning jobs"),
        (name = "tombstones", description = "Disabled individual enrollments that block single devices of groups"),
        (name = "health", description = "Probes"),
        (name = "webhooks", description = "Signed deliveries from ticketing systems (Jira, ServiceNow) and other callers")
    ),
    components(schemas(error::Problem, crate::domain::job::TargetKind, crate::domain::job::JobStatus))
)]
pub struct ApiDoc;

fn api_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(deprovisions::router())
        .merge(tombstones::router())
        .merge(health::router())
        .merge(metrics::router())
        .merge(webhooks::router())
}

/// The OpenAPI document (also committed as `openapi/openapi.json`).
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut doc = api_router().into_openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    document_security(document_common_responses(document_target_kinds(doc)))
}

/// Security schemes (Swagger UI's Authorize button), and on every operation the role it needs
/// (`x-required-role`, from [`auth::required_role`]), its security requirement, and its 401 and 403.
fn document_security(mut doc: utoipa::openapi::OpenApi) -> utoipa::openapi::OpenApi {
    use utoipa::openapi::extensions::ExtensionsBuilder;
    use utoipa::openapi::security::{
        HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme,
    };
    use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
    let components = doc.components.get_or_insert_with(Default::default);
    components.security_schemes.insert(
        "api_key".into(),
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .bearer_format("dpk_…")
                .description(Some(
                    "An API key (`deprovisiond keys new --name … --role …`) as a bearer token",
                ))
                .build(),
        )
        .into(),
    );
    components.security_schemes.insert(
        "oidc".into(),
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .bearer_format("JWT")
                .description(Some(
                    "An access token from the configured OIDC issuer (e.g. Entra ID), whose role claim maps to \
                     reader, operator or admin",
                ))
                .build(),
        )
        .into(),
    );
    let problem = |description: &str| {
        ResponseBuilder::new()
            .description(description)
            .content(
                PROBLEM,
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("Problem")))
                    .build(),
            )
            .build()
    };
    for (path, item) in doc.paths.paths.iter_mut() {
        for (method, op) in [
            (axum::http::Method::GET, &mut item.get),
            (axum::http::Method::POST, &mut item.post),
            (axum::http::Method::PUT, &mut item.put),
            (axum::http::Method::DELETE, &mut item.delete),
            (axum::http::Method::PATCH, &mut item.patch),
        ] {
            let Some(op) = op.as_mut() else { continue };
            let role = auth::required_role(&method, path);
            let ext = ExtensionsBuilder::new()
                .add("x-required-role", role.map_or("none", auth::Role::as_str))
                .build();
            match op.extensions.as_mut() {
                Some(e) => e.merge(ext),
                None => op.extensions = Some(ext),
            }
            let Some(role) = role else {
                // An empty requirement: no credential needed.
                op.security = Some(vec![SecurityRequirement::default()]);
                continue;
            };
            op.security = Some(vec![
                SecurityRequirement::new("api_key", Vec::<String>::new()),
                SecurityRequirement::new("oidc", Vec::<String>::new()),
            ]);
            let responses = &mut op.responses.responses;
            responses.entry("401".into()).or_insert_with(|| {
                problem("No credential, or not a valid one (see the `WWW-Authenticate` header)")
                    .into()
            });
            responses.entry("403".into()).or_insert_with(|| {
                problem(&format!(
                    "The caller's role is below {role}, which this operation needs"
                ))
                .into()
            });
        }
    }
    doc
}

/// Answers every operation can give whatever its handler does: 500 (a bug, logged), 503 (the database is not
/// reachable, or a feature is not configured) and 408 (the request was not received in time), each a problem.
/// Documented here once rather than on every handler, so no operation can forget them.
fn document_common_responses(mut doc: utoipa::openapi::OpenApi) -> utoipa::openapi::OpenApi {
    use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
    let problem = |description: &str| {
        ResponseBuilder::new()
            .description(description)
            .content(
                PROBLEM,
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("Problem")))
                    .build(),
            )
            .build()
    };
    for item in doc.paths.paths.values_mut() {
        for op in [
            &mut item.get,
            &mut item.post,
            &mut item.put,
            &mut item.delete,
            &mut item.patch,
        ]
        .into_iter()
        .flatten()
        {
            let responses = &mut op.responses.responses;
            for (code, description) in [
                (
                    "408",
                    "The request (headers, body or handling) did not complete within the server's timeouts",
                ),
                ("500", "Unexpected error; logged, reported without details"),
                (
                    "503",
                    "The database is not reachable, or the feature is not configured",
                ),
            ] {
                responses
                    .entry(code.to_string())
                    .or_insert_with(|| problem(description).into());
            }
        }
    }
    doc
}

/// Each target variant is a closed object (`additionalProperties: false`) combined with its `kind` tag;
/// the tag must be a property of the variant too, or no body could satisfy the schema.
fn document_target_kinds(mut doc: utoipa::openapi::OpenApi) -> utoipa::openapi::OpenApi {
    use utoipa::openapi::RefOr;
    use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
    let Some(components) = doc.components.as_mut() else {
        return doc;
    };
    for (name, kind) in [
        ("IndividualTarget", "individual_enrollment"),
        ("GroupTarget", "enrollment_group"),
        ("GroupDeviceTarget", "group_device"),
    ] {
        if let Some(RefOr::T(Schema::Object(obj))) = components.schemas.get_mut(name) {
            let tag = ObjectBuilder::new()
                .schema_type(Type::String)
                .enum_values(Some([kind]))
                .description(Some("The target kind."))
                .build();
            obj.properties.insert("kind".into(), tag.into());
            obj.required.insert(0, "kind".into());
        }
    }
    doc
}

/// The document as the pretty JSON that is committed.
pub fn openapi_json() -> String {
    // Serialising an OpenApi value to JSON cannot fail: it is plain data.
    let mut s = serde_json::to_string_pretty(&openapi()).expect("OpenAPI document serialises");
    s.push('\n');
    s
}

/// The whole HTTP application; bodies larger than `body_limit` bytes get a 413 problem.
pub fn app(state: AppState, body_limit: usize) -> Router {
    let (router, _) = api_router().split_for_parts();
    let authenticator = state.auth.clone();
    let hosts = state.hosts.clone();
    router
        .merge(SwaggerUi::new("/docs").url("/openapi.json", openapi()))
        // The dashboard is HTML for people, outside the OpenAPI document.
        .merge(ui::router())
        // A route layer, so it sees the matched route template; it covers every route merged above
        // (merge new routers before this line). Unknown routes fall through to the 404 below.
        .route_layer(axum::middleware::from_fn_with_state(
            authenticator,
            auth::require_principal,
        ))
        .fallback(no_route)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::from_fn(move |req: Request<Body>, next: axum::middleware::Next| {
            refuse_declared_oversize(req, next, body_limit)
        }))
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(axum::middleware::from_fn_with_state(hosts, auth::host::check_host))
        .layer(TraceLayer::new_for_http().make_span_with(|req: &Request<Body>| {
            let id = req.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or("-");
            tracing::info_span!("http", method = %req.method(), path = %req.uri().path(), request_id = %id)
        }))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            Duration::from_secs(60),
        ))
        .layer(axum::middleware::map_response(problem_for_bare_errors))
}

/// Gives a problem body to error answers made without one (the request timeout layer's 408): every error
/// the app sends is problem+json.
async fn problem_for_bare_errors(resp: Response) -> Response {
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error())
        || resp
            .headers()
            .contains_key(axum::http::header::CONTENT_TYPE)
    {
        return resp;
    }
    let err = match status {
        StatusCode::REQUEST_TIMEOUT => ApiError::RequestTimeout(
            "the request was not handled within the server's 60 s request timeout".into(),
        ),
        _ => ApiError::Internal(anyhow::anyhow!("bare {status} response")),
    };
    let mut problem = err.problem();
    problem.status = status.as_u16();
    problem_response(status, problem)
}

/// Refuses a body whose declared `Content-Length` is over the limit before reading any of it: otherwise the
/// server waited for megabytes a client may never send before answering 413.
async fn refuse_declared_oversize(
    req: Request<Body>,
    next: axum::middleware::Next,
    limit: usize,
) -> Response {
    let declared = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        let mut resp = extract::too_large().into_response();
        // The unread body is not drained; the connection cannot be reused.
        resp.headers_mut().insert(
            axum::http::header::CONNECTION,
            axum::http::HeaderValue::from_static("close"),
        );
        return resp;
    }
    next.run(req).await
}

async fn no_route(uri: Uri) -> ApiError {
    ApiError::NoRoute(uri.path().to_string())
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("a request handler panicked");
    let err = ApiError::Internal(anyhow::anyhow!("handler panicked"));
    problem_response(StatusCode::INTERNAL_SERVER_ERROR, err.problem()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_handler_becomes_a_problem_without_details() {
        let resp = panic_response(Box::new("secret internal detail"));
        assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(resp.headers()["content-type"], error::PROBLEM_JSON);
        let body = axum::body::to_bytes(resp.into_body(), 4096).await.unwrap();
        let p: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(p["type"], "urn:deprovisiond:problem:internal-error");
        assert_eq!(p["status"], 500);
        assert!(!String::from_utf8_lossy(&body).contains("secret"));
    }
}

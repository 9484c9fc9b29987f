//! What both clients share: endpoint URL, api-version, SAS header, timeouts, and turning responses into
//! values or classified errors.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::stream::{self, BoxStream, StreamExt, TryStreamExt};
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use url::Url;

use super::auth::{DEFAULT_TOKEN_TTL, SasTokenProvider};
use super::connection_string::ConnectionString;
use super::error::{AzureError, ErrorDetails};
use crate::domain::clock::{Clock, SystemClock};

/// `User-Agent` of every request.
pub const USER_AGENT: &str = concat!("deprovisiond/", env!("CARGO_PKG_VERSION"));
/// Default connect timeout.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default whole-request timeout.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Request header carrying the page size of a query.
pub(crate) const MAX_ITEM_COUNT: &str = "x-ms-max-item-count";
/// Request and response header carrying a query's continuation token.
pub(crate) const CONTINUATION: &str = "x-ms-continuation";

/// Options of one DPS or hub client.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// `api-version` sent on every call; None = the client's default.
    pub api_version: Option<String>,
    /// Send requests here (scheme, host, port, optional path prefix) instead of `https://{HostName}`;
    /// tokens still sign the configured HostName. For a simulator or a proxy.
    pub base_url: Option<Url>,
    /// TCP + TLS connect timeout.
    pub connect_timeout: Duration,
    /// Whole-request timeout.
    pub request_timeout: Duration,
    /// SAS token lifetime.
    pub token_ttl: Duration,
    /// Clock used for token expiry.
    pub clock: Arc<dyn Clock>,
    /// Extra trusted root certificates (PEM), e.g. a simulator's self-signed CA.
    pub extra_root_certificates_pem: Vec<Vec<u8>>,
    /// Reuse this HTTP client (and its connection pool) instead of building one; the timeouts and roots above
    /// are then those of the given client.
    pub http_client: Option<reqwest::Client>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            api_version: None,
            base_url: None,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            token_ttl: DEFAULT_TOKEN_TTL,
            clock: Arc::new(SystemClock),
            extra_root_certificates_pem: Vec::new(),
            http_client: None,
        }
    }
}

/// Builds the HTTP client the options describe (rustls, timeouts, User-Agent).
pub fn build_http_client(
    connect_timeout: Duration,
    request_timeout: Duration,
    extra_root_certificates_pem: &[Vec<u8>],
) -> Result<reqwest::Client, AzureError> {
    let mut roots = Vec::new();
    for pem in extra_root_certificates_pem {
        let certs = reqwest::Certificate::from_pem_bundle(pem)
            .map_err(|e| AzureError::Setup(format!("invalid root certificate: {e}")))?;
        roots.extend(certs);
    }
    reqwest::Client::builder()
        .tls_backend_rustls()
        .tls_certs_merge(roots)
        .connect_timeout(connect_timeout)
        .timeout(request_timeout)
        .user_agent(USER_AGENT)
        .build()
        .map_err(|e| AzureError::Setup(e.to_string()))
}

/// A request body.
pub(crate) enum Body {
    /// No body at all (GET, DELETE).
    None,
    /// An empty body with `Content-Length: 0` (POST without payload).
    Empty,
    /// JSON.
    Json(Vec<u8>),
}

impl Body {
    pub(crate) fn json<T: Serialize + ?Sized>(value: &T) -> Result<Self, AzureError> {
        serde_json::to_vec(value).map(Body::Json).map_err(|e| {
            AzureError::InvalidRequest(format!("cannot serialise the request body: {e}"))
        })
    }
}

/// A response received from the service.
pub(crate) struct RawResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl RawResponse {
    /// Parses the JSON body.
    pub(crate) fn json<T: DeserializeOwned>(&self) -> Result<T, AzureError> {
        serde_json::from_slice(&self.body).map_err(|e| {
            AzureError::Other(ErrorDetails {
                status: Some(self.status.as_u16()),
                message: format!("cannot read the response body: {e}"),
                ..ErrorDetails::default()
            })
        })
    }

    /// The `x-ms-continuation` header, if present and non-empty.
    pub(crate) fn continuation(&self) -> Option<String> {
        let v = self.headers.get(CONTINUATION)?.to_str().ok()?.trim();
        (!v.is_empty()).then(|| v.to_string())
    }
}

/// One service instance: where to send, what to sign, which api-version.
#[derive(Debug)]
pub(crate) struct Endpoint {
    host_name: String,
    base: Url,
    api_version: String,
    auth: SasTokenProvider,
    http: reqwest::Client,
}

impl Endpoint {
    pub(crate) fn new(
        cs: &ConnectionString,
        options: ClientOptions,
        default_api_version: &str,
    ) -> Result<Self, AzureError> {
        let base = match options.base_url {
            Some(url) => url,
            None => Url::parse(&format!("https://{}", cs.host_name())).map_err(|e| {
                AzureError::Setup(format!("invalid host name {}: {e}", cs.host_name()))
            })?,
        };
        if !matches!(base.scheme(), "http" | "https") || base.host_str().is_none() {
            return Err(AzureError::Setup(format!(
                "base URL {base} is not an http(s) URL with a host"
            )));
        }
        let http = match options.http_client {
            Some(c) => c,
            None => build_http_client(
                options.connect_timeout,
                options.request_timeout,
                &options.extra_root_certificates_pem,
            )?,
        };
        let auth = SasTokenProvider::new(cs, options.clock).with_ttl(options.token_ttl);
        Ok(Self {
            host_name: cs.host_name().to_ascii_lowercase(),
            base,
            api_version: options
                .api_version
                .unwrap_or_else(|| default_api_version.to_string()),
            auth,
            http,
        })
    }

    pub(crate) fn host_name(&self) -> &str {
        &self.host_name
    }

    pub(crate) fn api_version(&self) -> &str {
        &self.api_version
    }

    pub(crate) fn base_url(&self) -> &Url {
        &self.base
    }

    pub(crate) fn auth(&self) -> &SasTokenProvider {
        &self.auth
    }

    /// The URL of a path made of `segments` (each percent-encoded), with `api-version`.
    ///
    /// Refuses a segment that is empty, `.` or `..`: URL parsers drop or resolve those, so the request would
    /// reach another resource than the one named. Every other character is percent-encoded (`/`, `?`, `#`,
    /// `%`, non-ASCII), so no id can add a segment, a query or a fragment.
    pub(crate) fn url(&self, segments: &[&str]) -> Result<Url, AzureError> {
        if let Some(bad) = segments
            .iter()
            .find(|s| s.is_empty() || matches!(**s, "." | ".."))
        {
            return Err(AzureError::InvalidRequest(format!(
                "`{bad}` cannot be a URL path segment; refusing to send a request to another resource"
            )));
        }
        let mut url = self.base.clone();
        {
            // Checked in `new`: http(s) URLs with a host can always take path segments.
            if let Ok(mut path) = url.path_segments_mut() {
                path.pop_if_empty().extend(segments);
            }
        }
        // The URL parser also drops tabs and newlines and may resolve what it sees as dot segments: decode
        // what will be sent and refuse unless it is exactly what was asked for.
        let sent: Vec<String> = url
            .path_segments()
            .map(|s| {
                s.rev()
                    .take(segments.len())
                    .map(|seg| {
                        percent_encoding::percent_decode_str(seg)
                            .decode_utf8_lossy()
                            .into_owned()
                    })
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default()
            .into_iter()
            .rev()
            .collect();
        if sent.len() != segments.len() || sent.iter().zip(segments).any(|(a, b)| a != b) {
            return Err(AzureError::InvalidRequest(format!(
                "{segments:?} cannot be sent as URL path segments unchanged; refusing to address another resource"
            )));
        }
        url.query_pairs_mut()
            .clear()
            .append_pair("api-version", &self.api_version);
        Ok(url)
    }

    /// Sends a request and returns the response whatever its status; only transport failures are errors.
    pub(crate) async fn send_raw(
        &self,
        method: Method,
        segments: &[&str],
        headers: HeaderMap,
        body: Body,
    ) -> Result<RawResponse, AzureError> {
        let url = self.url(segments)?;
        let authorization = HeaderValue::from_str(&self.auth.header())
            .map_err(|_| AzureError::Setup("SAS token is not a valid header value".into()))?;
        let mut request = self
            .http
            .request(method.clone(), url.clone())
            .headers(headers)
            .header(http::header::AUTHORIZATION, authorization);
        request = match body {
            Body::None => request,
            // hyper omits the header for an empty body; IIS-fronted services answer 411 without it.
            Body::Empty => request
                .header(http::header::CONTENT_LENGTH, "0")
                .body(Vec::new()),
            Body::Json(bytes) => request
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(bytes),
        };
        let started = Instant::now();
        let operation = operation_label(&method, segments);
        let response = match request.send().await {
            Ok(r) => r,
            Err(e) => {
                self.record_call(&operation, "transport_error", started);
                return Err(AzureError::from_transport(&e));
            }
        };
        let status = response.status();
        self.record_call(&operation, status.as_str(), started);
        if status == StatusCode::TOO_MANY_REQUESTS {
            metrics::counter!(
                "deprovisiond_azure_throttled_total",
                "service" => self.service(),
                "host" => self.host_name.clone()
            )
            .increment(1);
        }
        if status == StatusCode::UNAUTHORIZED {
            // The next call mints a fresh token rather than resending one the service refused.
            self.auth.invalidate();
        }
        let headers = response.headers().clone();
        let body = response
            .bytes()
            .await
            .map_err(|e| AzureError::from_transport(&e))?;
        tracing::debug!(
            host = %self.host_name,
            %method,
            path = url.path(),
            status = status.as_u16(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "azure call"
        );
        Ok(RawResponse {
            status,
            headers,
            body,
        })
    }

    /// `dps` or `hub`, from the host name's suffix (the label of every metric of this endpoint).
    fn service(&self) -> &'static str {
        if self.host_name.ends_with(".azure-devices-provisioning.net") {
            "dps"
        } else {
            "hub"
        }
    }

    fn record_call(&self, operation: &str, status: &str, started: Instant) {
        let service = self.service();
        metrics::counter!(
            "deprovisiond_azure_calls_total",
            "service" => service,
            "host" => self.host_name.clone(),
            "operation" => operation.to_string(),
            "status" => status.to_string()
        )
        .increment(1);
        metrics::histogram!(
            "deprovisiond_azure_call_duration_seconds",
            "service" => service,
            "operation" => operation.to_string()
        )
        .record(started.elapsed().as_secs_f64());
    }

    /// Sends a request; a non-2xx status becomes a classified [`AzureError`].
    pub(crate) async fn send(
        &self,
        method: Method,
        segments: &[&str],
        headers: HeaderMap,
        body: Body,
    ) -> Result<RawResponse, AzureError> {
        let response = self.send_raw(method, segments, headers, body).await?;
        if response.status.is_success() {
            Ok(response)
        } else {
            Err(AzureError::from_response(
                response.status.as_u16(),
                &response.headers,
                &response.body,
            ))
        }
    }
}

/// `GET /enrollments/{id}`: the request's method and path with ids replaced, so metric labels stay few.
pub(crate) fn operation_label(method: &Method, segments: &[&str]) -> String {
    const WORDS: &[&str] = &[
        "enrollments",
        "enrollmentGroups",
        "registrations",
        "devices",
        "query",
        "attestationmechanism",
        "jobs",
        "create",
        "twins",
    ];
    let mut label = format!("{method} ");
    for (i, seg) in segments.iter().enumerate() {
        // The first segment names the collection; later ones are ids unless they are operation words.
        let word = i == 0 || WORDS.contains(seg);
        label.push('/');
        label.push_str(if word { seg } else { "{id}" });
    }
    label
}

/// Paging request headers.
pub(crate) fn paging_headers(
    page_size: Option<u32>,
    continuation: Option<&str>,
) -> Result<HeaderMap, AzureError> {
    let mut h = HeaderMap::new();
    if let Some(n) = page_size {
        h.insert(MAX_ITEM_COUNT, HeaderValue::from(n));
    }
    if let Some(c) = continuation {
        let v = HeaderValue::from_str(c).map_err(|_| {
            AzureError::InvalidRequest("continuation token is not a valid header value".into())
        })?;
        h.insert(CONTINUATION, v);
    }
    Ok(h)
}

/// Turns a page-fetching function into a stream of items, following continuation tokens until the last page.
/// A service that hands back the same token twice would loop forever: that ends the stream with an error.
pub(crate) fn paged<T, F, Fut>(fetch: F) -> BoxStream<'static, Result<T, AzureError>>
where
    T: Send + 'static,
    F: Fn(Option<String>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(Vec<T>, Option<String>), AzureError>> + Send + 'static,
{
    enum State {
        Next(Option<String>),
        Done,
    }
    let fetch = Arc::new(fetch);
    stream::try_unfold(State::Next(None), move |state| {
        let fetch = fetch.clone();
        async move {
            let State::Next(token) = state else {
                return Ok(None);
            };
            let (items, next) = fetch(token.clone()).await?;
            let next_state = match next {
                Some(n) if Some(&n) == token.as_ref() => {
                    return Err(AzureError::Other(ErrorDetails {
                        message: "the service returned the same continuation token twice".into(),
                        ..ErrorDetails::default()
                    }));
                }
                Some(n) => State::Next(Some(n)),
                None => State::Done,
            };
            Ok(Some((items, next_state)))
        }
    })
    .map_ok(|items| stream::iter(items.into_iter().map(Ok)))
    .try_flatten()
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operation_labels_hide_ids() {
        assert_eq!(
            operation_label(&Method::GET, &["devices", "dev-1"]),
            "GET /devices/{id}"
        );
        assert_eq!(
            operation_label(&Method::POST, &["registrations", "fleet-a", "query"]),
            "POST /registrations/{id}/query"
        );
        assert_eq!(
            operation_label(
                &Method::POST,
                &["enrollments", "e-1", "attestationmechanism"]
            ),
            "POST /enrollments/{id}/attestationmechanism"
        );
        assert_eq!(
            operation_label(&Method::POST, &["devices", "query"]),
            "POST /devices/query"
        );
    }
}

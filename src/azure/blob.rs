//! A small Azure Blob Storage client: what the hub's import/export jobs need around them (issue 13).
//!
//! A container is given as a SAS URL (`https://acct.blob.core.windows.net/jobs?sv=…&sig=…`, or Azurite's
//! `http://127.0.0.1:10000/devstoreaccount1/jobs?…`); its query authorises every request. The `sig` in it
//! is a secret: [`ContainerSasUrl`] shows it as `***` in `Debug` and `Display`, and no error or log line
//! carries a request URL.
//!
//! Blobs are never held whole: [`BlobWriter`] stages blocks of a few MiB (Put Block) and commits them
//! (Put Block List); [`BlobLines`] reads ranges (Get Blob with `x-ms-range`, each after the first
//! conditioned on the first one's ETag) and yields lines.

use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::{Bytes, BytesMut};
use futures::stream::{self, BoxStream, Stream, StreamExt};
use http::{HeaderMap, Method, StatusCode};
use tokio::task::JoinHandle;
use url::Url;

use super::secret::Secret;
use super::transport::build_http_client;

/// `x-ms-version` of every request: a Blob service version Azure and Azurite 3.x both serve.
pub const BLOB_SERVICE_VERSION: &str = "2021-08-06";
/// Block size of [`BlobWriter`] unless told otherwise.
pub const DEFAULT_BLOCK_SIZE: usize = 4 * 1024 * 1024;
/// Bytes one ranged Get Blob of [`BlobLines`] asks for unless told otherwise.
pub const DEFAULT_READ_RANGE: u64 = 4 * 1024 * 1024;
/// Longest line [`BlobLines`] accepts: a device line with certificates stays far below; a blob that is
/// not line-delimited would otherwise be buffered whole.
pub const MAX_LINE_BYTES: usize = 4 * 1024 * 1024;
/// Most committed blocks a block blob holds (Blob service limit).
pub const MAX_BLOCKS: usize = 50_000;
/// Whole-request timeout of one blob call (one block or one range, not one blob).
pub const DEFAULT_BLOB_REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// Blocks one [`BlobWriter`] has on their way to the service while the caller goes on writing: the
/// caller's work and the uploads overlap, and memory stays at a few blocks.
pub const BLOCKS_IN_FLIGHT: usize = 2;

/// Times one blob call is sent before a missing answer (no connection, a reset, a timeout) is an error.
pub const TRANSPORT_ATTEMPTS: u32 = 3;

/// One ranged Get Blob's answer: the bytes, the blob's size and its ETag.
type Range = (Bytes, Option<u64>, Option<String>);

/// A failed blob operation: which one, on which blob, and what the Blob service answered.
/// Never holds the SAS.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlobError {
    /// The container URL is not an http(s) SAS URL naming a container.
    #[error("invalid blob container URL: {0}")]
    InvalidUrl(String),
    /// The storage connection string cannot be used (the text itself is never repeated).
    #[error("invalid storage connection string: {0}")]
    InvalidConnectionString(String),
    /// The Blob service answered with an error status.
    #[error("{operation} {blob}: HTTP {status}{}{}", code_suffix(.code), message_suffix(.message))]
    Service {
        /// `Get Blob`, `Put Block`, …
        operation: &'static str,
        /// `container/blob` (or `container` for container operations).
        blob: String,
        /// HTTP status.
        status: u16,
        /// `x-ms-error-code` or the body's `<Code>`: `AuthenticationFailed`, `ContainerNotFound`, …
        code: Option<String>,
        /// First line of the body's `<Message>`.
        message: String,
        /// `x-ms-request-id`, for Azure support.
        request_id: Option<String>,
    },
    /// No answer: connect failure, timeout, broken connection.
    #[error("{operation} {blob}: {message}")]
    Transport {
        /// `Get Blob`, `Put Block`, …
        operation: &'static str,
        /// `container/blob`.
        blob: String,
        /// What the HTTP client said (without the URL).
        message: String,
    },
    /// A line to write holds a line break, or a line read is longer than [`MAX_LINE_BYTES`].
    #[error("{blob}: {reason}")]
    InvalidLine {
        /// `container/blob`.
        blob: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The HTTP client could not be built.
    #[error("cannot build the blob client: {0}")]
    Setup(String),
}

fn code_suffix(code: &Option<String>) -> String {
    code.as_deref().map(|c| format!(" {c}")).unwrap_or_default()
}

fn message_suffix(message: &str) -> String {
    if message.is_empty() {
        String::new()
    } else {
        format!(" ({message})")
    }
}

impl BlobError {
    /// The HTTP status, when the service answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Service { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The Blob service's error code (`AuthenticationFailed`, `BlobNotFound`, …).
    pub fn code(&self) -> Option<&str> {
        match self {
            Self::Service { code, .. } => code.as_deref(),
            _ => None,
        }
    }

    /// Worth retrying as is after a backoff: no answer, 408, 429, 5xx (`ServerBusy` is a 503).
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Transport { .. } => true,
            Self::Service { status, .. } => matches!(status, 408 | 429 | 500..=599),
            _ => false,
        }
    }

    /// 404: the blob or its container does not exist.
    pub fn is_not_found(&self) -> bool {
        self.status() == Some(404)
    }

    /// 403: the SAS is expired, not yet valid, badly signed or lacks the permission.
    pub fn is_auth_failure(&self) -> bool {
        self.status() == Some(403)
    }
}

/// `url` with the value of every `sig` query parameter replaced by `***`; text that is not a URL keeps
/// only what precedes its query. For logs, errors and audit records of URLs that may carry a SAS.
pub fn redact_sas(url: &str) -> String {
    let Ok(mut parsed) = Url::parse(url) else {
        return match url.split_once('?') {
            Some((base, _)) => format!("{base}?***"),
            None => url.to_string(),
        };
    };
    if parsed.query().is_none() {
        return url.to_string();
    }
    let pairs: Vec<(String, String)> = parsed
        .query_pairs()
        .map(|(k, v)| {
            let v = if k.eq_ignore_ascii_case("sig") {
                "***".to_string()
            } else {
                v.into_owned()
            };
            (k.into_owned(), v)
        })
        .collect();
    parsed.query_pairs_mut().clear().extend_pairs(pairs);
    parsed.into()
}

/// `text` with the value of every `sig=` in it replaced by `***`: for messages that may quote a SAS URL
/// somewhere inside (a hub job's failure reason is the hub's words, not ours).
pub fn redact_sas_in_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.to_ascii_lowercase().find("sig=") {
        let value = at + "sig=".len();
        out.push_str(&rest[..value]);
        let end = rest[value..]
            .find(|c: char| c == '&' || c.is_whitespace() || "()<>\"',;".contains(c))
            .map_or(rest.len(), |i| value + i);
        if end > value {
            out.push_str("***");
        }
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// A blob container addressed by a SAS URL. `Debug` and `Display` redact the signature.
#[derive(Clone, PartialEq, Eq)]
pub struct ContainerSasUrl {
    /// The container URL without its query.
    container_url: Url,
    name: String,
    /// The SAS query (`sv=…&sig=…`), as given.
    sas: Secret,
}

impl ContainerSasUrl {
    /// Parses a container SAS URL; the last path segment is the container, the query is the SAS
    /// (it must carry a `sig`).
    pub fn parse(text: &str) -> Result<Self, BlobError> {
        let url = Url::parse(text.trim()).map_err(|e| {
            // The parser's message never quotes the input, so the SAS cannot leak through it.
            BlobError::InvalidUrl(format!("not a URL: {e}"))
        })?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(BlobError::InvalidUrl(
                "a container URL is an http(s) URL with a host".into(),
            ));
        }
        let Some(query) = url.query().filter(|q| !q.is_empty()) else {
            return Err(BlobError::InvalidUrl(format!(
                "{} carries no SAS query (…?sv=…&sig=…)",
                redact_sas(url.as_str())
            )));
        };
        if !url.query_pairs().any(|(k, v)| k == "sig" && !v.is_empty()) {
            return Err(BlobError::InvalidUrl(format!(
                "the SAS of {} has no sig",
                redact_sas(url.as_str())
            )));
        }
        let sas = Secret::new(query);
        let mut container_url = url;
        container_url.set_query(None);
        container_url.set_fragment(None);
        let path = container_url.path().trim_end_matches('/').to_string();
        container_url.set_path(&path);
        let name = container_url
            .path_segments()
            .and_then(|mut s| s.next_back())
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .ok_or_else(|| BlobError::InvalidUrl(format!("{container_url} names no container")))?;
        Ok(Self {
            container_url,
            name,
            sas,
        })
    }

    /// Joins a container URL (no query) and a SAS query (`sv=…&sig=…`, without `?`).
    pub fn from_parts(container_url: &Url, sas_query: &str) -> Result<Self, BlobError> {
        let mut url = container_url.clone();
        url.set_query(Some(sas_query.trim_start_matches('?')));
        Self::parse(url.as_str())
    }

    /// The container's name.
    pub fn container(&self) -> &str {
        &self.name
    }

    /// The container URL without the SAS (safe to show).
    pub fn container_url(&self) -> &Url {
        &self.container_url
    }

    /// The full SAS URL, signature included, as the hub's `inputBlobContainerUri` /
    /// `outputBlobContainerUri` take it. Hand it on; never log it.
    pub fn expose(&self) -> String {
        format!("{}?{}", self.container_url, self.sas.expose())
    }

    /// `container/blob`, for messages.
    fn label(&self, blob: &str) -> String {
        if blob.is_empty() {
            self.name.clone()
        } else {
            format!("{}/{blob}", self.name)
        }
    }

    /// The request URL of `blob` (empty: the container itself) with the SAS and `extra` query pairs.
    /// Holds the signature: never log it.
    fn request_url(&self, blob: &str, extra: &[(&str, &str)]) -> Result<Url, BlobError> {
        let mut url = self.container_url.clone();
        if !blob.is_empty() {
            let parts: Vec<&str> = blob.split('/').collect();
            if parts
                .iter()
                .any(|p| p.is_empty() || matches!(*p, "." | ".."))
            {
                return Err(BlobError::InvalidUrl(format!(
                    "blob name {blob:?} has an empty, `.` or `..` segment"
                )));
            }
            // http(s) URLs with a host (checked in `parse`) always take path segments.
            if let Ok(mut segments) = url.path_segments_mut() {
                // A blob name's `/` are virtual folders: each part is its own segment.
                segments.extend(parts);
            }
        }
        let mut query = self.sas.expose().to_string();
        if !extra.is_empty() {
            let more = url::form_urlencoded::Serializer::new(String::new())
                .extend_pairs(extra)
                .finish();
            query.push('&');
            query.push_str(&more);
        }
        url.set_query(Some(&query));
        Ok(url)
    }
}

impl fmt::Display for ContainerSasUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact_sas(&self.expose()))
    }
}

impl fmt::Debug for ContainerSasUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ContainerSasUrl({self})")
    }
}

/// What [`BlobWriter::finish`] committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobWritten {
    /// Lines written.
    pub lines: u64,
    /// Bytes written.
    pub bytes: u64,
    /// Blocks staged (0: the blob went up in one Put Blob).
    pub blocks: usize,
}

/// A Blob service client for one container. Cheap to clone (one connection pool).
#[derive(Debug, Clone)]
pub struct BlobContainerClient {
    http: reqwest::Client,
    container: ContainerSasUrl,
}

impl BlobContainerClient {
    /// A client with its own HTTP client (connect timeout 10 s, request timeout
    /// [`DEFAULT_BLOB_REQUEST_TIMEOUT`]).
    pub fn new(container: ContainerSasUrl) -> Result<Self, BlobError> {
        let http = build_http_client(
            super::transport::DEFAULT_CONNECT_TIMEOUT,
            DEFAULT_BLOB_REQUEST_TIMEOUT,
            &[],
        )
        .map_err(|e| BlobError::Setup(e.to_string()))?;
        Ok(Self::with_http_client(container, http))
    }

    /// A client sharing `http` (its timeouts and trusted roots).
    pub fn with_http_client(container: ContainerSasUrl, http: reqwest::Client) -> Self {
        Self { http, container }
    }

    /// The container this client addresses.
    pub fn container(&self) -> &ContainerSasUrl {
        &self.container
    }

    /// Sends one request; a non-2xx answer becomes [`BlobError::Service`].
    async fn send(
        &self,
        operation: &'static str,
        blob: &str,
        method: Method,
        extra_query: &[(&str, &str)],
        headers: HeaderMap,
        body: Option<Bytes>,
    ) -> Result<reqwest::Response, BlobError> {
        let url = self.container.request_url(blob, extra_query)?;
        // Every call of this client is idempotent (ranged reads, blocks by id, whole-blob puts, deletes), so
        // one that got no answer is sent again before it fails: a pooled connection the service closed
        // while idle is reset when reused, and the step retrying would start its whole blob over.
        let mut attempt = 1;
        let response = loop {
            let mut request = self
                .http
                .request(method.clone(), url.clone())
                .headers(headers.clone())
                .header("x-ms-version", BLOB_SERVICE_VERSION);
            if let Some(body) = &body {
                // The Blob service answers 411 to a PUT without Content-Length, which the HTTP client
                // leaves out for an empty body (an empty importErrors.log, an empty import).
                request = request
                    .header(http::header::CONTENT_LENGTH, body.len())
                    .body(body.clone());
            }
            match request.send().await {
                Ok(response) => break response,
                Err(e) if attempt < TRANSPORT_ATTEMPTS => {
                    tracing::debug!(operation, blob, attempt, error = %error_chain(&e.without_url()), "blob call got no answer; sending it again");
                    tokio::time::sleep(Duration::from_millis(50 * u64::from(attempt))).await;
                    attempt += 1;
                }
                Err(e) => {
                    return Err(BlobError::Transport {
                        operation,
                        blob: self.container.label(blob),
                        message: error_chain(&e.without_url()),
                    });
                }
            }
        };
        let status = response.status();
        tracing::debug!(
            container = %self.container.container_url(),
            blob,
            operation,
            status = status.as_u16(),
            "blob call"
        );
        if status.is_success() {
            return Ok(response);
        }
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
                .filter(|v| !v.is_empty())
        };
        let code = header("x-ms-error-code");
        let request_id = header("x-ms-request-id");
        // HEAD answers carry no body; others carry `<Error><Code/><Message/></Error>`.
        let body = response.text().await.unwrap_or_default();
        Err(BlobError::Service {
            operation,
            blob: self.container.label(blob),
            status: status.as_u16(),
            code: code.or_else(|| xml_text(&body, "Code")),
            message: xml_text(&body, "Message")
                .and_then(|m| m.lines().next().map(|l| l.trim().to_string()))
                .unwrap_or_else(|| status.canonical_reason().unwrap_or("").to_string()),
            request_id,
        })
    }

    /// Create Container. True if created, false if it existed. A container SAS cannot create its own
    /// container (403): that takes an account SAS with resource type `c` and permission `c`.
    pub async fn create_if_missing(&self) -> Result<bool, BlobError> {
        let r = self
            .send(
                "Create Container",
                "",
                Method::PUT,
                &[("restype", "container")],
                HeaderMap::new(),
                Some(Bytes::new()),
            )
            .await;
        match r {
            Ok(_) => Ok(true),
            Err(e) if e.code() == Some("ContainerAlreadyExists") => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Whether `blob` exists (Get Blob Properties). A missing container is an error, not `false`:
    /// it means the SAS URL names the wrong place.
    pub async fn exists(&self, blob: &str) -> Result<bool, BlobError> {
        let r = self
            .send(
                "Get Blob Properties",
                blob,
                Method::HEAD,
                &[],
                HeaderMap::new(),
                None,
            )
            .await;
        match r {
            Ok(_) => Ok(true),
            Err(e) if e.is_not_found() && e.code() != Some("ContainerNotFound") => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Deletes `blob` (Delete Blob); `false` when there was none.
    pub async fn delete(&self, blob: &str) -> Result<bool, BlobError> {
        let r = self
            .send(
                "Delete Blob",
                blob,
                Method::DELETE,
                &[],
                HeaderMap::new(),
                None,
            )
            .await;
        match r {
            Ok(_) => Ok(true),
            Err(e) if e.is_not_found() && e.code() != Some("ContainerNotFound") => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// A writer of `blob` in blocks of [`DEFAULT_BLOCK_SIZE`]; nothing changes until
    /// [`BlobWriter::finish`].
    pub fn writer(&self, blob: &str) -> BlobWriter {
        BlobWriter {
            client: self.clone(),
            blob: blob.to_string(),
            block_size: DEFAULT_BLOCK_SIZE,
            buf: BytesMut::new(),
            block_ids: Vec::new(),
            in_flight: VecDeque::new(),
            lines: 0,
            bytes: 0,
        }
    }

    /// Writes every line of `lines` to `blob` (a `\n` after each), block by block.
    pub async fn put_lines<S, L>(&self, blob: &str, lines: S) -> Result<BlobWritten, BlobError>
    where
        S: Stream<Item = L>,
        L: AsRef<str>,
    {
        let mut writer = self.writer(blob);
        let mut lines = std::pin::pin!(lines);
        while let Some(line) = lines.next().await {
            writer.write_line(line.as_ref()).await?;
        }
        writer.finish().await
    }

    /// A reader of `blob`'s lines, [`DEFAULT_READ_RANGE`] bytes per Get Blob.
    pub fn reader(&self, blob: &str) -> BlobLines {
        BlobLines {
            client: self.clone(),
            blob: blob.to_string(),
            range: DEFAULT_READ_RANGE,
            offset: 0,
            size: None,
            etag: None,
            buf: BytesMut::new(),
            eof: false,
            ahead: None,
        }
    }

    /// `blob`'s lines as a stream (see [`BlobLines`]).
    pub fn lines(&self, blob: &str) -> BoxStream<'static, Result<String, BlobError>> {
        self.reader(blob).into_stream()
    }

    /// One ranged Get Blob: the bytes, the blob's total size and its ETag. A range starting at or past
    /// the end answers no bytes.
    async fn get_range(
        &self,
        blob: &str,
        start: u64,
        len: u64,
        if_match: Option<&str>,
    ) -> Result<Range, BlobError> {
        let mut headers = HeaderMap::new();
        let range = format!("bytes={start}-{}", start + len.max(1) - 1);
        headers.insert(
            "x-ms-range",
            http::HeaderValue::from_str(&range)
                .map_err(|_| BlobError::Setup("range is not a header value".into()))?,
        );
        if let Some(etag) = if_match {
            // Ranges of one blob must come from one version of it: a blob rewritten in the middle
            // of a read fails with 412 instead of mixing two versions.
            headers.insert(
                http::header::IF_MATCH,
                http::HeaderValue::from_str(etag)
                    .map_err(|_| BlobError::Setup("ETag is not a header value".into()))?,
            );
        }
        let r = self
            .send("Get Blob", blob, Method::GET, &[], headers, None)
            .await;
        let response = match r {
            Ok(response) => response,
            // 416 InvalidRange: an empty blob, or a range starting at its end.
            Err(BlobError::Service { status: 416, .. }) => {
                return Ok((Bytes::new(), Some(start), None));
            }
            Err(e) => return Err(e),
        };
        let size = if response.status() == StatusCode::PARTIAL_CONTENT {
            response
                .headers()
                .get(http::header::CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.rsplit('/').next())
                .and_then(|t| t.trim().parse::<u64>().ok())
        } else {
            // 200: the service ignored the range and sent the whole blob.
            response.content_length().map(|n| start + n)
        };
        let etag = response
            .headers()
            .get(http::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let bytes = response.bytes().await.map_err(|e| BlobError::Transport {
            operation: "Get Blob",
            blob: self.container.label(blob),
            message: error_chain(&e.without_url()),
        })?;
        Ok((bytes, size, etag))
    }
}

/// Uploads one blob line by line: buffered up to the block size, each full block staged with Put
/// Block, [`BlobWriter::finish`] commits them with Put Block List (a blob smaller than one block goes
/// up in one Put Blob). Up to [`BLOCKS_IN_FLIGHT`] blocks upload in the background while lines are
/// written; a failed one is reported by a later write or by `finish`. Until `finish` the blob is
/// unchanged; a writer dropped unfinished leaves only uncommitted blocks, which the service discards.
#[derive(Debug)]
pub struct BlobWriter {
    client: BlobContainerClient,
    blob: String,
    block_size: usize,
    buf: BytesMut,
    block_ids: Vec<String>,
    in_flight: VecDeque<JoinHandle<Result<(), BlobError>>>,
    lines: u64,
    bytes: u64,
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        for upload in &self.in_flight {
            upload.abort();
        }
    }
}

/// A background request's error, or its task's end (a panic or an abort) as a transport failure.
fn joined<T>(
    r: Result<Result<T, BlobError>, tokio::task::JoinError>,
    operation: &'static str,
    blob: impl FnOnce() -> String,
) -> Result<T, BlobError> {
    r.unwrap_or_else(|e| {
        Err(BlobError::Transport {
            operation,
            blob: blob(),
            message: format!("the request's task ended: {e}"),
        })
    })
}

impl BlobWriter {
    /// Stages blocks of `bytes` (at least 64 KiB; small blocks only make sense in tests).
    pub fn with_block_size(mut self, bytes: usize) -> Self {
        self.block_size = bytes.max(64 * 1024);
        self
    }

    /// Appends `line` and a `\n`, staging a block whenever one is full. A line holding a line break
    /// would become two lines: refused.
    pub async fn write_line(&mut self, line: &str) -> Result<(), BlobError> {
        if line.contains(['\n', '\r']) {
            return Err(BlobError::InvalidLine {
                blob: self.client.container.label(&self.blob),
                reason: format!("line {} holds a line break", self.lines + 1),
            });
        }
        self.buf.extend_from_slice(line.as_bytes());
        self.buf.extend_from_slice(b"\n");
        self.lines += 1;
        self.bytes += line.len() as u64 + 1;
        while self.buf.len() >= self.block_size {
            let block = self.buf.split_to(self.block_size).freeze();
            self.stage(block).await?;
        }
        Ok(())
    }

    async fn stage(&mut self, block: Bytes) -> Result<(), BlobError> {
        if self.block_ids.len() >= MAX_BLOCKS {
            return Err(BlobError::InvalidLine {
                blob: self.client.container.label(&self.blob),
                reason: format!(
                    "more than {MAX_BLOCKS} blocks of {} bytes: use larger blocks",
                    self.block_size
                ),
            });
        }
        while self.in_flight.len() >= BLOCKS_IN_FLIGHT {
            self.settle_oldest().await?;
        }
        // The ids of one blob's blocks must all have the same length before base64; the list committed
        // is in the order blocks were cut, whatever order their uploads end in.
        let id = B64.encode(format!("deprovisiond-{:010}", self.block_ids.len()));
        self.block_ids.push(id.clone());
        let (client, blob) = (self.client.clone(), self.blob.clone());
        self.in_flight.push_back(tokio::spawn(async move {
            client
                .send(
                    "Put Block",
                    &blob,
                    Method::PUT,
                    &[("comp", "block"), ("blockid", &id)],
                    HeaderMap::new(),
                    Some(block),
                )
                .await
                .map(drop)
        }));
        Ok(())
    }

    /// Waits for the oldest block upload still under way.
    async fn settle_oldest(&mut self) -> Result<(), BlobError> {
        let Some(upload) = self.in_flight.pop_front() else {
            return Ok(());
        };
        joined(upload.await, "Put Block", || {
            self.client.container.label(&self.blob)
        })
    }

    /// Commits everything written; an empty blob when nothing was.
    pub async fn finish(mut self) -> Result<BlobWritten, BlobError> {
        let mut headers = HeaderMap::new();
        let text = http::HeaderValue::from_static("text/plain; charset=utf-8");
        if self.block_ids.is_empty() {
            headers.insert(
                "x-ms-blob-type",
                http::HeaderValue::from_static("BlockBlob"),
            );
            headers.insert(http::header::CONTENT_TYPE, text);
            let body = self.buf.split().freeze();
            self.client
                .send(
                    "Put Blob",
                    &self.blob,
                    Method::PUT,
                    &[],
                    headers,
                    Some(body),
                )
                .await?;
        } else {
            if !self.buf.is_empty() {
                let rest = self.buf.split().freeze();
                self.stage(rest).await?;
            }
            while !self.in_flight.is_empty() {
                self.settle_oldest().await?;
            }
            let mut xml = String::from(r#"<?xml version="1.0" encoding="utf-8"?><BlockList>"#);
            for id in &self.block_ids {
                // Base64 ids need no XML escaping.
                xml.push_str("<Latest>");
                xml.push_str(id);
                xml.push_str("</Latest>");
            }
            xml.push_str("</BlockList>");
            headers.insert("x-ms-blob-content-type", text);
            headers.insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/xml"),
            );
            self.client
                .send(
                    "Put Block List",
                    &self.blob,
                    Method::PUT,
                    &[("comp", "blocklist")],
                    headers,
                    Some(Bytes::from(xml)),
                )
                .await?;
        }
        Ok(BlobWritten {
            lines: self.lines,
            bytes: self.bytes,
            blocks: self.block_ids.len(),
        })
    }
}

/// Reads one blob line by line in ranged Get Blobs, the next range asked for while the caller works
/// through the current one, so memory stays at two ranges plus one line. Lines come without their
/// `\n` / `\r\n`; invalid UTF-8 is replaced, not fatal (the caller parses each line and reports the bad
/// one).
#[derive(Debug)]
pub struct BlobLines {
    client: BlobContainerClient,
    blob: String,
    range: u64,
    offset: u64,
    size: Option<u64>,
    etag: Option<String>,
    buf: BytesMut,
    eof: bool,
    /// The next range, already asked for.
    ahead: Option<JoinHandle<Result<Range, BlobError>>>,
}

impl Drop for BlobLines {
    fn drop(&mut self) {
        if let Some(read) = &self.ahead {
            read.abort();
        }
    }
}

impl BlobLines {
    /// Reads `bytes` per Get Blob (at least 1; tests cut lines across ranges).
    pub fn with_range_size(mut self, bytes: u64) -> Self {
        self.range = bytes.max(1);
        self
    }

    /// Bytes fetched so far and the blob's size once known (for progress).
    pub fn position(&self) -> (u64, Option<u64>) {
        (self.offset, self.size)
    }

    /// The next line; `None` after the last one.
    pub async fn next_line(&mut self) -> Result<Option<String>, BlobError> {
        loop {
            if let Some(i) = self.buf.iter().position(|b| *b == b'\n') {
                let line = self.buf.split_to(i + 1);
                return Ok(Some(line_text(&line)));
            }
            if self.buf.len() > MAX_LINE_BYTES {
                return Err(BlobError::InvalidLine {
                    blob: self.client.container.label(&self.blob),
                    reason: format!("a line is longer than {MAX_LINE_BYTES} bytes"),
                });
            }
            if self.eof {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                let line = self.buf.split();
                return Ok(Some(line_text(&line)));
            }
            let (bytes, size, etag) = match self.ahead.take() {
                Some(read) => joined(read.await, "Get Blob", || {
                    self.client.container.label(&self.blob)
                })?,
                None => {
                    self.client
                        .get_range(&self.blob, self.offset, self.range, self.etag.as_deref())
                        .await?
                }
            };
            if self.etag.is_none() {
                self.etag = etag;
            }
            self.size = size.or(self.size);
            self.offset += bytes.len() as u64;
            if bytes.is_empty() || self.size.is_some_and(|s| self.offset >= s) {
                self.eof = true;
            }
            self.buf.extend_from_slice(&bytes);
            self.read_ahead();
        }
    }

    /// Asks for the range after the bytes received, unless the blob ended. Only once the first answer
    /// gave the ETag: every later range is pinned to that version of the blob.
    fn read_ahead(&mut self) {
        if self.eof || self.ahead.is_some() || self.etag.is_none() {
            return;
        }
        let (client, blob, etag) = (self.client.clone(), self.blob.clone(), self.etag.clone());
        let (start, len) = (self.offset, self.range);
        self.ahead = Some(tokio::spawn(async move {
            client.get_range(&blob, start, len, etag.as_deref()).await
        }));
    }

    /// The remaining lines as a stream.
    pub fn into_stream(self) -> BoxStream<'static, Result<String, BlobError>> {
        stream::try_unfold(self, |mut reader| async move {
            Ok(reader.next_line().await?.map(|line| (line, reader)))
        })
        .boxed()
    }
}

fn line_text(line: &[u8]) -> String {
    String::from_utf8_lossy(line)
        .trim_end_matches(['\n', '\r'])
        .to_string()
}

/// The text of the first `<name>…</name>` of an XML error body.
fn xml_text(body: &str, name: &str) -> Option<String> {
    let open = format!("<{name}>");
    let start = body.find(&open)? + open.len();
    let len = body[start..].find(&format!("</{name}>"))?;
    let text = body[start..start + len].trim();
    (!text.is_empty()).then(|| text.to_string())
}

/// An error with its causes on one line (reqwest keeps the useful part in the source chain).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    const AZURE: &str = "https://acct.blob.core.windows.net/jobs?sv=2021-08-06&sr=c&sp=rwl&se=2030-01-01T00%3A00%3A00Z&sig=abc%2Bdef%3D";

    #[test]
    fn a_sas_quoted_in_a_message_is_redacted_wherever_it_stands() {
        let text = format!(
            "Cannot read blob (url ({AZURE})): reset; again SIG=xyz&sp=r and sig= at the end sig=q"
        );
        let red = redact_sas_in_text(&text);
        assert!(!red.contains("abc%2Bdef"), "{red}");
        assert!(!red.contains("xyz") && !red.ends_with("sig=q"), "{red}");
        assert!(
            red.contains("sig=***)): reset; again SIG=***&sp=r and sig= at the end sig=***"),
            "{red}"
        );
        assert_eq!(redact_sas_in_text("no secret here"), "no secret here");
    }

    #[test]
    fn sas_url_is_parsed_and_its_signature_hidden() {
        let c = ContainerSasUrl::parse(AZURE).unwrap();
        assert_eq!(c.container(), "jobs");
        assert_eq!(
            c.container_url().as_str(),
            "https://acct.blob.core.windows.net/jobs"
        );
        assert_eq!(c.expose(), AZURE);
        let shown = format!("{c} {c:?}");
        assert!(!shown.contains("abc"), "{shown}");
        assert!(shown.contains("sig=***"), "{shown}");
        assert!(
            shown.contains("sp=rwl"),
            "the rest of the SAS is kept: {shown}"
        );

        let azurite = ContainerSasUrl::parse(
            "http://127.0.0.1:10000/devstoreaccount1/out/?sv=2021-08-06&sig=x",
        )
        .unwrap();
        assert_eq!(azurite.container(), "out");
        assert_eq!(
            azurite.container_url().as_str(),
            "http://127.0.0.1:10000/devstoreaccount1/out"
        );
    }

    #[test]
    fn bad_sas_urls_are_refused_without_showing_the_signature() {
        for bad in [
            "ftp://acct/jobs?sig=secret1",
            "not a url",
            "https://acct.blob.core.windows.net/?sv=1&sig=secret1",
            "https://acct.blob.core.windows.net/jobs",
            "https://acct.blob.core.windows.net/jobs?sv=2021-08-06&sp=r",
        ] {
            let e = ContainerSasUrl::parse(bad).unwrap_err();
            assert!(matches!(e, BlobError::InvalidUrl(_)), "{bad}: {e:?}");
            assert!(!e.to_string().contains("secret1"), "{e}");
        }
    }

    #[test]
    fn request_urls_keep_the_sas_and_encode_blob_names() {
        let c = ContainerSasUrl::parse("http://127.0.0.1:1/devstoreaccount1/jobs?sv=1&sig=a%2Bb")
            .unwrap();
        let u = c
            .request_url(
                "run 1/devices.txt",
                &[("comp", "block"), ("blockid", "YQ==")],
            )
            .unwrap();
        assert_eq!(
            u.as_str(),
            "http://127.0.0.1:1/devstoreaccount1/jobs/run%201/devices.txt?sv=1&sig=a%2Bb&comp=block&blockid=YQ%3D%3D"
        );
        assert_eq!(
            c.request_url("", &[("restype", "container")])
                .unwrap()
                .as_str(),
            "http://127.0.0.1:1/devstoreaccount1/jobs?sv=1&sig=a%2Bb&restype=container"
        );
        for bad in ["a//b", "../x", "x/.", "/x"] {
            assert!(c.request_url(bad, &[]).is_err(), "{bad}");
        }
    }

    #[test]
    fn redaction_of_any_url() {
        assert_eq!(
            redact_sas("https://a.blob.core.windows.net/c?sv=1&sig=s3cr%2Bt&sp=r"),
            "https://a.blob.core.windows.net/c?sv=1&sig=***&sp=r"
        );
        assert_eq!(
            redact_sas("https://a.blob.core.windows.net/c"),
            "https://a.blob.core.windows.net/c"
        );
        assert_eq!(redact_sas("junk?sig=s3cret"), "junk?***");
        assert_eq!(redact_sas("no query at all"), "no query at all");
    }

    #[test]
    fn service_errors_name_the_blob_and_the_answer() {
        let e = BlobError::Service {
            operation: "Get Blob",
            blob: "jobs/devices.txt".into(),
            status: 403,
            code: Some("AuthenticationFailed".into()),
            message: "Signed expiry time must be after signed start time".into(),
            request_id: Some("r-1".into()),
        };
        assert_eq!(
            e.to_string(),
            "Get Blob jobs/devices.txt: HTTP 403 AuthenticationFailed (Signed expiry time must be after signed start time)"
        );
        assert!(e.is_auth_failure() && !e.is_retryable() && !e.is_not_found());
        let busy = BlobError::Service {
            operation: "Put Block",
            blob: "b".into(),
            status: 503,
            code: Some("ServerBusy".into()),
            message: String::new(),
            request_id: None,
        };
        assert!(busy.is_retryable());
        assert_eq!(busy.to_string(), "Put Block b: HTTP 503 ServerBusy");
    }

    #[test]
    fn xml_error_bodies() {
        let body = "\u{feff}<?xml version=\"1.0\" encoding=\"utf-8\"?><Error><Code>ContainerNotFound</Code><Message>The specified container does not exist.\nRequestId:1\nTime:2026</Message></Error>";
        assert_eq!(xml_text(body, "Code").as_deref(), Some("ContainerNotFound"));
        assert!(
            xml_text(body, "Message")
                .unwrap()
                .starts_with("The specified container does not exist.")
        );
        assert_eq!(xml_text(body, "Other"), None);
        assert_eq!(xml_text("", "Code"), None);
    }

    #[test]
    fn line_endings_are_stripped() {
        assert_eq!(line_text(b"{\"id\":1}\r\n"), "{\"id\":1}");
        assert_eq!(line_text(b"last"), "last");
    }
}

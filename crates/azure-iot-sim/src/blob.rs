//! A small client of the Azure Blob Storage REST API, as much as import/export jobs need: ranged
//! Get Blob, Put Blob, Put Block and Put Block List, each authorised by the container SAS a job was
//! given (its query string appended to every request). It works against any Blob service; the tests
//! run it against Azurite, Microsoft's storage emulator.
//!
//! Nothing here holds a whole blob: [`BlobLines`] reads a blob range by range and yields lines, and
//! [`BlockWriter`] uploads a blob in blocks of a fixed size.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::{Bytes, BytesMut};
use chrono::{DateTime, SecondsFormat, Utc};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use url::Url;

/// The Blob service REST version sent as `x-ms-version` (supported by Azure and Azurite 3.x).
pub const BLOB_API_VERSION: &str = "2021-08-06";

/// How many bytes one ranged Get Blob asks for.
pub const READ_CHUNK: u64 = 4 * 1024 * 1024;

/// The longest line [`BlobLines`] accepts (a device with certificates stays far below).
pub const MAX_LINE: usize = 1024 * 1024;

/// A failed blob operation, with what the Blob service answered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlobError {
    /// The container URI is not an http(s) URL naming a container.
    #[error("invalid blob container URI: {0}")]
    InvalidUri(String),
    /// The service answered with an error status (`code` is its `x-ms-error-code`).
    #[error("{operation} {blob}: {status} {code}{}", message_suffix(.message))]
    Status {
        /// `Get Blob`, `Put Block`, ...
        operation: &'static str,
        /// `container/blob`.
        blob: String,
        /// HTTP status.
        status: u16,
        /// `x-ms-error-code`, e.g. `AuthenticationFailed`, `ContainerNotFound`, `BlobNotFound`.
        code: String,
        /// The `<Message>` of the error body, first line.
        message: String,
    },
    /// The service could not be reached or the connection broke.
    #[error("{operation} {blob}: {message}")]
    Transport {
        /// `Get Blob`, `Put Block`, ...
        operation: &'static str,
        /// `container/blob`.
        blob: String,
        /// What the HTTP client said.
        message: String,
    },
    /// A line of the blob is longer than [`MAX_LINE`].
    #[error("{blob}: a line is longer than {MAX_LINE} bytes")]
    LineTooLong {
        /// `container/blob`.
        blob: String,
    },
}

fn message_suffix(m: &str) -> String {
    if m.is_empty() {
        String::new()
    } else {
        format!(" ({m})")
    }
}

/// A blob container addressed by a SAS URI: `https://account.blob.core.windows.net/container?sv=…&sig=…`
/// (Azurite: `http://127.0.0.1:10000/devstoreaccount1/container?…`).
#[derive(Debug, Clone)]
pub struct ContainerUrl {
    url: Url,
    name: String,
}

impl ContainerUrl {
    /// Parses a container SAS URI; the last path segment is the container name.
    pub fn parse(uri: &str) -> Result<Self, BlobError> {
        let url = Url::parse(uri.trim()).map_err(|e| BlobError::InvalidUri(e.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(BlobError::InvalidUri(
                "the container URI must be an http(s) URL".into(),
            ));
        }
        let name = url
            .path_segments()
            .and_then(|mut s| s.rfind(|seg| !seg.is_empty()).map(str::to_string))
            .ok_or_else(|| BlobError::InvalidUri("the container URI names no container".into()))?;
        Ok(Self { url, name })
    }

    /// The container's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `container/blob`, for messages.
    pub fn display(&self, blob: &str) -> String {
        format!("{}/{blob}", self.name)
    }

    /// The URL of `blob` in this container, the SAS query kept, `extra` query pairs appended.
    pub fn blob_url(&self, blob: &str, extra: &[(&str, &str)]) -> Url {
        let mut u = self.url.clone();
        if let Ok(mut segs) = u.path_segments_mut() {
            segs.pop_if_empty();
            // A blob name may hold `/` (virtual folders): each part is its own segment.
            segs.extend(blob.split('/'));
        }
        if !extra.is_empty() {
            let mut q = u.query_pairs_mut();
            for (k, v) in extra {
                q.append_pair(k, v);
            }
        }
        u
    }
}

/// Times one blob call is sent before a missing answer fails the job.
const TRANSPORT_ATTEMPTS: u32 = 3;

/// A Blob service client (one connection pool for every job of a simulator).
#[derive(Debug, Clone)]
pub struct BlobClient {
    http: reqwest::Client,
}

impl BlobClient {
    /// A client with connect and request timeouts.
    pub fn new() -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(10))
            .timeout(std::time::Duration::from_secs(120))
            .build()?;
        Ok(Self { http })
    }

    async fn send(
        &self,
        operation: &'static str,
        container: &ContainerUrl,
        blob: &str,
        req: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, BlobError> {
        let req = req.header("x-ms-version", BLOB_API_VERSION);
        // Every call here is idempotent (ranged reads, blocks by id, whole-blob puts), so a request that got
        // no answer is sent again, as a hub's job engine would: a connection the Blob service closed while
        // idle (Azurite's Node.js server after 5 s) is reset when reused.
        let mut attempt = 1;
        let resp = loop {
            let this = req
                .try_clone()
                .expect("blob request bodies are bytes, which clone")
                .header("x-ms-date", http_date(Utc::now()));
            match this.send().await {
                Ok(resp) => break resp,
                Err(e) if attempt < TRANSPORT_ATTEMPTS => {
                    tracing::debug!(operation, error = %error_chain(&e.without_url()), attempt, "blob call got no answer; again");
                    tokio::time::sleep(std::time::Duration::from_millis(50 * attempt as u64)).await;
                    attempt += 1;
                }
                Err(e) => {
                    return Err(BlobError::Transport {
                        operation,
                        blob: container.display(blob),
                        // Without the URL: it carries the SAS.
                        message: error_chain(&e.without_url()),
                    });
                }
            }
        };
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status().as_u16();
        let code = resp
            .headers()
            .get("x-ms-error-code")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let body = resp.text().await.unwrap_or_default();
        Err(BlobError::Status {
            operation,
            blob: container.display(blob),
            status,
            code: if code.is_empty() {
                xml_field(&body, "Code").unwrap_or_default()
            } else {
                code
            },
            message: xml_field(&body, "Message")
                .and_then(|m| m.lines().next().map(str::to_string))
                .unwrap_or_default(),
        })
    }

    /// Create Container for the container the URI names (its SAS must allow it: an account SAS
    /// with resource type `c`); a container that exists already is fine.
    pub async fn create_container(&self, container: &ContainerUrl) -> Result<(), BlobError> {
        let mut url = container.blob_url("", &[("restype", "container")]);
        // `blob_url("")` ends the path with a `/`, which would name a blob, not the container.
        let path = url.path().trim_end_matches('/').to_string();
        url.set_path(&path);
        let req = self.http.put(url).header("content-length", 0);
        match self.send("Create Container", container, "", req).await {
            Ok(_) => Ok(()),
            Err(BlobError::Status { status: 409, .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Get Blob of `range` (inclusive byte offsets): the bytes and the blob's total size.
    /// A range starting past the end of the blob gives no bytes.
    pub async fn get_range(
        &self,
        container: &ContainerUrl,
        blob: &str,
        start: u64,
        len: u64,
    ) -> Result<(Bytes, Option<u64>), BlobError> {
        let end = start + len.max(1) - 1;
        let req = self
            .http
            .get(container.blob_url(blob, &[]))
            .header("x-ms-range", format!("bytes={start}-{end}"));
        match self.send("Get Blob", container, blob, req).await {
            Ok(resp) => {
                let total = resp
                    .headers()
                    .get("content-range")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.rsplit('/').next())
                    .and_then(|t| t.trim().parse::<u64>().ok());
                let body = resp.bytes().await.map_err(|e| BlobError::Transport {
                    operation: "Get Blob",
                    blob: container.display(blob),
                    message: error_chain(&e.without_url()),
                })?;
                Ok((body, total))
            }
            // 416: the range starts at or past the end (an empty blob, or the last range read).
            Err(BlobError::Status { status: 416, .. }) => Ok((Bytes::new(), Some(start))),
            Err(e) => Err(e),
        }
    }

    /// Put Blob (block blob) with `body` in one request.
    pub async fn put_blob(
        &self,
        container: &ContainerUrl,
        blob: &str,
        body: Bytes,
        content_type: &str,
    ) -> Result<(), BlobError> {
        let req = self
            .http
            .put(container.blob_url(blob, &[]))
            .header("x-ms-blob-type", "BlockBlob")
            .header("content-type", content_type)
            // The Blob service refuses a Put Blob without Content-Length (400), and the HTTP client
            // leaves it out for an empty body: an empty importErrors.log is the common case.
            .header("content-length", body.len())
            .body(body);
        self.send("Put Blob", container, blob, req).await.map(drop)
    }

    /// Put Block: stages one block of a blob.
    pub async fn put_block(
        &self,
        container: &ContainerUrl,
        blob: &str,
        block_id: &str,
        body: Bytes,
    ) -> Result<(), BlobError> {
        let url = container.blob_url(blob, &[("comp", "block"), ("blockid", block_id)]);
        let req = self.http.put(url).body(body);
        self.send("Put Block", container, blob, req).await.map(drop)
    }

    /// Put Block List: commits the staged blocks, in order, as the blob's content.
    pub async fn put_block_list(
        &self,
        container: &ContainerUrl,
        blob: &str,
        block_ids: &[String],
        content_type: &str,
    ) -> Result<(), BlobError> {
        let mut xml = String::from("<?xml version=\"1.0\" encoding=\"utf-8\"?><BlockList>");
        for id in block_ids {
            xml.push_str("<Latest>");
            xml.push_str(id);
            xml.push_str("</Latest>");
        }
        xml.push_str("</BlockList>");
        let url = container.blob_url(blob, &[("comp", "blocklist")]);
        let req = self
            .http
            .put(url)
            .header("x-ms-blob-content-type", content_type)
            .header("content-type", "application/xml")
            .body(xml);
        self.send("Put Block List", container, blob, req)
            .await
            .map(drop)
    }
}

/// The text of `<name>…</name>` in an XML error body.
fn xml_field(body: &str, name: &str) -> Option<String> {
    let open = format!("<{name}>");
    let start = body.find(&open)? + open.len();
    let end = body[start..].find(&format!("</{name}>"))? + start;
    Some(body[start..end].trim().to_string())
}

/// An error and its causes on one line (reqwest hides the useful part in the source chain).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut line = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let s = c.to_string();
        if !line.contains(&s) {
            line.push_str(": ");
            line.push_str(&s);
        }
        cur = c.source();
    }
    line
}

/// An RFC 1123 date, as `x-ms-date` wants.
fn http_date(t: DateTime<Utc>) -> String {
    t.format("%a, %d %b %Y %H:%M:%S GMT").to_string()
}

/// Reads a blob line by line, one ranged Get Blob of [`READ_CHUNK`] bytes at a time.
#[derive(Debug)]
pub struct BlobLines {
    client: BlobClient,
    container: ContainerUrl,
    blob: String,
    offset: u64,
    total: Option<u64>,
    buf: BytesMut,
    eof: bool,
    chunk: u64,
}

impl BlobLines {
    /// A reader of `blob`; nothing is fetched before the first [`BlobLines::next_line`].
    pub fn new(client: BlobClient, container: ContainerUrl, blob: &str) -> Self {
        Self {
            client,
            container,
            blob: blob.to_string(),
            offset: 0,
            total: None,
            buf: BytesMut::new(),
            eof: false,
            chunk: READ_CHUNK,
        }
    }

    /// Reads `bytes` per Get Blob instead of [`READ_CHUNK`] (at least 1; tests cut lines across ranges).
    pub fn with_chunk_size(mut self, bytes: u64) -> Self {
        self.chunk = bytes.max(1);
        self
    }

    /// Bytes fetched so far and the blob's size once known (for progress).
    pub fn position(&self) -> (u64, Option<u64>) {
        (self.offset, self.total)
    }

    /// The next line without its end of line (`\n` or `\r\n`); `None` after the last one.
    pub async fn next_line(&mut self) -> Result<Option<String>, BlobError> {
        loop {
            if let Some(i) = self.buf.iter().position(|b| *b == b'\n') {
                let line = self.buf.split_to(i + 1);
                return Ok(Some(text_of(&line)));
            }
            if self.buf.len() > MAX_LINE {
                return Err(BlobError::LineTooLong {
                    blob: self.container.display(&self.blob),
                });
            }
            if self.eof {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                let line = self.buf.split();
                return Ok(Some(text_of(&line)));
            }
            let (bytes, total) = self
                .client
                .get_range(&self.container, &self.blob, self.offset, self.chunk)
                .await?;
            self.total = total.or(self.total);
            self.offset += bytes.len() as u64;
            let done = self.total.is_some_and(|t| self.offset >= t);
            if bytes.is_empty() || done {
                self.eof = true;
            }
            self.buf.extend_from_slice(&bytes);
        }
    }
}

fn text_of(line: &[u8]) -> String {
    let s = String::from_utf8_lossy(line);
    s.trim_end_matches(['\n', '\r']).to_string()
}

/// Uploads a blob in blocks: lines are buffered up to the block size, each full block is staged
/// with Put Block, [`BlockWriter::finish`] commits them (a blob smaller than one block is a single
/// Put Blob). Until `finish`, the blob does not change.
#[derive(Debug)]
pub struct BlockWriter {
    client: BlobClient,
    container: ContainerUrl,
    blob: String,
    block_size: usize,
    buf: BytesMut,
    blocks: Vec<String>,
    content_type: &'static str,
}

impl BlockWriter {
    /// A writer of `blob` in blocks of `block_size` bytes (at least 1 KiB).
    pub fn new(
        client: BlobClient,
        container: ContainerUrl,
        blob: &str,
        block_size: usize,
        content_type: &'static str,
    ) -> Self {
        Self {
            client,
            container,
            blob: blob.to_string(),
            block_size: block_size.max(1024),
            buf: BytesMut::new(),
            blocks: Vec::new(),
            content_type,
        }
    }

    /// Appends `line` and a `\n`, staging a block when the buffer is full.
    pub async fn write_line(&mut self, line: &str) -> Result<(), BlobError> {
        self.buf.extend_from_slice(line.as_bytes());
        self.buf.extend_from_slice(b"\n");
        while self.buf.len() >= self.block_size {
            let block = self.buf.split_to(self.block_size).freeze();
            self.stage(block).await?;
        }
        Ok(())
    }

    async fn stage(&mut self, block: Bytes) -> Result<(), BlobError> {
        // Block ids of one blob must all have the same length: a zero-padded counter.
        let id = B64.encode(format!("block-{:08}", self.blocks.len()));
        self.client
            .put_block(&self.container, &self.blob, &id, block)
            .await?;
        self.blocks.push(id);
        Ok(())
    }

    /// Blocks staged so far.
    pub fn blocks_staged(&self) -> usize {
        self.blocks.len()
    }

    /// Commits everything written (an empty blob when nothing was).
    pub async fn finish(mut self) -> Result<(), BlobError> {
        if self.blocks.is_empty() {
            let body = self.buf.split().freeze();
            return self
                .client
                .put_blob(&self.container, &self.blob, body, self.content_type)
                .await;
        }
        if !self.buf.is_empty() {
            let rest = self.buf.split().freeze();
            self.stage(rest).await?;
        }
        self.client
            .put_block_list(&self.container, &self.blob, &self.blocks, self.content_type)
            .await
    }
}

/// Mints SAS tokens with a storage account key (tests, demos and benchmarks hand the simulated hub
/// container SAS URIs, as one would hand Azure's).
#[derive(Debug, Clone)]
pub struct AccountKey {
    account: String,
    key: Vec<u8>,
}

/// Azurite's well-known development account name.
pub const AZURITE_ACCOUNT: &str = "devstoreaccount1";
/// Azurite's well-known development account key (public, documented by Microsoft).
pub const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// The SAS version minted (its string-to-sign layout is the one below).
const SAS_VERSION: &str = "2020-12-06";

impl AccountKey {
    /// An account and its base64 key.
    pub fn new(account: &str, key_b64: &str) -> Result<Self, base64::DecodeError> {
        Ok(Self {
            account: account.to_string(),
            key: B64.decode(key_b64.trim())?,
        })
    }

    /// Azurite's development account.
    pub fn azurite() -> Self {
        Self {
            account: AZURITE_ACCOUNT.into(),
            // The constant is valid base64: decoding it cannot fail.
            key: B64.decode(AZURITE_KEY).unwrap_or_default(),
        }
    }

    /// The account name.
    pub fn account(&self) -> &str {
        &self.account
    }

    fn sign(&self, to_sign: &str) -> String {
        // HMAC accepts keys of any length.
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(to_sign.as_bytes());
        B64.encode(mac.finalize().into_bytes())
    }

    /// A service SAS query for `container` (`permissions` like `rwdl`), valid until `expiry`.
    pub fn container_sas(
        &self,
        container: &str,
        permissions: &str,
        expiry: DateTime<Utc>,
    ) -> String {
        let se = expiry.to_rfc3339_opts(SecondsFormat::Secs, true);
        // Service SAS string-to-sign for versions 2020-12-06 and later: sp, st, se, canonicalized
        // resource, si, sip, spr, sv, sr, snapshot time, encryption scope, rscc, rscd, rsce, rscl, rsct.
        let to_sign = [
            permissions,
            "",
            &se,
            &format!("/blob/{}/{container}", self.account),
            "",
            "",
            "",
            SAS_VERSION,
            "c",
            "",
            "",
            "",
            "",
            "",
            "",
            "",
        ]
        .join("\n");
        let sig = self.sign(&to_sign);
        url::form_urlencoded::Serializer::new(String::new())
            .append_pair("sv", SAS_VERSION)
            .append_pair("sr", "c")
            .append_pair("sp", permissions)
            .append_pair("se", &se)
            .append_pair("sig", &sig)
            .finish()
    }

    /// An account SAS query for the blob service (services `b`, resource types `sco`).
    pub fn account_sas(&self, permissions: &str, expiry: DateTime<Utc>) -> String {
        let se = expiry.to_rfc3339_opts(SecondsFormat::Secs, true);
        // Account SAS string-to-sign (2020-12-06 and later): account, sp, ss, srt, st, se, sip, spr,
        // sv, encryption scope, then a final newline.
        let to_sign = format!(
            "{}\n{permissions}\nb\nsco\n\n{se}\n\n\n{SAS_VERSION}\n\n",
            self.account
        );
        let sig = self.sign(&to_sign);
        url::form_urlencoded::Serializer::new(String::new())
            .append_pair("sv", SAS_VERSION)
            .append_pair("ss", "b")
            .append_pair("srt", "sco")
            .append_pair("sp", permissions)
            .append_pair("se", &se)
            .append_pair("sig", &sig)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_url_keeps_the_sas_and_appends_blob_and_query() {
        let c = ContainerUrl::parse("http://127.0.0.1:10000/devstoreaccount1/jobs?sv=1&sig=a%2Bb")
            .unwrap();
        assert_eq!(c.name(), "jobs");
        let u = c.blob_url("dir/devices.txt", &[("comp", "block"), ("blockid", "YQ==")]);
        assert_eq!(
            u.as_str(),
            "http://127.0.0.1:10000/devstoreaccount1/jobs/dir/devices.txt?sv=1&sig=a%2Bb&comp=block&blockid=YQ%3D%3D"
        );
        let c = ContainerUrl::parse("https://acct.blob.core.windows.net/out/?sig=x").unwrap();
        assert_eq!(c.name(), "out");
        assert_eq!(
            c.blob_url("importErrors.log", &[]).as_str(),
            "https://acct.blob.core.windows.net/out/importErrors.log?sig=x"
        );
        assert!(ContainerUrl::parse("ftp://x/y").is_err());
        assert!(ContainerUrl::parse("not a url").is_err());
        assert!(ContainerUrl::parse("https://acct.blob.core.windows.net/").is_err());
    }

    #[test]
    fn xml_error_fields_are_read() {
        let body = "<?xml version=\"1.0\"?><Error><Code>ContainerNotFound</Code><Message>The specified container does not exist.\nRequestId:1</Message></Error>";
        assert_eq!(
            xml_field(body, "Code").as_deref(),
            Some("ContainerNotFound")
        );
        assert!(
            xml_field(body, "Message")
                .unwrap()
                .starts_with("The specified")
        );
        assert_eq!(xml_field(body, "Nope"), None);
    }

    #[test]
    fn sas_queries_carry_version_resource_and_signature() {
        let k = AccountKey::azurite();
        let expiry = DateTime::parse_from_rfc3339("2030-01-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let q = k.container_sas("jobs", "rwl", expiry);
        assert!(q.starts_with("sv=2020-12-06&sr=c&sp=rwl&se=2030-01-01T00%3A00%3A00Z&sig="));
        // Same inputs, same signature; another container, another one.
        assert_eq!(q, k.container_sas("jobs", "rwl", expiry));
        assert_ne!(q, k.container_sas("other", "rwl", expiry));
        assert!(
            k.account_sas("rwdlac", expiry)
                .contains("ss=b&srt=sco&sp=rwdlac")
        );
    }
}

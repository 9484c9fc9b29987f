//! The naive baseline, written as a user would write the script: disable the group at DPS, page its
//! registration records, and for one device at a time GET its identity and PUT it back disabled (or DELETE
//! it), retrying a 429 with exponential backoff. No concurrency, no pacing, no bulk calls.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::StatusCode;
use serde_json::Value;

use crate::azure::sas;
use crate::domain::job::RegistryAction;

const DPS_API_VERSION: &str = "2021-10-01";
const HUB_API_VERSION: &str = "2021-04-12";
/// Records per registration-state page (the service's default page size).
const PAGE_SIZE: u32 = 100;
/// First backoff after a 429, in quota seconds (the script sleeps this divided by the time scale).
const BACKOFF_BASE_SECS: f64 = 1.0;
/// Longest backoff, in quota seconds.
const BACKOFF_CAP_SECS: f64 = 60.0;
/// Tries per call before the script gives up on a device.
const MAX_TRIES: u32 = 20;

/// Why the baseline could not run.
#[derive(Debug, thiserror::Error)]
pub enum NaiveError {
    /// A connection string without HostName, SharedAccessKeyName or SharedAccessKey.
    #[error("connection string lacks {0}")]
    ConnectionString(&'static str),
    /// A key that is not base64.
    #[error("connection string key is not base64")]
    Key,
    /// The HTTP client could not be built or a call failed outright.
    #[error("http: {0}")]
    Http(#[from] reqwest::Error),
    /// A call DPS answered with an error the script cannot continue after.
    #[error("{what} answered {status}: {body}")]
    Status {
        /// The call.
        what: String,
        /// Its status.
        status: StatusCode,
        /// Its body.
        body: String,
    },
}

/// One service endpoint the script talks to: where to send requests and how to sign them.
#[derive(Debug, Clone)]
pub struct Endpoint {
    base_url: String,
    host: String,
    policy: String,
    key: Vec<u8>,
}

impl Endpoint {
    /// From a `HostName=…;SharedAccessKeyName=…;SharedAccessKey=…` connection string and the URL to send to.
    pub fn new(connection_string: &str, base_url: &str) -> Result<Self, NaiveError> {
        let field = |name: &'static str| {
            connection_string
                .split(';')
                .find_map(|kv| kv.strip_prefix(name).and_then(|v| v.strip_prefix('=')))
                .map(str::to_string)
                .ok_or(NaiveError::ConnectionString(name))
        };
        let key = sas::decode_key(&field("SharedAccessKey")?).map_err(|_| NaiveError::Key)?;
        Ok(Self {
            base_url: base_url.trim_end_matches('/').to_string(),
            host: field("HostName")?.to_ascii_lowercase(),
            policy: field("SharedAccessKeyName")?,
            key,
        })
    }

    fn token(&self) -> String {
        let expiry = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
            + 3600;
        sas::token(&self.host, &self.key, Some(&self.policy), expiry)
    }

    fn url(&self, path: &str, api_version: &str) -> String {
        format!("{}{path}?api-version={api_version}", self.base_url)
    }
}

/// What the script did.
#[derive(Debug, Clone, Default)]
pub struct NaiveReport {
    /// Devices disabled or deleted (or already gone).
    pub done: usize,
    /// Devices the script gave up on.
    pub failed: usize,
}

/// The script: `group_id` at `dps`, its devices in `hub` (records naming another hub are skipped: the
/// bench fleet has one hub). `time_scale` shortens the backoff as the simulator shortens quota time.
pub async fn run(
    dps: &Endpoint,
    hub: &Endpoint,
    group_id: &str,
    action: RegistryAction,
    time_scale: f64,
) -> Result<NaiveReport, NaiveError> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()?;
    let script = Script {
        http,
        time_scale: if time_scale > 0.0 { time_scale } else { 1.0 },
    };
    script.disable_group(dps, group_id).await?;
    let mut report = NaiveReport::default();
    let mut continuation: Option<String> = None;
    loop {
        let (records, next) = script.page(dps, group_id, continuation.as_deref()).await?;
        for record in records {
            let Some(device_id) = record["deviceId"].as_str() else {
                continue;
            };
            if record["assignedHub"]
                .as_str()
                .is_none_or(|h| !h.eq_ignore_ascii_case(&hub.host))
            {
                continue;
            }
            let ok = match action {
                RegistryAction::Disable => script.disable_device(hub, device_id).await,
                RegistryAction::Delete => script.delete_device(hub, device_id).await,
            };
            if ok {
                report.done += 1;
            } else {
                report.failed += 1;
            }
        }
        match next {
            Some(token) => continuation = Some(token),
            None => return Ok(report),
        }
    }
}

struct Script {
    http: reqwest::Client,
    time_scale: f64,
}

impl Script {
    /// Sends the request `build` makes until it is not answered 429 (or 5xx), backing off exponentially.
    async fn send(
        &self,
        build: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, reqwest::Error> {
        let mut delay = BACKOFF_BASE_SECS;
        let mut tries = 0;
        loop {
            tries += 1;
            let response = build().send().await?;
            let status = response.status();
            let retry = status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error();
            if !retry || tries >= MAX_TRIES {
                return Ok(response);
            }
            tokio::time::sleep(Duration::from_secs_f64(delay / self.time_scale)).await;
            delay = (delay * 2.0).min(BACKOFF_CAP_SECS);
        }
    }

    async fn disable_group(&self, dps: &Endpoint, group_id: &str) -> Result<(), NaiveError> {
        let url = dps.url(&format!("/enrollmentGroups/{group_id}"), DPS_API_VERSION);
        let got = self
            .send(|| self.http.get(&url).header("authorization", dps.token()))
            .await?;
        let mut group: Value = ok_json(got, "GET enrollment group").await?;
        group["provisioningStatus"] = Value::from("disabled");
        let put = self
            .send(|| {
                self.http
                    .put(&url)
                    .header("authorization", dps.token())
                    .json(&group)
            })
            .await?;
        ok_json(put, "PUT enrollment group").await.map(|_| ())
    }

    async fn page(
        &self,
        dps: &Endpoint,
        group_id: &str,
        continuation: Option<&str>,
    ) -> Result<(Vec<Value>, Option<String>), NaiveError> {
        let url = dps.url(&format!("/registrations/{group_id}/query"), DPS_API_VERSION);
        let response = self
            .send(|| {
                let mut r = self
                    .http
                    .post(&url)
                    .header("authorization", dps.token())
                    .header("x-ms-max-item-count", PAGE_SIZE.to_string())
                    .header("content-length", "0");
                if let Some(c) = continuation {
                    r = r.header("x-ms-continuation", c);
                }
                r
            })
            .await?;
        let next = response
            .headers()
            .get("x-ms-continuation")
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty())
            .map(str::to_string);
        let records = ok_json(response, "query registrations").await?;
        Ok((records.as_array().cloned().unwrap_or_default(), next))
    }

    /// GET the identity, PUT it back with `status: disabled` and its etag; a 412 reads it again.
    async fn disable_device(&self, hub: &Endpoint, device_id: &str) -> bool {
        let url = hub.url(&format!("/devices/{device_id}"), HUB_API_VERSION);
        for _ in 0..3 {
            let Ok(got) = self
                .send(|| self.http.get(&url).header("authorization", hub.token()))
                .await
            else {
                return false;
            };
            if got.status() == StatusCode::NOT_FOUND {
                return true;
            }
            let Ok(mut device) = ok_json(got, "GET device").await else {
                return false;
            };
            let etag = device["etag"].as_str().unwrap_or("*").to_string();
            device["status"] = Value::from("disabled");
            device["statusReason"] = Value::from("deprovisioned by script");
            let Ok(put) = self
                .send(|| {
                    self.http
                        .put(&url)
                        .header("authorization", hub.token())
                        .header("if-match", format!("\"{etag}\""))
                        .json(&device)
                })
                .await
            else {
                return false;
            };
            match put.status() {
                s if s.is_success() => return true,
                StatusCode::PRECONDITION_FAILED => continue,
                _ => return false,
            }
        }
        false
    }

    async fn delete_device(&self, hub: &Endpoint, device_id: &str) -> bool {
        let url = hub.url(&format!("/devices/{device_id}"), HUB_API_VERSION);
        match self
            .send(|| {
                self.http
                    .delete(&url)
                    .header("authorization", hub.token())
                    .header("if-match", "\"*\"")
            })
            .await
        {
            Ok(r) => r.status().is_success() || r.status() == StatusCode::NOT_FOUND,
            Err(_) => false,
        }
    }
}

async fn ok_json(response: reqwest::Response, what: &str) -> Result<Value, NaiveError> {
    let status = response.status();
    if !status.is_success() {
        let body = response.text().await.unwrap_or_default();
        return Err(NaiveError::Status {
            what: what.to_string(),
            status,
            body,
        });
    }
    Ok(response.json().await?)
}

//! Webhook sources and completion callbacks, read from the JSON file `DEPROVISIOND_WEBHOOKS_CONFIG` names.
//!
//! Secrets are never written in that file: each is `{"env": "VAR"}` or `{"file": "/run/secrets/x"}`, read once at
//! start, held as [`Secret`] (printed `***`), never logged.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer};

use super::mapping::Rule;
use crate::azure::secret::Secret;

/// Environment variable naming the configuration file.
pub const CONFIG_ENV: &str = "DEPROVISIOND_WEBHOOKS_CONFIG";

/// Errors loading the webhook configuration; they name the file and field, never a secret value.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read webhook configuration {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid configuration (this includes a secret that cannot be read).
    #[error("webhook configuration {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong, with the field's path.
        message: String,
    },
    /// The configuration breaks a rule serde cannot express.
    #[error("webhook configuration: {0}")]
    Invalid(String),
}

/// A secret read at start from the environment or a file.
#[derive(Clone, Debug)]
pub struct ConfigSecret(pub Secret);

impl ConfigSecret {
    /// The secret's bytes; only where it is used.
    pub fn bytes(&self) -> &[u8] {
        self.0.expose().as_bytes()
    }
}

impl From<&str> for ConfigSecret {
    fn from(s: &str) -> Self {
        ConfigSecret(Secret::new(s))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
enum SecretSource {
    Env(String),
    File(PathBuf),
}

impl<'de> Deserialize<'de> for ConfigSecret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let value = match SecretSource::deserialize(d)? {
            SecretSource::Env(var) => std::env::var(&var).map_err(|_| {
                D::Error::custom(format!("the environment variable {var} is not set"))
            })?,
            SecretSource::File(path) => {
                crate::cli::read_secret_file(&path).map_err(|e| D::Error::custom(e.to_string()))?
            }
        };
        if value.is_empty() {
            return Err(D::Error::custom("the secret is empty"));
        }
        Ok(ConfigSecret(Secret::new(value)))
    }
}

/// Everything about webhooks and callbacks. The default configures no source: every webhook route answers 404.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// `POST /v1/webhooks/generic`.
    #[serde(default)]
    pub generic: Option<GenericSource>,
    /// `POST /v1/webhooks/jira`.
    #[serde(default)]
    pub jira: Option<JiraSource>,
    /// `POST /v1/webhooks/servicenow`.
    #[serde(default)]
    pub servicenow: Option<ServiceNowSource>,
    /// Completion callbacks.
    #[serde(default)]
    pub callbacks: CallbackSettings,
}

/// The generic source: our documented body, signed with `X-Deprovisiond-Signature`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenericSource {
    /// HMAC key of `X-Deprovisiond-Signature`.
    pub secret: ConfigSecret,
    /// Largest accepted distance between the signed timestamp and now, in seconds (default 300).
    #[serde(default = "default_tolerance")]
    pub tolerance_secs: u64,
    /// Values of the body's `event` that mean "deprovision" (default `["deprovision"]`); others get 202.
    #[serde(default = "default_generic_events")]
    pub events: Vec<String>,
    /// Callback for every job this source creates (a body's own `callback_url` wins).
    #[serde(default, deserialize_with = "opt_url")]
    pub callback_url: Option<url::Url>,
}

/// Jira Cloud: `X-Hub-Signature: sha256=<hex>` under the webhook's secret.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JiraSource {
    /// The secret set on the Jira webhook.
    pub secret: ConfigSecret,
    /// Which events mean "deprovision" and where the target is.
    pub rule: Rule,
    /// Callback for every job this source creates.
    #[serde(default, deserialize_with = "opt_url")]
    pub callback_url: Option<url::Url>,
    /// Also post each job's outcome as a comment on its issue.
    #[serde(default)]
    pub comment: Option<JiraComment>,
    /// Refuse (401) deliveries whose signed `timestamp` is older than this many seconds: a captured delivery
    /// replayed later. Off by default, because Jira's own retries carry the original timestamp; set it above
    /// Jira's retry window.
    #[serde(default)]
    pub max_age_secs: Option<u64>,
}

/// Where and as whom to comment on Jira issues (REST v3, basic auth with an API token).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JiraComment {
    /// The site, e.g. `https://acme.atlassian.net`; its host must be in `callbacks.allowed_hosts`.
    #[serde(deserialize_with = "url")]
    pub base_url: url::Url,
    /// The account the API token belongs to.
    pub email: String,
    /// The API token.
    pub api_token: ConfigSecret,
}

/// ServiceNow outbound REST: basic auth and/or a shared-secret header, optionally a base64 HMAC header.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceNowSource {
    /// Accept `Authorization: Basic` with these credentials.
    #[serde(default)]
    pub basic: Option<BasicAuth>,
    /// Accept a header carrying a shared secret.
    #[serde(default)]
    pub header: Option<SharedHeader>,
    /// Also require a base64 HMAC-SHA256 of the body in a header.
    #[serde(default)]
    pub hmac: Option<SharedHeader>,
    /// Which bodies mean "deprovision" and where the target is (JSON pointers).
    pub rule: Rule,
    /// Callback for every job this source creates.
    #[serde(default, deserialize_with = "opt_url")]
    pub callback_url: Option<url::Url>,
}

/// Basic-auth credentials.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BasicAuth {
    /// User name.
    pub username: String,
    /// Password.
    pub password: ConfigSecret,
}

/// A header and the secret it carries (or keys).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SharedHeader {
    /// Header name, e.g. `X-Deprovisiond-Token`.
    pub name: String,
    /// The secret.
    pub secret: ConfigSecret,
}

/// How completion callbacks are sent.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallbackSettings {
    /// HMAC key of the `X-Deprovisiond-Signature` on every callback; required when any callback is configured.
    #[serde(default)]
    pub secret: Option<ConfigSecret>,
    /// Hosts callbacks may go to: `hooks.example.com`, or `*.example.com` for its subdomains. Empty: none.
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    /// Attempts per job outcome before giving up (default 8).
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
    /// First retry delay ceiling in milliseconds (default 1000); doubles per attempt, with full jitter.
    #[serde(default = "default_base_ms")]
    pub backoff_base_ms: u64,
    /// Largest retry delay ceiling in milliseconds (default 300000).
    #[serde(default = "default_cap_ms")]
    pub backoff_cap_ms: u64,
    /// How often the sender looks for finished jobs, in milliseconds (default 1000).
    #[serde(default = "default_poll_ms")]
    pub poll_ms: u64,
    /// Timeout of one attempt, in seconds (default 10).
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
}

impl Default for CallbackSettings {
    fn default() -> Self {
        Self {
            secret: None,
            allowed_hosts: Vec::new(),
            max_attempts: default_attempts(),
            backoff_base_ms: default_base_ms(),
            backoff_cap_ms: default_cap_ms(),
            poll_ms: default_poll_ms(),
            timeout_secs: default_timeout(),
        }
    }
}

impl CallbackSettings {
    /// Whether `url` may receive callbacks: http(s), and its host is allowed.
    pub fn allows(&self, url: &url::Url) -> bool {
        if !matches!(url.scheme(), "http" | "https") {
            return false;
        }
        let Some(host) = url.host_str() else {
            return false;
        };
        let host = host.to_ascii_lowercase();
        self.allowed_hosts.iter().any(|allowed| {
            let allowed = allowed.trim().to_ascii_lowercase();
            match allowed.strip_prefix("*.") {
                Some(parent) => host.ends_with(&format!(".{parent}")),
                None => host == allowed,
            }
        })
    }
}

fn url<'de, D: Deserializer<'de>>(d: D) -> Result<url::Url, D::Error> {
    let s = String::deserialize(d)?;
    url::Url::parse(&s).map_err(|e| serde::de::Error::custom(format!("`{s}` is not a URL: {e}")))
}

fn opt_url<'de, D: Deserializer<'de>>(d: D) -> Result<Option<url::Url>, D::Error> {
    url(d).map(Some)
}

fn default_tolerance() -> u64 {
    super::signature::DEFAULT_TOLERANCE_SECS
}
fn default_generic_events() -> Vec<String> {
    vec!["deprovision".into()]
}
fn default_attempts() -> u32 {
    8
}
fn default_base_ms() -> u64 {
    1000
}
fn default_cap_ms() -> u64 {
    300_000
}
fn default_poll_ms() -> u64 {
    1000
}
fn default_timeout() -> u64 {
    10
}

impl WebhookConfig {
    /// Reads the file `DEPROVISIOND_WEBHOOKS_CONFIG` names; no webhooks when it is unset.
    pub fn from_env() -> Result<Self, ConfigError> {
        match std::env::var_os(CONFIG_ENV) {
            Some(p) if !p.is_empty() => Self::from_file(Path::new(&p)),
            _ => Ok(Self::default()),
        }
    }

    /// Reads and checks a configuration file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut de = serde_json::Deserializer::from_str(&text);
        let config: Self =
            serde_path_to_error::deserialize(&mut de).map_err(|e| ConfigError::Parse {
                path: path.to_path_buf(),
                message: format!("{}: {}", e.path(), e.inner()),
            })?;
        config.check()?;
        Ok(config)
    }

    /// Checks what serde cannot: callback destinations allowed, a signing secret when callbacks exist, a
    /// ServiceNow source that authenticates somehow, rules that can name a target.
    pub fn check(&self) -> Result<(), ConfigError> {
        let mut destinations: Vec<(&str, &url::Url)> = Vec::new();
        if let Some(g) = &self.generic {
            destinations.extend(g.callback_url.as_ref().map(|u| ("generic.callback_url", u)));
        }
        if let Some(j) = &self.jira {
            destinations.extend(j.callback_url.as_ref().map(|u| ("jira.callback_url", u)));
            destinations.extend(
                j.comment
                    .as_ref()
                    .map(|c| ("jira.comment.base_url", &c.base_url)),
            );
            j.rule.check("jira.rule")?;
        }
        if let Some(s) = &self.servicenow {
            destinations.extend(
                s.callback_url
                    .as_ref()
                    .map(|u| ("servicenow.callback_url", u)),
            );
            if s.basic.is_none() && s.header.is_none() {
                return Err(ConfigError::Invalid(
                    "servicenow needs `basic` or `header` authentication (an HMAC alone is optional extra proof)"
                        .into(),
                ));
            }
            s.rule.check("servicenow.rule")?;
        }
        for (field, url) in &destinations {
            if !self.callbacks.allows(url) {
                return Err(ConfigError::Invalid(format!(
                    "{field}: the host of {} is not in callbacks.allowed_hosts",
                    url.origin().ascii_serialization()
                )));
            }
        }
        let http_callbacks = destinations
            .iter()
            .any(|(f, _)| f.ends_with("callback_url"));
        if http_callbacks && self.callbacks.secret.is_none() {
            return Err(ConfigError::Invalid(
                "callbacks.secret is required to sign the configured callbacks".into(),
            ));
        }
        if self.callbacks.max_attempts == 0 {
            return Err(ConfigError::Invalid(
                "callbacks.max_attempts must be at least 1".into(),
            ));
        }
        Ok(())
    }

    /// Whether any source may register a callback or a Jira comment (the sender runs only then).
    pub fn has_callbacks(&self) -> bool {
        self.callbacks.secret.is_some() || self.jira.as_ref().is_some_and(|j| j.comment.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(hosts: &[&str]) -> CallbackSettings {
        CallbackSettings {
            allowed_hosts: hosts.iter().map(|s| s.to_string()).collect(),
            ..CallbackSettings::default()
        }
    }

    #[test]
    fn allow_list_matches_hosts_and_wildcard_subdomains_only() {
        let s = settings(&["hooks.example.com", "*.corp.example"]);
        let ok = |u: &str| s.allows(&url::Url::parse(u).unwrap());
        assert!(ok("https://hooks.example.com/x"));
        assert!(ok("https://HOOKS.example.com:8443/x"));
        assert!(ok("https://a.b.corp.example/"));
        assert!(
            !ok("https://corp.example/"),
            "the wildcard is for subdomains"
        );
        assert!(!ok("https://evilcorp.example/"));
        assert!(!ok("https://hooks.example.com.evil.test/"));
        assert!(!ok("ftp://hooks.example.com/"));
        assert!(!settings(&[]).allows(&url::Url::parse("https://x.test/").unwrap()));
    }

    #[test]
    fn secrets_come_from_env_or_file_and_never_print() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("jira.secret");
        std::fs::write(&file, "file-secret-123\n").unwrap();
        let cfg = dir.path().join("w.json");
        std::fs::write(
            &cfg,
            serde_json::json!({
                "generic": {"secret": {"file": file}},
                "jira": {"secret": {"file": file}, "rule": {"registration_id": "customfield_1"}},
            })
            .to_string(),
        )
        .unwrap();
        let c = WebhookConfig::from_file(&cfg).unwrap();
        let g = c.generic.as_ref().unwrap();
        assert_eq!(g.secret.bytes(), b"file-secret-123");
        assert_eq!(g.tolerance_secs, 300);
        assert!(!format!("{c:?}").contains("file-secret-123"));
    }

    #[test]
    fn bad_configurations_are_refused_with_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let write = |v: serde_json::Value| {
            let p = dir.path().join("c.json");
            std::fs::write(&p, v.to_string()).unwrap();
            WebhookConfig::from_file(&p).unwrap_err().to_string()
        };
        let e = write(
            serde_json::json!({"generic": {"secret": {"env": "DEPROVISIOND_TEST_UNSET_VAR_X"}}}),
        );
        assert!(
            e.contains("generic.secret") && e.contains("DEPROVISIOND_TEST_UNSET_VAR_X"),
            "{e}"
        );
        let e = write(serde_json::json!({"generic": {"secret": "inline"}}));
        assert!(e.contains("generic.secret"), "{e}");
        let dir2 = tempfile::tempdir().unwrap();
        let f = dir2.path().join("s");
        std::fs::write(&f, "x").unwrap();
        let e = write(serde_json::json!({
            "generic": {"secret": {"file": f}, "callback_url": "https://elsewhere.test/cb"},
            "callbacks": {"secret": {"file": f}, "allowed_hosts": ["hooks.test"]}
        }));
        assert!(
            e.contains("generic.callback_url") && e.contains("allowed_hosts"),
            "{e}"
        );
        let e = write(serde_json::json!({
            "generic": {"secret": {"file": f}, "callback_url": "https://hooks.test/cb"},
            "callbacks": {"allowed_hosts": ["hooks.test"]}
        }));
        assert!(e.contains("callbacks.secret"), "{e}");
        let e = write(serde_json::json!({"servicenow": {"rule": {"registration_id": "/a"}}}));
        assert!(e.contains("basic"), "{e}");
    }
}

//! Authentication settings: API key entries, the OIDC issuer, the `Host` allow-list, and the command-line
//! flags (each with an environment variable) they come from.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::Role;

/// Errors in the authentication settings.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// An API key line does not parse.
    #[error(
        "API key entry {line}: {why} (expected `NAME:ROLE:SHA256HEX`, as `deprovisiond keys new` prints)"
    )]
    BadKeyLine {
        /// Which entry (1-based), or the file and line.
        line: String,
        /// What is wrong.
        why: String,
    },
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The OIDC settings are incomplete or wrong.
    #[error("OIDC: {0}")]
    Jwt(String),
    /// No authentication is configured and the address is reachable from other machines.
    #[error(
        "refusing to listen on {0} with no authentication configured: configure API keys \
         (DEPROVISIOND_API_KEYS / --api-keys-file, see `deprovisiond keys new`) or an OIDC issuer \
         (--oidc-issuer), bind to a loopback address, or pass --insecure-no-auth to accept the risk"
    )]
    OpenOnNetwork(SocketAddr),
}

/// One configured API key.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKeyEntry {
    /// Who holds it (recorded as `key:NAME`).
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// SHA-256 of the key.
    pub sha256: [u8; 32],
}

impl std::fmt::Debug for ApiKeyEntry {
    // The hash is not the key, but there is no reason to print it either.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKeyEntry")
            .field("name", &self.name)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

impl ApiKeyEntry {
    /// Parses `NAME:ROLE:SHA256HEX`; `line` names the entry in errors.
    pub fn parse(s: &str, line: &str) -> Result<Self, ConfigError> {
        let bad = |why: &str| ConfigError::BadKeyLine {
            line: line.into(),
            why: why.into(),
        };
        let mut parts = s.trim().splitn(3, ':');
        let (Some(name), Some(role), Some(hex)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(bad("three `:`-separated fields are needed"));
        };
        let name = name.trim();
        if name.is_empty()
            || name.len() > 64
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._@-".contains(&b))
        {
            return Err(bad(
                "the name must be 1-64 characters of letters, digits, `.`, `_`, `@`, `-`",
            ));
        }
        let role =
            Role::parse(role).ok_or_else(|| bad("the role must be reader, operator or admin"))?;
        let hex = hex.trim().trim_start_matches("sha256=");
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad(
                "the hash must be 64 hex digits (the SHA-256 of the key, not the key)",
            ));
        }
        let mut sha256 = [0u8; 32];
        for (i, byte) in sha256.iter_mut().enumerate() {
            // Two hex digits checked above.
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)
                .map_err(|_| bad("the hash must be hex"))?;
        }
        Ok(ApiKeyEntry {
            name: name.into(),
            role,
            sha256,
        })
    }

    /// The configuration line of this entry.
    pub fn config_line(&self) -> String {
        format!(
            "{}:{}:{}",
            self.name,
            self.role,
            super::keys::to_hex(&self.sha256)
        )
    }
}

/// Where the issuer's signing keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksSource {
    /// Fetched from this URL, cached, and fetched again when due or when a token names an unknown key id.
    Url(url::Url),
    /// Read once from this file (air-gapped sites).
    File(PathBuf),
}

/// OIDC bearer-token settings.
#[derive(Debug, Clone)]
pub struct JwtConfig {
    /// The `iss` every token must carry, e.g. `https://login.microsoftonline.com/<tenant>/v2.0`.
    pub issuer: String,
    /// Accepted `aud` values (the application id URI or client id).
    pub audiences: Vec<String>,
    /// The signing keys.
    pub jwks: JwksSource,
    /// Claim holding the caller's roles (a string or an array of strings), `roles` for Entra app roles.
    pub role_claim: String,
    /// Claim value → role; empty: the values `reader`, `operator` and `admin` themselves.
    pub role_map: Vec<(String, Role)>,
    /// Claims tried in order for the caller's name.
    pub name_claims: Vec<String>,
    /// How long fetched keys are used before they are fetched again.
    pub refresh: Duration,
    /// Clock skew tolerated on `exp` and `nbf`.
    pub leeway: Duration,
}

/// Every authentication setting of the service.
#[derive(Debug, Clone, Default)]
pub struct AuthConfig {
    /// Configured API keys.
    pub api_keys: Vec<ApiKeyEntry>,
    /// The OIDC issuer, if bearer JWTs are accepted.
    pub jwt: Option<JwtConfig>,
    /// Serve without authentication even on a non-loopback address.
    pub insecure_no_auth: bool,
    /// Accepted `Host` names; empty: the loopback names when bound to loopback, anything otherwise.
    pub allowed_hosts: Vec<String>,
    /// Which jobs need a second person's approval.
    pub approvals: crate::domain::job::ApprovalPolicy,
}

impl AuthConfig {
    /// Settings with these API keys and nothing else.
    pub fn with_keys(api_keys: Vec<ApiKeyEntry>) -> Self {
        Self {
            api_keys,
            ..Self::default()
        }
    }

    /// Whether any credential is configured (otherwise every request is anonymous).
    pub fn has_credentials(&self) -> bool {
        !self.api_keys.is_empty() || self.jwt.is_some()
    }

    /// Refuses to serve `listen` openly: with no credentials configured, only a loopback address is
    /// allowed, unless `insecure_no_auth`.
    pub fn check_bind(&self, listen: SocketAddr) -> Result<(), ConfigError> {
        if self.has_credentials() || listen.ip().is_loopback() {
            return Ok(());
        }
        if self.insecure_no_auth {
            tracing::warn!(
                %listen,
                "--insecure-no-auth: serving WITHOUT AUTHENTICATION on a network address; anyone who \
                 reaches it can deprovision devices"
            );
            eprintln!(
                "WARNING: --insecure-no-auth: deprovisiond serves {listen} WITHOUT AUTHENTICATION; anyone who \
                 reaches it can deprovision devices"
            );
            return Ok(());
        }
        Err(ConfigError::OpenOnNetwork(listen))
    }
}

/// Authentication flags of `serve`.
#[derive(Debug, Args, Clone, Default)]
pub struct AuthArgs {
    /// API keys, comma- or newline-separated `NAME:ROLE:SHA256HEX` entries (`deprovisiond keys new` prints one).
    #[arg(long, env = "DEPROVISIOND_API_KEYS", value_delimiter = ',')]
    pub api_keys: Vec<String>,
    /// File of API key entries, one per line (`#` starts a comment).
    #[arg(long, env = "DEPROVISIOND_API_KEYS_FILE")]
    pub api_keys_file: Option<PathBuf>,
    /// Serve without authentication on a non-loopback address (dangerous; logged loudly).
    #[arg(long, env = "DEPROVISIOND_INSECURE_NO_AUTH")]
    pub insecure_no_auth: bool,
    /// Accepted `Host` header names (comma-separated; `*.example.com` matches subdomains). Default: the
    /// loopback names when bound to loopback.
    #[arg(long, env = "DEPROVISIOND_ALLOWED_HOSTS", value_delimiter = ',')]
    pub allowed_hosts: Vec<String>,
    /// OIDC issuer whose bearer JWTs are accepted, e.g. `https://login.microsoftonline.com/<tenant>/v2.0`.
    #[arg(long, env = "DEPROVISIOND_OIDC_ISSUER")]
    pub oidc_issuer: Option<String>,
    /// Accepted audiences (comma-separated): the application id URI or client id.
    #[arg(long, env = "DEPROVISIOND_OIDC_AUDIENCE", value_delimiter = ',')]
    pub oidc_audience: Vec<String>,
    /// URL of the issuer's JWKS (for Entra: `https://login.microsoftonline.com/<tenant>/discovery/v2.0/keys`).
    #[arg(long, env = "DEPROVISIOND_OIDC_JWKS_URL")]
    pub oidc_jwks_url: Option<url::Url>,
    /// File holding the issuer's JWKS, for sites that cannot reach the issuer.
    #[arg(
        long,
        env = "DEPROVISIOND_OIDC_JWKS_FILE",
        conflicts_with = "oidc_jwks_url"
    )]
    pub oidc_jwks_file: Option<PathBuf>,
    /// Claim holding the caller's roles.
    #[arg(long, env = "DEPROVISIOND_OIDC_ROLE_CLAIM", default_value = "roles")]
    pub oidc_role_claim: String,
    /// Claim values mapped to roles, comma-separated `VALUE=ROLE` (e.g. `Deprovision.Admin=admin`). Default:
    /// the values `reader`, `operator`, `admin`.
    #[arg(long, env = "DEPROVISIOND_OIDC_ROLES", value_delimiter = ',')]
    pub oidc_roles: Vec<String>,
    /// Claims tried in order for the caller's name.
    #[arg(
        long,
        env = "DEPROVISIOND_OIDC_NAME_CLAIMS",
        value_delimiter = ',',
        default_value = "preferred_username,upn,email,appid,azp,sub"
    )]
    pub oidc_name_claims: Vec<String>,
    /// Seconds fetched signing keys are used before they are fetched again.
    #[arg(
        long,
        env = "DEPROVISIOND_OIDC_JWKS_REFRESH_SECS",
        default_value_t = 3600
    )]
    pub oidc_jwks_refresh_secs: u64,
    /// Jobs that need an admin other than the requester to approve them (comma-separated):
    /// `group-wide` (whole-group jobs), `any-delete` (anything deleted).
    #[arg(long, env = "DEPROVISIOND_REQUIRE_APPROVAL", value_delimiter = ',', value_parser = ["group-wide", "any-delete"])]
    pub require_approval: Vec<String>,
    /// Also hold jobs touching more than this many devices (a whole group's count is read from DPS).
    #[arg(long, env = "DEPROVISIOND_APPROVAL_DEVICE_THRESHOLD")]
    pub approval_device_threshold: Option<u64>,
    /// Seconds a held job waits for approval before it expires.
    #[arg(long, env = "DEPROVISIOND_APPROVAL_TTL_SECS", default_value_t = 86_400, value_parser = clap::value_parser!(u64).range(60..))]
    pub approval_ttl_secs: u64,
}

impl AuthArgs {
    /// The settings these flags describe.
    pub fn config(&self) -> Result<AuthConfig, ConfigError> {
        let mut api_keys = Vec::new();
        for (i, entry) in self
            .api_keys
            .iter()
            .flat_map(|s| s.split('\n'))
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .enumerate()
        {
            api_keys.push(ApiKeyEntry::parse(
                entry,
                &format!("#{} of DEPROVISIOND_API_KEYS", i + 1),
            )?);
        }
        if let Some(path) = &self.api_keys_file {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::File {
                path: path.clone(),
                source,
            })?;
            for (i, line) in text.lines().enumerate() {
                let line = line.split('#').next().unwrap_or("").trim();
                if !line.is_empty() {
                    api_keys.push(ApiKeyEntry::parse(
                        line,
                        &format!("{}:{}", path.display(), i + 1),
                    )?);
                }
            }
        }
        let jwt = match &self.oidc_issuer {
            None => {
                if self.oidc_jwks_url.is_some() || self.oidc_jwks_file.is_some() {
                    return Err(ConfigError::Jwt(
                        "a JWKS is configured but no issuer (--oidc-issuer)".into(),
                    ));
                }
                None
            }
            Some(issuer) => {
                let jwks = match (&self.oidc_jwks_url, &self.oidc_jwks_file) {
                    (Some(u), _) => JwksSource::Url(u.clone()),
                    (None, Some(f)) => JwksSource::File(f.clone()),
                    (None, None) => {
                        return Err(ConfigError::Jwt(
                            "--oidc-issuer needs --oidc-jwks-url or --oidc-jwks-file".into(),
                        ));
                    }
                };
                if self.oidc_audience.is_empty() {
                    return Err(ConfigError::Jwt(
                        "--oidc-issuer needs --oidc-audience: a token for another application must not be accepted"
                            .into(),
                    ));
                }
                let mut role_map = Vec::new();
                for pair in self.oidc_roles.iter().filter(|s| !s.trim().is_empty()) {
                    let (value, role) = pair.rsplit_once('=').ok_or_else(|| {
                        ConfigError::Jwt(format!("role mapping `{pair}` is not VALUE=ROLE"))
                    })?;
                    let role = Role::parse(role).ok_or_else(|| {
                        ConfigError::Jwt(format!(
                            "role mapping `{pair}`: the role must be reader, operator or admin"
                        ))
                    })?;
                    role_map.push((value.trim().to_string(), role));
                }
                Some(JwtConfig {
                    issuer: issuer.clone(),
                    audiences: self.oidc_audience.clone(),
                    jwks,
                    role_claim: self.oidc_role_claim.clone(),
                    role_map,
                    name_claims: self.oidc_name_claims.clone(),
                    refresh: Duration::from_secs(self.oidc_jwks_refresh_secs.max(60)),
                    leeway: Duration::from_secs(60),
                })
            }
        };
        Ok(AuthConfig {
            api_keys,
            jwt,
            insecure_no_auth: self.insecure_no_auth,
            allowed_hosts: self
                .allowed_hosts
                .iter()
                .map(|h| h.trim().to_string())
                .filter(|h| !h.is_empty())
                .collect(),
            approvals: crate::domain::job::ApprovalPolicy {
                group_wide: self.require_approval.iter().any(|r| r == "group-wide"),
                any_delete: self.require_approval.iter().any(|r| r == "any-delete"),
                more_than_devices: self.approval_device_threshold,
                ttl: Duration::from_secs(self.approval_ttl_secs),
            },
        })
    }
}

/// `deprovisiond keys`.
#[derive(Debug, Args)]
pub struct KeysArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: KeysCommand,
}

/// Key subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum KeysCommand {
    /// Print a fresh key and the configuration line that admits it (the service stores only its hash).
    New {
        /// Who will hold the key (recorded as `key:NAME` on what it does).
        #[arg(long)]
        name: String,
        /// reader, operator or admin.
        #[arg(long, value_parser = ["reader", "operator", "admin"])]
        role: String,
    },
}

/// Runs `deprovisiond keys …`.
pub fn run_keys(args: KeysArgs) -> anyhow::Result<()> {
    match args.command {
        KeysCommand::New { name, role } => {
            let key = super::keys::generate();
            let entry = ApiKeyEntry::parse(
                &format!(
                    "{name}:{role}:{}",
                    super::keys::to_hex(&super::keys::hash(&key))
                ),
                "--name/--role",
            )?;
            println!("key (give it to its holder; it is shown once and never stored):");
            println!("  {key}");
            println!(
                "configuration line (append to DEPROVISIOND_API_KEYS, comma-separated, or to --api-keys-file):"
            );
            println!("  {}", entry.config_line());
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    #[test]
    fn key_lines_round_trip_and_bad_ones_say_why() {
        let e = ApiKeyEntry::parse(&format!("ci-bot:Operator:{HEX}"), "#1").unwrap();
        assert_eq!(e.role, Role::Operator);
        assert_eq!(e.config_line(), format!("ci-bot:operator:{HEX}"));
        for bad in [
            "ci:operator",
            &format!("ci:root:{HEX}"),
            "ci:admin:dpk_plainkey",
            &format!("bad name:admin:{HEX}"),
        ] {
            assert!(ApiKeyEntry::parse(bad, "#1").is_err(), "{bad}");
        }
        // The error names the entry but never repeats what was given (it may be a pasted key).
        let err = ApiKeyEntry::parse("ci:admin:dpk_secretvalue", "#3")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("#3") && !err.contains("dpk_secretvalue"),
            "{err}"
        );
    }

    #[test]
    fn an_open_service_is_refused_off_loopback() {
        let open = AuthConfig::default();
        assert!(open.check_bind("127.0.0.1:8080".parse().unwrap()).is_ok());
        assert!(open.check_bind("[::1]:8080".parse().unwrap()).is_ok());
        assert!(matches!(
            open.check_bind("0.0.0.0:8080".parse().unwrap()),
            Err(ConfigError::OpenOnNetwork(_))
        ));
        let insecure = AuthConfig {
            insecure_no_auth: true,
            ..AuthConfig::default()
        };
        assert!(insecure.check_bind("0.0.0.0:8080".parse().unwrap()).is_ok());
        let keyed = AuthConfig::with_keys(vec![
            ApiKeyEntry::parse(&format!("a:admin:{HEX}"), "#1").unwrap(),
        ]);
        assert!(keyed.check_bind("0.0.0.0:8080".parse().unwrap()).is_ok());
    }
}

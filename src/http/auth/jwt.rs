//! Bearer JWTs from an OIDC issuer (Entra ID or any other): signature against the issuer's JWKS (fetched
//! and cached, or read from a file), issuer, audience, expiry and not-before, and a claim mapped to roles.

use std::time::Duration;

use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use serde_json::Value;
use tokio::sync::RwLock;

use super::config::{ConfigError, JwksSource, JwtConfig};
use super::{AuthError, Principal, Role, Via};
use crate::domain::clock::{Millis, SharedClock};

/// Asymmetric algorithms only: an HMAC "key" from a JWKS would be public, and `none` signs nothing.
const ALGORITHMS: [Algorithm; 8] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
];

/// An unknown key id fetches the JWKS again at most this often (a key rotation is picked up at once, and a
/// flood of tokens with made-up key ids cannot turn into a flood of requests to the issuer).
const MIN_REFETCH: Duration = Duration::from_secs(60);

struct Cached {
    set: JwkSet,
    fetched_at: Option<Millis>,
    tried_at: Option<Millis>,
}

/// Validates bearer JWTs.
pub struct JwtVerifier {
    config: JwtConfig,
    keys: RwLock<Cached>,
    http: reqwest::Client,
    clock: SharedClock,
}

impl JwtVerifier {
    /// A verifier for `config`: a JWKS file is read now and must parse; a URL is fetched now, and a failure
    /// is logged and retried when a token arrives (the issuer may come up after us).
    pub async fn new(config: JwtConfig, clock: SharedClock) -> Result<Self, ConfigError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| ConfigError::Jwt(format!("HTTP client: {e}")))?;
        let v = JwtVerifier {
            config,
            keys: RwLock::new(Cached {
                set: JwkSet { keys: Vec::new() },
                fetched_at: None,
                tried_at: None,
            }),
            http,
            clock,
        };
        match &v.config.jwks {
            JwksSource::File(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::File {
                    path: path.clone(),
                    source,
                })?;
                let set: JwkSet = serde_json::from_str(&text).map_err(|e| {
                    ConfigError::Jwt(format!("{} is not a JWKS: {e}", path.display()))
                })?;
                let mut c = v.keys.write().await;
                c.set = set;
                c.fetched_at = Some(v.clock.now_ms());
            }
            JwksSource::Url(_) => {
                if let Err(e) = v.refetch().await {
                    tracing::warn!(error = %e, "could not fetch the OIDC signing keys; will retry when a token arrives");
                }
            }
        }
        Ok(v)
    }

    /// Fetches the JWKS from its URL (a file source is never re-read).
    async fn refetch(&self) -> Result<(), String> {
        let JwksSource::Url(url) = &self.config.jwks else {
            return Ok(());
        };
        let now = self.clock.now_ms();
        self.keys.write().await.tried_at = Some(now);
        let resp = self
            .http
            .get(url.clone())
            .send()
            .await
            .map_err(|e| format!("GET {url}: {e}"))?;
        if !resp.status().is_success() {
            return Err(format!("GET {url}: {}", resp.status()));
        }
        let set: JwkSet = resp
            .json()
            .await
            .map_err(|e| format!("{url} is not a JWKS: {e}"))?;
        tracing::info!(keys = set.keys.len(), "OIDC signing keys fetched");
        let mut c = self.keys.write().await;
        c.set = set;
        c.fetched_at = Some(now);
        Ok(())
    }

    /// The key `kid` names, fetching the JWKS again when it is due or the key is unknown (rate limited).
    async fn key(&self, kid: &str) -> Option<Jwk> {
        let now = self.clock.now_ms();
        let (found, due) = {
            let c = self.keys.read().await;
            let stale = c
                .fetched_at
                .is_none_or(|t| now - t >= self.config.refresh.as_millis() as i64);
            let may_retry = c
                .tried_at
                .is_none_or(|t| now - t >= MIN_REFETCH.as_millis() as i64);
            let found = c.set.find(kid).cloned();
            (found.clone(), may_retry && (stale || found.is_none()))
        };
        if due {
            if let Err(e) = self.refetch().await {
                tracing::warn!(error = %e, "could not refresh the OIDC signing keys; using the cached ones");
            }
            return self.keys.read().await.set.find(kid).cloned().or(found);
        }
        found
    }

    /// The principal a valid token names.
    pub async fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        let invalid = |why: &str| AuthError::Invalid(why.to_string());
        let header = decode_header(token).map_err(|_| invalid("not a JWT"))?;
        if !ALGORITHMS.contains(&header.alg) {
            return Err(invalid("the token's algorithm is not accepted"));
        }
        let kid = header
            .kid
            .ok_or_else(|| invalid("the token names no key id (kid)"))?;
        let jwk = self
            .key(&kid)
            .await
            .ok_or_else(|| invalid("the token is signed with a key id the issuer does not list"))?;
        if let Some(alg) = jwk.common.key_algorithm {
            if alg.to_string() != format!("{:?}", header.alg) {
                return Err(invalid("the token's algorithm is not its key's"));
            }
        }
        let key =
            DecodingKey::from_jwk(&jwk).map_err(|_| invalid("the issuer's key is unusable"))?;
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[&self.config.issuer]);
        validation.set_audience(&self.config.audiences);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        // Time is checked below against the service's clock (injectable in tests).
        validation.validate_exp = false;
        validation.validate_nbf = false;
        let data = decode::<Value>(token, &key, &validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            invalid(match e.kind() {
                ErrorKind::InvalidSignature => "bad signature",
                ErrorKind::InvalidIssuer => "wrong issuer",
                ErrorKind::InvalidAudience => "wrong audience",
                ErrorKind::MissingRequiredClaim(_) => "a required claim (exp, iss, aud) is missing",
                _ => "the token does not decode",
            })
        })?;
        let claims = data.claims;
        let now = self.clock.now_ms() / 1000;
        let leeway = self.config.leeway.as_secs() as i64;
        let exp = claims["exp"]
            .as_i64()
            .ok_or_else(|| invalid("exp is not a number"))?;
        if exp + leeway <= now {
            return Err(invalid("expired"));
        }
        if let Some(nbf) = claims.get("nbf") {
            let nbf = nbf.as_i64().ok_or_else(|| invalid("nbf is not a number"))?;
            if nbf - leeway > now {
                return Err(invalid("not valid yet (nbf)"));
            }
        }
        let name = self
            .config
            .name_claims
            .iter()
            .find_map(|c| claims.get(c).and_then(Value::as_str))
            .filter(|s| !s.is_empty())
            .map(|s| s.chars().take(200).collect::<String>())
            .ok_or_else(|| invalid("the token carries none of the configured name claims"))?;
        let role = self.role_of(&claims).ok_or_else(|| {
            AuthError::NoRole(format!(
                "claim `{}` holds no value mapped to reader, operator or admin",
                self.config.role_claim
            ))
        })?;
        Ok(Principal {
            name,
            role,
            via: Via::Jwt,
        })
    }

    /// The highest role the role claim maps to.
    fn role_of(&self, claims: &Value) -> Option<Role> {
        let values: Vec<&str> = match claims.get(&self.config.role_claim) {
            Some(Value::String(s)) => s.split(' ').collect(),
            Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        values
            .into_iter()
            .filter_map(|v| {
                if self.config.role_map.is_empty() {
                    Role::parse(v)
                } else {
                    self.config
                        .role_map
                        .iter()
                        .find(|(value, _)| value == v)
                        .map(|(_, r)| *r)
                }
            })
            .max()
    }
}

//! SAS token checking (azure-specs README §3): signature over `sr` as received, expiry, scope, policy, rights.

use percent_encoding::percent_decode_str;

use super::state::{Right, SasPolicy};
use crate::sas;

/// Why a request was refused; every variant answers 401.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No Authorization header.
    #[error("the Authorization header is missing")]
    Missing,
    /// Not a `SharedAccessSignature` with `sr`, `sig` and `se`.
    #[error("the Authorization header is not a valid SharedAccessSignature")]
    Malformed,
    /// `se` is in the past.
    #[error("the token has expired")]
    Expired,
    /// `sr` does not cover this host and path.
    #[error("the token's resource does not match this endpoint")]
    WrongResource,
    /// `skn` names no policy of this instance.
    #[error("unknown shared access policy")]
    UnknownPolicy,
    /// The signature does not verify with either key.
    #[error("the signature does not match")]
    BadSignature,
    /// The policy lacks a right the operation needs.
    #[error("the policy does not grant {0:?}")]
    MissingRight(Right),
}

/// The fields of a `SharedAccessSignature` header, as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SasToken {
    /// `sr` exactly as sent (still URL-encoded); the signature covers this text.
    pub sr_raw: String,
    /// `sr` URL-decoded.
    pub sr: String,
    /// Signature, URL-decoded (base64).
    pub sig: String,
    /// Expiry, unix seconds.
    pub se: i64,
    /// Policy name, URL-decoded, if present and non-empty.
    pub skn: Option<String>,
}

fn decode(s: &str) -> String {
    percent_decode_str(s).decode_utf8_lossy().into_owned()
}

/// Parses `SharedAccessSignature sr=…&sig=…&se=…[&skn=…]` (fields in any order).
pub fn parse(header: &str) -> Result<SasToken, AuthError> {
    let rest = header
        .trim()
        .strip_prefix("SharedAccessSignature")
        .ok_or(AuthError::Malformed)?
        .trim_start();
    let (mut sr, mut sig, mut se, mut skn) = (None, None, None, None);
    for part in rest.split('&') {
        let (k, v) = part.split_once('=').ok_or(AuthError::Malformed)?;
        match k.trim() {
            "sr" => sr = Some(v.to_string()),
            "sig" => sig = Some(decode(v)),
            "se" => se = Some(v.parse::<i64>().map_err(|_| AuthError::Malformed)?),
            "skn" => skn = Some(decode(v)).filter(|s| !s.is_empty()),
            _ => {}
        }
    }
    let sr_raw = sr.ok_or(AuthError::Malformed)?;
    Ok(SasToken {
        sr: decode(&sr_raw),
        sr_raw,
        sig: sig.ok_or(AuthError::Malformed)?,
        se: se.ok_or(AuthError::Malformed)?,
        skn,
    })
}

/// Whether `sig` is the HMAC of `sr_raw + "\n" + se` under the base64 key.
pub fn verify_signature(key_b64: &str, token: &SasToken) -> bool {
    let Ok(key) = sas::key_bytes(key_b64) else {
        return false;
    };
    let expected = sas::expected_signature(&key, &token.sr_raw, token.se);
    constant_time_eq(expected.as_bytes(), token.sig.as_bytes())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether the decoded `sr` is the host, or a per-segment prefix of `host + path` (case-insensitive).
pub fn resource_matches(sr: &str, host: &str, path: &str) -> bool {
    let sr = sr.trim_end_matches('/').to_ascii_lowercase();
    let sr = sr
        .strip_prefix("https://")
        .or_else(|| sr.strip_prefix("http://"))
        .unwrap_or(&sr)
        .to_string();
    let target = format!("{}{}", host.to_ascii_lowercase(), path.to_ascii_lowercase());
    target == sr || target.starts_with(&format!("{sr}/"))
}

/// Checks a service request: returns the policy name on success.
pub fn check_service_request(
    header: Option<&str>,
    host: &str,
    path: &str,
    policies: &[SasPolicy],
    needed: &[Right],
    now_unix: i64,
) -> Result<String, AuthError> {
    let token = parse(header.ok_or(AuthError::Missing)?)?;
    if token.se <= now_unix {
        return Err(AuthError::Expired);
    }
    if !resource_matches(&token.sr, host, path) {
        return Err(AuthError::WrongResource);
    }
    let name = token.skn.as_deref().ok_or(AuthError::UnknownPolicy)?;
    let policy = policies
        .iter()
        .find(|p| p.name.eq_ignore_ascii_case(name))
        .ok_or(AuthError::UnknownPolicy)?;
    if !verify_signature(policy.primary_key.expose(), &token)
        && !verify_signature(policy.secondary_key.expose(), &token)
    {
        return Err(AuthError::BadSignature);
    }
    if let Some(r) = needed.iter().find(|r| !policy.has(**r)) {
        return Err(AuthError::MissingRight(*r));
    }
    Ok(policy.name.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;

    const KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

    fn policy() -> Vec<SasPolicy> {
        vec![SasPolicy {
            name: "owner".into(),
            primary_key: Secret::new("AAAAAAAAAAAAAAAAAAAAAA=="),
            secondary_key: Secret::new(KEY),
            rights: vec![Right::RegistryRead],
        }]
    }

    fn tok(sr: &str, se: u64, skn: &str) -> String {
        sas::mint(sr, &sas::key_bytes(KEY).unwrap(), Some(skn), se)
    }

    #[test]
    fn accepts_secondary_key_and_any_field_order() {
        let t = tok("hub.azure-devices.net", 2_000, "owner");
        assert_eq!(
            check_service_request(
                Some(&t),
                "hub.azure-devices.net",
                "/devices/a",
                &policy(),
                &[Right::RegistryRead],
                1_000
            ),
            Ok("owner".into())
        );
        // Reorder the fields: sig, se, skn, sr.
        let p = parse(&t).unwrap();
        let reordered = format!(
            "SharedAccessSignature sig={}&se={}&skn=owner&sr={}",
            sas::percent_encode(&p.sig),
            p.se,
            p.sr_raw
        );
        assert!(
            check_service_request(
                Some(&reordered),
                "hub.azure-devices.net",
                "/",
                &policy(),
                &[],
                1_000
            )
            .is_ok()
        );
    }

    #[test]
    fn refuses_each_kind_of_bad_token() {
        let p = policy();
        let host = "hub.azure-devices.net";
        let t = tok(host, 2_000, "owner");
        assert_eq!(
            check_service_request(None, host, "/", &p, &[], 1_000),
            Err(AuthError::Missing)
        );
        assert_eq!(
            check_service_request(Some("Bearer x"), host, "/", &p, &[], 1_000),
            Err(AuthError::Malformed)
        );
        assert_eq!(
            check_service_request(Some(&t), host, "/", &p, &[], 2_000),
            Err(AuthError::Expired)
        );
        assert_eq!(
            check_service_request(Some(&t), "other.azure-devices.net", "/", &p, &[], 1_000),
            Err(AuthError::WrongResource)
        );
        let unknown = tok(host, 2_000, "nobody");
        assert_eq!(
            check_service_request(Some(&unknown), host, "/", &p, &[], 1_000),
            Err(AuthError::UnknownPolicy)
        );
        let tampered = t.replace("se=2000", "se=3000");
        assert_eq!(
            check_service_request(Some(&tampered), host, "/", &p, &[], 1_000),
            Err(AuthError::BadSignature)
        );
        assert_eq!(
            check_service_request(Some(&t), host, "/", &p, &[Right::RegistryWrite], 1_000),
            Err(AuthError::MissingRight(Right::RegistryWrite))
        );
    }

    #[test]
    fn path_prefix_scope_is_per_segment() {
        assert!(resource_matches(
            "HUB.azure-devices.net/devices",
            "hub.azure-devices.net",
            "/devices/x"
        ));
        assert!(resource_matches(
            "hub.azure-devices.net",
            "hub.azure-devices.net",
            "/devices/x"
        ));
        assert!(!resource_matches(
            "hub.azure-devices.net/dev",
            "hub.azure-devices.net",
            "/devices/x"
        ));
        assert!(!resource_matches(
            "hub.azure-devices.net.evil",
            "hub.azure-devices.net",
            "/"
        ));
    }
}

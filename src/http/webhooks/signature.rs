//! Signatures of webhook deliveries: HMAC-SHA256 over the raw body, compared in constant time.
//!
//! Three schemes:
//! - Jira (`X-Hub-Signature: sha256=<hex>`), the WebSub convention Jira Cloud follows: HMAC of the body.
//! - Generic and our own callbacks (`X-Deprovisiond-Signature: t=<unix>,v1=<hex>`): HMAC of `"<t>.<body>"`, so
//!   the timestamp is signed too and an old delivery cannot be replayed with a fresh one.
//! - ServiceNow's optional HMAC header: base64 of the HMAC of the body.

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// How far a generic delivery's timestamp may be from now (either way) before it is refused as a replay.
pub const DEFAULT_TOLERANCE_SECS: u64 = 300;

/// Why a signature was refused. Carries no secret and no signature value, so it can be logged as is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// The header is absent.
    #[error("the {0} header is missing")]
    Missing(&'static str),
    /// The header does not follow the scheme.
    #[error("the {header} header is malformed: {why}")]
    Malformed {
        /// The header.
        header: &'static str,
        /// What is wrong.
        why: &'static str,
    },
    /// The signature does not match the body.
    #[error("the {0} signature does not match the body")]
    Mismatch(&'static str),
    /// The signed timestamp is too old or too far in the future.
    #[error(
        "the signed timestamp is {age_secs} s away from now; at most {tolerance_secs} s is accepted"
    )]
    Stale {
        /// Distance from now, in seconds.
        age_secs: u64,
        /// The accepted distance.
        tolerance_secs: u64,
    },
}

fn mac(secret: &[u8]) -> HmacSha256 {
    // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
    HmacSha256::new_from_slice(secret).expect("HMAC accepts any key length")
}

/// HMAC-SHA256 of `parts`, concatenated, under `secret`.
pub fn hmac_sha256(secret: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut m = mac(secret);
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().into()
}

/// Lower-case hex of `bytes`.
pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn from_hex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Whether `a` and `b` are equal, in time that does not depend on where they differ, nor on their lengths
/// (both are hashed first): for shared secrets and passwords compared as text.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let (x, y) = (Sha256::digest(a), Sha256::digest(b));
    x.iter()
        .zip(y.iter())
        .fold(0u8, |acc, (p, q)| acc | (p ^ q))
        == 0
}

fn verify_mac(
    secret: &[u8],
    parts: &[&[u8]],
    given: &[u8],
    header: &'static str,
) -> Result<(), SignatureError> {
    let mut m = mac(secret);
    for p in parts {
        m.update(p);
    }
    // `verify_slice` compares in constant time.
    m.verify_slice(given)
        .map_err(|_| SignatureError::Mismatch(header))
}

/// Checks Jira's `X-Hub-Signature: <method>=<hex>`; only `sha256` is accepted.
pub fn verify_hub_signature(
    secret: &[u8],
    header: Option<&str>,
    body: &[u8],
) -> Result<(), SignatureError> {
    const H: &str = "X-Hub-Signature";
    let value = header.ok_or(SignatureError::Missing(H))?.trim();
    let (method, hex) = value.split_once('=').ok_or(SignatureError::Malformed {
        header: H,
        why: "expected `sha256=<hex>`",
    })?;
    if !method.eq_ignore_ascii_case("sha256") {
        return Err(SignatureError::Malformed {
            header: H,
            why: "only the sha256 method is accepted",
        });
    }
    let given = from_hex(hex).ok_or(SignatureError::Malformed {
        header: H,
        why: "the signature is not hex",
    })?;
    verify_mac(secret, &[body], &given, H)
}

/// The `X-Deprovisiond-Signature` value for `body` sent at `t` (seconds since the Unix epoch).
pub fn sign_generic(secret: &[u8], t: u64, body: &[u8]) -> String {
    let ts = t.to_string();
    let sig = hmac_sha256(secret, &[ts.as_bytes(), b".", body]);
    format!("t={ts},v1={}", to_hex(&sig))
}

/// Checks `X-Deprovisiond-Signature: t=<unix>,v1=<hex>[,v1=<hex>…]` against `body` at `now_unix`: one `v1` must
/// match (several let a sender sign with an old and a new secret while rotating), and `t` must be within
/// `tolerance_secs` of now.
pub fn verify_generic(
    secret: &[u8],
    header: Option<&str>,
    body: &[u8],
    now_unix: u64,
    tolerance_secs: u64,
) -> Result<(), SignatureError> {
    const H: &str = "X-Deprovisiond-Signature";
    let value = header.ok_or(SignatureError::Missing(H))?;
    let mut t: Option<&str> = None;
    let mut sigs = Vec::new();
    for part in value.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) if t.is_none() => t = Some(v),
            Some(("v1", v)) => sigs.push(v),
            // Other schemes (v0, future versions) are ignored, as the scheme's convention says.
            Some((k, _)) if k != "t" => {}
            _ => {
                return Err(SignatureError::Malformed {
                    header: H,
                    why: "expected `t=<unix seconds>,v1=<hex>`",
                });
            }
        }
    }
    let ts = t.ok_or(SignatureError::Malformed {
        header: H,
        why: "no `t=` timestamp",
    })?;
    let t_num: u64 = ts.parse().map_err(|_| SignatureError::Malformed {
        header: H,
        why: "the timestamp is not whole seconds since the Unix epoch",
    })?;
    if sigs.is_empty() {
        return Err(SignatureError::Malformed {
            header: H,
            why: "no `v1=` signature",
        });
    }
    // The signature is checked before the time: a forged header learns nothing about the clock.
    let mut matched = false;
    for s in sigs {
        if let Some(given) = from_hex(s) {
            matched |= verify_mac(secret, &[ts.as_bytes(), b".", body], &given, H).is_ok();
        }
    }
    if !matched {
        return Err(SignatureError::Mismatch(H));
    }
    let age_secs = now_unix.abs_diff(t_num);
    if age_secs > tolerance_secs {
        return Err(SignatureError::Stale {
            age_secs,
            tolerance_secs,
        });
    }
    Ok(())
}

/// Checks a header holding the base64 HMAC-SHA256 of the body (ServiceNow scripts compute it with
/// `GlideCertificateEncryption.generateMac`).
pub fn verify_base64_hmac(
    secret: &[u8],
    header_name: &'static str,
    header: Option<&str>,
    body: &[u8],
) -> Result<(), SignatureError> {
    let value = header.ok_or(SignatureError::Missing(header_name))?.trim();
    let given = base64::engine::general_purpose::STANDARD
        .decode(value)
        .map_err(|_| SignatureError::Malformed {
            header: header_name,
            why: "the signature is not base64",
        })?;
    verify_mac(secret, &[body], &given, header_name)
}

/// The base64 HMAC-SHA256 of `body` (tests, and senders' documentation).
pub fn sign_base64(secret: &[u8], body: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(hmac_sha256(secret, &[body]))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_764_590_000;

    #[test]
    fn hmac_matches_the_rfc_4231_vector() {
        // RFC 4231 test case 2.
        let sig = hmac_sha256(b"Jefe", &[b"what do ya want ", b"for nothing?"]);
        assert_eq!(
            to_hex(&sig),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn hub_signature_valid_wrong_missing_and_other_method() {
        let body = br#"{"webhookEvent":"jira:issue_updated"}"#;
        let good = format!("sha256={}", to_hex(&hmac_sha256(b"s3", &[body])));
        assert_eq!(verify_hub_signature(b"s3", Some(&good), body), Ok(()));
        assert_eq!(
            verify_hub_signature(
                b"s3",
                Some(&good.to_uppercase().replacen("SHA256", "sha256", 1)),
                body
            ),
            Ok(()),
            "hex case does not matter"
        );
        assert_eq!(
            verify_hub_signature(b"other", Some(&good), body),
            Err(SignatureError::Mismatch("X-Hub-Signature"))
        );
        assert_eq!(
            verify_hub_signature(b"s3", Some(&good), b"{}"),
            Err(SignatureError::Mismatch("X-Hub-Signature"))
        );
        assert_eq!(
            verify_hub_signature(b"s3", None, body),
            Err(SignatureError::Missing("X-Hub-Signature"))
        );
        assert!(matches!(
            verify_hub_signature(b"s3", Some("sha1=abcd"), body),
            Err(SignatureError::Malformed { .. })
        ));
        assert!(matches!(
            verify_hub_signature(b"s3", Some("sha256=zz"), body),
            Err(SignatureError::Malformed { .. })
        ));
    }

    #[test]
    fn generic_signature_round_trips_and_refuses_replays() {
        let body = br#"{"event":"deprovision"}"#;
        let h = sign_generic(b"k", NOW, body);
        assert_eq!(verify_generic(b"k", Some(&h), body, NOW, 300), Ok(()));
        assert_eq!(verify_generic(b"k", Some(&h), body, NOW + 300, 300), Ok(()));
        assert_eq!(
            verify_generic(b"k", Some(&h), body, NOW + 301, 300),
            Err(SignatureError::Stale {
                age_secs: 301,
                tolerance_secs: 300
            })
        );
        assert!(
            matches!(
                verify_generic(b"k", Some(&h), body, NOW - 301, 300),
                Err(SignatureError::Stale { .. })
            ),
            "a timestamp from the future is refused too"
        );
        // Changing the timestamp breaks the signature: it is signed.
        let moved = h.replace(&NOW.to_string(), &(NOW + 10).to_string());
        assert_eq!(
            verify_generic(b"k", Some(&moved), body, NOW, 300),
            Err(SignatureError::Mismatch("X-Deprovisiond-Signature"))
        );
        assert_eq!(
            verify_generic(b"wrong", Some(&h), body, NOW, 300),
            Err(SignatureError::Mismatch("X-Deprovisiond-Signature"))
        );
        assert_eq!(
            verify_generic(b"k", None, body, NOW, 300),
            Err(SignatureError::Missing("X-Deprovisiond-Signature"))
        );
        for bad in ["", "v1=00", "t=abc,v1=00", "t=1", "garbage"] {
            assert!(
                matches!(
                    verify_generic(b"k", Some(bad), body, NOW, 300),
                    Err(SignatureError::Malformed { .. })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn generic_accepts_any_matching_v1_while_secrets_rotate() {
        let body = b"{}";
        let new = sign_generic(b"new", NOW, body);
        let old_sig = new.split(",v1=").nth(1).unwrap();
        let old = sign_generic(b"old", NOW, body);
        let both = format!("{old},v1={old_sig},v0=ignored");
        assert_eq!(verify_generic(b"new", Some(&both), body, NOW, 300), Ok(()));
        assert_eq!(verify_generic(b"old", Some(&both), body, NOW, 300), Ok(()));
    }

    #[test]
    fn base64_hmac_and_constant_time_eq() {
        let body = b"{\"number\":\"RITM0010001\"}";
        let h = sign_base64(b"sn", body);
        assert_eq!(verify_base64_hmac(b"sn", "X-Sig", Some(&h), body), Ok(()));
        assert_eq!(
            verify_base64_hmac(b"sn2", "X-Sig", Some(&h), body),
            Err(SignatureError::Mismatch("X-Sig"))
        );
        assert!(matches!(
            verify_base64_hmac(b"sn", "X-Sig", Some("***"), body),
            Err(SignatureError::Malformed { .. })
        ));
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }

    #[test]
    fn errors_never_carry_the_signature() {
        let e = verify_hub_signature(b"s", Some("sha256=deadbeef"), b"x").unwrap_err();
        assert!(!e.to_string().contains("deadbeef"));
    }
}

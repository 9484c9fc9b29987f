//! Shared Access Signatures as the simulated services see them, written from the specification
//! (azure-specs README §3 and §10) and independent of any client's signing code, so a client's
//! signing bug cannot pass against the simulator.
//!
//! `sig = base64(HMAC-SHA256(base64_decode(key), sr + "\n" + se))`, where `sr` is the resource text exactly
//! as it appears in the token. The simulator also plays the devices of a seeded fleet, so it mints the
//! device tokens a device SDK would send (`{idScope}/registrations/{registrationId}`, `skn=registration`).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// A key given as base64 text could not be decoded.
#[derive(Debug, thiserror::Error)]
#[error("the key is not valid base64")]
pub struct BadKey;

/// The bytes of a base64 shared access key (surrounding whitespace ignored).
pub fn key_bytes(key_b64: &str) -> Result<Vec<u8>, BadKey> {
    STANDARD.decode(key_b64.trim()).map_err(|_| BadKey)
}

/// `base64(HMAC-SHA256(key, message))`.
pub fn hmac_b64(key: &[u8], message: &[u8]) -> String {
    // HMAC is defined for keys of any length (longer ones are hashed first), so this cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC accepts any key length");
    mac.update(message);
    STANDARD.encode(mac.finalize().into_bytes())
}

/// The signature a token over `sr_as_sent` expiring at `se` must carry.
pub fn expected_signature(key: &[u8], sr_as_sent: &str, se: i64) -> String {
    hmac_b64(key, format!("{sr_as_sent}\n{se}").as_bytes())
}

/// Percent-encodes every byte but the RFC 3986 unreserved ones (`A-Z a-z 0-9 - . _ ~`), the way
/// JavaScript's `encodeURIComponent` does for the characters a token contains.
pub fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A complete `SharedAccessSignature …` value for `resource` (encoded here), signed with `key`.
pub fn mint(resource: &str, key: &[u8], policy: Option<&str>, se: u64) -> String {
    let sr = percent_encode(resource);
    let sig = percent_encode(&hmac_b64(key, format!("{sr}\n{se}").as_bytes()));
    let mut t = format!("SharedAccessSignature sr={sr}&sig={sig}&se={se}");
    if let Some(p) = policy {
        t.push_str("&skn=");
        t.push_str(&percent_encode(p));
    }
    t
}

/// The key of one device of a symmetric-key group: `base64(HMAC-SHA256(group key, registrationId))`.
pub fn group_device_key(group_key: &[u8], registration_id: &str) -> String {
    hmac_b64(group_key, registration_id.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    // Vectors computed independently with Python's hmac, hashlib, base64 and urllib.parse.quote(safe='').
    #[test]
    fn mints_the_independent_vector() {
        let key = key_bytes("MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=").unwrap();
        assert_eq!(
            mint(
                "mydps.azure-devices-provisioning.net",
                &key,
                Some("provisioningserviceowner"),
                1_700_000_000
            ),
            "SharedAccessSignature sr=mydps.azure-devices-provisioning.net\
             &sig=xXBqEKztXMACe9dg1gMBreO%2F8CMn3ovt%2B%2BxDvPb6Xl0%3D&se=1700000000&skn=provisioningserviceowner"
        );
    }

    // The documented example of "Symmetric key attestation" (group key, registration id, device key).
    #[test]
    fn derives_the_documented_group_device_key() {
        let group = key_bytes(
            "8isrFI1sGsIlvvFSSFRiMfCNzv21fjbE/+ah/lSh3lF8e2YG1Te7w1KpZhJFFXJrqYKi9yegxkqIChbqOS9Egw==",
        )
        .unwrap();
        assert_eq!(
            group_device_key(&group, "sn-007-888-abc-mac-a1-b2-c3-d4-e5-f6"),
            "Jsm0lyGpjaVYVP2g3FnmnmG9dI/9qU24wNoykUmermc="
        );
    }

    #[test]
    fn encodes_like_encode_uri_component() {
        assert_eq!(percent_encode("a+b/c=d e~"), "a%2Bb%2Fc%3Dd%20e~");
        assert_eq!(
            percent_encode("0ne00/registrations/é"),
            "0ne00%2Fregistrations%2F%C3%A9"
        );
    }

    #[test]
    fn rejects_keys_that_are_not_base64() {
        assert!(key_bytes("not base64!").is_err());
    }
}

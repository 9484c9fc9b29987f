//! Shared Access Signature primitives shared by the clients (minting) and the simulator (checking).
//!
//! Format (azure-specs README §3): `SharedAccessSignature sr={enc(resource)}&sig={enc(sig)}&se={expiry}&skn={enc(policy)}`
//! where `sig = base64(HMAC-SHA256(base64_decode(key), enc(resource) + "\n" + expiry))`.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use sha2::Sha256;

/// Characters left as-is by URL encoding, as `encodeURIComponent` / `urllib.parse.quote(safe='')` do.
const URL_COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// URL-encodes one component (a resource URI, a signature, a policy name).
pub fn url_encode(s: &str) -> String {
    utf8_percent_encode(s, URL_COMPONENT).to_string()
}

/// A key given as base64 text could not be decoded.
#[derive(Debug, thiserror::Error)]
#[error("the shared access key is not valid base64")]
pub struct InvalidKey;

/// Decodes a base64 shared access key.
pub fn decode_key(key_b64: &str) -> Result<Vec<u8>, InvalidKey> {
    B64.decode(key_b64.trim()).map_err(|_| InvalidKey)
}

/// HMAC-SHA256 of `message` with `key`, base64-encoded (not URL-encoded).
pub fn hmac_sha256_b64(key: &[u8], message: &[u8]) -> String {
    // HMAC accepts keys of any length, so `new_from_slice` cannot fail here.
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(message);
    B64.encode(mac.finalize().into_bytes())
}

/// The signature of an already URL-encoded resource and an expiry (unix seconds).
pub fn signature(key: &[u8], encoded_resource: &str, expiry: u64) -> String {
    hmac_sha256_b64(key, format!("{encoded_resource}\n{expiry}").as_bytes())
}

/// Builds a complete `SharedAccessSignature …` header value.
///
/// `resource` is the raw resource (e.g. the lower-case host name); it is encoded here.
pub fn token(resource: &str, key: &[u8], policy: Option<&str>, expiry: u64) -> String {
    let sr = url_encode(resource);
    let sig = url_encode(&signature(key, &sr, expiry));
    match policy {
        Some(p) => format!(
            "SharedAccessSignature sr={sr}&sig={sig}&se={expiry}&skn={}",
            url_encode(p)
        ),
        None => format!("SharedAccessSignature sr={sr}&sig={sig}&se={expiry}"),
    }
}

/// The device key of one device in a symmetric-key enrollment group:
/// `base64(HMAC-SHA256(base64_decode(group_key), registration_id))`.
pub fn derive_device_key(group_key: &[u8], registration_id: &str) -> String {
    hmac_sha256_b64(group_key, registration_id.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    // Vectors computed independently with Python's hmac/hashlib/base64/urllib.parse.quote(safe='').
    #[test]
    fn token_matches_independent_vector() {
        let key = decode_key("MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=").unwrap();
        let t = token(
            "mydps.azure-devices-provisioning.net",
            &key,
            Some("provisioningserviceowner"),
            1_700_000_000,
        );
        assert_eq!(
            t,
            "SharedAccessSignature sr=mydps.azure-devices-provisioning.net\
             &sig=xXBqEKztXMACe9dg1gMBreO%2F8CMn3ovt%2B%2BxDvPb6Xl0%3D&se=1700000000&skn=provisioningserviceowner"
        );
    }

    #[test]
    fn derived_device_key_matches_documented_vector() {
        let group = decode_key(
            "8isrFI1sGsIlvvFSSFRiMfCNzv21fjbE/+ah/lSh3lF8e2YG1Te7w1KpZhJFFXJrqYKi9yegxkqIChbqOS9Egw==",
        )
        .unwrap();
        assert_eq!(
            derive_device_key(&group, "sn-007-888-abc-mac-a1-b2-c3-d4-e5-f6"),
            "Jsm0lyGpjaVYVP2g3FnmnmG9dI/9qU24wNoykUmermc="
        );
    }

    #[test]
    fn encodes_like_encode_uri_component() {
        assert_eq!(url_encode("a+b/c=d e"), "a%2Bb%2Fc%3Dd%20e");
        assert_eq!(
            url_encode("scope/registrations/dev-1"),
            "scope%2Fregistrations%2Fdev-1"
        );
    }
}

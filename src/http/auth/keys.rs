//! API keys: generated here, configured as a name, a role and the SHA-256 hash of the key (never the key),
//! and checked in constant time.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::config::ApiKeyEntry;

/// Prefix of generated keys: makes them recognisable in a leaked file or a secret scanner's rules.
pub const KEY_PREFIX: &str = "dpk_";

/// A fresh key: the prefix and 32 random bytes (256 bits), URL-safe base64.
pub fn generate() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("{KEY_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes))
}

/// The SHA-256 of a key, as configured. A plain hash suffices: the keys are 256 random bits, not passwords.
pub fn hash(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// Lowercase hex of a hash.
pub fn to_hex(hash: &[u8; 32]) -> String {
    hash.iter().map(|b| format!("{b:02x}")).collect()
}

/// The configured keys.
#[derive(Debug, Clone, Default)]
pub struct KeyRing {
    entries: Vec<ApiKeyEntry>,
}

impl KeyRing {
    /// A ring of these entries.
    pub fn new(entries: Vec<ApiKeyEntry>) -> Self {
        Self { entries }
    }

    /// How many keys are configured.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entry whose hash `presented` has. Every entry is compared, in constant time, whatever matches:
    /// neither the timing of one comparison nor the number made says how close a guess was.
    pub fn find(&self, presented: &str) -> Option<&ApiKeyEntry> {
        let h = hash(presented);
        let mut found = None;
        for e in &self.entries {
            if bool::from(e.sha256.ct_eq(&h)) && found.is_none() {
                found = Some(e);
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::auth::Role;

    #[test]
    fn a_generated_key_is_found_by_its_hash_only() {
        let key = generate();
        assert!(key.starts_with(KEY_PREFIX) && key.len() > 40);
        assert_ne!(key, generate());
        let ring = KeyRing::new(vec![ApiKeyEntry {
            name: "ci".into(),
            role: Role::Operator,
            sha256: hash(&key),
        }]);
        assert_eq!(ring.find(&key).map(|e| e.name.as_str()), Some("ci"));
        assert!(ring.find(&format!("{key}x")).is_none());
        assert!(ring.find("").is_none());
    }

    #[test]
    fn hex_is_lowercase_sha256() {
        assert_eq!(
            to_hex(&hash("abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}

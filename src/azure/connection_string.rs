//! Service connection strings: `HostName=…;SharedAccessKeyName=…;SharedAccessKey=…`.

use std::fmt;
use std::str::FromStr;

use super::sas;
use super::secret::Secret;

/// A parsed service connection string (same shape for DPS and IoT Hub).
#[derive(Clone, PartialEq, Eq)]
pub struct ConnectionString {
    host_name: String,
    key_name: String,
    key: Secret,
}

/// Why a connection string was rejected. Never contains the key or the raw text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectionStringError {
    /// A required part is absent.
    #[error("connection string has no {0}")]
    Missing(&'static str),
    /// A required part is present but empty.
    #[error("connection string has an empty {0}")]
    Empty(&'static str),
    /// A part appears twice.
    #[error("connection string gives {0} more than once")]
    Duplicate(&'static str),
    /// A `;`-separated segment is not `Name=Value` (its position is given, not its text, which may be a key).
    #[error("connection string segment {0} is not of the form Name=Value")]
    Malformed(usize),
    /// The key is not base64.
    #[error("connection string SharedAccessKey is not valid base64")]
    InvalidKey,
    /// The host name is not a plain DNS name.
    #[error("connection string HostName {0:?} is not a host name")]
    InvalidHostName(String),
}

impl ConnectionString {
    /// Parses a connection string; part names are matched case-insensitively, order is free, a trailing `;` is
    /// tolerated, and values may contain `=` (base64 keys). Unknown parts are ignored.
    pub fn parse(text: &str) -> Result<Self, ConnectionStringError> {
        let mut host = None;
        let mut key_name = None;
        let mut key = None;
        for (index, segment) in text.trim().split(';').enumerate() {
            let segment = segment.trim();
            if segment.is_empty() {
                continue;
            }
            let Some((name, value)) = segment.split_once('=') else {
                return Err(ConnectionStringError::Malformed(index + 1));
            };
            let value = value.trim();
            let (slot, label) = match name.trim().to_ascii_lowercase().as_str() {
                "hostname" => (&mut host, "HostName"),
                "sharedaccesskeyname" => (&mut key_name, "SharedAccessKeyName"),
                "sharedaccesskey" => (&mut key, "SharedAccessKey"),
                _ => continue,
            };
            if slot.is_some() {
                return Err(ConnectionStringError::Duplicate(label));
            }
            if value.is_empty() {
                return Err(ConnectionStringError::Empty(label));
            }
            *slot = Some(value.to_string());
        }
        let host = host.ok_or(ConnectionStringError::Missing("HostName"))?;
        let key_name = key_name.ok_or(ConnectionStringError::Missing("SharedAccessKeyName"))?;
        let key = key.ok_or(ConnectionStringError::Missing("SharedAccessKey"))?;
        let host_ok = host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
            && !host.starts_with('.')
            && !host.ends_with('.');
        if !host_ok {
            return Err(ConnectionStringError::InvalidHostName(host));
        }
        if sas::decode_key(&key).is_err() {
            return Err(ConnectionStringError::InvalidKey);
        }
        Ok(Self {
            host_name: host,
            key_name,
            key: Secret::new(key),
        })
    }

    /// The host name as written (e.g. `MyDps.azure-devices-provisioning.net`).
    pub fn host_name(&self) -> &str {
        &self.host_name
    }

    /// The shared access policy name (`skn`).
    pub fn key_name(&self) -> &str {
        &self.key_name
    }

    /// The base64 shared access key.
    pub fn key(&self) -> &Secret {
        &self.key
    }

    /// The decoded key bytes.
    pub(crate) fn key_bytes(&self) -> Vec<u8> {
        // `parse` is the only constructor and it checked the key decodes.
        sas::decode_key(self.key.expose()).unwrap_or_default()
    }
}

impl FromStr for ConnectionString {
    type Err = ConnectionStringError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Debug for ConnectionString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionString")
            .field("host_name", &self.host_name)
            .field("key_name", &self.key_name)
            .field("key", &self.key)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

    #[test]
    fn parses_in_any_order_with_trailing_semicolon() {
        let cs = ConnectionString::parse(&format!(
            "SharedAccessKey={KEY};HostName=MyDps.azure-devices-provisioning.net;SharedAccessKeyName=provisioningserviceowner;"
        ))
        .unwrap();
        assert_eq!(cs.host_name(), "MyDps.azure-devices-provisioning.net");
        assert_eq!(cs.key_name(), "provisioningserviceowner");
        assert_eq!(cs.key().expose(), KEY);
        assert_eq!(cs.key_bytes(), b"0123456789abcdef0123456789abcdef");
    }

    #[test]
    fn keeps_equals_signs_inside_the_key() {
        let cs: ConnectionString =
            "HostName=h.azure-devices.net;SharedAccessKeyName=iothubowner;SharedAccessKey=YWJjZA=="
                .parse()
                .unwrap();
        assert_eq!(cs.key().expose(), "YWJjZA==");
    }

    #[test]
    fn names_the_missing_part() {
        let err = ConnectionString::parse(&format!(
            "HostName=h.azure-devices.net;SharedAccessKey={KEY}"
        ))
        .unwrap_err();
        assert_eq!(err, ConnectionStringError::Missing("SharedAccessKeyName"));
        assert_eq!(
            err.to_string(),
            "connection string has no SharedAccessKeyName"
        );
        let err =
            ConnectionString::parse("SharedAccessKeyName=p;SharedAccessKey=YWJjZA==").unwrap_err();
        assert_eq!(err, ConnectionStringError::Missing("HostName"));
        let err = ConnectionString::parse("HostName=h;SharedAccessKeyName=p").unwrap_err();
        assert_eq!(err, ConnectionStringError::Missing("SharedAccessKey"));
        let err =
            ConnectionString::parse("HostName=h;SharedAccessKeyName=;SharedAccessKey=YWJjZA==")
                .unwrap_err();
        assert_eq!(err, ConnectionStringError::Empty("SharedAccessKeyName"));
        let err = ConnectionString::parse(
            "HostName=a;HostName=b;SharedAccessKeyName=p;SharedAccessKey=YWJjZA==",
        )
        .unwrap_err();
        assert_eq!(err, ConnectionStringError::Duplicate("HostName"));
    }

    #[test]
    fn bad_key_is_rejected_without_echoing_it() {
        let secret = "not!base64?secret-value";
        let text =
            format!("HostName=h.azure-devices.net;SharedAccessKeyName=p;SharedAccessKey={secret}");
        let err = ConnectionString::parse(&text).unwrap_err();
        assert_eq!(err, ConnectionStringError::InvalidKey);
        assert!(!err.to_string().contains(secret));
        assert!(!format!("{err:?}").contains(secret));
    }

    #[test]
    fn malformed_segment_is_reported_by_position_only() {
        let err =
            ConnectionString::parse("HostName=h;c2VjcmV0a2V5;SharedAccessKeyName=p").unwrap_err();
        assert_eq!(err, ConnectionStringError::Malformed(2));
        assert!(!err.to_string().contains("c2VjcmV0a2V5"));
    }

    #[test]
    fn rejects_a_url_as_host_name() {
        let err = ConnectionString::parse(&format!(
            "HostName=https://h.azure-devices.net/;SharedAccessKeyName=p;SharedAccessKey={KEY}"
        ))
        .unwrap_err();
        assert!(matches!(err, ConnectionStringError::InvalidHostName(_)));
    }

    #[test]
    fn debug_hides_the_key() {
        let cs = ConnectionString::parse(&format!(
            "HostName=h;SharedAccessKeyName=p;SharedAccessKey={KEY}"
        ))
        .unwrap();
        let shown = format!("{cs:?}");
        assert!(shown.contains("***"), "{shown}");
        assert!(!shown.contains(KEY), "{shown}");
    }
}

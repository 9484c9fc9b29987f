//! Identifiers that can only hold values Azure accepts ("parse, don't validate").

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

/// Why an identifier was refused. The messages leave out which identifier: the caller names the field
/// (`target.group_id`), so the message reads well after it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The identifier is empty.
    #[error("must not be empty")]
    Empty {
        /// Which identifier.
        kind: &'static str,
    },
    /// The identifier is too long.
    #[error("is {len} characters long; at most {max} are allowed")]
    TooLong {
        /// Which identifier.
        kind: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The identifier holds a character Azure refuses.
    #[error("contains {ch:?}; allowed characters are {allowed}")]
    BadChar {
        /// Which identifier.
        kind: &'static str,
        /// The first offending character.
        ch: char,
        /// A description of the allowed set.
        allowed: &'static str,
    },
    /// The identifier is `.` or `..`, which URL paths treat as "this" and "parent" segments.
    #[error("must not be `.` or `..` (they would change the Azure URL the id is sent in)")]
    DotSegment {
        /// Which identifier.
        kind: &'static str,
    },
}

/// Refuses `.` and `..`: every URL parser (and so every HTTP client) removes or resolves them, so an id
/// spelled that way would address another resource than the one it names.
fn check_not_dot_segment(kind: &'static str, s: &str) -> Result<(), IdError> {
    if matches!(s, "." | "..") {
        return Err(IdError::DotSegment { kind });
    }
    Ok(())
}

const DPS_ALLOWED: &str = "letters a-z (case-insensitive), digits 0-9 and . _ - :";

fn check_dps_id(kind: &'static str, s: &str) -> Result<String, IdError> {
    if s.is_empty() {
        return Err(IdError::Empty { kind });
    }
    let len = s.chars().count();
    if len > 128 {
        return Err(IdError::TooLong {
            kind,
            len,
            max: 128,
        });
    }
    if let Some(ch) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':')))
    {
        return Err(IdError::BadChar {
            kind,
            ch,
            allowed: DPS_ALLOWED,
        });
    }
    check_not_dot_segment(kind, s)?;
    // DPS treats these ids case-insensitively and stores them lower-case.
    Ok(s.to_ascii_lowercase())
}

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident, $parse:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Parses and normalises an identifier.
            pub fn parse(s: &str) -> Result<Self, IdError> {
                let f: fn(&str) -> Result<String, IdError> = $parse;
                f(s).map(Self)
            }

            /// The identifier as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::parse(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}

string_id!(
    /// A DPS registration id: at most 128 of `a-z0-9 . _ - :`, case-insensitive (kept lower-case).
    RegistrationId,
    |s| check_dps_id("registration_id", s)
);

string_id!(
    /// A DPS enrollment group id: the same rules as a registration id.
    GroupId,
    |s| check_dps_id("group_id", s)
);

string_id!(
    /// An IoT Hub device id: case-sensitive, at most 128 ASCII letters, digits and `- . + % _ # * ? ! ( ) , : = @ $ '`.
    DeviceId,
    |s| {
        const KIND: &str = "device_id";
        if s.is_empty() {
            return Err(IdError::Empty { kind: KIND });
        }
        let len = s.chars().count();
        if len > 128 {
            return Err(IdError::TooLong { kind: KIND, len, max: 128 });
        }
        if let Some(ch) = s.chars().find(|c| {
            !(c.is_ascii_alphanumeric() || "-.+%_#*?!(),:=@$'".contains(*c))
        }) {
            return Err(IdError::BadChar {
                kind: KIND,
                ch,
                allowed: "ASCII letters, digits and - . + % _ # * ? ! ( ) , : = @ $ '",
            });
        }
        check_not_dot_segment(KIND, s)?;
        Ok(s.to_string())
    }
);

string_id!(
    /// The configured name of a DPS instance: 1-64 of `a-z0-9 -`, as Azure resource names allow.
    DpsName,
    |s| {
        const KIND: &str = "dps";
        if s.is_empty() {
            return Err(IdError::Empty { kind: KIND });
        }
        let len = s.chars().count();
        if len > 64 {
            return Err(IdError::TooLong { kind: KIND, len, max: 64 });
        }
        if let Some(ch) = s.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '-')) {
            return Err(IdError::BadChar { kind: KIND, ch, allowed: "letters, digits and -" });
        }
        Ok(s.to_ascii_lowercase())
    }
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registration_id_rules() {
        assert_eq!(
            RegistrationId::parse("Dev-01.a_b:c").unwrap().as_str(),
            "dev-01.a_b:c"
        );
        assert_eq!(
            RegistrationId::parse(""),
            Err(IdError::Empty {
                kind: "registration_id"
            })
        );
        assert!(matches!(
            RegistrationId::parse(&"a".repeat(129)),
            Err(IdError::TooLong {
                len: 129,
                max: 128,
                ..
            })
        ));
        assert!(RegistrationId::parse(&"a".repeat(128)).is_ok());
        assert!(matches!(
            RegistrationId::parse("dev/1"),
            Err(IdError::BadChar { ch: '/', .. })
        ));
        assert!(RegistrationId::parse("dév").is_err());
    }

    #[test]
    fn device_id_is_case_sensitive_and_allows_hub_specials() {
        assert_eq!(DeviceId::parse("Dev+1#(x)").unwrap().as_str(), "Dev+1#(x)");
        assert!(DeviceId::parse("dev 1").is_err());
        assert!(DeviceId::parse("dev/1").is_err());
    }

    #[test]
    fn dot_segments_are_refused_everywhere() {
        for s in [".", ".."] {
            assert_eq!(
                RegistrationId::parse(s),
                Err(IdError::DotSegment {
                    kind: "registration_id"
                })
            );
            assert_eq!(
                GroupId::parse(s),
                Err(IdError::DotSegment { kind: "group_id" })
            );
            assert_eq!(
                DeviceId::parse(s),
                Err(IdError::DotSegment { kind: "device_id" })
            );
        }
        // Dots inside an id are ordinary characters.
        assert!(RegistrationId::parse("...").is_ok());
        assert!(GroupId::parse("a..b").is_ok());
        assert!(DeviceId::parse(".x").is_ok());
    }

    #[test]
    fn deserialises_through_parse() {
        let id: GroupId = serde_json::from_str("\"Fleet-A\"").unwrap();
        assert_eq!(id.as_str(), "fleet-a");
        let err = serde_json::from_str::<GroupId>("\"bad id\"").unwrap_err();
        assert!(err.to_string().contains("contains ' '"), "{err}");
    }
}

//! Identifiers: service keys, VXCs and ports are named by short ASCII ids.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::RuleError;

/// Longest id accepted for keys, VXCs and ports.
pub const MAX_ID_LEN: usize = 64;

macro_rules! ident {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Checks the id rule: 1..=64 characters of `[A-Za-z0-9-]`.
            pub fn parse(field: &str, raw: &str) -> Result<Self, RuleError> {
                check_ident(field, $what, raw).map(|()| Self(raw.to_owned()))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = RuleError;
            fn try_from(raw: String) -> Result<Self, RuleError> {
                check_ident($what, $what, &raw).map(|()| Self(raw))
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

ident!(
    /// A service key id (in practice a UUID).
    KeyId,
    "service key id"
);
ident!(
    /// A VXC id.
    VxcId,
    "VXC id"
);
ident!(
    /// A port name as used in keys and VXCs (`syd-1`), mapped to a kernel interface by the config.
    PortName,
    "port name"
);

fn check_ident(field: &str, what: &str, raw: &str) -> Result<(), RuleError> {
    let ok_chars = raw.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if raw.is_empty() || raw.len() > MAX_ID_LEN || !ok_chars {
        return Err(RuleError::BadRequest(format!(
            "{field}: {what} {raw:?} must be 1 to {MAX_ID_LEN} characters of A-Z, a-z, 0-9 and '-'"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_uuid_and_short_names() {
        assert!(KeyId::parse("key", "6f2c1e4a-8d3b-4b7e-9c1a-2f5e7d9b0a11").is_ok());
        assert!(PortName::parse("port", "syd-1").is_ok());
        assert!(VxcId::parse("id", &"a".repeat(64)).is_ok());
    }

    #[test]
    fn refuses_empty_long_and_odd_characters() {
        for raw in ["", "has space", "slash/", "dot.", "ü", &"a".repeat(65)] {
            let err = VxcId::parse("id", raw).unwrap_err();
            assert_eq!(err.code(), "bad_request", "{raw:?}");
            assert!(err.to_string().starts_with("id: VXC id"), "{err}");
        }
    }

    #[test]
    fn deserializing_checks_the_rule() {
        let bad: Result<PortName, _> = serde_json::from_str("\"a b\"");
        assert!(bad.is_err());
        let good: PortName = serde_json::from_str("\"syd-1\"").unwrap();
        assert_eq!(good.as_str(), "syd-1");
    }
}

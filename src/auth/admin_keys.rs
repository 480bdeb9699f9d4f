//! Admin API keys (`ADMIN_API_KEYS`): separate from client tokens, several valid at once so a
//! key can be rotated without downtime, compared in constant time.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::ConfigError;

/// Shortest accepted key: 32 characters (about 190 bits from a random alphanumeric source).
pub const MIN_KEY_LEN: usize = 32;

/// The configured admin keys, kept only as SHA-256 digests.
#[derive(Default)]
pub struct AdminKeys {
    digests: Vec<[u8; 32]>,
}

impl std::fmt::Debug for AdminKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material, not even digests.
        write!(f, "AdminKeys({} keys)", self.digests.len())
    }
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

impl AdminKeys {
    /// Parses a comma list; every key must be at least [`MIN_KEY_LEN`] characters. `None`: no
    /// keys, and admin routes answer 401 to everyone.
    pub fn parse(list: Option<&str>) -> Result<Self, ConfigError> {
        let Some(list) = list else {
            return Ok(Self::default());
        };
        let mut digests = Vec::new();
        for (i, key) in list.split(',').map(str::trim).enumerate() {
            if key.chars().count() < MIN_KEY_LEN {
                return Err(ConfigError::new(
                    "ADMIN_API_KEYS",
                    format!("key {} is shorter than {MIN_KEY_LEN} characters", i + 1),
                ));
            }
            digests.push(digest(key));
        }
        Ok(Self { digests })
    }

    /// Whether no key is configured.
    pub fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }

    /// Whether `presented` is one of the keys. Digests of equal length are compared in constant
    /// time, so timing says nothing about how much of a guess was right.
    pub fn matches(&self, presented: &str) -> bool {
        let presented = digest(presented);
        self.digests
            .iter()
            .fold(subtle::Choice::from(0), |found, key| {
                found | key.ct_eq(&presented)
            })
            .into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "a-admin-key-0123456789-abcdefghijkl";
    const B: &str = "b-admin-key-0123456789-abcdefghijkl";

    #[test]
    fn several_keys_are_valid_at_once_and_nothing_else_is() {
        let keys = AdminKeys::parse(Some(&format!("{A}, {B}"))).unwrap();
        assert!(keys.matches(A) && keys.matches(B));
        assert!(!keys.matches("a-admin-key-0123456789-abcdefghijk"));
        assert!(!keys.matches(""));
        assert!(AdminKeys::parse(None).unwrap().is_empty());
        assert!(!AdminKeys::parse(None).unwrap().matches(A));
    }

    #[test]
    fn short_keys_are_a_configuration_error_naming_the_variable() {
        let error = AdminKeys::parse(Some(&format!("{A},short"))).unwrap_err();
        assert_eq!(error.var, "ADMIN_API_KEYS");
        assert!(error.message.contains("key 2"), "{error}");
        assert!(AdminKeys::parse(Some("")).is_err());
    }
}

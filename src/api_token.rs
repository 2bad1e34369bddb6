//! Bearer tokens for the admin API: random, shown once, kept only as a SHA-256.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

/// Every token starts with this, so a leaked one is easy to recognise in logs and scans.
pub const PREFIX: &str = "herald_";

/// A token name is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "\"{0}\" is not a token name (use 1 to 64 letters, digits, '.', '_' or '-', e.g. \"newsroom-cms\")"
)]
pub struct NameError(String);

/// The OS random source could not be read.
#[derive(Debug, thiserror::Error)]
#[error("cannot read the operating system's random source to make a token")]
pub struct RandomError;

/// Checks a token name given on the command line.
pub fn check_name(name: &str) -> Result<&str, NameError> {
    let valid = (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if valid {
        Ok(name)
    } else {
        Err(NameError(name.to_string()))
    }
}

/// A new token: the prefix and 256 random bits from the OS source, URL-safe base64.
pub fn generate() -> Result<String, RandomError> {
    crate::install_crypto_provider();
    let mut bytes = [0u8; 32];
    rustls::crypto::ring::default_provider()
        .secure_random
        .fill(&mut bytes)
        .map_err(|_| RandomError)?;
    Ok(format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes)))
}

/// The lower-case hex SHA-256 of a token: what the database keeps and looks up.
pub fn hash(token: &str) -> String {
    Sha256::digest(token.trim().as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_prefixed_and_hashed() {
        let a = generate().unwrap();
        let b = generate().unwrap();
        assert_ne!(a, b);
        assert!(a.starts_with(PREFIX) && a.len() == PREFIX.len() + 43, "{a}");
        assert_eq!(hash(&a), hash(&format!(" {a}\n")));
        assert_eq!(hash(&a).len(), 64);
        assert_ne!(hash(&a), hash(&b));
    }

    #[test]
    fn names_are_short_and_plain() {
        assert!(check_name("newsroom-cms").is_ok());
        assert!(check_name("").is_err());
        assert!(check_name("two words").is_err());
        assert!(check_name(&"x".repeat(65)).is_err());
    }
}

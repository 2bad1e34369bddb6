//! Signed, expiring, purpose-bound tokens for the links in emails.
//!
//! A token is `ID.EXPIRES.MAC` where MAC is HMAC-SHA256 over the purpose, id and expiry.
//! Changing any part, or using it for another purpose, fails verification.

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// What a token may be used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// One-click unsubscribe.
    Unsubscribe,
    /// The preferences page.
    Preferences,
    /// Double opt-in confirmation.
    Confirm,
}

impl Purpose {
    fn tag(self) -> &'static str {
        match self {
            Purpose::Unsubscribe => "unsubscribe",
            Purpose::Preferences => "preferences",
            Purpose::Confirm => "confirm",
        }
    }
}

/// Why a token was refused. All reasons look the same to the reader.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not of the form herald issues, or the signature does not match.
    #[error("the link is not valid")]
    Invalid,
    /// Signed, but past its expiry.
    #[error("the link has expired")]
    Expired,
}

/// Why the signing key could not be had.
#[derive(Debug, thiserror::Error)]
#[error("cannot read or create the signing key {path}: {source}")]
pub struct KeyError {
    path: String,
    source: std::io::Error,
}

/// Signs and checks tokens with one secret key.
#[derive(Clone)]
pub struct Signer {
    key: Vec<u8>,
}

impl Signer {
    /// A signer with the given secret.
    pub fn new(secret: &[u8]) -> Signer {
        Signer {
            key: secret.to_vec(),
        }
    }

    /// Uses `secret` when given; otherwise reads the key file, creating it with a random
    /// key on first run so links stay valid across restarts.
    pub fn from_config(secret: Option<&str>, key_file: &Path) -> Result<Signer, KeyError> {
        if let Some(secret) = secret {
            return Ok(Signer::new(secret.as_bytes()));
        }
        let error = |source| KeyError {
            path: key_file.display().to_string(),
            source,
        };
        match std::fs::read_to_string(key_file) {
            Ok(text) if !text.trim().is_empty() => Ok(Signer::new(text.trim().as_bytes())),
            Ok(_) => Err(error(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "the file is empty; delete it to have a new key generated",
            ))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if let Some(parent) = key_file.parent()
                    && !parent.as_os_str().is_empty()
                {
                    std::fs::create_dir_all(parent).map_err(error)?;
                }
                let key = format!(
                    "{}{}",
                    uuid::Uuid::new_v4().simple(),
                    uuid::Uuid::new_v4().simple()
                );
                match publish_private(key_file, &key) {
                    Ok(()) => Ok(Signer::new(key.as_bytes())),
                    // Another herald command made it first (every command opens the
                    // store, which needs the key): use theirs.
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        Signer::from_config(None, key_file)
                    }
                    Err(e) => Err(error(e)),
                }
            }
            Err(e) => Err(error(e)),
        }
    }

    /// A token for `id`, valid until `expires_at` (Unix seconds).
    pub fn sign(&self, purpose: Purpose, id: i64, expires_at: i64) -> String {
        let mac = self.mac(purpose, id, expires_at);
        format!("{id}.{expires_at}.{mac}")
    }

    /// The id a token carries, if it is genuine, meant for `purpose`, and not expired at `now`.
    pub fn verify(&self, purpose: Purpose, token: &str, now: i64) -> Result<i64, TokenError> {
        self.verify_with_expiry(purpose, token, now)
            .map(|(id, _)| id)
    }

    /// As [`Signer::verify`], with the token's expiry: a link's issue time follows from
    /// it, which tells a link sent to this reader from one sent to an erased reader
    /// whose id was later reused.
    pub fn verify_with_expiry(
        &self,
        purpose: Purpose,
        token: &str,
        now: i64,
    ) -> Result<(i64, i64), TokenError> {
        let mut parts = token.trim().splitn(3, '.');
        let id: i64 = parts
            .next()
            .and_then(|p| p.parse().ok())
            .ok_or(TokenError::Invalid)?;
        let expires_at: i64 = parts
            .next()
            .and_then(|p| p.parse().ok())
            .ok_or(TokenError::Invalid)?;
        let given = parts.next().ok_or(TokenError::Invalid)?;
        let given = URL_SAFE_NO_PAD
            .decode(given)
            .map_err(|_| TokenError::Invalid)?;
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(Self::message(purpose, id, expires_at).as_bytes());
        mac.verify_truncated_left(&given)
            .map_err(|_| TokenError::Invalid)?;
        if given.len() < 16 {
            return Err(TokenError::Invalid);
        }
        if now > expires_at {
            return Err(TokenError::Expired);
        }
        Ok((id, expires_at))
    }

    /// A key of its own for `label`, derived from the secret (HMAC-SHA256), for what
    /// must be keyed with the site secret without holding it, such as the suppression list.
    pub fn derive_key(&self, label: &str) -> [u8; 32] {
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(format!("herald-key:{label}").as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// A keyed hash of `value` (HMAC-SHA256, 128 bits in hex), separate per `label`:
    /// lets herald count or match things such as IP addresses without storing them,
    /// in a way that nobody without the key can reverse by trying every address.
    pub fn fingerprint(&self, label: &str, value: &str) -> String {
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(format!("herald-fingerprint:{label}:").as_bytes());
        mac.update(value.as_bytes());
        let bytes = mac.finalize().into_bytes();
        bytes[..16].iter().map(|b| format!("{b:02x}")).collect()
    }

    fn message(purpose: Purpose, id: i64, expires_at: i64) -> String {
        format!("herald:{}:{id}:{expires_at}", purpose.tag())
    }

    fn mac(&self, purpose: Purpose, id: i64, expires_at: i64) -> String {
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(Self::message(purpose, id, expires_at).as_bytes());
        let bytes = mac.finalize().into_bytes();
        URL_SAFE_NO_PAD.encode(&bytes[..20])
    }
}

/// Creates `path` holding `contents`, readable by its owner only, or fails with
/// `AlreadyExists`. The file appears whole (written aside, then linked into place), so
/// a process that finds it never reads it half-written.
fn publish_private(path: &Path, contents: &str) -> std::io::Result<()> {
    let aside = path.with_extension(format!("new-{}", uuid::Uuid::new_v4().simple()));
    write_private(&aside, contents)?;
    let linked = std::fs::hard_link(&aside, path);
    let _ = std::fs::remove_file(&aside);
    linked
}

#[cfg(unix)]
fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(contents.as_bytes())
}

#[cfg(not(unix))]
fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    std::fs::write(path, contents)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn genuine_tokens_verify_and_tampered_ones_do_not() {
        let signer = Signer::new(b"secret");
        let token = signer.sign(Purpose::Unsubscribe, 42, 1_000);
        assert_eq!(signer.verify(Purpose::Unsubscribe, &token, 999), Ok(42));
        assert_eq!(
            signer.verify(Purpose::Unsubscribe, &token, 1_001),
            Err(TokenError::Expired)
        );
        assert_eq!(
            signer.verify(Purpose::Confirm, &token, 999),
            Err(TokenError::Invalid)
        );
        let tampered = token.replacen("42.", "43.", 1);
        assert_eq!(
            signer.verify(Purpose::Unsubscribe, &tampered, 999),
            Err(TokenError::Invalid)
        );
        let extended = token.replacen(".1000.", ".9999.", 1);
        assert_eq!(
            signer.verify(Purpose::Unsubscribe, &extended, 999),
            Err(TokenError::Invalid)
        );
        assert_eq!(
            Signer::new(b"other").verify(Purpose::Unsubscribe, &token, 999),
            Err(TokenError::Invalid)
        );
        assert_eq!(
            signer.verify(Purpose::Unsubscribe, "garbage", 0),
            Err(TokenError::Invalid)
        );
        assert!(
            token
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        );
    }

    #[test]
    fn fingerprints_depend_on_key_label_and_value() {
        let signer = Signer::new(b"secret");
        let a = signer.fingerprint("ip", "203.0.113.9");
        assert_eq!(a.len(), 32);
        assert_eq!(a, signer.fingerprint("ip", "203.0.113.9"));
        assert_ne!(a, signer.fingerprint("address", "203.0.113.9"));
        assert_ne!(a, signer.fingerprint("ip", "203.0.113.10"));
        assert_ne!(a, Signer::new(b"other").fingerprint("ip", "203.0.113.9"));
    }

    #[test]
    fn processes_starting_together_agree_on_one_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret.key");
        let signers: Vec<Signer> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..8)
                .map(|_| scope.spawn(|| Signer::from_config(None, &path).unwrap()))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let token = signers[0].sign(Purpose::Confirm, 1, 100);
        for signer in &signers {
            assert_eq!(signer.verify(Purpose::Confirm, &token, 0), Ok(1));
        }
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "nothing is left aside");
    }

    #[test]
    fn key_file_is_created_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("var/secret.key");
        let first = Signer::from_config(None, &path).unwrap();
        let second = Signer::from_config(None, &path).unwrap();
        let token = first.sign(Purpose::Preferences, 7, 100);
        assert_eq!(second.verify(Purpose::Preferences, &token, 50), Ok(7));
    }
}

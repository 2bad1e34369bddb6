//! Signed, expiring, purpose-bound tokens for the links in emails.
//!
//! A token is 64 URL-safe base64 characters, with no padding: the reader id and expiry,
//! encrypted, then a full HMAC-SHA256 over the purpose, id and expiry (48 bytes). The
//! MAC is a synthetic IV: the 16 bytes of id and expiry are masked with a keyed hash of
//! it, so a token shows neither the reader's id (ids are sequential, and would tell how
//! many readers a site has and which are oldest) nor anything else. There is one
//! encoding of each token: a changed character, a cut or added one, another case or
//! padding, or using it for another purpose, fails verification.
//!
//! Links sent before this format read `ID.EXPIRES.MAC` in plain text with the MAC cut
//! to 20 bytes; they are in emails readers still have (digests carry 400-day links),
//! so they are accepted until they expire, in exactly the form they were issued.

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Bytes in a token: 16 of id and expiry, 32 of MAC.
const TOKEN_BYTES: usize = 48;

/// Characters in a token (base64 without padding).
const TOKEN_CHARS: usize = 64;

/// The MAC's length in the format links were sent in before.
const DOTTED_MAC_BYTES: usize = 20;

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
    /// HMAC-SHA256 with the secret already taken in: every token and fingerprint clones
    /// it instead of hashing the key again (two SHA-256 blocks saved per MAC, and links
    /// are signed for every email).
    keyed: HmacSha256,
}

impl Signer {
    /// A signer with the given secret.
    pub fn new(secret: &[u8]) -> Signer {
        Signer {
            keyed: HmacSha256::new_from_slice(secret).expect("HMAC takes any key length"),
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
        let mut token = [0u8; TOKEN_BYTES];
        token[..8].copy_from_slice(&id.to_be_bytes());
        token[8..16].copy_from_slice(&expires_at.to_be_bytes());
        for (byte, mask) in token[..16].iter_mut().zip(self.mask(&mac)) {
            *byte ^= mask;
        }
        token[16..].copy_from_slice(&mac);
        URL_SAFE_NO_PAD.encode(token)
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
        let (id, expires_at) = if token.contains('.') {
            self.open_dotted(purpose, token)?
        } else {
            self.open(purpose, token)?
        };
        if now > expires_at {
            return Err(TokenError::Expired);
        }
        Ok((id, expires_at))
    }

    /// Id and expiry of a token in the current format, if its MAC is right.
    fn open(&self, purpose: Purpose, token: &str) -> Result<(i64, i64), TokenError> {
        // 64 characters carry exactly 48 bytes, with no bits left over: each token has
        // one spelling.
        if token.len() != TOKEN_CHARS {
            return Err(TokenError::Invalid);
        }
        let bytes = URL_SAFE_NO_PAD
            .decode(token)
            .map_err(|_| TokenError::Invalid)?;
        let bytes: [u8; TOKEN_BYTES] = bytes.try_into().map_err(|_| TokenError::Invalid)?;
        let (sealed, mac) = bytes.split_at(16);
        let mut plain = [0u8; 16];
        for ((out, byte), mask) in plain.iter_mut().zip(sealed).zip(self.mask(mac)) {
            *out = byte ^ mask;
        }
        let id = i64::from_be_bytes(plain[..8].try_into().expect("8 bytes"));
        let expires_at = i64::from_be_bytes(plain[8..].try_into().expect("8 bytes"));
        self.keyed()
            .chain_update(Self::message(purpose, id, expires_at))
            .verify_slice(mac)
            .map_err(|_| TokenError::Invalid)?;
        Ok((id, expires_at))
    }

    /// Id and expiry of a token in the format links were sent in before (see the module
    /// documentation), if it is spelled exactly as it was issued and its MAC is right.
    /// None is issued any more: 400 days after the upgrade every one has expired, and
    /// this can go.
    fn open_dotted(&self, purpose: Purpose, token: &str) -> Result<(i64, i64), TokenError> {
        let mut parts = token.splitn(3, '.');
        let (Some(id), Some(expires_at), Some(given)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Invalid);
        };
        let id: i64 = id.parse().map_err(|_| TokenError::Invalid)?;
        let expires_at: i64 = expires_at.parse().map_err(|_| TokenError::Invalid)?;
        let given = URL_SAFE_NO_PAD
            .decode(given)
            .map_err(|_| TokenError::Invalid)?;
        // Parsing forgives a sign, leading zeros and a short MAC; the issued spelling
        // had none of them.
        if given.len() != DOTTED_MAC_BYTES
            || token != format!("{id}.{expires_at}.{}", URL_SAFE_NO_PAD.encode(&given))
        {
            return Err(TokenError::Invalid);
        }
        self.keyed()
            .chain_update(format!("herald:{}:{id}:{expires_at}", purpose.tag()))
            .verify_truncated_left(&given)
            .map_err(|_| TokenError::Invalid)?;
        Ok((id, expires_at))
    }

    /// A key of its own for `label`, derived from the secret (HMAC-SHA256), for what
    /// must be keyed with the site secret without holding it, such as the suppression list.
    pub fn derive_key(&self, label: &str) -> [u8; 32] {
        self.keyed()
            .chain_update(format!("herald-key:{label}"))
            .finalize()
            .into_bytes()
            .into()
    }

    /// A keyed hash of `value` (HMAC-SHA256, 128 bits in hex), separate per `label`:
    /// lets herald count or match things such as IP addresses without storing them,
    /// in a way that nobody without the key can reverse by trying every address.
    pub fn fingerprint(&self, label: &str, value: &str) -> String {
        let mut mac = self.keyed();
        mac.update(format!("herald-fingerprint:{label}:").as_bytes());
        mac.update(value.as_bytes());
        let bytes = mac.finalize().into_bytes();
        bytes[..16].iter().map(|b| format!("{b:02x}")).collect()
    }

    /// An HMAC ready for input, under the secret.
    fn keyed(&self) -> HmacSha256 {
        self.keyed.clone()
    }

    /// What a token's MAC covers.
    fn message(purpose: Purpose, id: i64, expires_at: i64) -> Vec<u8> {
        let mut message = format!("herald:v2:{}:", purpose.tag()).into_bytes();
        message.extend_from_slice(&id.to_be_bytes());
        message.extend_from_slice(&expires_at.to_be_bytes());
        message
    }

    fn mac(&self, purpose: Purpose, id: i64, expires_at: i64) -> [u8; 32] {
        self.keyed()
            .chain_update(Self::message(purpose, id, expires_at))
            .finalize()
            .into_bytes()
            .into()
    }

    /// What hides a token's id and expiry: a keyed hash of its MAC, which differs for
    /// every token.
    fn mask(&self, mac: &[u8]) -> [u8; 16] {
        let bytes = self
            .keyed()
            .chain_update(b"herald:v2-mask:")
            .chain_update(mac)
            .finalize()
            .into_bytes();
        bytes[..16].try_into().expect("16 bytes")
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

    /// A token as herald issued them before the current format.
    fn dotted(
        signer: &Signer,
        purpose: Purpose,
        id: i64,
        expires_at: i64,
        mac_len: usize,
    ) -> String {
        let mac = signer
            .keyed()
            .chain_update(format!("herald:{}:{id}:{expires_at}", purpose.tag()))
            .finalize()
            .into_bytes();
        format!(
            "{id}.{expires_at}.{}",
            URL_SAFE_NO_PAD.encode(&mac[..mac_len])
        )
    }

    #[test]
    fn genuine_tokens_verify_and_tampered_ones_do_not() {
        let signer = Signer::new(b"secret");
        let token = signer.sign(Purpose::Unsubscribe, 42, 1_000);
        assert_eq!(signer.verify(Purpose::Unsubscribe, &token, 999), Ok(42));
        assert_eq!(
            signer.verify_with_expiry(Purpose::Unsubscribe, &token, 999),
            Ok((42, 1_000))
        );
        assert_eq!(
            signer.verify(Purpose::Unsubscribe, &token, 1_001),
            Err(TokenError::Expired)
        );
        assert_eq!(
            signer.verify(Purpose::Confirm, &token, 999),
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
        assert_eq!(token.len(), TOKEN_CHARS);
        assert!(
            token
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_".contains(c))
        );
        // Every character counts: any other one in any place is refused, in the part
        // that hides the id and expiry as in the MAC.
        let alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        for at in 0..token.len() {
            for c in alphabet
                .chars()
                .filter(|c| *c != token.as_bytes()[at] as char)
            {
                let mut changed = token.clone();
                changed.replace_range(at..=at, &c.to_string());
                assert_eq!(
                    signer.verify(Purpose::Unsubscribe, &changed, 999),
                    Err(TokenError::Invalid),
                    "{changed}"
                );
            }
        }
    }

    #[test]
    fn each_token_has_one_spelling() {
        let signer = Signer::new(b"secret");
        let token = signer.sign(Purpose::Preferences, 7, 5_000);
        for other in [
            format!("{token}="),
            format!("{token}A"),
            format!(" {token}"),
            format!("{token}\n"),
            token[..TOKEN_CHARS - 1].to_string(),
            token.to_uppercase(),
            token.replace('-', "+").replace('_', "/"),
        ] {
            if other != token {
                assert_eq!(
                    signer.verify(Purpose::Preferences, &other, 0),
                    Err(TokenError::Invalid),
                    "{other:?}"
                );
            }
        }
    }

    #[test]
    fn tokens_do_not_show_the_reader_id() {
        let signer = Signer::new(b"secret");
        let a = signer.sign(Purpose::Unsubscribe, 1_000, 5_000);
        let b = signer.sign(Purpose::Unsubscribe, 1_001, 5_000);
        // Neighbouring ids with the same expiry: no more characters alike, place by
        // place, than chance leaves (1 in 64).
        let alike = a.chars().zip(b.chars()).filter(|(x, y)| x == y).count();
        assert!(alike <= 6, "{a} {b}");
        assert!(!a.contains("1000") && !b.contains("1001"));
        assert_eq!(signer.verify(Purpose::Unsubscribe, &b, 0), Ok(1_001));
    }

    #[test]
    fn links_sent_in_the_dotted_format_work_until_they_expire_as_issued() {
        let signer = Signer::new(b"secret");
        let issued = dotted(&signer, Purpose::Unsubscribe, 42, 1_000, 20);
        assert_eq!(
            signer.verify_with_expiry(Purpose::Unsubscribe, &issued, 999),
            Ok((42, 1_000))
        );
        assert_eq!(
            signer.verify(Purpose::Unsubscribe, &issued, 1_001),
            Err(TokenError::Expired)
        );
        assert_eq!(
            signer.verify(Purpose::Preferences, &issued, 999),
            Err(TokenError::Invalid)
        );
        let mac = issued.rsplit('.').next().unwrap();
        for forged in [
            issued.replacen("42.", "43.", 1),
            issued.replacen(".1000.", ".9999.", 1),
            format!("042.1000.{mac}"),
            format!("+42.1000.{mac}"),
            format!("42.01000.{mac}"),
            format!("42.+1000.{mac}"),
            format!(" {issued}"),
            format!("{issued}="),
            format!("{issued}A"),
            // The MAC cut to 16 bytes, or at full length: herald issued neither.
            dotted(&signer, Purpose::Unsubscribe, 42, 1_000, 16),
            dotted(&signer, Purpose::Unsubscribe, 42, 1_000, 32),
            "42.1000".into(),
            "42..".into(),
        ] {
            assert_eq!(
                signer.verify(Purpose::Unsubscribe, &forged, 999),
                Err(TokenError::Invalid),
                "{forged:?}"
            );
        }
    }

    #[test]
    fn derived_keys_depend_on_secret_and_label() {
        let signer = Signer::new(b"secret");
        let key = signer.derive_key("suppression");
        assert_eq!(key, signer.derive_key("suppression"));
        assert_ne!(key, signer.derive_key("other"));
        assert_ne!(key, Signer::new(b"other").derive_key("suppression"));
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

//! Short signed tokens that fit in the local part of an email address.
//!
//! A token is a few bytes of payload (a row id, an issue time) masked with a keyed hash
//! of its MAC, then a 96-bit HMAC-SHA256 tag, written in lowercase base32: letters and
//! digits only, so a relay that lowercases an address, or a reader's client that
//! quotes it, changes nothing, and it shows no row id. Each key signs one purpose: a
//! VERP token is not an unsubscribe token.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Bytes of MAC in a token: 96 bits is beyond guessing at any rate a mail server
/// accepts messages.
const TAG_BYTES: usize = 12;

/// RFC 4648 base32, lowercase.
const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

/// A key for one purpose's tokens.
#[derive(Clone)]
pub struct SealKey(Hmac<Sha256>);

impl std::fmt::Debug for SealKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealKey(..)")
    }
}

impl SealKey {
    /// A key from secret bytes (see `Signer::derive_key`).
    pub fn new(key: &[u8]) -> SealKey {
        SealKey(Hmac::new_from_slice(key).expect("HMAC takes any key length"))
    }

    /// The token for `payload`.
    pub fn seal(&self, payload: &[u8]) -> String {
        let tag = self.tag(payload);
        let mut bytes: Vec<u8> = payload
            .iter()
            .zip(self.mask(&tag, payload.len()))
            .map(|(b, m)| b ^ m)
            .collect();
        bytes.extend_from_slice(&tag);
        base32(&bytes)
    }

    /// The payload of `token` if this key signed it, with `len` bytes of payload.
    pub fn open(&self, token: &str, len: usize) -> Option<Vec<u8>> {
        let bytes = unbase32(&token.to_ascii_lowercase())?;
        if bytes.len() != len + TAG_BYTES || base32(&bytes) != token.to_ascii_lowercase() {
            return None;
        }
        let (sealed, tag) = bytes.split_at(len);
        let payload: Vec<u8> = sealed
            .iter()
            .zip(self.mask(tag, len))
            .map(|(b, m)| b ^ m)
            .collect();
        let mut mac = self.0.clone();
        mac.update(b"herald-seal:");
        mac.update(&payload);
        mac.verify_truncated_left(tag).ok()?;
        Some(payload)
    }

    fn tag(&self, payload: &[u8]) -> [u8; TAG_BYTES] {
        let mut mac = self.0.clone();
        mac.update(b"herald-seal:");
        mac.update(payload);
        mac.finalize().into_bytes()[..TAG_BYTES]
            .try_into()
            .expect("TAG_BYTES of 32")
    }

    fn mask(&self, tag: &[u8], len: usize) -> Vec<u8> {
        let mut mac = self.0.clone();
        mac.update(b"herald-seal-mask:");
        mac.update(tag);
        mac.finalize().into_bytes()[..len.min(32)].to_vec()
    }
}

/// Whether `token` is spelt as [`SealKey::seal`] writes a token of `payload` bytes
/// (lowercase base32 of the payload and the tag), whatever its key.
pub(super) fn well_formed(token: &str, payload: usize) -> bool {
    token.len() == ((payload + TAG_BYTES) * 8).div_ceil(5)
        && token.bytes().all(|c| ALPHABET.contains(&c))
}

/// Lowercase base32 without padding.
fn base32(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 8 / 5 + 1);
    let (mut buffer, mut bits) = (0u32, 0u32);
    for &b in bytes {
        buffer = (buffer << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHABET[((buffer >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((buffer << (5 - bits)) & 31) as usize] as char);
    }
    out
}

/// The bytes of lowercase base32 text; `None` for any other character.
fn unbase32(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 5 / 8);
    let (mut buffer, mut bits) = (0u32, 0u32);
    for c in text.bytes() {
        let value = ALPHABET.iter().position(|a| *a == c)? as u32;
        buffer = ((buffer << 5) | value) & 0xffff;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((buffer >> bits) as u8);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base32_round_trips() {
        for len in 0..30 {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            assert_eq!(unbase32(&base32(&bytes)).unwrap(), bytes);
        }
        assert_eq!(base32(b"foobar"), "mzxw6ytboi");
    }

    #[test]
    fn tokens_open_only_with_their_key_and_exact_spelling() {
        let key = SealKey::new(b"one");
        let token = key.seal(&42i64.to_be_bytes());
        assert_eq!(token.len(), 32);
        assert!(well_formed(&token, 8));
        assert!(!well_formed(&token, 12));
        assert!(!well_formed(&token.to_uppercase(), 8));
        assert!(well_formed(&key.seal(&[7; 12]), 12));
        assert_eq!(key.open(&token, 8).unwrap(), 42i64.to_be_bytes());
        assert_eq!(
            key.open(&token.to_uppercase(), 8).unwrap(),
            42i64.to_be_bytes()
        );
        assert!(SealKey::new(b"two").open(&token, 8).is_none());
        assert!(key.open(&token, 9).is_none());
        assert!(key.open(&token[1..], 8).is_none());
        assert!(key.open(&format!("{token}a"), 8).is_none());
        for at in 0..token.len() {
            for c in ALPHABET.iter().map(|c| *c as char) {
                if token.as_bytes()[at] as char == c {
                    continue;
                }
                let mut changed = token.clone();
                changed.replace_range(at..=at, &c.to_string());
                assert!(key.open(&changed, 8).is_none(), "{changed}");
            }
        }
        // Neighbouring ids share nothing visible.
        let other = key.seal(&43i64.to_be_bytes());
        let alike = token
            .chars()
            .zip(other.chars())
            .filter(|(a, b)| a == b)
            .count();
        assert!(alike <= 6, "{token} {other}");
    }
}

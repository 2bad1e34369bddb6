//! The dashboard's session cookie: a signed value naming the admin token it was opened
//! with (by the token's stored hash, never the token) and when it expires.
//!
//! Nothing is stored server-side: every request checks the signature and the expiry,
//! then looks the token's hash up as the API's bearer check does, so revoking the
//! token ends every session opened with it at once.

use axum::http::{HeaderMap, HeaderValue, header};

use crate::domain::Timestamp;
use crate::tokens::Signer;

/// The session cookie's name.
const COOKIE: &str = "herald_admin";

/// How long a session lasts after logging in.
pub const LIFETIME_SECONDS: i64 = 12 * 3600;

/// What the signature covers, so a session value cannot be taken for another keyed hash.
const LABEL: &str = "admin-session";

/// A session that checked out: the token hash to look up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The SHA-256 of the admin token, as `api_tokens` stores it.
    pub token_hash: String,
}

/// The `Set-Cookie` value opening a session for the token with `token_hash` at `now`.
pub fn open(signer: &Signer, token_hash: &str, now: Timestamp, secure: bool) -> HeaderValue {
    let expires = now.unix() + LIFETIME_SECONDS;
    let payload = format!("{expires}.{token_hash}");
    let signature = signer.fingerprint(LABEL, &payload);
    cookie(&format!("{payload}.{signature}"), LIFETIME_SECONDS, secure)
}

/// The `Set-Cookie` value that clears the session.
pub fn close(secure: bool) -> HeaderValue {
    cookie("", 0, secure)
}

fn cookie(value: &str, max_age: i64, secure: bool) -> HeaderValue {
    let text = format!(
        "{COOKIE}={value}; Path=/admin; HttpOnly; SameSite=Strict; Max-Age={max_age}{}",
        if secure { "; Secure" } else { "" }
    );
    HeaderValue::from_str(&text).expect("the cookie is visible ASCII")
}

/// The request's session when its cookie is signed by us and not expired at `now`.
pub fn read(headers: &HeaderMap, signer: &Signer, now: Timestamp) -> Option<Session> {
    let value = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, value)| *name == COOKIE && !value.is_empty())
        .map(|(_, value)| value)?;
    let (payload, signature) = value.rsplit_once('.')?;
    if !super::super::forms::same_secret(&signer.fingerprint(LABEL, payload), signature) {
        return None;
    }
    let (expires, token_hash) = payload.split_once('.')?;
    let expires: i64 = expires.parse().ok()?;
    (now.unix() < expires).then(|| Session {
        token_hash: token_hash.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_cookie(set_cookie: &HeaderValue) -> HeaderMap {
        let pair = set_cookie.to_str().unwrap().split(';').next().unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, HeaderValue::from_str(pair).unwrap());
        headers
    }

    #[test]
    fn a_session_reads_back_until_it_expires() {
        let signer = Signer::new(b"k");
        let now = Timestamp::from_unix(1_000_000);
        let set = open(&signer, "abc123", now, true);
        let text = set.to_str().unwrap();
        assert!(text.contains("HttpOnly") && text.contains("SameSite=Strict"));
        assert!(text.ends_with("; Secure"));
        let headers = with_cookie(&set);
        assert_eq!(
            read(&headers, &signer, now),
            Some(Session {
                token_hash: "abc123".into()
            })
        );
        let later = Timestamp::from_unix(now.unix() + LIFETIME_SECONDS);
        assert_eq!(read(&headers, &signer, later), None, "expired");
        assert_eq!(read(&headers, &Signer::new(b"other"), now), None);
    }

    #[test]
    fn a_changed_session_is_refused() {
        let signer = Signer::new(b"k");
        let now = Timestamp::from_unix(1_000_000);
        let set = open(&signer, "abc123", now, false);
        let forged = set.to_str().unwrap().replace("abc123", "def456");
        let forged = HeaderValue::from_str(&forged).unwrap();
        assert_eq!(read(&with_cookie(&forged), &signer, now), None);
        assert_eq!(read(&with_cookie(&close(false)), &signer, now), None);
    }
}

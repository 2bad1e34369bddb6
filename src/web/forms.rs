//! What the reader-facing forms share: reading a form, who sent it (IP address and
//! browser, for consent records and rate limits), and CSRF protection.
//!
//! CSRF: the sign-up and preferences forms carry a token that must match a cookie set
//! with the form (`SameSite=Lax`, so a cross-site POST arrives without it), and every
//! form post from a browser that says it comes from another site is refused. The
//! RFC 8058 one-click unsubscribe is exempt by design: mail providers post it with no
//! cookie and no page.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use axum::extract::ConnectInfo;
use axum::http::{HeaderMap, HeaderValue, header};

use crate::domain::{Cadence, RegionSlug};
use crate::tokens::Signer;

use super::regions::{MAX_CHOSEN, RegionIndex};

/// Largest form body read: a sign-up or preferences form is a few hundred bytes.
pub const MAX_FORM_BYTES: usize = 16 * 1024;

/// Longest `User-Agent` kept in a consent record.
const MAX_USER_AGENT: usize = 400;

/// The cookie that the CSRF token of a form must match.
const CSRF_COOKIE: &str = "herald_form";

/// A decoded form (or query string): every field in order, repeated names kept.
#[derive(Debug, Clone, Default)]
pub struct Form(Vec<(String, String)>);

impl Form {
    /// Decodes `application/x-www-form-urlencoded` bytes (a body or a query string).
    pub fn parse(bytes: &[u8]) -> Form {
        Form(
            url::form_urlencoded::parse(bytes)
                .take(4 * MAX_CHOSEN + 50)
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }

    /// The first value of `name`, or "".
    pub fn get(&self, name: &str) -> &str {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or("")
    }

    /// Whether the field was sent at all.
    pub fn has(&self, name: &str) -> bool {
        self.0.iter().any(|(k, _)| k == name)
    }

    /// The regions ticked (`region=slug`, repeated) with their cadences
    /// (`cadence-slug=daily`), and the cadences of every row, ticked or not.
    pub fn regions(&self, index: &RegionIndex) -> Result<Picked, String> {
        let mut cadences = HashMap::new();
        for (key, value) in &self.0 {
            if let Some(slug) = key.strip_prefix("cadence-")
                && let (Ok(slug), Ok(cadence)) =
                    (slug.parse::<RegionSlug>(), value.parse::<Cadence>())
            {
                cadences.insert(slug, cadence);
            }
        }
        let mut chosen: Vec<(RegionSlug, Cadence)> = Vec::new();
        for (key, value) in &self.0 {
            if key != "region" {
                continue;
            }
            let slug = match value.parse::<RegionSlug>() {
                Ok(slug) if index.contains(&slug) => slug,
                _ => {
                    return Err(
                        "One of the regions is not offered here; please choose again.".into(),
                    );
                }
            };
            if chosen.iter().any(|(s, _)| s == &slug) {
                continue;
            }
            let cadence = cadences.get(&slug).copied().unwrap_or(Cadence::Daily);
            chosen.push((slug, cadence));
        }
        if chosen.len() > MAX_CHOSEN {
            return Err(format!("Please choose at most {MAX_CHOSEN} regions."));
        }
        Ok(Picked { chosen, cadences })
    }
}

/// The regions of a submitted form.
#[derive(Debug, Clone, Default)]
pub struct Picked {
    /// Ticked regions with their cadences, in form order.
    pub chosen: Vec<(RegionSlug, Cadence)>,
    /// The cadence of every row, ticked or not (to show the form again as it was).
    pub cadences: HashMap<RegionSlug, Cadence>,
}

/// Who sent a request: for consent records and rate limits.
#[derive(Debug, Clone)]
pub struct Client {
    /// The client's address: the peer, or for a trusted proxy the address it forwarded for.
    pub ip: Option<IpAddr>,
    /// The browser's `User-Agent`, shortened.
    pub user_agent: String,
}

impl Client {
    /// Reads the peer address (set by the server) and headers of a request.
    pub fn from_request(
        extensions: &axum::http::Extensions,
        headers: &HeaderMap,
        trusted_proxies: &[IpAddr],
    ) -> Client {
        let peer = extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(addr)| addr.ip().to_canonical());
        let user_agent: String = headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .chars()
            .filter(|c| !c.is_control())
            .take(MAX_USER_AGENT)
            .collect();
        Client {
            ip: peer.map(|peer| forwarded_for(peer, headers, trusted_proxies)),
            user_agent,
        }
    }

    /// The address as stored in a consent record.
    pub fn ip_text(&self) -> String {
        self.ip
            .map(|ip| ip.to_string())
            .unwrap_or_else(|| "unknown".into())
    }

    /// What the per-IP limit counts: the address, or for IPv6 its /64 (one household
    /// or server gets a whole /64 and could otherwise rotate through it).
    pub fn ip_bucket(&self) -> String {
        match self.ip {
            Some(IpAddr::V6(v6)) => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
            Some(ip) => ip.to_string(),
            None => "unknown".into(),
        }
    }
}

/// Walks `X-Forwarded-For` from the right while the hop is a trusted proxy: the first
/// untrusted address is the client. Entries a client wrote itself sit further left and
/// are never reached unless every proxy in between is trusted.
fn forwarded_for(peer: IpAddr, headers: &HeaderMap, trusted: &[IpAddr]) -> IpAddr {
    let mut client = peer;
    if !trusted.contains(&client) {
        return client;
    }
    let hops: Vec<IpAddr> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|hop| hop.trim().parse::<IpAddr>().ok())
        .map(|ip| ip.to_canonical())
        .collect();
    for hop in hops.into_iter().rev() {
        client = hop;
        if !trusted.contains(&hop) {
            break;
        }
    }
    client
}

/// False when the browser says the form was posted from another site (`Sec-Fetch-Site`,
/// or an `Origin` that is neither the public URL's nor the requested host's).
pub fn same_origin(headers: &HeaderMap, public_url: &url::Url) -> bool {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if header("sec-fetch-site") == Some("cross-site") {
        return false;
    }
    let origin = match header("origin") {
        // Older browsers and non-browser clients send none, and a browser sends "null"
        // for privacy reasons of its own: neither says "another site", and the CSRF
        // cookie (SameSite, so never sent cross-site) still has to match.
        None | Some("null") => return true,
        Some(origin) => origin,
    };
    if origin == public_url.origin().ascii_serialization() {
        return true;
    }
    let host = header("host").unwrap_or("");
    !host.is_empty() && (origin == format!("http://{host}") || origin == format!("https://{host}"))
}

/// The CSRF token of one form, and the cookie to set when the browser had none.
pub struct CsrfToken {
    /// The hidden field's value.
    pub token: String,
    /// `Set-Cookie`, when a new cookie was made.
    pub set_cookie: Option<HeaderValue>,
}

/// Reuses the browser's CSRF cookie, or makes one; returns the token the form carries.
pub fn csrf_token(headers: &HeaderMap, signer: &Signer, secure: bool) -> CsrfToken {
    if let Some(nonce) = csrf_cookie(headers) {
        return CsrfToken {
            token: signer.fingerprint("csrf", &nonce),
            set_cookie: None,
        };
    }
    let nonce = uuid::Uuid::new_v4().simple().to_string();
    let cookie = format!(
        "{CSRF_COOKIE}={nonce}; Path=/; HttpOnly; SameSite=Lax; Max-Age=86400{}",
        if secure { "; Secure" } else { "" }
    );
    CsrfToken {
        token: signer.fingerprint("csrf", &nonce),
        set_cookie: HeaderValue::from_str(&cookie).ok(),
    }
}

/// Whether a posted form's token matches the browser's CSRF cookie.
pub fn csrf_ok(headers: &HeaderMap, signer: &Signer, token: &str) -> bool {
    let Some(nonce) = csrf_cookie(headers) else {
        return false;
    };
    same_secret(&signer.fingerprint("csrf", &nonce), token)
}

/// Whether `presented` equals `expected`, compared in constant time so the comparison
/// leaks nothing about the expected value.
pub fn same_secret(expected: &str, presented: &str) -> bool {
    expected.len() == presented.len()
        && expected
            .bytes()
            .zip(presented.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

fn csrf_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == CSRF_COOKIE)
        .map(|(_, value)| value.to_string())
        .filter(|v| v.len() == 32 && v.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(*k, HeaderValue::from_str(v).unwrap());
        }
        map
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let proxy: IpAddr = "127.0.0.1".parse().unwrap();
        let h = headers(&[("x-forwarded-for", "6.6.6.6, 203.0.113.9")]);
        assert_eq!(
            forwarded_for(proxy, &h, &[proxy]).to_string(),
            "203.0.113.9",
            "the hop the proxy saw, not what the client wrote"
        );
        assert_eq!(forwarded_for(proxy, &h, &[]), proxy, "no trusted proxy");
        let other: IpAddr = "198.51.100.1".parse().unwrap();
        assert_eq!(forwarded_for(other, &h, &[proxy]), other);
    }

    #[test]
    fn ipv6_clients_are_limited_per_64() {
        let client = Client {
            ip: Some("2001:db8:1:2:aaaa::1".parse().unwrap()),
            user_agent: String::new(),
        };
        assert_eq!(client.ip_bucket(), "2001:db8:1:2::/64");
    }

    #[test]
    fn csrf_token_must_match_the_cookie() {
        let signer = Signer::new(b"k");
        let fresh = csrf_token(&HeaderMap::new(), &signer, false);
        let cookie = fresh.set_cookie.unwrap().to_str().unwrap().to_string();
        assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax"));
        let pair = cookie.split(';').next().unwrap().to_string();
        let with_cookie = headers(&[("cookie", &format!("a=b; {pair}"))]);
        assert!(csrf_ok(&with_cookie, &signer, &fresh.token));
        assert!(!csrf_ok(&with_cookie, &signer, "0000"));
        assert!(!csrf_ok(&HeaderMap::new(), &signer, &fresh.token));
        let again = csrf_token(&with_cookie, &signer, false);
        assert!(again.set_cookie.is_none(), "an existing cookie is reused");
        assert_eq!(again.token, fresh.token);
    }

    #[test]
    fn cross_site_posts_are_refused() {
        let public: url::Url = "https://news.example.org".parse().unwrap();
        assert!(same_origin(&HeaderMap::new(), &public));
        assert!(same_origin(
            &headers(&[("origin", "https://news.example.org")]),
            &public
        ));
        assert!(same_origin(
            &headers(&[
                ("origin", "http://127.0.0.1:8080"),
                ("host", "127.0.0.1:8080")
            ]),
            &public
        ));
        assert!(!same_origin(
            &headers(&[("origin", "https://evil.example")]),
            &public
        ));
        assert!(!same_origin(
            &headers(&[("sec-fetch-site", "cross-site")]),
            &public
        ));
    }
}

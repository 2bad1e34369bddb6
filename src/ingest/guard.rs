//! The SSRF guard: feed URLs typed by an operator, and the redirects their servers
//! answer with, must not reach into the network herald runs in.
//!
//! Every address is checked where the connection is made: host names through a DNS
//! resolver that drops internal addresses (so a name cannot resolve to a public address
//! when checked and a private one when used), IP literals in the URL before the first
//! request and on every redirect. `[ingest] allow_private = true` turns the guard off;
//! `[ingest] trusted_hosts` exempts named hosts only.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

/// Why a feed address was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GuardError {
    /// Not http or https.
    #[error("only http and https feeds are fetched, not {scheme}:")]
    Scheme {
        /// The scheme given.
        scheme: String,
    },
    /// The URL names an internal address.
    #[error(
        "{host} is {kind}; herald does not fetch internal addresses unless [ingest] allow_private = true (or the host is in [ingest] trusted_hosts)"
    )]
    Internal {
        /// The host as written.
        host: String,
        /// What kind of address it is, as a phrase.
        kind: &'static str,
    },
    /// Every address of a name is internal.
    #[error(
        "{host} resolves to {addr}, which is {kind}; herald does not fetch internal addresses unless [ingest] allow_private = true (or the host is in [ingest] trusted_hosts)"
    )]
    InternalName {
        /// The name.
        host: String,
        /// The first refused address.
        addr: IpAddr,
        /// What kind of address it is, as a phrase.
        kind: &'static str,
    },
    /// A redirect pointed somewhere refused.
    #[error("it redirects to {to}, and {reason}")]
    Redirect {
        /// The redirect target.
        to: String,
        /// Why the target is refused.
        reason: Box<GuardError>,
    },
    /// The host is trusted on other ports only.
    #[error(
        "{host} is in [ingest] trusted_hosts for port {trusted} only, not port {port}; add \"{host}:{port}\" to trust that port too"
    )]
    UntrustedPort {
        /// The host as written.
        host: String,
        /// The port asked for.
        port: u16,
        /// The trusted ports, as a phrase (`8080` or `8080, 8443`).
        trusted: String,
    },
    /// Too many redirects in a row.
    #[error("it redirects more than {limit} times (ingest.max_redirects)")]
    TooManyRedirects {
        /// The cap.
        limit: usize,
    },
}

/// One `[ingest] trusted_hosts` entry: a host name or IP address, and the one port
/// trusted when the entry names one (`cms.internal:8080`); without a port every port
/// of the host is trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedHost {
    /// Lower case, as the URL parser writes it (IPv6 in brackets).
    host: String,
    port: Option<u16>,
}

impl std::str::FromStr for TrustedHost {
    type Err = String;

    fn from_str(text: &str) -> Result<TrustedHost, String> {
        let text = text.trim().to_ascii_lowercase();
        let invalid = || {
            format!(
                "\"{text}\" is not a host name (write \"feeds.internal.example\", or with a port \"10.0.0.5:8080\")"
            )
        };
        let url = url::Url::parse(&format!("http://{text}/")).map_err(|_| invalid())?;
        let host = match url.host_str() {
            Some(host) if !text.is_empty() && url.path() == "/" && url.username().is_empty() => {
                host.to_string()
            }
            _ => return Err(invalid()),
        };
        // The URL parser forgets a port that is the scheme's default, so whether the
        // entry names one (`host:80` trusts port 80 only) is read from the text.
        let names_port = match text.rfind(']') {
            Some(end) => text[end..].contains(':'),
            None => text.contains(':'),
        };
        let port = names_port.then(|| url.port_or_known_default()).flatten();
        Ok(TrustedHost { host, port })
    }
}

impl std::fmt::Display for TrustedHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.port {
            Some(port) => write!(f, "{}:{port}", self.host),
            None => f.write_str(&self.host),
        }
    }
}

/// How far `[ingest] trusted_hosts` trusts one host and port.
enum Trust {
    /// Trusted: fetched even on an internal address.
    Trusted,
    /// Not listed: the usual checks apply.
    NotListed,
    /// Listed for other ports only (as a phrase).
    OtherPorts(String),
}

/// Decides which addresses feeds may be fetched from.
#[derive(Debug, Clone, Default)]
pub struct Guard {
    allow_private: bool,
    trusted_hosts: Vec<TrustedHost>,
}

impl Guard {
    /// A guard that trusts `trusted_hosts` (each on its port, if it names one).
    pub fn new(allow_private: bool, trusted_hosts: Vec<TrustedHost>) -> Guard {
        Guard {
            allow_private,
            trusted_hosts,
        }
    }

    fn trust(&self, host: &str, port: Option<u16>) -> Trust {
        if self.allow_private {
            return Trust::Trusted;
        }
        let listed: Vec<&TrustedHost> = self
            .trusted_hosts
            .iter()
            .filter(|t| t.host.eq_ignore_ascii_case(host))
            .collect();
        if listed.is_empty() {
            Trust::NotListed
        } else if listed.iter().any(|t| t.port.is_none() || t.port == port) {
            Trust::Trusted
        } else {
            let ports: Vec<String> = listed
                .iter()
                .filter_map(|t| t.port.map(|p| p.to_string()))
                .collect();
            Trust::OtherPorts(ports.join(", "))
        }
    }

    /// Checks a URL before it is requested: the scheme, a port the trusted hosts do
    /// not cover, and the address when the host is an IP literal (names are checked
    /// when they are resolved).
    pub fn check_url(&self, url: &url::Url) -> Result<(), GuardError> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(GuardError::Scheme {
                scheme: url.scheme().to_string(),
            });
        }
        let host = url.host_str().unwrap_or_default().to_ascii_lowercase();
        let port = url.port_or_known_default();
        match self.trust(&host, port) {
            Trust::Trusted => return Ok(()),
            Trust::NotListed => {}
            // The resolver sees names without ports, so it trusts a listed name on
            // every port: other ports of a host listed with a port are refused here,
            // before the first request and at every redirect.
            Trust::OtherPorts(trusted) => {
                return Err(GuardError::UntrustedPort {
                    host,
                    port: port.unwrap_or_default(),
                    trusted,
                });
            }
        }
        let ip = match url.host() {
            Some(url::Host::Ipv4(v4)) => IpAddr::V4(v4),
            Some(url::Host::Ipv6(v6)) => IpAddr::V6(v6),
            _ => return Ok(()),
        };
        match internal_kind(ip) {
            Some(kind) => Err(GuardError::Internal { host, kind }),
            None => Ok(()),
        }
    }

    /// Keeps the public addresses of `host`; an error if none is left.
    pub fn filter_resolved(
        &self,
        host: &str,
        addrs: Vec<SocketAddr>,
    ) -> Result<Vec<SocketAddr>, GuardError> {
        // Every URL passed `check_url` before its connection, which refused the ports a
        // listed host is not trusted on; the name alone decides here.
        if self.allow_private
            || self
                .trusted_hosts
                .iter()
                .any(|t| t.host.eq_ignore_ascii_case(host))
        {
            return Ok(addrs);
        }
        let mut refused = None;
        let public: Vec<SocketAddr> = addrs
            .into_iter()
            .filter(|a| match internal_kind(a.ip()) {
                Some(kind) => {
                    refused.get_or_insert((a.ip(), kind));
                    false
                }
                None => true,
            })
            .collect();
        match (public.is_empty(), refused) {
            (true, Some((addr, kind))) => Err(GuardError::InternalName {
                host: host.to_string(),
                addr,
                kind,
            }),
            _ => Ok(public),
        }
    }

    /// The redirect policy for the HTTP client: at most `limit` hops, each checked.
    pub fn redirect_policy(self: &Arc<Self>, limit: usize) -> reqwest::redirect::Policy {
        let guard = self.clone();
        reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() > limit {
                return attempt.error(GuardError::TooManyRedirects { limit });
            }
            match guard.check_url(attempt.url()) {
                Ok(()) => attempt.follow(),
                Err(reason) => {
                    let to = attempt.url().to_string();
                    attempt.error(GuardError::Redirect {
                        to,
                        reason: Box::new(reason),
                    })
                }
            }
        })
    }

    /// The DNS resolver for the HTTP client: the system resolver, filtered.
    pub fn resolver(self: &Arc<Self>) -> Arc<GuardedResolver> {
        Arc::new(GuardedResolver {
            guard: self.clone(),
        })
    }
}

/// Resolves names with the system resolver and drops internal addresses, so the
/// address checked is the address connected to.
#[derive(Debug)]
pub struct GuardedResolver {
    guard: Arc<Guard>,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let guard = self.guard.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let kept = guard.filter_resolved(&host, addrs)?;
            let addrs: reqwest::dns::Addrs = Box::new(kept.into_iter());
            Ok(addrs)
        })
    }
}

/// What kind of internal address `ip` is, or `None` for a public one.
pub fn internal_kind(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => internal_v4(v4),
        IpAddr::V6(v6) => internal_v6(v6),
    }
}

fn internal_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    Some(match (a, b, c) {
        (0, _, _) => "an unspecified address",
        (127, _, _) => "a loopback address",
        (10, _, _) => "a private address",
        (172, 16..=31, _) => "a private address",
        (192, 168, _) => "a private address",
        (169, 254, _) => "a link-local address",
        (100, 64..=127, _) => "a carrier-grade NAT address",
        (192, 0, 0) => "an IETF protocol address",
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => "a documentation address",
        (198, 18..=19, _) => "a benchmarking address",
        (224..=239, _, _) => "a multicast address",
        (240..=255, _, _) => "a reserved address",
        _ => return None,
    })
}

fn internal_v6(ip: Ipv6Addr) -> Option<&'static str> {
    if ip.is_unspecified() {
        return Some("an unspecified address");
    }
    if ip.is_loopback() {
        return Some("a loopback address");
    }
    // IPv4 wrapped in IPv6 reaches the IPv4 address: judge that address.
    if let Some(v4) = ip.to_ipv4_mapped() {
        return internal_v4(v4);
    }
    let s = ip.segments();
    // NAT64 (64:ff9b::/96) and the deprecated IPv4-compatible form (::a.b.c.d).
    if (s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0]) || s[0..6] == [0; 6] {
        let v4 = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
        return internal_v4(v4);
    }
    // 6to4 (2002::/16) carries an IPv4 address in bits 16..48.
    if s[0] == 0x2002 {
        let v4 = Ipv4Addr::new((s[1] >> 8) as u8, s[1] as u8, (s[2] >> 8) as u8, s[2] as u8);
        if let Some(kind) = internal_v4(v4) {
            return Some(kind);
        }
    }
    // Local-use NAT64 (64:ff9b:1::/48, RFC 8215) translates to whatever IPv4 network
    // the operator chose, and a Teredo address (2001::/32) tunnels to an IPv4 host
    // through a relay: neither says where it finally goes, so neither is fetched.
    if s[0] == 0x64 && s[1] == 0xff9b && s[2] == 1 {
        return Some("a local-use NAT64 address");
    }
    if s[0] == 0x2001 && s[1] == 0 {
        return Some("a Teredo tunnel address");
    }
    Some(match s[0] {
        0xfe80..=0xfebf => "a link-local address",
        0xfec0..=0xfeff => "a site-local address",
        0xfc00..=0xfdff => "a private (unique local) address",
        0xff00..=0xffff => "a multicast address",
        0x2001 if s[1] == 0x0db8 => "a documentation address",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(text: &str) -> Option<&'static str> {
        internal_kind(text.parse().unwrap())
    }

    #[test]
    fn internal_ranges_are_recognised_in_both_families() {
        for internal in [
            "127.0.0.1",
            "127.8.9.10",
            "0.0.0.0",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "100.127.255.254",
            "224.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "2002:7f00:1::",
            "fe80::1",
            "fc00::1",
            "fd12:3456::1",
            "ff02::1",
            "64:ff9b:1::a00:1",
            "64:ff9b:1:ffff::808:808",
            "2001::1",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
        ] {
            assert!(kind(internal).is_some(), "{internal} should be internal");
        }
        assert_eq!(kind("64:ff9b:1::1"), Some("a local-use NAT64 address"));
        assert_eq!(kind("2001:0:53aa:64c::1"), Some("a Teredo tunnel address"));
        for public in [
            "93.184.216.34",
            "172.32.0.1",
            "100.128.0.1",
            "8.8.8.8",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "2002:0808:0808::",
            "64:ff9b::808:808",
            "64:ff9b:2::1",
            "2001:4860:4860::8888",
            "2001:1::1",
        ] {
            assert_eq!(kind(public), None, "{public} should be public");
        }
        assert_eq!(kind("::ffff:127.0.0.1"), Some("a loopback address"));
    }

    fn trusted(entries: &[&str]) -> Vec<TrustedHost> {
        entries.iter().map(|e| e.parse().unwrap()).collect()
    }

    #[test]
    fn trusted_hosts_are_read_with_their_port() {
        for (text, shown) in [
            ("CMS.internal", "cms.internal"),
            ("cms.internal:8080", "cms.internal:8080"),
            ("cms.internal:80", "cms.internal:80"),
            ("10.0.0.5:443", "10.0.0.5:443"),
            ("[FD00::1]", "[fd00::1]"),
            ("[fd00::1]:8443", "[fd00::1]:8443"),
        ] {
            let host: TrustedHost = text.parse().unwrap();
            assert_eq!(host.to_string(), shown, "{text}");
        }
        for bad in [
            "",
            "a b",
            "cms.internal:99999",
            "cms.internal/feed",
            "user@cms",
            "fd00::1",
        ] {
            let err = bad.parse::<TrustedHost>().unwrap_err();
            assert!(err.contains("is not a host name"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn a_trusted_host_with_a_port_is_trusted_on_that_port_only() {
        let guard = Guard::new(
            false,
            trusted(&[
                "10.0.0.5:8080",
                "cms.internal:80",
                "[fd00::7]:8443",
                "wiki.internal",
            ]),
        );
        let check = |u: &str| guard.check_url(&url::Url::parse(u).unwrap());
        assert!(check("http://10.0.0.5:8080/feed").is_ok());
        assert!(
            check("http://cms.internal/feed").is_ok(),
            "80 is http's default"
        );
        assert!(check("https://[fd00::7]:8443/feed").is_ok());
        assert!(
            check("http://wiki.internal:9999/feed").is_ok(),
            "no port: every port"
        );
        let err = check("http://10.0.0.5:22/").unwrap_err().to_string();
        assert_eq!(
            err,
            "10.0.0.5 is in [ingest] trusted_hosts for port 8080 only, not port 22; add \"10.0.0.5:22\" to trust that port too"
        );
        // A name is refused outright on another port: its addresses are not known yet.
        let err = check("https://cms.internal/feed").unwrap_err().to_string();
        assert!(err.contains("port 80 only, not port 443"), "{err}");
        assert!(check("http://[fd00::7]/feed").is_err());
        // Names are resolved without a port, so the resolver trusts every listed name.
        let addrs = vec!["10.0.0.9:0".parse().unwrap()];
        assert!(guard.filter_resolved("cms.internal", addrs.clone()).is_ok());
        assert!(guard.filter_resolved("other.internal", addrs).is_err());
    }

    #[test]
    fn urls_are_checked_by_scheme_and_literal_address() {
        let guard = Guard::new(false, trusted(&["10.0.0.5", "cms.internal"]));
        let check = |u: &str| guard.check_url(&url::Url::parse(u).unwrap());
        assert!(check("https://news.example/feed").is_ok());
        assert!(check("http://10.0.0.5:8080/feed").is_ok(), "trusted");
        assert!(check("http://cms.internal/feed").is_ok(), "trusted");
        let err = check("http://127.0.0.1:9/feed").unwrap_err().to_string();
        assert!(err.contains("127.0.0.1 is a loopback address"), "{err}");
        assert!(err.contains("allow_private = true"), "{err}");
        assert!(check("http://[::ffff:7f00:1]/feed").is_err());
        assert!(check("http://[fd00::1]/feed").is_err());
        let err = check("http://[64:ff9b:1::a00:5]/feed")
            .unwrap_err()
            .to_string();
        assert!(err.contains("a local-use NAT64 address"), "{err}");
        let err = check("http://[2001:0:4136:e378::1]/feed")
            .unwrap_err()
            .to_string();
        assert!(err.contains("a Teredo tunnel address"), "{err}");
        assert!(
            check("http://2130706433/feed").is_err(),
            "decimal 127.0.0.1"
        );
        assert!(check("ftp://news.example/feed").is_err());
        assert!(check("file:///etc/passwd").is_err());
        let open = Guard::new(true, vec![]);
        assert!(
            open.check_url(&url::Url::parse("http://127.0.0.1/").unwrap())
                .is_ok()
        );
    }

    #[test]
    fn names_keep_only_public_addresses() {
        let guard = Guard::new(false, vec![]);
        let addr = |s: &str| -> SocketAddr { s.parse().unwrap() };
        let kept = guard
            .filter_resolved(
                "mixed.example",
                vec![addr("10.0.0.1:0"), addr("93.184.216.34:0")],
            )
            .unwrap();
        assert_eq!(kept, vec![addr("93.184.216.34:0")]);
        let err = guard
            .filter_resolved("localhost", vec![addr("127.0.0.1:0"), addr("[::1]:0")])
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("localhost resolves to 127.0.0.1, which is a loopback address"),
            "{err}"
        );
    }
}

//! Which article links herald puts in emails: the rule is kept where articles enter
//! (feeds and the push API), so the store never holds a link that may not be mailed.
//!
//! A link with a user name or password hands readers a credential (or dresses one
//! host up as another: `https://bank.example@evil.example/`); a link to an IP address
//! or an internal name points readers at machines on their own network, or at none.

/// Why an article's link is not mailed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkRefusal {
    /// Not http(s), or no host.
    #[error("it is not an absolute http(s) address")]
    NotWeb,
    /// `user:password@` before the host.
    #[error("it carries a user name or password before the host; link the page's public address")]
    UserInfo,
    /// The host is an IP address.
    #[error("its host is an IP address; link the page by its domain name")]
    IpLiteral,
    /// The host is a name readers' networks resolve to themselves, or not at all.
    #[error(
        "its host {host} is an internal name (no dot, or under .local, .internal or the like) that readers cannot reach"
    )]
    InternalName {
        /// The host.
        host: String,
    },
}

/// Top-level names that only mean something inside one network (RFC 6761, RFC 6762,
/// RFC 8375, ICANN's `.internal`) or that intranets commonly use.
const INTERNAL_SUFFIXES: [&str; 9] = [
    "localhost",
    "local",
    "internal",
    "arpa",
    "lan",
    "intranet",
    "corp",
    "home",
    "localdomain",
];

/// Whether `url` may be mailed as an article's link. `keep_internal` (set by
/// `[ingest] allow_private`, for development) keeps IP addresses and internal names;
/// a user name or password is never kept.
pub fn check_link(url: &url::Url, keep_internal: bool) -> Result<(), LinkRefusal> {
    if !matches!(url.scheme(), "http" | "https") || !url.has_host() {
        return Err(LinkRefusal::NotWeb);
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(LinkRefusal::UserInfo);
    }
    if keep_internal {
        return Ok(());
    }
    match url.host() {
        Some(url::Host::Domain(name)) => {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            let last = name.rsplit('.').next().unwrap_or_default();
            if !name.contains('.') || INTERNAL_SUFFIXES.contains(&last) {
                return Err(LinkRefusal::InternalName { host: name });
            }
            Ok(())
        }
        Some(url::Host::Ipv4(_) | url::Host::Ipv6(_)) => Err(LinkRefusal::IpLiteral),
        None => Err(LinkRefusal::NotWeb),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(link: &str) -> Result<(), LinkRefusal> {
        check_link(&url::Url::parse(link).unwrap(), false)
    }

    #[test]
    fn public_web_pages_are_kept() {
        for link in [
            "https://news.example.org/riverton/flood",
            "http://news.example.org:8080/a?b=c#d",
            "https://xn--caf-dma.example/story",
            "https://localhost.example.org/not-internal",
        ] {
            assert_eq!(check(link), Ok(()), "{link}");
        }
    }

    #[test]
    fn credentials_ip_addresses_and_internal_names_are_refused() {
        for (link, refusal) in [
            ("https://user@news.example.org/a", LinkRefusal::UserInfo),
            (
                "https://user:secret@news.example.org/a",
                LinkRefusal::UserInfo,
            ),
            ("https://:secret@news.example.org/a", LinkRefusal::UserInfo),
            ("https://bank.example@evil.example/", LinkRefusal::UserInfo),
            ("http://127.0.0.1/admin", LinkRefusal::IpLiteral),
            ("http://2130706433/", LinkRefusal::IpLiteral),
            ("http://[::1]:8080/", LinkRefusal::IpLiteral),
            ("http://93.184.216.34/story", LinkRefusal::IpLiteral),
            ("ftp://news.example.org/a", LinkRefusal::NotWeb),
        ] {
            assert_eq!(check(link), Err(refusal), "{link}");
        }
        for link in [
            "http://localhost/",
            "http://localhost./",
            "http://intranet/wiki",
            "https://printer.local/",
            "https://cms.internal/story",
            "https://router.home.arpa/",
            "https://nas.lan/",
            "https://App.Corp/",
        ] {
            assert!(
                matches!(check(link), Err(LinkRefusal::InternalName { .. })),
                "{link}"
            );
        }
    }

    #[test]
    fn development_keeps_internal_hosts_but_never_credentials() {
        let keep = |link: &str| check_link(&url::Url::parse(link).unwrap(), true);
        assert_eq!(keep("http://127.0.0.1:8080/story"), Ok(()));
        assert_eq!(keep("http://localhost/story"), Ok(()));
        assert_eq!(
            keep("http://user:pw@127.0.0.1/story"),
            Err(LinkRefusal::UserInfo)
        );
    }
}

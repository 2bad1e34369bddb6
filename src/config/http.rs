//! `[http]`: the daemon's web listener and the address readers reach it at.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde::Deserialize;

use super::duration::at_least;
use super::setting::{FromText, Problems, Setting, Text};

/// Built-in values: the first layer, under the file and the environment.
pub(super) const DEFAULTS: &str = r#"
[http]
listen = "127.0.0.1:8080"
public_url = "http://127.0.0.1:8080"
trusted_proxies = []
max_connections = 0
header_timeout = "10s"
idle_timeout = "30s"
body_timeout = "10s"
request_timeout = "30s"
"#;

/// `[http]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct File {
    listen: Setting<Text<SocketAddr>>,
    public_url: Setting<Text<PublicUrl>>,
    trusted_proxies: Setting<Vec<Setting<Text<IpAddr>>>>,
    max_connections: Setting<u32>,
    header_timeout: Setting<Text<Duration>>,
    idle_timeout: Setting<Text<Duration>>,
    body_timeout: Setting<Text<Duration>>,
    request_timeout: Setting<Text<Duration>>,
}

/// `[http]`.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Address the daemon listens on.
    pub listen: SocketAddr,
    /// The URL readers reach the site at; links in emails start with it.
    pub public_url: url::Url,
    /// Reverse proxies whose `X-Forwarded-For` names the real client address.
    pub trusted_proxies: Vec<IpAddr>,
    /// Most connections held at once; `None` = as many as the open-file limit allows
    /// with descriptors kept in reserve (worked out at start-up).
    pub max_connections: Option<usize>,
    /// How long a request's head may take once its first byte arrived.
    pub header_timeout: Duration,
    /// How long a connection with no request in progress may stay silent.
    pub idle_timeout: Duration,
    /// How long a request's body may take to arrive, from its head.
    pub body_timeout: Duration,
    /// How long one request may take, body and answer included.
    pub request_timeout: Duration,
}

/// The http(s) address readers use.
struct PublicUrl(url::Url);

impl FromText for PublicUrl {
    fn from_text(text: &str) -> Result<Self, String> {
        match url::Url::parse(text.trim()) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.has_host() => {
                Ok(PublicUrl(url))
            }
            _ => Err(format!(
                "\"{text}\" is not an http(s) URL (write the address readers use, e.g. \"https://news.example.org\")"
            )),
        }
    }
}

impl FromText for SocketAddr {
    fn from_text(text: &str) -> Result<Self, String> {
        text.trim().parse().map_err(|_| {
            format!(
                "\"{text}\" is not an address to listen on (write host:port, e.g. \"127.0.0.1:8080\")"
            )
        })
    }
}

impl FromText for IpAddr {
    fn from_text(text: &str) -> Result<Self, String> {
        text.trim().parse().map_err(|_| {
            format!(
                "\"{text}\" is not an IP address (write the proxy's address, e.g. \"127.0.0.1\")"
            )
        })
    }
}

impl File {
    /// The typed section, or `None` with each problem recorded.
    pub(super) fn check(self, p: &mut Problems) -> Option<HttpConfig> {
        let listen = p.text("http.listen", self.listen);
        let public_url = p.text("http.public_url", self.public_url);
        let trusted_proxies = p.list("http.trusted_proxies", self.trusted_proxies);
        let max_connections = p.take("http.max_connections", self.max_connections);
        // Shorter deadlines would cut off ordinary clients on a slow link.
        let mut timeout = |key: &str, setting: Setting<Text<Duration>>| {
            p.text(key, setting)
                .and_then(|value| p.check(key, at_least(value, "100ms")))
        };
        let header_timeout = timeout("http.header_timeout", self.header_timeout);
        let idle_timeout = timeout("http.idle_timeout", self.idle_timeout);
        let body_timeout = timeout("http.body_timeout", self.body_timeout);
        let request_timeout = timeout("http.request_timeout", self.request_timeout);
        Some(HttpConfig {
            listen: listen?,
            public_url: public_url?.0,
            trusted_proxies: trusted_proxies?,
            max_connections: match max_connections? {
                0 => None,
                n => Some(n as usize),
            },
            header_timeout: header_timeout?,
            idle_timeout: idle_timeout?,
            body_timeout: body_timeout?,
            request_timeout: request_timeout?,
        })
    }
}

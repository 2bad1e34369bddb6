//! `[ingest]`: how feeds are polled, and which addresses they may be fetched from.

use std::time::Duration;

use serde::Deserialize;

use super::duration::at_least;
use super::setting::{FromText, Problems, Setting, Text};
use crate::ingest::guard::TrustedHost;

/// Built-in values: the first layer, under the file and the environment.
pub(super) const DEFAULTS: &str = r#"
[ingest]
interval = "15m"
timeout = "20s"
connect_timeout = "10s"
max_body_bytes = 5242880
max_items = 200
concurrency = 8
max_redirects = 5
max_backoff = "6h"
allow_private = false
trusted_hosts = []
"#;

/// `[ingest]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct File {
    interval: Setting<Text<Duration>>,
    timeout: Setting<Text<Duration>>,
    connect_timeout: Setting<Text<Duration>>,
    max_body_bytes: Setting<u64>,
    max_items: Setting<u32>,
    concurrency: Setting<u32>,
    max_redirects: Setting<u32>,
    max_backoff: Setting<Text<Duration>>,
    allow_private: Setting<bool>,
    trusted_hosts: Setting<Vec<Setting<Text<TrustedHost>>>>,
}

/// `[ingest]`.
#[derive(Debug, Clone)]
pub struct IngestConfig {
    /// How often the daemon polls a feed that names no interval of its own.
    pub interval: Duration,
    /// Whole-request timeout for one feed (connect, headers and body).
    pub timeout: Duration,
    /// Timeout for opening the TCP connection.
    pub connect_timeout: Duration,
    /// Largest feed body read, counted after decompression.
    pub max_body_bytes: u64,
    /// Most items taken from one poll of a feed.
    pub max_items: usize,
    /// Feeds fetched at once.
    pub concurrency: usize,
    /// Most redirects followed for one feed.
    pub max_redirects: usize,
    /// Longest wait between polls of a failing feed.
    pub max_backoff: Duration,
    /// Fetch feeds on loopback, private, link-local and other internal addresses.
    pub allow_private: bool,
    /// Hosts fetched even on internal addresses (on one port, if the entry names one).
    pub trusted_hosts: Vec<TrustedHost>,
}

impl FromText for TrustedHost {
    fn from_text(text: &str) -> Result<Self, String> {
        text.parse()
    }
}

impl File {
    /// The typed section, or `None` with each problem recorded.
    pub(super) fn check(self, p: &mut Problems) -> Option<IngestConfig> {
        let interval = p
            .text("ingest.interval", self.interval)
            .and_then(|interval| p.check("ingest.interval", at_least(interval, "1s")));
        let timeout = p.text("ingest.timeout", self.timeout);
        let connect_timeout = p.text("ingest.connect_timeout", self.connect_timeout);
        let max_body_bytes = p.take("ingest.max_body_bytes", self.max_body_bytes);
        let max_items = p.take("ingest.max_items", self.max_items);
        let concurrency = p.take("ingest.concurrency", self.concurrency);
        let max_redirects = p
            .take("ingest.max_redirects", self.max_redirects)
            .and_then(|n| {
                p.check(
                    "ingest.max_redirects",
                    if n <= 20 {
                        Ok(n as usize)
                    } else {
                        Err(format!("{n} is out of range (0 to 20)"))
                    },
                )
            });
        let max_backoff = p.text("ingest.max_backoff", self.max_backoff);
        let allow_private = p.take("ingest.allow_private", self.allow_private);
        let trusted_hosts = p.list("ingest.trusted_hosts", self.trusted_hosts);
        Some(IngestConfig {
            interval: interval?,
            timeout: timeout?,
            connect_timeout: connect_timeout?,
            max_body_bytes: max_body_bytes?,
            max_items: max_items?.max(1) as usize,
            concurrency: concurrency?.max(1) as usize,
            max_redirects: max_redirects?,
            max_backoff: max_backoff?,
            allow_private: allow_private?,
            trusted_hosts: trusted_hosts?,
        })
    }
}

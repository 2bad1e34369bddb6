//! Configuration: one typed struct, loaded and validated in one place.
//!
//! Layers, later wins: built-in defaults, the TOML file (`--config`, `HERALD_CONFIG`,
//! default `config/herald.toml`), then `HERALD__SECTION__KEY` environment variables.
//! Every value is checked at start-up; each problem is reported with the key it came from.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use lettre::message::Mailbox;
use serde::{Deserialize, Serialize};

use crate::domain::{RegionSlug, Timezone};
use crate::ingest::guard::TrustedHost;

/// The config file used when neither `--config` nor `HERALD_CONFIG` is given.
pub const DEFAULT_PATH: &str = "config/herald.toml";

/// Everything that can go wrong loading the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has keys herald does not know.
    #[error("config file {path} is not valid: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The parser's message, which names the key.
        message: String,
    },
    /// One or more values are wrong; each line names its key.
    #[error("config file {path} has {} problem(s):\n{}", .problems.len(), .problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid {
        /// The file.
        path: PathBuf,
        /// One sentence per problem, each starting with the key.
        problems: Vec<String>,
    },
}

/// The file layout, as written in `herald.toml`. Strings are checked and turned into
/// [`Config`] by [`RawConfig::validate`].
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawConfig {
    database: RawDatabase,
    http: RawHttp,
    mail: RawMail,
    smtp: RawSmtp,
    schedule: RawSchedule,
    alerts: RawAlerts,
    ingest: RawIngest,
    deliver: RawDeliver,
    security: RawSecurity,
    dkim: RawDkim,
    signup: RawSignup,
    regions: Vec<RawRegion>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawDatabase {
    url: String,
    max_connections: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawHttp {
    listen: String,
    public_url: String,
    trusted_proxies: Vec<String>,
    max_connections: u32,
    header_timeout: String,
    idle_timeout: String,
    body_timeout: String,
    request_timeout: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawMail {
    from: String,
    postal_address: String,
    transport: String,
    outbox_dir: String,
    list_name: String,
    templates_dir: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawSmtp {
    host: String,
    port: u16,
    tls: String,
    username: String,
    password: String,
    connections: u32,
    rate_per_second: f64,
    timeout: String,
    hello_name: String,
    ca_file: String,
    domains: std::collections::BTreeMap<String, RawDomain>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawDomain {
    rate_per_second: f64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawDkim {
    domain: String,
    selector: String,
    key_file: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawSchedule {
    daily: String,
    weekly: String,
    max_lateness: String,
    tick: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawAlerts {
    categories: Vec<String>,
    quiet_hours: String,
    max_age: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawIngest {
    interval: String,
    timeout: String,
    connect_timeout: String,
    max_body_bytes: u64,
    max_items: u32,
    concurrency: u32,
    max_redirects: u32,
    max_backoff: String,
    allow_private: bool,
    trusted_hosts: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawDeliver {
    batch_size: u32,
    lease: String,
    drain_timeout: String,
    expiry_alert: String,
    expiry_daily: String,
    expiry_weekly: String,
    expiry_confirmation: String,
    retry_base: String,
    retry_max: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawSecurity {
    secret: String,
    secret_file: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawSignup {
    consent_text: String,
    consent_version: String,
    ip_limit: u32,
    ip_window: String,
    address_limit: u32,
    address_window: String,
    emails_per_day: u32,
    confirm_link_lifetime: String,
    search_threshold: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRegion {
    slug: String,
    name: String,
    #[serde(default)]
    parent: String,
    #[serde(default)]
    timezone: String,
    #[serde(default)]
    feeds: Vec<RawFeed>,
}

/// A feed is written as its URL, or as a table when it needs its own polling interval.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(
    untagged,
    expecting = "a feed URL, or a table such as { url = \"https://…\", interval = \"5m\" }"
)]
enum RawFeed {
    Url(String),
    Table(RawFeedTable),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFeedTable {
    url: String,
    #[serde(default)]
    interval: String,
}

impl RawFeed {
    fn url(&self) -> &str {
        match self {
            RawFeed::Url(url) | RawFeed::Table(RawFeedTable { url, .. }) => url,
        }
    }

    fn interval(&self) -> Option<&str> {
        match self {
            RawFeed::Table(RawFeedTable { interval, .. }) if !interval.trim().is_empty() => {
                Some(interval)
            }
            _ => None,
        }
    }
}

impl Default for RawDatabase {
    fn default() -> Self {
        RawDatabase {
            url: "sqlite://var/herald.db".into(),
            max_connections: 8,
        }
    }
}

impl Default for RawHttp {
    fn default() -> Self {
        RawHttp {
            listen: "127.0.0.1:8080".into(),
            public_url: "http://127.0.0.1:8080".into(),
            trusted_proxies: Vec::new(),
            max_connections: 0,
            header_timeout: "10s".into(),
            idle_timeout: "30s".into(),
            body_timeout: "10s".into(),
            request_timeout: "30s".into(),
        }
    }
}

impl Default for RawMail {
    fn default() -> Self {
        RawMail {
            from: String::new(),
            postal_address: String::new(),
            transport: "file".into(),
            outbox_dir: "var/outbox".into(),
            list_name: String::new(),
            templates_dir: "templates".into(),
        }
    }
}

impl Default for RawSmtp {
    fn default() -> Self {
        RawSmtp {
            host: "127.0.0.1".into(),
            port: 25,
            tls: "none".into(),
            username: String::new(),
            password: String::new(),
            connections: 4,
            rate_per_second: 0.0,
            timeout: "30s".into(),
            hello_name: String::new(),
            ca_file: String::new(),
            domains: Default::default(),
        }
    }
}

impl Default for RawSchedule {
    fn default() -> Self {
        RawSchedule {
            daily: "0 7 * * *".into(),
            weekly: "0 7 * * 1".into(),
            max_lateness: "6h".into(),
            tick: "15s".into(),
        }
    }
}

impl Default for RawAlerts {
    fn default() -> Self {
        RawAlerts {
            categories: vec!["breaking".into()],
            quiet_hours: "22:00-07:00".into(),
            max_age: "6h".into(),
        }
    }
}

impl Default for RawIngest {
    fn default() -> Self {
        RawIngest {
            interval: "15m".into(),
            timeout: "20s".into(),
            connect_timeout: "10s".into(),
            max_body_bytes: 5 * 1024 * 1024,
            max_items: 200,
            concurrency: 8,
            max_redirects: 5,
            max_backoff: "6h".into(),
            allow_private: false,
            trusted_hosts: Vec::new(),
        }
    }
}

impl Default for RawDeliver {
    fn default() -> Self {
        RawDeliver {
            batch_size: 200,
            lease: "5m".into(),
            drain_timeout: "30s".into(),
            expiry_alert: "6h".into(),
            expiry_daily: "24h".into(),
            expiry_weekly: "72h".into(),
            expiry_confirmation: "24h".into(),
            retry_base: "1m".into(),
            retry_max: "1h".into(),
        }
    }
}

/// What a reader agrees to when signing up, unless the operator writes their own.
const DEFAULT_CONSENT_TEXT: &str = "Email me the news I picked above. I can change what I get, or \
unsubscribe, at any time with the links in every email. My address is used for nothing else.";

impl Default for RawSignup {
    fn default() -> Self {
        RawSignup {
            consent_text: DEFAULT_CONSENT_TEXT.into(),
            consent_version: "1".into(),
            ip_limit: 5,
            ip_window: "1h".into(),
            address_limit: 5,
            address_window: "1h".into(),
            emails_per_day: 3,
            confirm_link_lifetime: "7d".into(),
            search_threshold: 36,
        }
    }
}

impl Default for RawSecurity {
    fn default() -> Self {
        RawSecurity {
            secret: String::new(),
            secret_file: "var/secret.key".into(),
        }
    }
}

/// The validated configuration every part of herald reads.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from; relative `file://` feeds resolve against its folder.
    pub path: PathBuf,
    /// Where the data lives.
    pub database: DatabaseConfig,
    /// The web listener.
    pub http: HttpConfig,
    /// Sender identity and transport choice.
    pub mail: MailConfig,
    /// The SMTP relay, used when `mail.transport = "smtp"`.
    pub smtp: SmtpConfig,
    /// Digest schedules.
    pub schedule: ScheduleConfig,
    /// Breaking-news alerts.
    pub alerts: AlertsConfig,
    /// Feed polling.
    pub ingest: IngestConfig,
    /// Outbox workers.
    pub deliver: DeliverConfig,
    /// Token signing.
    pub security: SecurityConfig,
    /// DKIM signing, when configured.
    pub dkim: Option<DkimSettings>,
    /// The web sign-up: consent text, abuse limits, the region picker.
    pub signup: SignupConfig,
    /// The regions readers can follow, parents before children.
    pub regions: Vec<Region>,
}

/// `[database]`.
#[derive(Debug, Clone)]
pub struct DatabaseConfig {
    /// `sqlite://…` or `postgres://…`.
    pub url: String,
    /// Pool size.
    pub max_connections: u32,
}

/// `[http]`.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Address the daemon listens on.
    pub listen: std::net::SocketAddr,
    /// The URL readers reach the site at; links in emails start with it.
    pub public_url: url::Url,
    /// Reverse proxies whose `X-Forwarded-For` names the real client address.
    pub trusted_proxies: Vec<std::net::IpAddr>,
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

/// How emails leave herald.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportKind {
    /// Over SMTP to `[smtp]`.
    Smtp,
    /// As `.eml` files under `mail.outbox_dir`.
    File,
}

/// `[mail]`.
#[derive(Debug, Clone)]
pub struct MailConfig {
    /// The From mailbox.
    pub from: Mailbox,
    /// The postal address printed in every email's footer.
    pub postal_address: String,
    /// SMTP or files.
    pub transport: TransportKind,
    /// Where the file transport writes.
    pub outbox_dir: PathBuf,
    /// Human name of the list, shown in `List-Id` and as the site name.
    pub list_name: String,
    /// Folder holding the `email/*.j2` and `web/*.html.j2` templates.
    pub templates_dir: PathBuf,
}

impl MailConfig {
    /// The domain of the From address: Message-IDs and `List-Id` use it.
    pub fn sending_domain(&self) -> &str {
        self.from.email.domain()
    }
}

/// How the SMTP connection is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// Plain text (a local relay).
    None,
    /// Upgrade with STARTTLS; fail if the server does not offer it.
    Starttls,
    /// TLS from the first byte (port 465).
    Tls,
}

/// `[smtp]`.
#[derive(Debug, Clone)]
pub struct SmtpConfig {
    /// Relay host.
    pub host: String,
    /// Relay port.
    pub port: u16,
    /// Transport security.
    pub tls: TlsMode,
    /// AUTH user, when set.
    pub username: Option<String>,
    /// AUTH password (set it through `HERALD__SMTP__PASSWORD`).
    pub password: Option<String>,
    /// Persistent connections kept open at once.
    pub connections: usize,
    /// Global pace; 0 means as fast as the server accepts.
    pub rate_per_second: f64,
    /// Per-command timeout.
    pub timeout: Duration,
    /// Name sent in EHLO; defaults to the sending domain.
    pub hello_name: String,
    /// PEM certificates trusted, besides the public roots, to sign the server's TLS
    /// certificate (a relay with a private certificate authority).
    pub ca_certificates: Option<Vec<u8>>,
    /// Per-recipient-domain pace (messages per second), lower-cased domain → rate.
    pub domain_rates: std::collections::BTreeMap<String, f64>,
}

/// `[dkim]`: sign every message when set.
#[derive(Debug, Clone)]
pub struct DkimSettings {
    /// The signing domain (`d=`); must align with the From domain.
    pub domain: String,
    /// The selector (`s=`): the key is published at `selector._domainkey.domain`.
    pub selector: String,
    /// PEM file with the RSA or Ed25519 private key.
    pub key_file: PathBuf,
}

/// `[schedule]`.
#[derive(Debug, Clone)]
pub struct ScheduleConfig {
    /// Cron for daily digests, in each reader's zone.
    pub daily: croner::Cron,
    /// Cron for weekly digests, in each reader's zone.
    pub weekly: croner::Cron,
    /// Missed slots older than this are skipped.
    pub max_lateness: Duration,
    /// How often the daemon looks for due slots and breaking articles.
    pub tick: Duration,
}

/// `[alerts]`.
#[derive(Debug, Clone)]
pub struct AlertsConfig {
    /// Categories (case-insensitive) that make an article breaking.
    pub categories: Vec<String>,
    /// Local hours during which alerts wait, as minutes after midnight (start, end).
    pub quiet_hours: Option<(u32, u32)>,
    /// Alerts older than this expire instead of going out.
    pub max_age: Duration,
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

/// `[deliver]`.
#[derive(Debug, Clone)]
pub struct DeliverConfig {
    /// Rows claimed per batch.
    pub batch_size: usize,
    /// How long a claim holds before another worker may take the row.
    pub lease: Duration,
    /// How long shutdown waits for in-flight messages.
    pub drain_timeout: Duration,
    /// How long an alert stays worth sending.
    pub expiry_alert: Duration,
    /// How long a daily digest stays worth sending.
    pub expiry_daily: Duration,
    /// How long a weekly digest stays worth sending.
    pub expiry_weekly: Duration,
    /// How long a confirmation stays worth sending.
    pub expiry_confirmation: Duration,
    /// First retry delay after a temporary failure; doubles each attempt.
    pub retry_base: Duration,
    /// Longest retry delay.
    pub retry_max: Duration,
}

/// `[security]`.
#[derive(Debug, Clone)]
pub struct SecurityConfig {
    /// The HMAC key, if given in config or env.
    pub secret: Option<String>,
    /// Where a generated key is kept when `secret` is empty.
    pub secret_file: PathBuf,
}

/// `[signup]`.
#[derive(Debug, Clone)]
pub struct SignupConfig {
    /// The consent text shown above the sign-up button.
    pub consent_text: String,
    /// Its version, stored with each consent record.
    pub consent_version: String,
    /// Sign-ups accepted from one IP address (IPv6: one /64) per `ip_window`.
    pub ip_limit: u32,
    /// The sliding window of `ip_limit`.
    pub ip_window: Duration,
    /// Sign-ups accepted for one address per `address_window`.
    pub address_limit: u32,
    /// The sliding window of `address_limit`.
    pub address_window: Duration,
    /// Sign-up emails (confirmation, welcome) one address gets per 24 hours at most.
    pub emails_per_day: u32,
    /// How long a confirmation link works.
    pub confirm_link_lifetime: Duration,
    /// Past this many regions, the sign-up page offers a search instead of the full list.
    pub search_threshold: usize,
}

/// A feed source, as written in config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeedSource {
    /// A local file.
    File(PathBuf),
    /// An http(s) URL.
    Http(url::Url),
}

impl fmt::Display for FeedSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FeedSource::File(path) => write!(f, "file://{}", path.display()),
            FeedSource::Http(url) => write!(f, "{url}"),
        }
    }
}

/// One `[[regions]]` entry.
#[derive(Debug, Clone)]
pub struct Region {
    /// Short name.
    pub slug: RegionSlug,
    /// Display name.
    pub name: String,
    /// The region this one belongs to, if any.
    pub parent: Option<RegionSlug>,
    /// Default zone for readers who give none.
    pub timezone: Timezone,
    /// Feeds polled for this region, as written (`file://…` or `http(s)://…`).
    pub feeds: Vec<String>,
    /// The same feeds, resolved.
    pub sources: Vec<FeedSource>,
    /// The same feeds' polling intervals (their own, or `ingest.interval`).
    pub intervals: Vec<Duration>,
}

impl Config {
    /// Loads from `path`, applying `HERALD__…` variables from the process environment.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Config::load_with_env(path, std::env::vars())
    }

    /// Loads from `path` with the given environment (tests pass their own).
    pub fn load_with_env(
        path: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::from_toml(path, &text, env)
    }

    /// Parses `text` as if it were the file at `path`.
    pub fn from_toml(
        path: &Path,
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let syntax = |message: String| ConfigError::Syntax {
            path: path.to_path_buf(),
            message,
        };
        let mut merged =
            toml::Value::try_from(RawConfig::default()).map_err(|e| syntax(e.to_string()))?;
        let file: toml::Value = toml::from_str(text).map_err(|e| syntax(e.to_string()))?;
        merge(&mut merged, file);
        for (key, value) in env {
            if let Some(rest) = key.strip_prefix("HERALD__") {
                apply_env(&mut merged, rest, &value).map_err(&syntax)?;
            }
        }
        let raw: RawConfig = merged
            .try_into()
            .map_err(|e: toml::de::Error| syntax(e.message().to_string()))?;
        raw.validate(path).map_err(|problems| ConfigError::Invalid {
            path: path.to_path_buf(),
            problems,
        })
    }
}

/// Overlays `over` onto `base`, table by table.
fn merge(base: &mut toml::Value, over: toml::Value) {
    match (base, over) {
        (toml::Value::Table(base), toml::Value::Table(over)) => {
            for (key, value) in over {
                match base.get_mut(&key) {
                    Some(existing) if existing.is_table() && value.is_table() => {
                        merge(existing, value)
                    }
                    _ => {
                        base.insert(key, value);
                    }
                }
            }
        }
        (base, over) => *base = over,
    }
}

/// Sets `SECTION__KEY` (already stripped of `HERALD__`) to `raw`, typed like the value it replaces.
fn apply_env(root: &mut toml::Value, path: &str, raw: &str) -> Result<(), String> {
    let keys: Vec<String> = path.split("__").map(|k| k.to_ascii_lowercase()).collect();
    let env_name = format!("HERALD__{path}");
    let mut node = root;
    for key in &keys[..keys.len() - 1] {
        let table = node
            .as_table_mut()
            .ok_or_else(|| format!("{env_name}: {key} is not a section"))?;
        node = table
            .entry(key.clone())
            .or_insert_with(|| toml::Value::Table(Default::default()));
    }
    let last = keys.last().expect("split yields at least one part");
    let table = node
        .as_table_mut()
        .ok_or_else(|| format!("{env_name}: not a section"))?;
    let value = match table.get(last) {
        Some(toml::Value::Integer(_)) => raw
            .trim()
            .parse::<i64>()
            .map(toml::Value::Integer)
            .map_err(|_| format!("{env_name}: \"{raw}\" is not a whole number"))?,
        Some(toml::Value::Float(_)) => raw
            .trim()
            .parse::<f64>()
            .map(toml::Value::Float)
            .map_err(|_| format!("{env_name}: \"{raw}\" is not a number"))?,
        Some(toml::Value::Boolean(_)) => raw
            .trim()
            .parse::<bool>()
            .map(toml::Value::Boolean)
            .map_err(|_| format!("{env_name}: \"{raw}\" is not true or false"))?,
        Some(toml::Value::Array(_)) => toml::Value::Array(
            raw.split(',')
                .map(|s| s.trim())
                .filter(|s| !s.is_empty())
                .map(|s| toml::Value::String(s.to_string()))
                .collect(),
        ),
        _ => toml::Value::String(raw.to_string()),
    };
    table.insert(last.clone(), value);
    Ok(())
}

/// The PEM certificates in `file`, checked: at least one, all of them readable.
fn read_certificates(file: &Path) -> Result<Vec<u8>, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let pem = std::fs::read(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    match CertificateDer::pem_slice_iter(&pem).collect::<Result<Vec<_>, _>>() {
        Ok(certificates) if !certificates.is_empty() => Ok(pem),
        Ok(_) => Err(format!("{} holds no PEM certificate", file.display())),
        Err(e) => Err(format!(
            "{} holds a broken certificate: {e}",
            file.display()
        )),
    }
}

/// Reads `6h`, `30m`, `45s`, `2d`, `500ms`, or combinations such as `1h30m`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let s = text.trim();
    if s.is_empty() {
        return Err("is empty (write a duration such as \"30m\" or \"6h\")".into());
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.chars().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 {
            return Err(format!(
                "\"{text}\" is not a duration (write a number and a unit: ms, s, m, h, d — e.g. \"30m\")"
            ));
        }
        let number: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("\"{text}\" has a number too large"))?;
        rest = &rest[digits..];
        let unit_len = rest.chars().take_while(|c| c.is_ascii_alphabetic()).count();
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let part = match unit {
            "ms" => Duration::from_millis(number),
            "s" => Duration::from_secs(number),
            "m" => Duration::from_secs(number * 60),
            "h" => Duration::from_secs(number * 3600),
            "d" => Duration::from_secs(number * 86_400),
            _ => {
                return Err(format!(
                    "\"{text}\" is not a duration (units are ms, s, m, h, d — e.g. \"30m\")"
                ));
            }
        };
        total += part;
    }
    Ok(total)
}

/// Reads `22:00-07:00` into minutes after midnight.
fn parse_quiet_hours(text: &str) -> Result<Option<(u32, u32)>, String> {
    let s = text.trim();
    if s.is_empty() || s == "none" {
        return Ok(None);
    }
    let bad =
        || format!("\"{text}\" is not a time range (write \"22:00-07:00\", or \"\" for none)");
    let (start, end) = s.split_once('-').ok_or_else(bad)?;
    let minutes = |t: &str| -> Result<u32, String> {
        let (h, m) = t.trim().split_once(':').ok_or_else(bad)?;
        let h: u32 = h.parse().map_err(|_| bad())?;
        let m: u32 = m.parse().map_err(|_| bad())?;
        if h > 23 || m > 59 {
            return Err(bad());
        }
        Ok(h * 60 + m)
    };
    Ok(Some((minutes(start)?, minutes(end)?)))
}

fn parse_cron(text: &str) -> Result<croner::Cron, String> {
    croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Optional)
        .build()
        .parse(text.trim())
        .map_err(|e| {
            format!(
                "\"{text}\" is not a cron expression ({e}); write five fields such as \"0 7 * * *\""
            )
        })
}

impl RawConfig {
    /// Checks every value and builds the typed [`Config`], or lists every problem.
    fn validate(self, path: &Path) -> Result<Config, Vec<String>> {
        let mut problems = Vec::new();
        let mut check = |key: &str, result: Result<(), String>| {
            if let Err(message) = result {
                problems.push(format!("{key}: {message}"));
            }
        };
        let base_dir = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));

        // [database]
        let db_url = self.database.url.trim().to_string();
        check(
            "database.url",
            if db_url.starts_with("sqlite:")
                || db_url.starts_with("postgres://")
                || db_url.starts_with("postgresql://")
            {
                Ok(())
            } else {
                Err(format!(
                    "\"{db_url}\" is not a database URL (use sqlite://var/herald.db or postgres://user@host/db)"
                ))
            },
        );

        // [http]
        let listen = self.http.listen.trim().parse::<std::net::SocketAddr>();
        check(
            "http.listen",
            listen.as_ref().map(|_| ()).map_err(|_| {
                format!(
                    "\"{}\" is not an address to listen on (write host:port, e.g. \"127.0.0.1:8080\")",
                    self.http.listen
                )
            }),
        );
        let public_url = url::Url::parse(self.http.public_url.trim());
        check(
            "http.public_url",
            match &public_url {
                Ok(u) if matches!(u.scheme(), "http" | "https") && u.has_host() => Ok(()),
                _ => Err(format!(
                    "\"{}\" is not an http(s) URL (write the address readers use, e.g. \"https://news.example.org\")",
                    self.http.public_url
                )),
            },
        );

        // [mail]
        let from = self.mail.from.trim().parse::<Mailbox>();
        check(
            "mail.from",
            from.as_ref().map(|_| ()).map_err(|_| {
                format!(
                    "\"{}\" is not a sender address (write \"Site Name <news@example.org>\")",
                    self.mail.from
                )
            }),
        );
        check(
            "mail.postal_address",
            if self.mail.postal_address.trim().is_empty() {
                Err("is empty; bulk mail must carry the sender's postal address".into())
            } else {
                Ok(())
            },
        );
        let transport = match self.mail.transport.trim() {
            "smtp" => Ok(TransportKind::Smtp),
            "file" => Ok(TransportKind::File),
            other => Err(format!(
                "\"{other}\" is not a transport (use \"smtp\" or \"file\")"
            )),
        };
        check(
            "mail.transport",
            transport.as_ref().map(|_| ()).map_err(Clone::clone),
        );

        // [smtp]
        let tls = match self.smtp.tls.trim() {
            "none" => Ok(TlsMode::None),
            "starttls" => Ok(TlsMode::Starttls),
            "tls" => Ok(TlsMode::Tls),
            other => Err(format!(
                "\"{other}\" is not a TLS mode (use none, starttls or tls)"
            )),
        };
        check("smtp.tls", tls.as_ref().map(|_| ()).map_err(Clone::clone));
        let ca_certificates = match self.smtp.ca_file.trim() {
            "" => None,
            file => match read_certificates(Path::new(file)) {
                Ok(pem) => Some(pem),
                Err(message) => {
                    check("smtp.ca_file", Err(message));
                    None
                }
            },
        };
        check(
            "smtp.host",
            if self.smtp.host.trim().is_empty() {
                Err("is empty".into())
            } else {
                Ok(())
            },
        );
        check(
            "smtp.connections",
            if (1..=256).contains(&self.smtp.connections) {
                Ok(())
            } else {
                Err(format!(
                    "{} is out of range (1 to 256)",
                    self.smtp.connections
                ))
            },
        );
        check(
            "smtp.rate_per_second",
            if self.smtp.rate_per_second >= 0.0 && self.smtp.rate_per_second.is_finite() {
                Ok(())
            } else {
                Err("must be 0 (unlimited) or a positive number".into())
            },
        );
        let mut duration = |key: &str, text: &str| -> Duration {
            match parse_duration(text) {
                Ok(d) => d,
                Err(message) => {
                    check(key, Err(message));
                    Duration::ZERO
                }
            }
        };
        let smtp_timeout = duration("smtp.timeout", &self.smtp.timeout);
        let max_lateness = duration("schedule.max_lateness", &self.schedule.max_lateness);
        let tick = duration("schedule.tick", &self.schedule.tick);
        let alert_max_age = duration("alerts.max_age", &self.alerts.max_age);
        let ingest_interval = duration("ingest.interval", &self.ingest.interval);
        let ingest_timeout = duration("ingest.timeout", &self.ingest.timeout);
        let ingest_connect_timeout =
            duration("ingest.connect_timeout", &self.ingest.connect_timeout);
        let ingest_max_backoff = duration("ingest.max_backoff", &self.ingest.max_backoff);
        let lease = duration("deliver.lease", &self.deliver.lease);
        let drain_timeout = duration("deliver.drain_timeout", &self.deliver.drain_timeout);
        let expiry_alert = duration("deliver.expiry_alert", &self.deliver.expiry_alert);
        let expiry_daily = duration("deliver.expiry_daily", &self.deliver.expiry_daily);
        let expiry_weekly = duration("deliver.expiry_weekly", &self.deliver.expiry_weekly);
        let expiry_confirmation = duration(
            "deliver.expiry_confirmation",
            &self.deliver.expiry_confirmation,
        );
        let header_timeout = duration("http.header_timeout", &self.http.header_timeout);
        let idle_timeout = duration("http.idle_timeout", &self.http.idle_timeout);
        let body_timeout = duration("http.body_timeout", &self.http.body_timeout);
        let request_timeout = duration("http.request_timeout", &self.http.request_timeout);
        let retry_base = duration("deliver.retry_base", &self.deliver.retry_base);
        let retry_max = duration("deliver.retry_max", &self.deliver.retry_max);
        let ip_window = duration("signup.ip_window", &self.signup.ip_window);
        let address_window = duration("signup.address_window", &self.signup.address_window);
        let confirm_link_lifetime = duration(
            "signup.confirm_link_lifetime",
            &self.signup.confirm_link_lifetime,
        );
        for (domain, limits) in &self.smtp.domains {
            check(
                &format!("smtp.domains.\"{domain}\".rate_per_second"),
                if limits.rate_per_second > 0.0 && limits.rate_per_second.is_finite() {
                    Ok(())
                } else {
                    Err("must be a positive number of messages per second".into())
                },
            );
        }
        let dkim_fields = [&self.dkim.domain, &self.dkim.selector, &self.dkim.key_file];
        let dkim_set = dkim_fields.iter().filter(|f| !f.trim().is_empty()).count();
        let dkim = if dkim_set == 0 {
            None
        } else if dkim_set < 3 {
            check(
                "dkim",
                Err("set all of domain, selector and key_file, or none of them".into()),
            );
            None
        } else {
            let domain = self.dkim.domain.trim().to_ascii_lowercase();
            if let Ok(from) = &from {
                let from_domain = from.email.domain().to_ascii_lowercase();
                // Relaxed alignment (DMARC): the From domain is the DKIM domain or under it.
                if from_domain != domain && !from_domain.ends_with(&format!(".{domain}")) {
                    check(
                        "dkim.domain",
                        Err(format!(
                            "\"{domain}\" does not align with the From domain \"{from_domain}\"; receivers would ignore the signature"
                        )),
                    );
                }
            }
            let key_file = PathBuf::from(self.dkim.key_file.trim());
            if !key_file.is_file() {
                check(
                    "dkim.key_file",
                    Err(format!("{} is not a readable file", key_file.display())),
                );
            }
            Some(DkimSettings {
                domain,
                selector: self.dkim.selector.trim().to_string(),
                key_file,
            })
        };
        for (key, value) in [
            ("http.header_timeout", header_timeout),
            ("http.idle_timeout", idle_timeout),
            ("http.body_timeout", body_timeout),
            ("http.request_timeout", request_timeout),
        ] {
            if value < Duration::from_millis(100) {
                check(key, Err("must be at least 100ms".into()));
            }
        }
        for (key, value) in [
            ("signup.ip_window", ip_window),
            ("signup.address_window", address_window),
            ("signup.confirm_link_lifetime", confirm_link_lifetime),
        ] {
            if value < Duration::from_secs(1) {
                check(key, Err("must be at least 1s".into()));
            }
        }
        for (key, value) in [
            ("signup.ip_limit", self.signup.ip_limit),
            ("signup.address_limit", self.signup.address_limit),
            ("signup.emails_per_day", self.signup.emails_per_day),
        ] {
            if value == 0 {
                check(
                    key,
                    Err("must be at least 1 (0 would refuse every sign-up)".into()),
                );
            }
        }
        check(
            "signup.consent_text",
            if self.signup.consent_text.trim().is_empty() {
                Err("is empty; readers must see what they agree to".into())
            } else {
                Ok(())
            },
        );
        check(
            "signup.consent_version",
            if self.signup.consent_version.trim().is_empty() {
                Err("is empty; each consent record names the text's version".into())
            } else {
                Ok(())
            },
        );
        let mut trusted_proxies = Vec::new();
        for (j, proxy) in self.http.trusted_proxies.iter().enumerate() {
            match proxy.trim().parse::<std::net::IpAddr>() {
                Ok(ip) => trusted_proxies.push(ip),
                Err(_) => check(
                    &format!("http.trusted_proxies[{j}]"),
                    Err(format!(
                        "\"{proxy}\" is not an IP address (write the proxy's address, e.g. \"127.0.0.1\")"
                    )),
                ),
            }
        }

        // [schedule], [alerts]
        let daily = parse_cron(&self.schedule.daily);
        check(
            "schedule.daily",
            daily.as_ref().map(|_| ()).map_err(Clone::clone),
        );
        let weekly = parse_cron(&self.schedule.weekly);
        check(
            "schedule.weekly",
            weekly.as_ref().map(|_| ()).map_err(Clone::clone),
        );
        let quiet_hours = parse_quiet_hours(&self.alerts.quiet_hours);
        check(
            "alerts.quiet_hours",
            quiet_hours.as_ref().map(|_| ()).map_err(Clone::clone),
        );
        check(
            "deliver.batch_size",
            if (1..=10_000).contains(&self.deliver.batch_size) {
                Ok(())
            } else {
                Err(format!(
                    "{} is out of range (1 to 10000)",
                    self.deliver.batch_size
                ))
            },
        );

        // [[regions]]
        let mut regions = Vec::new();
        let mut seen = BTreeSet::new();
        for (i, raw) in self.regions.iter().enumerate() {
            let key = |field: &str| format!("regions[{i}].{field}");
            let slug = raw.slug.parse::<RegionSlug>();
            if let Err(message) = &slug {
                check(&key("slug"), Err(message.clone()));
            }
            if let Ok(slug) = &slug
                && !seen.insert(slug.clone())
            {
                check(&key("slug"), Err(format!("\"{slug}\" is defined twice")));
            }
            if raw.name.trim().is_empty() {
                check(&key("name"), Err("is empty".into()));
            }
            let timezone = if raw.timezone.trim().is_empty() {
                Ok("UTC".parse::<Timezone>().expect("UTC is a zone"))
            } else {
                raw.timezone.parse::<Timezone>()
            };
            if let Err(message) = &timezone {
                check(&key("timezone"), Err(message.clone()));
            }
            let mut sources = Vec::new();
            let mut intervals = Vec::new();
            for (j, feed) in raw.feeds.iter().enumerate() {
                match parse_feed_source(feed.url(), &base_dir) {
                    Ok(source) => sources.push(source),
                    Err(message) => check(&format!("regions[{i}].feeds[{j}]"), Err(message)),
                }
                intervals.push(match feed.interval() {
                    Some(text) => match parse_duration(text) {
                        Ok(d) if d >= Duration::from_secs(1) => d,
                        Ok(_) => {
                            check(
                                &format!("regions[{i}].feeds[{j}].interval"),
                                Err("must be at least 1s".into()),
                            );
                            Duration::ZERO
                        }
                        Err(message) => {
                            check(&format!("regions[{i}].feeds[{j}].interval"), Err(message));
                            Duration::ZERO
                        }
                    },
                    None => ingest_interval,
                });
            }
            let parent = if raw.parent.trim().is_empty() {
                None
            } else {
                match raw.parent.parse::<RegionSlug>() {
                    Ok(p) => Some(p),
                    Err(message) => {
                        check(&key("parent"), Err(message));
                        None
                    }
                }
            };
            if let (Ok(slug), Ok(timezone)) = (slug, timezone) {
                regions.push(Region {
                    slug,
                    name: raw.name.trim().to_string(),
                    parent,
                    timezone,
                    feeds: raw.feeds.iter().map(|f| f.url().to_string()).collect(),
                    sources,
                    intervals,
                });
            }
        }
        for (i, region) in regions.iter().enumerate() {
            if let Some(parent) = &region.parent
                && !seen.contains(parent)
            {
                check(
                    &format!("regions[{i}].parent"),
                    Err(format!(
                        "unknown region \"{parent}\" (define it in another [[regions]] entry)"
                    )),
                );
            }
        }
        check(
            "ingest.interval",
            if ingest_interval >= Duration::from_secs(1) {
                Ok(())
            } else {
                Err("must be at least 1s".into())
            },
        );
        check(
            "ingest.max_redirects",
            if self.ingest.max_redirects <= 20 {
                Ok(())
            } else {
                Err(format!(
                    "{} is out of range (0 to 20)",
                    self.ingest.max_redirects
                ))
            },
        );
        let mut trusted_hosts = Vec::new();
        for (j, host) in self.ingest.trusted_hosts.iter().enumerate() {
            match host.parse::<TrustedHost>() {
                Ok(host) => trusted_hosts.push(host),
                Err(message) => check(&format!("ingest.trusted_hosts[{j}]"), Err(message)),
            }
        }
        if self.regions.is_empty() {
            check(
                "regions",
                Err("no [[regions]] are defined; add at least one".into()),
            );
        }

        if !problems.is_empty() {
            return Err(problems);
        }
        let from = from.expect("checked above");
        let list_name = if self.mail.list_name.trim().is_empty() {
            from.name.clone().unwrap_or_else(|| "herald".into())
        } else {
            self.mail.list_name.trim().to_string()
        };
        let hello_name = if self.smtp.hello_name.trim().is_empty() {
            from.email.domain().to_string()
        } else {
            self.smtp.hello_name.trim().to_string()
        };
        let non_empty = |s: &str| {
            let s = s.trim();
            (!s.is_empty()).then(|| s.to_string())
        };
        Ok(Config {
            path: path.to_path_buf(),
            database: DatabaseConfig {
                url: db_url,
                max_connections: self.database.max_connections.max(1),
            },
            http: HttpConfig {
                listen: listen.expect("checked above"),
                public_url: public_url.expect("checked above"),
                trusted_proxies,
                max_connections: (self.http.max_connections > 0)
                    .then_some(self.http.max_connections as usize),
                header_timeout,
                idle_timeout,
                body_timeout,
                request_timeout,
            },
            mail: MailConfig {
                from,
                postal_address: self.mail.postal_address.trim().to_string(),
                transport: transport.expect("checked above"),
                outbox_dir: PathBuf::from(self.mail.outbox_dir.trim()),
                list_name,
                templates_dir: PathBuf::from(self.mail.templates_dir.trim()),
            },
            smtp: SmtpConfig {
                host: self.smtp.host.trim().to_string(),
                port: self.smtp.port,
                tls: tls.expect("checked above"),
                username: non_empty(&self.smtp.username),
                password: non_empty(&self.smtp.password),
                connections: self.smtp.connections as usize,
                rate_per_second: self.smtp.rate_per_second,
                timeout: smtp_timeout,
                hello_name,
                ca_certificates,
                domain_rates: self
                    .smtp
                    .domains
                    .iter()
                    .map(|(d, l)| (d.trim().to_ascii_lowercase(), l.rate_per_second))
                    .collect(),
            },
            schedule: ScheduleConfig {
                daily: daily.expect("checked above"),
                weekly: weekly.expect("checked above"),
                max_lateness,
                tick: tick.max(Duration::from_millis(100)),
            },
            alerts: AlertsConfig {
                categories: self
                    .alerts
                    .categories
                    .iter()
                    .map(|c| c.trim().to_lowercase())
                    .filter(|c| !c.is_empty())
                    .collect(),
                quiet_hours: quiet_hours.expect("checked above"),
                max_age: alert_max_age,
            },
            ingest: IngestConfig {
                interval: ingest_interval,
                timeout: ingest_timeout,
                connect_timeout: ingest_connect_timeout,
                max_body_bytes: self.ingest.max_body_bytes,
                max_items: self.ingest.max_items.max(1) as usize,
                concurrency: self.ingest.concurrency.max(1) as usize,
                max_redirects: self.ingest.max_redirects as usize,
                max_backoff: ingest_max_backoff,
                allow_private: self.ingest.allow_private,
                trusted_hosts,
            },
            deliver: DeliverConfig {
                batch_size: self.deliver.batch_size as usize,
                lease,
                drain_timeout,
                expiry_alert,
                expiry_daily,
                expiry_weekly,
                expiry_confirmation,
                retry_base,
                retry_max: retry_max.max(retry_base),
            },
            security: SecurityConfig {
                secret: non_empty(&self.security.secret),
                secret_file: PathBuf::from(self.security.secret_file.trim()),
            },
            dkim,
            signup: SignupConfig {
                consent_text: self.signup.consent_text.trim().to_string(),
                consent_version: self.signup.consent_version.trim().to_string(),
                ip_limit: self.signup.ip_limit,
                ip_window,
                address_limit: self.signup.address_limit,
                address_window,
                emails_per_day: self.signup.emails_per_day,
                confirm_link_lifetime,
                search_threshold: self.signup.search_threshold as usize,
            },
            regions,
        })
    }
}

/// Accepts `file://relative/or/absolute/path` (relative to the config file's folder)
/// and `http(s)://…` URLs.
fn parse_feed_source(text: &str, base_dir: &Path) -> Result<FeedSource, String> {
    let s = text.trim();
    if let Some(path) = s.strip_prefix("file://") {
        if path.is_empty() {
            return Err(format!("\"{text}\" names no file"));
        }
        let path = PathBuf::from(path);
        let path = if path.is_absolute() {
            path
        } else {
            base_dir.join(path)
        };
        return Ok(FeedSource::File(path));
    }
    match url::Url::parse(s) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.has_host() => {
            Ok(FeedSource::Http(url))
        }
        _ => Err(format!(
            "\"{text}\" is not a feed URL (use http://, https:// or file://)"
        )),
    }
}

impl Config {
    /// The region with this slug, if configured.
    pub fn region(&self, slug: &RegionSlug) -> Option<&Region> {
        self.regions.iter().find(|r| &r.slug == slug)
    }

    /// Parses a slug typed by a user and checks it is configured.
    pub fn known_region(&self, text: &str) -> Result<&Region, String> {
        let slug: RegionSlug = text.parse()?;
        self.region(&slug).ok_or_else(|| {
            let known: Vec<&str> = self.regions.iter().map(|r| r.slug.as_str()).collect();
            format!(
                "unknown region \"{slug}\" (configured regions: {})",
                known.join(", ")
            )
        })
    }

    /// How long an email of this kind and cadence stays worth sending.
    pub fn expiry(
        &self,
        kind: crate::domain::DeliveryKind,
        cadence: Option<crate::domain::Cadence>,
    ) -> Duration {
        use crate::domain::{Cadence, DeliveryKind};
        match (kind, cadence) {
            (DeliveryKind::Confirmation | DeliveryKind::Welcome, _) => {
                self.deliver.expiry_confirmation
            }
            (DeliveryKind::Alert, _) | (_, Some(Cadence::Alert)) => self.deliver.expiry_alert,
            (DeliveryKind::Digest, Some(Cadence::Weekly)) => self.deliver.expiry_weekly,
            (DeliveryKind::Digest, _) => self.deliver.expiry_daily,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
        [mail]
        from = "Demo News <news@demo.example>"
        postal_address = "1 Main St, Riverton"
        [[regions]]
        slug = "state"
        name = "Across the State"
        timezone = "America/Los_Angeles"
        feeds = ["file://feeds/state.xml", "https://example.org/feed"]
        [[regions]]
        slug = "town"
        name = "Town"
        parent = "state"
    "#;

    fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::from_toml(
            Path::new("config/herald.toml"),
            text,
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    fn problems(text: &str, env: &[(&str, &str)]) -> String {
        load(text, env).unwrap_err().to_string()
    }

    #[test]
    fn a_good_file_loads_with_defaults_filled_in() {
        let config = load(GOOD, &[]).unwrap();
        assert_eq!(config.database.url, "sqlite://var/herald.db");
        assert_eq!(config.mail.transport, TransportKind::File);
        assert_eq!(config.mail.sending_domain(), "demo.example");
        assert_eq!(config.schedule.max_lateness, Duration::from_secs(6 * 3600));
        assert_eq!(
            config.regions[0].sources[0],
            FeedSource::File(PathBuf::from("config/feeds/state.xml"))
        );
        assert_eq!(config.regions[1].parent.as_ref().unwrap().as_str(), "state");
    }

    #[test]
    fn env_overrides_are_typed_like_the_key() {
        let config = load(
            GOOD,
            &[
                ("HERALD__SMTP__PORT", "2525"),
                ("HERALD__SMTP__PASSWORD", "123456"),
                ("HERALD__MAIL__TRANSPORT", "smtp"),
            ],
        )
        .unwrap();
        assert_eq!(config.smtp.port, 2525);
        assert_eq!(config.smtp.password.as_deref(), Some("123456"));
        assert_eq!(config.mail.transport, TransportKind::Smtp);
        let err = problems(GOOD, &[("HERALD__SMTP__PORT", "twenty")]);
        assert!(err.contains("HERALD__SMTP__PORT"), "{err}");
    }

    #[test]
    fn each_bad_value_names_its_key() {
        let cases = [
            (
                "timezone = \"America/Los_Angeles\"",
                "timezone = \"Mars/Base\"",
                "regions[0].timezone",
            ),
            (
                "postal_address = \"1 Main St, Riverton\"",
                "postal_address = \"  \"",
                "mail.postal_address",
            ),
            (
                "parent = \"state\"",
                "parent = \"nowhere\"",
                "regions[1].parent",
            ),
            (
                "\"https://example.org/feed\"",
                "\"ftp://example.org/feed\"",
                "regions[0].feeds[1]",
            ),
        ];
        for (from, to, key) in cases {
            let text = GOOD.replace(from, to);
            assert_ne!(text, GOOD, "replacement {from} did not apply");
            let err = problems(&text, &[]);
            assert!(err.contains(key), "expected {key} in: {err}");
        }
        let err = problems(GOOD, &[("HERALD__SCHEDULE__DAILY", "0 25 * * *")]);
        assert!(err.contains("schedule.daily"), "{err}");
        let err = problems(GOOD, &[("HERALD__HTTP__PUBLIC_URL", "not a url")]);
        assert!(err.contains("http.public_url"), "{err}");
        let err = problems(GOOD, &[("HERALD__SCHEDULE__MAX_LATENESS", "soon")]);
        assert!(err.contains("schedule.max_lateness"), "{err}");
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let err = problems(&format!("{GOOD}\n[smtp]\nhots = \"x\"\n"), &[]);
        assert!(err.contains("hots"), "{err}");
    }

    #[test]
    fn feeds_may_name_their_own_interval_and_ingest_keys_are_checked() {
        let text = GOOD.replace(
            "\"https://example.org/feed\"",
            "{ url = \"https://example.org/feed\", interval = \"5m\" }",
        );
        let config = load(&text, &[]).unwrap();
        assert_eq!(config.regions[0].feeds[1], "https://example.org/feed");
        assert_eq!(
            config.regions[0].intervals,
            vec![Duration::from_secs(900), Duration::from_secs(300)]
        );
        assert!(!config.ingest.allow_private);
        let config = load(
            GOOD,
            &[
                ("HERALD__INGEST__ALLOW_PRIVATE", "true"),
                ("HERALD__INGEST__TRUSTED_HOSTS", "CMS.internal, 10.0.0.5"),
            ],
        )
        .unwrap();
        assert!(config.ingest.allow_private);
        let trusted: Vec<String> = config
            .ingest
            .trusted_hosts
            .iter()
            .map(|t| t.to_string())
            .collect();
        assert_eq!(trusted, vec!["cms.internal", "10.0.0.5"]);

        let bad = GOOD.replace(
            "\"https://example.org/feed\"",
            "{ url = \"https://example.org/feed\", interval = \"often\" }",
        );
        let err = problems(&bad, &[]);
        assert!(err.contains("regions[0].feeds[1].interval"), "{err}");
        let err = problems(GOOD, &[("HERALD__INGEST__TRUSTED_HOSTS", "a b/c")]);
        assert!(err.contains("ingest.trusted_hosts[0]"), "{err}");
        let err = problems(GOOD, &[("HERALD__INGEST__CONNECT_TIMEOUT", "soon")]);
        assert!(err.contains("ingest.connect_timeout"), "{err}");
    }

    #[test]
    fn durations_read_like_people_write_them() {
        assert_eq!(parse_duration("6h").unwrap(), Duration::from_secs(21_600));
        assert_eq!(parse_duration("30m").unwrap(), Duration::from_secs(1_800));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5_400));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert!(parse_duration("6 hours").is_err());
        assert!(parse_duration("").is_err());
    }
}

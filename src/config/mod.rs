//! Configuration: one typed struct, loaded and checked in one place.
//!
//! Layers, later wins: the built-in defaults (each section file's `DEFAULTS`), the
//! TOML file (`--config`, `HERALD_CONFIG`, default `config/herald.toml`), then
//! `HERALD__SECTION__KEY` environment variables; figment merges them. Each section's
//! file owns its shape as written, its defaults, its checks and its typed result.
//! Every value is checked at start-up, and every problem is reported at once, each
//! with the key it came from.

mod alerts;
mod bounces;
mod database;
mod deliver;
mod digest;
mod dkim;
mod duration;
mod env;
mod http;
mod ingest;
mod log;
mod mail;
mod regions;
mod schedule;
mod secret;
mod security;
mod setting;
mod signup;
mod smtp;

use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Format, Toml};
use serde::Deserialize;
use serde::de::IgnoredAny;

pub use alerts::AlertsConfig;
pub use bounces::{BounceAddress, BouncesConfig};
pub use database::DatabaseConfig;
pub use deliver::{DeliverConfig, Expiry};
pub use digest::DigestConfig;
pub use dkim::DkimSettings;
pub use duration::parse_duration;
pub use http::HttpConfig;
pub use ingest::IngestConfig;
pub use log::{LogConfig, LogFormat};
pub use mail::{MailConfig, TransportKind};
pub use regions::{FeedSource, Region, Regions, StoryOrder};
pub use schedule::ScheduleConfig;
pub use secret::Secret;
pub use security::SecurityConfig;
pub use signup::SignupConfig;
pub use smtp::{SmtpConfig, TlsMode};

use env::Overrides;
use setting::{Problems, Setting};

/// The config file used when neither `--config` nor `HERALD_CONFIG` is given.
pub const DEFAULT_PATH: &str = "config/herald.toml";

/// What relative paths in the configuration (the database file, the outbox, the
/// templates, key and secret files) are read against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathBase {
    /// The config file's folder: a file named with `--config` or `HERALD_CONFIG`, so
    /// that `herald --config /etc/herald/herald.toml daemon` works from any directory.
    ConfigFolder,
    /// The working directory: [`DEFAULT_PATH`], used when no file is named, as when
    /// running from a source checkout.
    WorkingDirectory,
}

/// `path` read against `base`; an absolute path, or an empty base, leaves it as it is.
fn resolve(base: &Path, path: &str) -> PathBuf {
    let path = Path::new(path);
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        base.join(path)
    }
}

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
    /// The file is not valid TOML.
    #[error("config file {path} is not valid: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The parser's message, which says where.
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

/// The checked configuration. Each stage is handed only the sections it reads.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from; relative `file://` feeds resolve against its folder.
    pub path: PathBuf,
    /// The folder other relative paths were read against (empty: the working
    /// directory).
    pub base_dir: PathBuf,
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
    /// What a digest carries.
    pub digest: DigestConfig,
    /// Token signing.
    pub security: SecurityConfig,
    /// DKIM signing, when configured.
    pub dkim: Option<DkimSettings>,
    /// The web sign-up: consent text, abuse limits, the region picker.
    pub signup: SignupConfig,
    /// How log lines are written.
    pub log: LogConfig,
    /// Bounces, complaints and unsubscribes that come back later: VERP, the bounce
    /// mailbox, the soft-bounce limit, the relays' webhooks.
    pub bounces: BouncesConfig,
    /// The regions readers can follow, in the file's order.
    pub regions: Regions,
}

/// The sections a file may have; only their names are read here, to refuse any other.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
// serde's derive lists the names; the values are read per section.
#[allow(dead_code)]
struct Sections {
    database: IgnoredAny,
    http: IgnoredAny,
    mail: IgnoredAny,
    smtp: IgnoredAny,
    schedule: IgnoredAny,
    alerts: IgnoredAny,
    ingest: IgnoredAny,
    deliver: IgnoredAny,
    digest: IgnoredAny,
    security: IgnoredAny,
    dkim: IgnoredAny,
    signup: IgnoredAny,
    log: IgnoredAny,
    bounces: IgnoredAny,
    #[serde(default)]
    regions: IgnoredAny,
}

/// Every section's built-in values, the bottom layer.
const DEFAULTS: [&str; 14] = [
    database::DEFAULTS,
    http::DEFAULTS,
    mail::DEFAULTS,
    smtp::DEFAULTS,
    schedule::DEFAULTS,
    alerts::DEFAULTS,
    ingest::DEFAULTS,
    deliver::DEFAULTS,
    digest::DEFAULTS,
    security::DEFAULTS,
    dkim::DEFAULTS,
    signup::DEFAULTS,
    log::DEFAULTS,
    bounces::DEFAULTS,
];

impl Config {
    /// Loads from `path`, applying `HERALD__…` variables from the process environment;
    /// relative paths are read against `base`.
    pub fn load(path: &Path, base: PathBase) -> Result<Config, ConfigError> {
        Config::load_with_env(path, base, std::env::vars())
    }

    /// Loads from `path` with the given environment (tests pass their own).
    pub fn load_with_env(
        path: &Path,
        base: PathBase,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(path, base, &text, env)
    }

    /// Parses `text` as if it were the file at `path`, named by the user (relative
    /// paths are read against its folder).
    pub fn from_toml(
        path: &Path,
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        Config::parse(path, PathBase::ConfigFolder, text, env)
    }

    fn parse(
        path: &Path,
        base: PathBase,
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let env = Overrides::new(env);
        let layers = DEFAULTS
            .iter()
            .fold(Figment::new(), |layers, defaults| {
                layers.merge(Toml::string(defaults))
            })
            .merge(Toml::string(text))
            .merge(&env);
        let root = layers.find_value("").map_err(|e| ConfigError::Syntax {
            path: path.to_path_buf(),
            message: e.kind.to_string(),
        })?;
        let mut p = Problems::new(&env);
        let config_dir = path.parent().unwrap_or(Path::new("")).to_path_buf();
        let base_dir = match base {
            PathBase::ConfigFolder => config_dir,
            PathBase::WorkingDirectory => PathBuf::new(),
        };
        let config = Config::check(path, &base_dir, root, &mut p);
        match config {
            Some(config) if p.is_empty() => Ok(config),
            _ => Err(ConfigError::Invalid {
                path: path.to_path_buf(),
                problems: p.into_list(),
            }),
        }
    }

    /// Reads and checks every section of the merged layers, recording each problem.
    fn check(
        path: &Path,
        base_dir: &Path,
        root: figment::value::Value,
        p: &mut Problems,
    ) -> Option<Config> {
        p.table::<Sections>("", root.clone());
        let database = p.section::<database::File>(&root, "database");
        let http = p.section::<http::File>(&root, "http");
        let mail = p.section::<mail::File>(&root, "mail");
        let smtp = p.section::<smtp::File>(&root, "smtp");
        let schedule = p.section::<schedule::File>(&root, "schedule");
        let alerts = p.section::<alerts::File>(&root, "alerts");
        let ingest = p.section::<ingest::File>(&root, "ingest");
        let deliver = p.section::<deliver::File>(&root, "deliver");
        let digest = p.section::<digest::File>(&root, "digest");
        let security = p.section::<security::File>(&root, "security");
        let dkim = p.section::<dkim::File>(&root, "dkim");
        let signup = p.section::<signup::File>(&root, "signup");
        let log = p.section::<log::File>(&root, "log");
        let bounces = p.section::<bounces::File>(&root, "bounces");
        let regions = match root.find_ref("regions") {
            Some(value) => p.value::<Vec<Setting<regions::Entry>>>("regions", value.clone()),
            None => Some(Vec::new()),
        };

        let database = database.and_then(|s| s.check(p, base_dir));
        let http = http.and_then(|s| s.check(p));
        let mail = mail.and_then(|s| s.check(p, base_dir));
        let sending_domain = mail.as_ref().map(MailConfig::sending_domain);
        let smtp = smtp.and_then(|s| s.check(p, sending_domain, base_dir));
        let schedule = schedule.and_then(|s| s.check(p));
        let alerts = alerts.and_then(|s| s.check(p));
        let ingest = ingest.and_then(|s| s.check(p));
        let deliver = deliver.and_then(|s| s.check(p));
        let digest = digest.and_then(|s| s.check(p));
        let security = security.and_then(|s| s.check(p, base_dir));
        let dkim = dkim.and_then(|s| s.check(p, mail.as_ref().map(|m| &m.from), base_dir));
        let signup = signup.and_then(|s| s.check(p));
        let log = log.and_then(|s| s.check(p));
        let bounces = bounces.and_then(|s| s.check(p, base_dir));
        // Feeds named `file://relative` have always been read against the config
        // file's folder, with or without --config (the demo feeds sit beside it).
        let feeds_dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let default_interval = ingest.as_ref().map(|i| i.interval);
        let regions =
            regions.and_then(|entries| regions::check(entries, p, &feeds_dir, default_interval));
        Some(Config {
            path: path.to_path_buf(),
            base_dir: base_dir.to_path_buf(),
            database: database?,
            http: http?,
            mail: mail?,
            smtp: smtp?,
            schedule: schedule?,
            alerts: alerts?,
            ingest: ingest?,
            deliver: deliver?,
            digest: digest?,
            security: security?,
            dkim: dkim?,
            signup: signup?,
            log: log?,
            bounces: bounces?,
            regions: regions?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

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
        // A named file's relative paths are read against its folder.
        assert_eq!(config.database.url, "sqlite://config/var/herald.db");
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
        assert_eq!(
            config.smtp.password.as_ref().map(Secret::expose),
            Some("123456")
        );
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
    fn a_worker_timeout_must_outlast_its_heartbeats() {
        let config = load(GOOD, &[]).unwrap();
        assert_eq!(config.deliver.worker_timeout, Duration::from_secs(30));
        assert_eq!(config.deliver.heartbeat_every(), Duration::from_secs(5));
        let config = load(GOOD, &[("HERALD__DELIVER__WORKER_TIMEOUT", "3s")]).unwrap();
        assert_eq!(config.deliver.heartbeat_every(), Duration::from_secs(1));
        let err = problems(GOOD, &[("HERALD__DELIVER__WORKER_TIMEOUT", "2s")]);
        assert!(err.contains("deliver.worker_timeout"), "{err}");
        assert!(err.contains("at least \"3s\""), "{err}");
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
    fn every_problem_is_reported_at_once_with_its_key() {
        let text = GOOD.replace(
            "[mail]",
            "[smtp]\nport = 70000\nhots = \"x\"\ntls = \"maybe\"\ntimeout = 30\n[smpt]\nx = 1\n[mail]\ntransport = \"pigeon\"",
        )
        .replace("timezone = \"America/Los_Angeles\"", "timezone = \"Mars/Base\"")
        .replace("parent = \"state\"", "parent = \"nowhere\"");
        let err = load(
            &text,
            &[
                ("HERALD__INGEST__MAX_ITEMS", "lots"),
                ("HERALD__DATABASE__URL", "mysql://x"),
            ],
        )
        .unwrap_err();
        let ConfigError::Invalid { problems, .. } = &err else {
            panic!("expected a list of problems: {err}");
        };
        let keys = [
            "smpt: unknown section",
            "smtp.hots: unknown key",
            "smtp.port: 70000 is not a whole number",
            "smtp.tls: \"maybe\" is not one of none, starttls, tls",
            "smtp.timeout: 30 is not text",
            "mail.transport: \"pigeon\"",
            "regions[0].timezone: unknown time zone \"Mars/Base\"",
            "regions[1].parent: unknown region \"nowhere\"",
            "ingest.max_items: \"lots\" is not a whole number",
            "database.url: \"mysql://x\" is not a database URL",
        ];
        for key in keys {
            assert!(
                problems.iter().any(|p| p.starts_with(key)),
                "no problem starting {key:?} in {problems:#?}"
            );
        }
        assert_eq!(problems.len(), keys.len(), "{problems:#?}");
        let from_env: Vec<_> = problems
            .iter()
            .filter(|p| p.contains("(from HERALD__"))
            .collect();
        assert_eq!(from_env.len(), 2, "{problems:#?}");
    }

    #[test]
    fn env_values_are_read_as_the_key_wants_them() {
        let config = load(
            GOOD,
            &[
                ("HERALD__SMTP__PASSWORD", "007"),
                ("HERALD__SECURITY__SECRET", "[not a list]"),
                ("HERALD__SIGNUP__CONSENT_VERSION", "2"),
                ("HERALD__SMTP__RATE_PER_SECOND", "2.5"),
                ("HERALD__ALERTS__CATEGORIES", "Breaking, Urgent"),
                ("HERALD__HTTP__TRUSTED_PROXIES", "127.0.0.1"),
                ("HERALD__HTTP__MAX_CONNECTIONS", " 100 "),
                ("HERALD__DKIM__DOMAIN", ""),
            ],
        )
        .unwrap();
        assert_eq!(config.smtp.password.unwrap().expose(), "007");
        assert_eq!(config.security.secret.unwrap().expose(), "[not a list]");
        assert_eq!(config.signup.consent_version, "2");
        assert_eq!(config.smtp.rate_per_second, 2.5);
        assert_eq!(config.alerts.categories, vec!["breaking", "urgent"]);
        assert_eq!(config.http.trusted_proxies.len(), 1);
        assert_eq!(config.http.max_connections, Some(100));
        let err = problems(GOOD, &[("HERALD__SMTP__HOTS", "x")]);
        assert!(
            err.contains("smtp.hots") && err.contains("HERALD__SMTP__HOTS"),
            "{err}"
        );
        let err = problems(GOOD, &[("HERALD__INGEST__ALLOW_PRIVATE", "1")]);
        assert!(err.contains("ingest.allow_private"), "{err}");
        assert_eq!(load(GOOD, &[]).unwrap().log.format, LogFormat::Text);
        let config = load(GOOD, &[("HERALD__LOG__FORMAT", "json")]).unwrap();
        assert_eq!(config.log.format, LogFormat::Json);
        let err = problems(GOOD, &[("HERALD__LOG__FORMAT", "xml")]);
        assert!(err.contains("log.format"), "{err}");
    }

    #[test]
    fn a_debug_print_never_shows_the_password_or_the_secret() {
        let config = load(
            GOOD,
            &[
                ("HERALD__SMTP__USERNAME", "mailer"),
                ("HERALD__SMTP__PASSWORD", "hunter2-password"),
                ("HERALD__SECURITY__SECRET", "link-signing-secret"),
            ],
        )
        .unwrap();
        let printed = format!("{config:?} {config:#?}");
        assert!(printed.contains("mailer"), "{printed}");
        assert!(!printed.contains("hunter2-password"), "{printed}");
        assert!(!printed.contains("link-signing-secret"), "{printed}");
        assert!(printed.contains("***"));
    }

    #[test]
    fn relative_paths_in_a_named_file_are_read_against_its_folder() {
        let text = format!(
            "[database]\nurl = \"sqlite://state/herald.db\"\n[security]\nsecret_file = \"keys/secret.key\"\n{}",
            GOOD.replace(
                "[mail]",
                "[mail]\ntemplates_dir = \"look\"\noutbox_dir = \"/srv/outbox\"",
            )
        );
        let path = Path::new("/etc/herald/herald.toml");
        let config = Config::from_toml(path, &text, std::iter::empty()).unwrap();
        assert_eq!(config.database.url, "sqlite:///etc/herald/state/herald.db");
        assert_eq!(
            config.security.secret_file,
            PathBuf::from("/etc/herald/keys/secret.key")
        );
        assert_eq!(
            config.mail.templates_dir,
            Some(PathBuf::from("/etc/herald/look"))
        );
        assert_eq!(config.mail.outbox_dir, PathBuf::from("/srv/outbox"));
        assert_eq!(
            config.regions[0].sources[0],
            FeedSource::File(PathBuf::from("/etc/herald/feeds/state.xml"))
        );
        let config = Config::from_toml(path, GOOD, std::iter::empty()).unwrap();
        assert_eq!(config.mail.templates_dir, None, "built in unless named");
        assert_eq!(
            config.mail.outbox_dir,
            PathBuf::from("/etc/herald/var/outbox")
        );
    }

    #[test]
    fn the_shipped_file_loads_and_broken_toml_says_where() {
        let config = Config::load_with_env(
            Path::new(DEFAULT_PATH),
            PathBase::WorkingDirectory,
            std::iter::empty(),
        )
        .unwrap();
        assert_eq!(config.database.url, "sqlite://var/herald.db");
        assert_eq!(config.mail.outbox_dir, PathBuf::from("var/outbox"));
        assert_eq!(config.regions.len(), 3);
        assert_eq!(config.smtp.port, 25);
        let err = problems("[mail\nfrom = 1", &[]);
        assert!(
            err.contains("is not valid") && err.contains("line 1"),
            "{err}"
        );
    }
}

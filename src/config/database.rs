//! `[database]`: where herald keeps its data.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use super::setting::{FromText, Problems, Setting, Text};

/// Built-in values: the first layer, under the file and the environment.
pub(super) const DEFAULTS: &str = r#"
[database]
url = "sqlite://var/herald.db"
max_connections = 8
connect_timeout = "30s"
statement_timeout = "10m"
"#;

/// `[database]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct File {
    url: Setting<Text<DatabaseUrl>>,
    max_connections: Setting<u32>,
    connect_timeout: Setting<Text<Duration>>,
    statement_timeout: Setting<Text<Duration>>,
}

/// `[database]`.
#[derive(Debug, Clone)]
pub struct DatabaseConfig {
    /// `sqlite://…` or `postgres://…`.
    pub url: String,
    /// Pool size: at most this many connections at once.
    pub max_connections: u32,
    /// How long to wait for a connection: opening one (the server down or restarting),
    /// or a free one from a busy pool. What ran out is an error for that pass, retried.
    pub connect_timeout: Duration,
    /// PostgreSQL only: the server cancels a statement that runs longer (set on each
    /// connection as it opens); zero for no limit.
    pub statement_timeout: Duration,
}

/// A URL naming one of the databases herald speaks.
struct DatabaseUrl(String);

impl FromText for DatabaseUrl {
    fn from_text(text: &str) -> Result<Self, String> {
        let url = text.trim();
        if url.starts_with("sqlite:")
            || url.starts_with("postgres://")
            || url.starts_with("postgresql://")
        {
            Ok(DatabaseUrl(url.to_string()))
        } else {
            Err(format!(
                "\"{url}\" is not a database URL (use sqlite://var/herald.db or postgres://user@host/db)"
            ))
        }
    }
}

impl File {
    /// The typed section, or `None` with each problem recorded.
    pub(super) fn check(self, p: &mut Problems, base: &Path) -> Option<DatabaseConfig> {
        let url = p.text("database.url", self.url);
        let max_connections = p.take("database.max_connections", self.max_connections);
        let connect_timeout = p
            .text("database.connect_timeout", self.connect_timeout)
            .and_then(|timeout| {
                p.check(
                    "database.connect_timeout",
                    if timeout >= Duration::from_secs(1) {
                        Ok(timeout)
                    } else {
                        Err(format!("{timeout:?} is too short; write at least \"1s\""))
                    },
                )
            });
        let statement_timeout = p.text("database.statement_timeout", self.statement_timeout);
        Some(DatabaseConfig {
            url: sqlite_relative_to(base, &url?.0),
            max_connections: max_connections?.max(1),
            connect_timeout: connect_timeout?,
            statement_timeout: statement_timeout?,
        })
    }
}

/// A SQLite URL whose file is a relative path, made relative to `base` instead (the
/// config file's folder); any other URL as it is. `sqlite://state/herald.db` in
/// `/etc/herald/herald.toml` is `/etc/herald/state/herald.db`.
fn sqlite_relative_to(base: &Path, url: &str) -> String {
    let Some(rest) = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
    else {
        return url.to_string();
    };
    let (file, query) = match rest.split_once('?') {
        Some((file, query)) => (file, Some(query)),
        None => (rest, None),
    };
    if file.is_empty() || file == ":memory:" || Path::new(file).is_absolute() {
        return url.to_string();
    }
    let path = super::resolve(base, file);
    match query {
        Some(query) => format!("sqlite://{}?{query}", path.display()),
        None => format!("sqlite://{}", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_relative_sqlite_file_is_read_against_the_base() {
        let base = Path::new("/etc/herald");
        assert_eq!(
            sqlite_relative_to(base, "sqlite://state/herald.db"),
            "sqlite:///etc/herald/state/herald.db"
        );
        assert_eq!(
            sqlite_relative_to(base, "sqlite:state/herald.db?mode=rwc"),
            "sqlite:///etc/herald/state/herald.db?mode=rwc"
        );
        for same in [
            "sqlite:///var/lib/herald/herald.db",
            "sqlite::memory:",
            "postgres://herald@db/herald",
        ] {
            assert_eq!(sqlite_relative_to(base, same), same);
        }
        assert_eq!(
            sqlite_relative_to(Path::new(""), "sqlite://var/herald.db"),
            "sqlite://var/herald.db"
        );
    }
}

//! `[database]`: where herald keeps its data.

use serde::Deserialize;

use super::setting::{FromText, Problems, Setting, Text};

/// Built-in values: the first layer, under the file and the environment.
pub(super) const DEFAULTS: &str = r#"
[database]
url = "sqlite://var/herald.db"
max_connections = 8
"#;

/// `[database]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct File {
    url: Setting<Text<DatabaseUrl>>,
    max_connections: Setting<u32>,
}

/// `[database]`.
#[derive(Debug, Clone)]
pub struct DatabaseConfig {
    /// `sqlite://…` or `postgres://…`.
    pub url: String,
    /// Pool size.
    pub max_connections: u32,
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
    pub(super) fn check(self, p: &mut Problems) -> Option<DatabaseConfig> {
        let url = p.text("database.url", self.url);
        let max_connections = p.take("database.max_connections", self.max_connections);
        Some(DatabaseConfig {
            url: url?.0,
            max_connections: max_connections?.max(1),
        })
    }
}

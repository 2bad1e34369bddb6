//! `[security]`: the key that signs the links in emails.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::secret::Secret;
use super::setting::{Problems, Setting};

/// Built-in values: the first layer, under the file and the environment.
pub(super) const DEFAULTS: &str = r#"
[security]
secret = ""
secret_file = "var/secret.key"
"#;

/// `[security]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct File {
    secret: Setting<Secret>,
    secret_file: Setting<String>,
}

/// `[security]`.
#[derive(Debug, Clone)]
pub struct SecurityConfig {
    /// The HMAC key, if given in config or env.
    pub secret: Option<Secret>,
    /// Where a generated key is kept when `secret` is empty.
    pub secret_file: PathBuf,
}

impl File {
    /// The typed section, or `None` with each problem recorded.
    pub(super) fn check(self, p: &mut Problems, base: &Path) -> Option<SecurityConfig> {
        let secret = p.take("security.secret", self.secret);
        let secret_file = p.take("security.secret_file", self.secret_file);
        Some(SecurityConfig {
            secret: secret?.non_empty(),
            secret_file: super::resolve(base, secret_file?.trim()),
        })
    }
}

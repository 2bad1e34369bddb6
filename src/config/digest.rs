//! `[digest]`: what a digest carries.

use serde::Deserialize;

use super::setting::{Problems, Setting};

/// Built-in values: the first layer, under the file and the environment.
pub(super) const DEFAULTS: &str = r#"
[digest]
max_stories = 12
"#;

/// `[digest]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct File {
    max_stories: Setting<u32>,
}

/// `[digest]`.
#[derive(Debug, Clone)]
pub struct DigestConfig {
    /// The most stories one digest lists; the rest are counted under "and N more
    /// stories" and stay unsent, so a later digest can carry them.
    pub max_stories: u32,
}

impl File {
    /// The typed section, or `None` with each problem recorded.
    pub(super) fn check(self, p: &mut Problems) -> Option<DigestConfig> {
        let max_stories = p
            .take("digest.max_stories", self.max_stories)
            .and_then(|n| {
                p.check(
                    "digest.max_stories",
                    if (1..=500).contains(&n) {
                        Ok(n)
                    } else {
                        Err(format!("is {n}; a digest lists between 1 and 500 stories"))
                    },
                )
            });
        Some(DigestConfig {
            max_stories: max_stories?,
        })
    }
}

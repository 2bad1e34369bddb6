//! `[alerts]`: which articles are breaking news, and when alerts may go out.

use std::time::Duration;

use serde::Deserialize;

use super::setting::{FromText, Problems, Setting, Text};

/// Built-in values: the first layer, under the file and the environment.
pub(super) const DEFAULTS: &str = r#"
[alerts]
categories = ["breaking"]
quiet_hours = "22:00-07:00"
max_age = "6h"
"#;

/// `[alerts]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct File {
    categories: Setting<Vec<String>>,
    quiet_hours: Setting<Text<QuietHours>>,
    max_age: Setting<Text<Duration>>,
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

/// `22:00-07:00` as minutes after midnight; empty or `none` for no quiet hours.
struct QuietHours(Option<(u32, u32)>);

impl FromText for QuietHours {
    fn from_text(text: &str) -> Result<Self, String> {
        let s = text.trim();
        if s.is_empty() || s == "none" {
            return Ok(QuietHours(None));
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
        Ok(QuietHours(Some((minutes(start)?, minutes(end)?))))
    }
}

impl File {
    /// The typed section, or `None` with each problem recorded.
    pub(super) fn check(self, p: &mut Problems) -> Option<AlertsConfig> {
        let categories = p.take("alerts.categories", self.categories);
        let quiet_hours = p.text("alerts.quiet_hours", self.quiet_hours);
        let max_age = p.text("alerts.max_age", self.max_age);
        Some(AlertsConfig {
            categories: categories?
                .iter()
                .map(|c| c.trim().to_lowercase())
                .filter(|c| !c.is_empty())
                .collect(),
            quiet_hours: quiet_hours?.0,
            max_age: max_age?,
        })
    }
}

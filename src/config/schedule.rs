//! `[schedule]`: when digests go out, in each reader's own time zone.

use std::time::Duration;

use serde::Deserialize;

use super::setting::{FromText, Problems, Setting, Text};

/// Built-in values: the first layer, under the file and the environment.
pub(super) const DEFAULTS: &str = r#"
[schedule]
daily = "0 7 * * *"
weekly = "0 7 * * 1"
max_lateness = "6h"
tick = "15s"
"#;

/// `[schedule]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct File {
    daily: Setting<Text<croner::Cron>>,
    weekly: Setting<Text<croner::Cron>>,
    max_lateness: Setting<Text<Duration>>,
    tick: Setting<Text<Duration>>,
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

impl FromText for croner::Cron {
    fn from_text(text: &str) -> Result<Self, String> {
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
}

impl File {
    /// The typed section, or `None` with each problem recorded.
    pub(super) fn check(self, p: &mut Problems) -> Option<ScheduleConfig> {
        let daily = p.text("schedule.daily", self.daily);
        let weekly = p.text("schedule.weekly", self.weekly);
        let max_lateness = p.text("schedule.max_lateness", self.max_lateness);
        let tick = p.text("schedule.tick", self.tick);
        Some(ScheduleConfig {
            daily: daily?,
            weekly: weekly?,
            max_lateness: max_lateness?,
            // A shorter tick would only spin the planner.
            tick: tick?.max(Duration::from_millis(100)),
        })
    }
}

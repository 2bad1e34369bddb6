//! `[[regions]]`: the regions readers can follow, each with its feeds.

use std::collections::BTreeSet;
use std::fmt;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::duration::{at_least, parse_duration};
use super::setting::{FromText, Problems, Setting, Text};
use crate::domain::{RegionSlug, Timezone};

/// One `[[regions]]` entry as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Entry {
    slug: Setting<Text<RegionSlug>>,
    name: Setting<String>,
    #[serde(default)]
    parent: Setting<String>,
    #[serde(default)]
    timezone: Setting<String>,
    #[serde(default)]
    feeds: Setting<Vec<Setting<Feed>>>,
    #[serde(default)]
    url: Setting<String>,
    #[serde(default)]
    order: Setting<String>,
}

/// How a region's stories are ordered in a digest, after the breaking ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StoryOrder {
    /// Newest publication time first (the default).
    #[default]
    Newest,
    /// The order the feed lists them (a later poll's stories first).
    Feed,
}

impl StoryOrder {
    /// The name stored in `regions.story_order`.
    pub fn as_str(self) -> &'static str {
        match self {
            StoryOrder::Newest => "newest",
            StoryOrder::Feed => "feed",
        }
    }
}

/// A feed is written as its URL, or as a table when it needs its own polling interval.
#[derive(Deserialize)]
#[serde(
    untagged,
    expecting = "is neither a feed URL nor a table such as { url = \"https://…\", interval = \"5m\" }"
)]
enum Feed {
    Url(String),
    Table(FeedTable),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FeedTable {
    url: String,
    #[serde(default)]
    interval: String,
}

impl Feed {
    fn url(&self) -> &str {
        match self {
            Feed::Url(url) | Feed::Table(FeedTable { url, .. }) => url,
        }
    }

    fn interval(&self) -> Option<&str> {
        match self {
            Feed::Table(FeedTable { interval, .. }) if !interval.trim().is_empty() => {
                Some(interval)
            }
            _ => None,
        }
    }
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
    /// The region's page, where "and N more stories" leads (else the feed's site link).
    pub url: Option<url::Url>,
    /// How its stories are ordered in a digest.
    pub order: StoryOrder,
}

/// The configured regions, in the file's order; read them as a slice.
#[derive(Debug, Clone)]
pub struct Regions(Vec<Region>);

impl Deref for Regions {
    type Target = [Region];

    fn deref(&self) -> &[Region] {
        &self.0
    }
}

impl Regions {
    /// The region with this slug, if configured.
    pub fn get(&self, slug: &RegionSlug) -> Option<&Region> {
        self.0.iter().find(|r| &r.slug == slug)
    }

    /// Parses a slug typed by a user and checks it is configured.
    pub fn known(&self, text: &str) -> Result<&Region, String> {
        let slug: RegionSlug = text.parse()?;
        self.get(&slug).ok_or_else(|| {
            let known: Vec<&str> = self.0.iter().map(|r| r.slug.as_str()).collect();
            format!(
                "unknown region \"{slug}\" (configured regions: {})",
                known.join(", ")
            )
        })
    }
}

impl FromText for RegionSlug {
    fn from_text(text: &str) -> Result<Self, String> {
        text.parse()
    }
}

/// Checks every entry: relative `file://` feeds resolve against `base_dir` (the config
/// file's folder), and feeds without an interval of their own get `default_interval`
/// (`ingest.interval`, when that could be read).
pub(super) fn check(
    entries: Vec<Setting<Entry>>,
    p: &mut Problems,
    base_dir: &Path,
    default_interval: Option<Duration>,
) -> Option<Regions> {
    if entries.is_empty() {
        p.push("regions", "no [[regions]] are defined; add at least one");
        return None;
    }
    let mut regions = Vec::new();
    let mut all_read = true;
    let mut seen = BTreeSet::new();
    for (i, entry) in entries.into_iter().enumerate() {
        let region = p
            .take(&format!("regions[{i}]"), entry)
            .and_then(|entry| entry.check(i, p, base_dir, default_interval, &mut seen));
        match region {
            Some(region) => regions.push((i, region)),
            None => all_read = false,
        }
    }
    for (i, region) in &regions {
        if let Some(parent) = &region.parent
            && !seen.contains(parent)
        {
            p.push(
                &format!("regions[{i}].parent"),
                format!("unknown region \"{parent}\" (define it in another [[regions]] entry)"),
            );
            all_read = false;
        }
    }
    all_read.then(|| Regions(regions.into_iter().map(|(_, region)| region).collect()))
}

impl Entry {
    /// Region `i`, or `None` with each problem recorded; `seen` collects the slugs so
    /// far, to refuse a second region of the same name.
    fn check(
        self,
        i: usize,
        p: &mut Problems,
        base_dir: &Path,
        default_interval: Option<Duration>,
        seen: &mut BTreeSet<RegionSlug>,
    ) -> Option<Region> {
        let key = |field: &str| format!("regions[{i}].{field}");
        let slug = p.text(&key("slug"), self.slug).and_then(|slug| {
            let fresh = seen.insert(slug.clone());
            p.check(
                &key("slug"),
                if fresh {
                    Ok(slug)
                } else {
                    Err(format!("\"{slug}\" is defined twice"))
                },
            )
        });
        let name = p.take(&key("name"), self.name).and_then(|name| {
            let name = name.trim().to_string();
            p.check(
                &key("name"),
                if name.is_empty() {
                    Err("is empty".into())
                } else {
                    Ok(name)
                },
            )
        });
        let timezone = p.take(&key("timezone"), self.timezone).and_then(|zone| {
            let zone = match zone.trim() {
                "" => "UTC",
                zone => zone,
            };
            p.check(&key("timezone"), zone.parse::<Timezone>())
        });
        let parent = p
            .take(&key("parent"), self.parent)
            .and_then(|parent| match parent.trim() {
                "" => Some(None),
                parent => p
                    .check(&key("parent"), parent.parse::<RegionSlug>())
                    .map(Some),
            });
        let feeds = p.take(&key("feeds"), self.feeds).and_then(|feeds| {
            let mut all_read = true;
            let mut read = Vec::new();
            for (j, feed) in feeds.into_iter().enumerate() {
                let feed_key = format!("regions[{i}].feeds[{j}]");
                let Some(feed) = p.take(&feed_key, feed) else {
                    all_read = false;
                    continue;
                };
                let source = p.check(&feed_key, parse_feed_source(feed.url(), base_dir));
                let interval = match feed.interval() {
                    Some(text) => p.check(
                        &format!("{feed_key}.interval"),
                        parse_duration(text).and_then(|d| at_least(d, "1s")),
                    ),
                    None => default_interval,
                };
                match (source, interval) {
                    (Some(source), Some(interval)) => {
                        read.push((feed.url().to_string(), source, interval))
                    }
                    _ => all_read = false,
                }
            }
            all_read.then_some(read)
        });
        let url = p
            .take(&key("url"), self.url)
            .and_then(|url| match url.trim() {
                "" => Some(None),
                text => p
                    .check(
                        &key("url"),
                        match url::Url::parse(text) {
                            Ok(url)
                                if matches!(url.scheme(), "http" | "https") && url.has_host() =>
                            {
                                Ok(url)
                            }
                            _ => Err(format!("\"{text}\" is not a web address (write https://…)")),
                        },
                    )
                    .map(Some),
            });
        let order = p
            .take(&key("order"), self.order)
            .and_then(|order| match order.trim() {
                "" | "newest" => Some(StoryOrder::Newest),
                "feed" => Some(StoryOrder::Feed),
                other => p.check(
                    &key("order"),
                    Err(format!(
                        "\"{other}\" is not a story order (write \"newest\" or \"feed\")"
                    )),
                ),
            });
        let feeds = feeds?;
        Some(Region {
            url: url?,
            order: order?,
            slug: slug?,
            name: name?,
            parent: parent?,
            timezone: timezone?,
            feeds: feeds.iter().map(|(url, _, _)| url.clone()).collect(),
            sources: feeds.iter().map(|(_, source, _)| source.clone()).collect(),
            intervals: feeds.iter().map(|(_, _, interval)| *interval).collect(),
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

//! Articles as they travel: parsed from a feed on their way into the store, and placed
//! in an email on their way out of it.

use super::{ArticleId, RegionSlug, Timestamp};

/// One parsed feed entry, ready to store.
#[derive(Debug, Clone, PartialEq)]
pub struct FeedItem {
    /// The feed's own id for the item (GUID, Atom id, JSON Feed id).
    pub guid: String,
    /// Absolute http(s) link: the key that joins the same story across feeds.
    pub link: String,
    /// Plain-text title.
    pub title: String,
    /// Plain-text summary, possibly empty.
    pub summary: String,
    /// First category, possibly empty.
    pub category: String,
    /// Publication time, when the feed gave a believable one; otherwise the article is
    /// dated when it is first seen.
    pub published_at: Option<i64>,
    /// Breaking news: alert readers get it at once. Once stored as breaking, an article
    /// stays breaking (its alerts may already be out), whatever later edits say.
    pub breaking: bool,
}

/// One article placed in one email.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryArticle {
    /// Article id.
    pub article_id: ArticleId,
    /// Region it is shown under.
    pub region_slug: RegionSlug,
    /// Region display name.
    pub region_name: String,
    /// Title.
    pub title: String,
    /// Link.
    pub link: String,
    /// Summary.
    pub summary: String,
    /// Category.
    pub category: String,
    /// Publication time.
    pub published_at: Option<Timestamp>,
}

/// The stories of one region a digest's cap left out: counted, linked, not sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MoreStories {
    /// The region.
    pub region_slug: RegionSlug,
    /// Its display name.
    pub region_name: String,
    /// How many of its stories were left out.
    pub stories: u32,
    /// The region's page (`[[regions]] url`, else its feed's site link), if known.
    pub url: Option<String>,
}

//! Sponsor bookings: what an admin books, checked once where it is made (the CLI and
//! the admin API build the same [`NewSponsor`]), and the block a digest carries.

use chrono::NaiveDate;

use super::{RegionSlug, SponsorId};

/// Longest label ("Sponsored by Riverton Hardware"), in characters.
pub const LABEL_CHARS: usize = 100;
/// Longest headline, in characters.
pub const HEADLINE_CHARS: usize = 150;
/// Longest body text, in characters.
pub const BODY_CHARS: usize = 300;
/// Longest image alt text, in characters.
pub const ALT_CHARS: usize = 200;

/// Why a booking cannot be made; each reads as a sentence saying what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SponsorError {
    /// A text field is empty, too long or carries control characters.
    #[error("the {field} {problem}")]
    Text {
        /// Which field.
        field: &'static str,
        /// What is wrong with it.
        problem: String,
    },
    /// A link or image address is not an https URL.
    #[error("the {field} \"{value}\" is not an https:// address")]
    NotHttps {
        /// Which field.
        field: &'static str,
        /// What was given.
        value: String,
    },
    /// A date is not written as YYYY-MM-DD.
    #[error("the date \"{0}\" is not a date (write YYYY-MM-DD, e.g. 2027-01-14)")]
    Date(String),
    /// The range ends before it starts.
    #[error("the booking ends ({to}) before it starts ({from})")]
    Backwards {
        /// First day.
        from: NaiveDate,
        /// Last day.
        to: NaiveDate,
    },
    /// No region, or the image without its alt text (or the other way round).
    #[error("{0}")]
    Missing(&'static str),
}

/// A booking as an admin asked for it, checked: at least one region, a date range in
/// order, plain single-line texts within their lengths, https links.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewSponsor {
    /// The regions whose digests (and those of the regions below them) carry it.
    pub regions: Vec<RegionSlug>,
    /// First day, in each reader's zone.
    pub starts_on: NaiveDate,
    /// Last day (included), in each reader's zone.
    pub ends_on: NaiveDate,
    /// The block's label ("Sponsored by Riverton Hardware").
    pub label: String,
    /// The headline.
    pub headline: String,
    /// Up to 300 characters of text.
    pub body: String,
    /// Where the block leads (https).
    pub link: String,
    /// An optional image (https) and its alt text.
    pub image: Option<(String, String)>,
}

/// The unchecked fields of a booking, as typed on the command line or sent as JSON.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SponsorFields {
    /// Region slugs.
    pub regions: Vec<String>,
    /// First day, YYYY-MM-DD.
    pub from: String,
    /// Last day, YYYY-MM-DD.
    pub to: String,
    /// Label.
    pub label: String,
    /// Headline.
    pub headline: String,
    /// Body text.
    #[serde(default)]
    pub body: String,
    /// Link.
    pub link: String,
    /// Image address.
    #[serde(default)]
    pub image: Option<String>,
    /// Image alt text.
    #[serde(default)]
    pub alt: Option<String>,
}

impl NewSponsor {
    /// Checks every field; the first problem found is the error.
    pub fn parse(fields: SponsorFields) -> Result<NewSponsor, SponsorError> {
        if fields.regions.is_empty() {
            return Err(SponsorError::Missing(
                "a booking needs at least one region (--region SLUG)",
            ));
        }
        let regions = fields
            .regions
            .iter()
            .map(|r| {
                r.parse::<RegionSlug>()
                    .map_err(|problem| SponsorError::Text {
                        field: "region",
                        problem,
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let date = |text: &str| {
            NaiveDate::parse_from_str(text.trim(), "%Y-%m-%d")
                .map_err(|_| SponsorError::Date(text.to_string()))
        };
        let (starts_on, ends_on) = (date(&fields.from)?, date(&fields.to)?);
        if ends_on < starts_on {
            return Err(SponsorError::Backwards {
                from: starts_on,
                to: ends_on,
            });
        }
        let image = match (fields.image.as_deref(), fields.alt.as_deref()) {
            (None | Some(""), None | Some("")) => None,
            (Some(image), Some(alt)) if !image.is_empty() && !alt.trim().is_empty() => Some((
                https("image", image)?,
                text("alt text", alt, ALT_CHARS, true)?,
            )),
            (Some(image), _) if !image.is_empty() => {
                return Err(SponsorError::Missing(
                    "an image needs its alt text (--alt), for readers who do not see it",
                ));
            }
            _ => {
                return Err(SponsorError::Missing(
                    "alt text was given without an image (--image URL)",
                ));
            }
        };
        Ok(NewSponsor {
            regions,
            starts_on,
            ends_on,
            label: text("label", &fields.label, LABEL_CHARS, true)?,
            headline: text("headline", &fields.headline, HEADLINE_CHARS, true)?,
            body: text("body", &fields.body, BODY_CHARS, false)?,
            link: https("link", &fields.link)?,
            image,
        })
    }
}

/// A single line of plain text of at most `max` characters (trimmed).
fn text(
    field: &'static str,
    value: &str,
    max: usize,
    required: bool,
) -> Result<String, SponsorError> {
    let value = value.trim();
    let problem = |problem: String| SponsorError::Text { field, problem };
    if required && value.is_empty() {
        return Err(problem("is empty".into()));
    }
    let chars = value.chars().count();
    if chars > max {
        return Err(problem(format!(
            "has {chars} characters; at most {max} fit"
        )));
    }
    if value.chars().any(char::is_control) {
        return Err(problem(
            "has a line break or another control character; write it on one line".into(),
        ));
    }
    Ok(value.to_string())
}

/// An absolute https URL with a host, as text.
fn https(field: &'static str, value: &str) -> Result<String, SponsorError> {
    match url::Url::parse(value.trim()) {
        Ok(url) if url.scheme() == "https" && url.has_host() => Ok(url.to_string()),
        _ => Err(SponsorError::NotHttps {
            field,
            value: value.to_string(),
        }),
    }
}

/// The sponsor block one digest carries.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SponsorBlock {
    /// The booking.
    pub id: SponsorId,
    /// Its label.
    pub label: String,
    /// Its headline.
    pub headline: String,
    /// Its body text.
    pub body: String,
    /// Its https link.
    pub link: String,
    /// Its https image and alt text, if any.
    pub image: Option<(String, String)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields() -> SponsorFields {
        SponsorFields {
            regions: vec!["riverton".into()],
            from: "2027-01-14".into(),
            to: "2027-01-20".into(),
            label: "Sponsored by Riverton Hardware".into(),
            headline: "Winter sale".into(),
            body: "Shovels & salt, 20% off.".into(),
            link: "https://hardware.example/sale".into(),
            image: None,
            alt: None,
        }
    }

    #[test]
    fn a_good_booking_parses() {
        let s = NewSponsor::parse(fields()).unwrap();
        assert_eq!(s.regions[0].as_str(), "riverton");
        assert_eq!(s.ends_on.to_string(), "2027-01-20");
    }

    #[test]
    fn each_bad_field_is_a_sentence() {
        let bad = |f: fn(&mut SponsorFields)| {
            let mut fields = fields();
            f(&mut fields);
            NewSponsor::parse(fields).unwrap_err().to_string()
        };
        assert!(bad(|f| f.link = "http://hardware.example".into()).contains("https://"));
        assert!(bad(|f| f.link = "javascript:alert(1)".into()).contains("https://"));
        assert!(bad(|f| f.body = "x".repeat(301)).contains("at most 300"));
        assert!(bad(|f| f.headline = "a\r\nBcc: x".into()).contains("one line"));
        assert!(bad(|f| f.to = "2027-01-01".into()).contains("before it starts"));
        assert!(bad(|f| f.from = "14/01/2027".into()).contains("YYYY-MM-DD"));
        assert!(bad(|f| f.regions.clear()).contains("at least one region"));
        assert!(bad(|f| f.image = Some("https://x.example/a.png".into())).contains("alt text"));
        assert!(bad(|f| f.label = " ".into()).contains("label is empty"));
    }
}

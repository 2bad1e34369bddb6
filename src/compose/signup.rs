//! Sign-up emails: the double opt-in confirmation and the welcome that follows it.
//!
//! They carry links, not articles. The confirmation goes to an address that has not
//! agreed to anything yet, so it has no list headers and says what happens if it is
//! ignored (nothing). The welcome is list mail: it has the unsubscribe headers.

use serde::Serialize;

use super::{ComposeError, Composed, Composer};
use crate::domain::{
    Cadence, DeliveryKind, Email, ReaderRegion, SubscriberId, Timestamp, Timezone,
};
use crate::tokens::Purpose;

/// What the sign-up templates are given. Field names are the template interface;
/// links a kind does not use are empty.
#[derive(Debug, Clone, Serialize)]
pub struct SignupContext {
    /// Site (list) name.
    pub site_name: String,
    /// The email's subject.
    pub subject: String,
    /// The reader's address.
    pub reader_email: String,
    /// What they chose, by region name.
    pub regions: Vec<RegionChoice>,
    /// The reader's zone name (digests arrive on its clock).
    pub timezone: String,
    /// Confirmation only: the link that shows the confirm button.
    pub confirm_url: String,
    /// Confirmation only: for how many days the link works.
    pub confirm_days: i64,
    /// Welcome only: the preferences link.
    pub preferences_url: String,
    /// Welcome only: the unsubscribe link.
    pub unsubscribe_url: String,
    /// The sign-up page.
    pub site_url: String,
    /// Sender's postal address.
    pub postal_address: String,
}

/// One region and how often, as sign-up emails list it.
#[derive(Debug, Clone, Serialize)]
pub struct RegionChoice {
    /// Display name.
    pub name: String,
    /// `alert`, `daily` or `weekly`.
    pub cadence: String,
    /// In words: "Breaking news alerts", "Daily digest", "Weekly digest".
    pub cadence_label: String,
}

/// A sign-up email to compose for one reader.
#[derive(Debug, Clone)]
pub struct SignupRequest<'a> {
    /// Confirmation or welcome.
    pub kind: DeliveryKind,
    /// The reader's id (for signed links).
    pub subscriber_id: SubscriberId,
    /// The reader's address.
    pub email: &'a Email,
    /// What the reader follows.
    pub regions: &'a [ReaderRegion],
    /// The reader's zone.
    pub timezone: Timezone,
    /// Stored Message-ID (32 hex digits), reused on every retry.
    pub message_id: &'a str,
    /// Now (for link expiry).
    pub now: Timestamp,
}

/// How a cadence reads in a sign-up email.
pub fn cadence_label(cadence: Cadence) -> &'static str {
    match cadence {
        Cadence::Alert => "Breaking news alerts",
        Cadence::Daily => "Daily digest",
        Cadence::Weekly => "Weekly digest",
    }
}

impl Composer {
    /// The template context of a sign-up email.
    pub fn signup_context(&self, req: &SignupRequest<'_>) -> SignupContext {
        let welcome = req.kind == DeliveryKind::Welcome;
        let subject = if welcome {
            format!("You are subscribed to {}", self.site_name)
        } else {
            format!("Confirm your subscription to {}", self.site_name)
        };
        let confirm_url = if welcome {
            String::new()
        } else {
            self.link_until(
                "confirm",
                Purpose::Confirm,
                req.subscriber_id,
                req.now.unix() + self.confirm_lifetime_secs,
            )
        };
        SignupContext {
            site_name: self.site_name.clone(),
            subject,
            reader_email: req.email.to_string(),
            regions: req
                .regions
                .iter()
                .map(|r| RegionChoice {
                    name: r.name.clone(),
                    cadence: r.cadence.as_str().to_string(),
                    cadence_label: cadence_label(r.cadence).to_string(),
                })
                .collect(),
            timezone: req.timezone.to_string(),
            confirm_url,
            confirm_days: (self.confirm_lifetime_secs / 86_400).max(1),
            preferences_url: if welcome {
                self.preferences_url(req.subscriber_id, req.now)
            } else {
                String::new()
            },
            unsubscribe_url: if welcome {
                self.unsubscribe_url(req.subscriber_id, req.now)
            } else {
                String::new()
            },
            site_url: self.public_url.to_string(),
            postal_address: self.postal_address.clone(),
        }
    }

    /// Renders the text and HTML parts of a sign-up email.
    pub fn render_signup(
        &self,
        kind: DeliveryKind,
        ctx: &SignupContext,
    ) -> Result<(String, String), ComposeError> {
        let base = if kind == DeliveryKind::Welcome {
            "email/welcome"
        } else {
            "email/confirm"
        };
        Ok((
            self.render(&format!("{base}.txt.j2"), ctx)?,
            self.render(&format!("{base}.html.j2"), ctx)?,
        ))
    }

    /// Builds a confirmation or welcome email for one reader.
    pub fn signup_email(&self, req: &SignupRequest<'_>) -> Result<Composed, ComposeError> {
        let ctx = self.signup_context(req);
        let (text, html) = self.render_signup(req.kind, &ctx)?;
        // Only the welcome email is list mail; a confirmation is sent before the reader
        // has agreed to anything.
        let unsubscribe = (req.kind == DeliveryKind::Welcome)
            .then(|| self.list_unsubscribe(&ctx.unsubscribe_url, req.subscriber_id, req.now));
        self.build(
            req.email,
            ctx.subject.clone(),
            self.message_id(req.message_id),
            unsubscribe,
            text,
            html,
        )
    }
}

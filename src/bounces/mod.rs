//! Bounces, complaints and unsubscribes that come back after a message left herald:
//! the bounce mailbox read over IMAP ([`mailbox`]), its mails turned into
//! [`BounceReport`]s ([`parse`]), and the IMAP client that reads it ([`imap`]).

pub mod imap;
pub mod mailbox;
pub mod parse;

use crate::domain::Timestamp;

/// What a report says happened to a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BounceKind {
    /// A permanent failure (a DSN with a 5.x.x status).
    Hard,
    /// A temporary failure (a DSN with a 4.x.x status, delayed or given up).
    Soft,
    /// The reader reported the message as spam (an ARF `abuse` report).
    Complaint,
    /// The reader asked to stop, by mail to the `List-Unsubscribe` mailto address.
    Unsubscribe,
}

/// Where a report came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BounceSource {
    /// The bounce mailbox, read over IMAP.
    Imap,
    /// Amazon SES, through SNS.
    Ses,
    /// Mailgun's webhook.
    Mailgun,
}

/// One bounce, complaint or unsubscribe, as a source reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BounceReport {
    /// Where it came from.
    pub source: BounceSource,
    /// The bounce mail's Message-ID (unique per source).
    pub source_id: String,
    /// What happened.
    pub kind: BounceKind,
    /// From the envelope recipient of the bounce.
    pub verp_token: Option<String>,
    /// The Message-ID of the message that bounced or was complained about.
    pub original_message_id: Option<String>,
    /// The recipient the report names, if any.
    pub recipient: Option<String>,
    /// The remote server's reason, as reported.
    pub diagnostic: Option<String>,
    /// When herald learnt of it.
    pub at: Timestamp,
}

//! The IMAP client of the bounce mailbox.

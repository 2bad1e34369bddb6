//! The bounce mailbox's poll loop.

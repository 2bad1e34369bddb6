//! herald: regional news alerts and digests.
//!
//! Data flows one way through modules named after the stages: `ingest` (feeds to
//! articles), `plan` (who gets what, into the outbox), `compose` (templates to MIME),
//! `deliver` (outbox to SMTP, every outcome recorded), with `web` for readers,
//! `store` for all SQL, `domain` for the types, `cli` and `daemon` to run it all.

pub mod api_token;
pub mod bounces;
pub mod cli;
pub mod clock;
pub mod compose;
pub mod config;
pub mod daemon;
pub mod deliver;
pub mod descriptors;
pub mod domain;
pub mod ingest;
pub mod metrics;
pub mod plan;
pub mod sends;
pub mod shutdown;
pub mod startup;
pub mod store;
pub mod supervise;
pub mod templates;
pub mod tokens;
pub mod web;

/// Installs ring as the one rustls crypto provider (idempotent).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

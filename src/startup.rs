//! Building herald from its configuration, the same for `herald daemon` and every
//! command: the store (opened, migrated, regions synced), the link signer, the composer
//! (templates loaded and checked), and the sections each stage reads.

use std::sync::Arc;

use anyhow::Context as _;

use crate::compose::Composer;
use crate::config::{Config, Secret};
use crate::plan::PlanConfig;
use crate::store::{PoolSettings, Store, SuppressionKey};
use crate::tokens::Signer;
use crate::web::WebConfig;

/// Opens the database, applies migrations and syncs regions: every command starts here.
pub async fn open_store(config: &Config) -> anyhow::Result<Store> {
    let suppression = SuppressionKey::new(&signer(config)?.derive_key("suppression"));
    let settings = PoolSettings {
        max_connections: config.database.max_connections,
        connect_timeout: config.database.connect_timeout,
        statement_timeout: config.database.statement_timeout,
    };
    let store = Store::connect_with(&config.database.url, settings, suppression)
        .await?
        .with_max_stories(config.digest.max_stories);
    store.migrate().await?;
    store.sync_regions(&config.regions).await?;
    Ok(store)
}

/// The sections planning reads.
pub fn plan_config(config: &Config) -> PlanConfig {
    PlanConfig {
        schedule: config.schedule.clone(),
        alerts: config.alerts.clone(),
        expiry: config.deliver.expiry.clone(),
    }
}

/// The sections the web front reads.
pub fn web_config(config: &Config) -> WebConfig {
    WebConfig {
        http: config.http.clone(),
        signup: config.signup.clone(),
        regions: config.regions.clone(),
        alerts: config.alerts.clone(),
        allow_private_links: config.ingest.allow_private,
        expiry: config.deliver.expiry.clone(),
        smtp_reply_within: (config.mail.transport == crate::config::TransportKind::Smtp)
            .then(|| crate::web::smtp_reply_within(config.smtp.timeout)),
        bounces: config.bounces.clone(),
    }
}

/// What a recorded bounce report does (`[bounces]`), checking VERP tokens with the
/// site secret.
pub fn bounce_policy(config: &Config) -> anyhow::Result<crate::bounces::BouncePolicy> {
    Ok(crate::bounces::BouncePolicy::new(
        &config.bounces,
        &signer(config)?,
    ))
}

/// The token signer from config, or from the generated key file.
pub fn signer(config: &Config) -> anyhow::Result<Signer> {
    Ok(Signer::from_config(
        config.security.secret.as_ref().map(Secret::expose),
        &config.security.secret_file,
    )?)
}

/// Loads and checks the email templates: the built-in ones, each replaced by its file
/// in `mail.templates_dir` when there is one.
pub fn composer(config: &Config) -> anyhow::Result<Arc<Composer>> {
    let dir = config.mail.templates_dir.as_deref();
    let bounces = crate::bounces::BounceAddresses::new(&config.bounces, &signer(config)?);
    let composer = Composer::new(
        &config.mail,
        &config.http.public_url,
        config.signup.confirm_link_lifetime,
        config.dkim.as_ref(),
        dir,
        signer(config)?,
    )
    .with_context(|| {
        format!(
            "cannot load the email templates ({})",
            templates_origin(dir)
        )
    })?
    .with_bounces(bounces);
    if !composer.one_click() {
        tracing::warn!(
            "http.public_url is {}, not https: emails go out without one-click unsubscribe \
             (RFC 8058 allows it only for https links) and readers' links travel unencrypted; \
             set http.public_url to the https address readers use",
            config.http.public_url
        );
    }
    Ok(Arc::new(composer))
}

/// Where templates come from, in words, for error messages.
pub fn templates_origin(dir: Option<&std::path::Path>) -> String {
    match dir {
        Some(dir) => format!(
            "built in, each replaced by its file under {} when there",
            dir.display()
        ),
        None => "built in".into(),
    }
}

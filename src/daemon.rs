//! `herald daemon`: the same stages as the CLI, in a loop, plus the HTTP server.
//!
//! SIGINT or SIGTERM fires one shutdown signal: ingest stops, the deliverer stops
//! claiming, lets in-flight messages finish within the drain timeout, gives back
//! what it did not send, and the process exits 0.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;

use crate::config::Config;
use crate::deliver::{Deliverer, Transport};
use crate::ingest::{PollOutcome, Which, ingest};
use crate::plan::plan_due;
use crate::shutdown::{Shutdown, Trigger};
use crate::store::Store;
use crate::web::{AppState, router, run_queued_signups};

/// Runs until a signal, then drains and returns.
pub async fn run(config: Config) -> anyhow::Result<ExitCode> {
    let config = Arc::new(config);
    let store = crate::cli::open_store(&config).await?;
    let composer = crate::cli::composer(&config)?;
    let signer = Arc::new(crate::cli::signer(&config)?);
    let transport = Arc::new(Transport::from_config(&config));
    // Pages load before the port opens, so a broken template stops start-up.
    let app = router(
        AppState::new(store.clone(), signer, config.clone()).with_context(|| {
            format!(
                "cannot load the web page templates from {}",
                config.mail.templates_dir.join("web").display()
            )
        })?,
    );
    let listener = tokio::net::TcpListener::bind(config.http.listen)
        .await
        .with_context(|| format!("cannot listen on {} (http.listen)", config.http.listen))?;
    tracing::info!(
        listen = %config.http.listen,
        database = %config.database.url,
        transport = ?config.mail.transport,
        "herald daemon started"
    );

    let (trigger, shutdown) = Shutdown::new();
    tokio::spawn(wait_for_signal(trigger));

    // Sign-ups the form stored that a crash or an error left undone.
    let signups = tokio::spawn(run_queued_signups(
        store.clone(),
        config.clone(),
        shutdown.clone(),
    ));
    let ingest = tokio::spawn(ingest_loop(config.clone(), store.clone(), shutdown.clone()));
    let planner = tokio::spawn(plan_loop(config.clone(), store.clone(), shutdown.clone()));
    let deliverer = Deliverer::new(&config, store.clone(), composer, transport);
    let deliver = tokio::spawn({
        let shutdown = shutdown.clone();
        async move { deliverer.run(shutdown).await }
    });
    let http = tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            // The peer address is the client's IP in consent records and rate limits.
            let app = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { shutdown.triggered().await })
                .await
        }
    });

    shutdown.triggered().await;
    tracing::info!("shutting down: no new claims, draining in-flight messages");
    let delivered = deliver.await.context("the delivery task panicked")?;
    if let Err(error) = delivered {
        tracing::error!(%error, "delivery stopped with an error");
    }
    let _ = ingest.await;
    let _ = signups.await;
    let _ = planner.await;
    if let Ok(Err(error)) = http.await {
        tracing::error!(%error, "HTTP server error");
    }
    store.close().await;
    tracing::info!("herald daemon stopped");
    Ok(ExitCode::SUCCESS)
}

async fn wait_for_signal(trigger: Trigger) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    trigger.fire();
}

/// Plans due slots and alerts every few seconds; unique keys make overlapping passes
/// (or several daemons) harmless.
async fn plan_loop(config: Arc<Config>, store: Store, shutdown: Shutdown) {
    while !shutdown.is_triggered() {
        match plan_due(&config, &store, crate::clock::now_utc(), false).await {
            Ok(report) if report.deliveries() > 0 => {
                tracing::info!(
                    emails = report.deliveries(),
                    slots = report.slots.len(),
                    "planned"
                )
            }
            Ok(_) => {}
            Err(error) => tracing::error!(%error, "planning failed"),
        }
        shutdown.sleep(config.schedule.tick).await;
    }
}

async fn ingest_loop(config: Arc<Config>, store: Store, shutdown: Shutdown) {
    // Each feed has its own interval and backoff; wake often enough to poll the
    // soonest one about on time.
    let tick = config
        .regions
        .iter()
        .flat_map(|r| r.intervals.iter().copied())
        .min()
        .unwrap_or(config.ingest.interval)
        .clamp(Duration::from_secs(1), Duration::from_secs(30));
    while !shutdown.is_triggered() {
        match ingest(&config, &store, None, Which::Due).await {
            Ok(reports) => {
                for report in reports {
                    match report.result {
                        Ok(PollOutcome::Stored(counts)) if counts.new + counts.updated > 0 => {
                            tracing::info!(
                                region = %report.region, feed = %report.feed,
                                new = counts.new, updated = counts.updated, "ingested"
                            )
                        }
                        Ok(_) => {}
                        Err(error) => tracing::warn!(
                            region = %report.region, feed = %report.feed, %error, "feed failed"
                        ),
                    }
                }
            }
            Err(error) => tracing::error!(%error, "ingest failed"),
        }
        shutdown.sleep(tick).await;
    }
}

//! `herald daemon`: the same stages as the CLI, in a loop, plus the HTTP server.
//!
//! Each stage (ingest, plan, deliver, sign-ups, the bounce mailbox when `[bounces]
//! imap_url` is set, HTTP) runs under a supervisor (`supervise`) that
//! restarts it when it fails and stops the process when it keeps failing; `/readyz`
//! reports each stage's last good pass. SIGINT or SIGTERM fires one shutdown signal:
//! ingest stops, the deliverer stops claiming, lets in-flight messages finish within
//! the drain timeout, gives back what it did not send, and the process exits 0.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;

use crate::config::Config;
use crate::deliver::{Deliverer, Transport};
use crate::descriptors;
use crate::ingest::{FeedLease, Ingester};
use crate::sends::ManualSends;
use crate::shutdown::{Shutdown, Trigger};
use crate::supervise::{Health, RestartPolicy, Supervisor};
use crate::web::server::Limits;
use crate::web::{AppState, router, run_queued_signups};

/// Runs until a signal, then drains and returns (exit 1 if a stage kept failing).
pub async fn run(config: Config) -> anyhow::Result<ExitCode> {
    let files = descriptors::raise_open_file_limit().context("cannot read the open-file limit")?;
    let reserve = descriptors::reserve(
        config.database.max_connections,
        config.smtp.connections,
        config.ingest.concurrency,
    );
    let max_connections =
        descriptors::web_connections(config.http.max_connections, files.soft, reserve)
            .map_err(anyhow::Error::msg)?;
    tracing::info!(
        soft_was = files.was,
        soft = files.soft,
        hard = files.hard,
        web_connections = max_connections,
        "open-file limit"
    );

    let store = crate::startup::open_store(&config).await?;
    let composer = crate::startup::composer(&config)?;
    let signer = Arc::new(crate::startup::signer(&config)?);
    let transport = Arc::new(Transport::from_config(&config.mail, &config.smtp));
    let deliverer = Arc::new(Deliverer::new(
        &config.deliver,
        &config.smtp,
        store.clone(),
        composer.clone(),
        transport.clone(),
    ));
    // Feeds are claimed as the deliverer's worker: its heartbeat keeps them, and when it
    // dies the other daemons take its polls over.
    let ingester = Arc::new(
        Ingester::new(
            &config.ingest,
            &config.alerts.categories,
            &config.regions,
            store.clone(),
        )?
        .with_lease(FeedLease {
            owner: deliverer.owner(),
            length: config.deliver.worker_timeout,
        }),
    );
    let health = Health::default();
    // Pages load before the port opens, so a broken template stops start-up.
    let app = router(
        AppState::new(
            store.clone(),
            signer,
            Arc::new(crate::startup::web_config(&config)),
            &config.mail,
        )
        .with_context(|| {
            format!(
                "cannot load the web page templates ({})",
                crate::startup::templates_origin(config.mail.templates_dir.as_deref())
            )
        })?
        .with_health(health.clone())
        .with_sends(ManualSends {
            store: store.clone(),
            composer: composer.clone(),
            transport: transport.clone(),
            regions: config.regions.clone(),
            expiry: config.deliver.expiry.clone(),
        }),
    );
    let listener = Arc::new(
        tokio::net::TcpListener::bind(config.http.listen)
            .await
            .with_context(|| format!("cannot listen on {} (http.listen)", config.http.listen))?,
    );
    let (trigger, shutdown) = Shutdown::new();
    let trigger = Arc::new(trigger);
    let signals = signals().context("cannot install the SIGTERM handler")?;
    tracing::info!(
        listen = %config.http.listen,
        database = %config.database.url,
        transport = ?config.mail.transport,
        "herald daemon started"
    );
    tokio::spawn(wait_for_signal(signals, trigger.clone()));

    let supervisor = Supervisor::new(
        health,
        shutdown.clone(),
        trigger.clone(),
        RestartPolicy::default(),
    );
    let ingest = supervisor.spawn("ingest", ingester.overdue_after(), {
        let shutdown = shutdown.clone();
        move |beat| crate::ingest::run(ingester.clone(), shutdown.clone(), beat)
    });
    let plan = supervisor.spawn("plan", crate::plan::overdue_after(&config.schedule), {
        let planning = Arc::new(crate::startup::plan_config(&config));
        let (store, shutdown) = (store.clone(), shutdown.clone());
        move |beat| crate::plan::run(planning.clone(), store.clone(), shutdown.clone(), beat)
    });
    let deliver = supervisor.spawn("deliver", crate::deliver::overdue_after(&config.smtp), {
        let shutdown = shutdown.clone();
        move |beat| {
            let (deliverer, shutdown) = (deliverer.clone(), shutdown.clone());
            async move { deliverer.run(shutdown, beat).await.map(|_| ()) }
        }
    });
    // Sign-ups the form stored that a crash or an error left undone.
    let signups = supervisor.spawn("signups", crate::web::SIGNUPS_OVERDUE_AFTER, {
        let web = Arc::new(crate::startup::web_config(&config));
        let (store, shutdown) = (store.clone(), shutdown.clone());
        move |beat| run_queued_signups(store.clone(), web.clone(), shutdown.clone(), beat)
    });
    // The bounce mailbox, when `[bounces] imap_url` is set: each report recorded in the
    // store (matched to its delivery row, kept once, the policy applied).
    let bounces = match crate::bounces::mailbox::Mailbox::from_config(&config.bounces) {
        Some(mailbox) => {
            let signer = crate::startup::signer(&config)?;
            let addresses = crate::bounces::BounceAddresses::new(&config.bounces, &signer)
                .context("the bounce mailbox needs bounces.address")?;
            let recorder: Arc<dyn crate::bounces::mailbox::RecordBounce> =
                Arc::new(crate::bounces::StoreRecorder::new(
                    store.clone(),
                    crate::bounces::BouncePolicy::new(&config.bounces, &signer),
                    addresses,
                ));
            let mailbox = Arc::new(mailbox);
            Some(supervisor.spawn("bounces", mailbox.overdue_after(), {
                let shutdown = shutdown.clone();
                move |beat| {
                    crate::bounces::mailbox::run(
                        mailbox.clone(),
                        recorder.clone(),
                        shutdown.clone(),
                        beat,
                    )
                }
            }))
        }
        None => None,
    };
    let limits = Limits {
        max_connections,
        header_timeout: config.http.header_timeout,
        idle_timeout: config.http.idle_timeout,
        drain_timeout: config.http.request_timeout,
    };
    let http = supervisor.spawn("http", std::time::Duration::from_secs(10), {
        let shutdown = shutdown.clone();
        move |beat| {
            crate::web::server::serve(
                listener.clone(),
                app.clone(),
                limits,
                shutdown.clone(),
                beat,
            )
        }
    });

    shutdown.triggered().await;
    tracing::info!("shutting down: no new claims, draining in-flight messages");
    for (stage, task) in [
        ("deliver", deliver),
        ("ingest", ingest),
        ("plan", plan),
        ("signups", signups),
        ("http", http),
    ] {
        if let Err(error) = task.await {
            tracing::error!(stage, %error, "the stage's supervisor failed");
        }
    }
    if let Some(task) = bounces
        && let Err(error) = task.await
    {
        tracing::error!(stage = "bounces", %error, "the stage's supervisor failed");
    }
    store.close().await;
    if supervisor.gave_up() {
        tracing::error!("herald daemon stopped because a stage kept failing");
        return Ok(ExitCode::FAILURE);
    }
    tracing::info!("herald daemon stopped");
    Ok(ExitCode::SUCCESS)
}

/// The signal streams, made at start-up so that a failure (no descriptor left) stops
/// herald with a sentence instead of a panic later.
#[cfg(unix)]
fn signals() -> std::io::Result<tokio::signal::unix::Signal> {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
}

#[cfg(not(unix))]
fn signals() -> std::io::Result<()> {
    Ok(())
}

#[cfg(unix)]
async fn wait_for_signal(mut term: tokio::signal::unix::Signal, trigger: Arc<Trigger>) {
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    trigger.fire();
}

#[cfg(not(unix))]
async fn wait_for_signal(_: (), trigger: Arc<Trigger>) {
    let _ = tokio::signal::ctrl_c().await;
    trigger.fire();
}

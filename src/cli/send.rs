//! `herald send`: a manual send of a region's digest, now. It becomes a send (see
//! `herald sends`), whose id is printed first; then its rows are delivered here, with a
//! progress bar on a terminal and plain lines otherwise.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::config::Config;
use crate::deliver::{DeliverStats, Deliverer, Transport};
use crate::domain::{Cadence, Email, Timestamp};
use crate::plan::manual_digest;
use crate::sends::{ManualSends, Started};
use crate::shutdown::Shutdown;
use crate::store::{ManualSend, NewSend};

/// Options for `herald send`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The region whose digest to send.
    #[arg(long)]
    region: String,
    /// Readers of this cadence get it.
    #[arg(long, default_value = "daily")]
    cadence: Cadence,
    /// Send one test copy to this address only (no reader gets anything).
    #[arg(long)]
    to: Option<String>,
    /// Show who would get how many articles; send nothing.
    #[arg(long)]
    dry_run: bool,
    /// Do not ask for confirmation.
    #[arg(long)]
    yes: bool,
}

/// Who started a send from this shell: `cli:` and the login name (`USER`, `LOGNAME`,
/// or the process's user in `/etc/passwd`, for a shell without them).
pub fn started_by() -> String {
    let uid = std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
        .ok();
    let from_passwd = || {
        let uid = uid?.to_string();
        std::fs::read_to_string("/etc/passwd")
            .ok()?
            .lines()
            .map(|line| line.split(':').collect::<Vec<_>>())
            .find(|fields| fields.get(2) == Some(&uid.as_str()))
            .and_then(|fields| fields.first().map(|name| name.to_string()))
    };
    let user = ["USER", "LOGNAME"]
        .into_iter()
        .find_map(|var| std::env::var(var).ok().filter(|u| !u.is_empty()))
        .or_else(from_passwd)
        .unwrap_or_else(|| format!("uid-{}", uid.unwrap_or(0)));
    format!("cli:{user}")
}

/// Starts the send, then delivers the queue with a progress display.
pub async fn run(config: &Config, args: Args) -> anyhow::Result<ExitCode> {
    let region = config
        .regions
        .known(&args.region)
        .map_err(anyhow::Error::msg)?
        .clone();
    let test_address = args.to.as_deref().map(Email::parse).transpose()?;
    // A broken template must stop the send before anything is queued.
    let composer = crate::startup::composer(config)?;
    let store = crate::startup::open_store(config).await?;
    let transport = Arc::new(Transport::from_config(&config.mail, &config.smtp));
    let sends = ManualSends {
        store: store.clone(),
        composer: composer.clone(),
        transport: transport.clone(),
        regions: config.regions.clone(),
        expiry: config.deliver.expiry.clone(),
    };

    if test_address.is_none() && !args.dry_run && !args.yes {
        let plan = manual_digest(
            &config.deliver.expiry,
            &store,
            &region.slug,
            args.cadence,
            Timestamp::now(),
            true,
            None,
        )
        .await?;
        if plan.deliveries == 0 {
            println!(
                "nothing to send: no confirmed {} reader of {} has unsent articles",
                args.cadence, region.slug
            );
            return Ok(ExitCode::SUCCESS);
        }
        if !std::io::stdin().is_terminal() {
            anyhow::bail!(
                "this would email {} reader(s); add --yes to send, or --dry-run to see who",
                plan.deliveries
            );
        }
        eprint!(
            "Send the {} digest to {} reader(s)? [y/N] ",
            region.name, plan.deliveries
        );
        std::io::stderr().flush().ok();
        let mut answer = String::new();
        std::io::stdin().read_line(&mut answer)?;
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            println!("cancelled; nothing was sent");
            return Ok(ExitCode::SUCCESS);
        }
    }

    let started = sends
        .start(
            NewSend {
                started_by: started_by(),
                region: region.slug.clone(),
                cadence: args.cadence,
                dry_run: args.dry_run,
                test_address,
                idempotency_key: None,
            },
            Timestamp::now(),
        )
        .await?;
    let Started { send, plan, .. } = started;
    println!("send {}", send.id);
    if let Some(to) = &send.test_address {
        let reply = report_field(&send, "reply");
        println!("test digest sent to {to}: {reply}");
        return Ok(ExitCode::SUCCESS);
    }
    if send.dry_run {
        for (email, n) in &plan.recipients {
            println!("{email}  {n} article(s)");
        }
        for (zone, n) in &plan.zones {
            println!("{zone}: {n} reader(s)");
        }
        println!(
            "dry run: {} {} reader(s) of {} would get a digest ({} article placements); nothing was sent",
            plan.deliveries, args.cadence, region.slug, plan.articles
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "queued {} digest(s) for {} ({} articles placed)",
        plan.deliveries, region.slug, plan.articles
    );
    if plan.deliveries == 0 {
        return Ok(ExitCode::SUCCESS);
    }

    let deliverer = Deliverer::new(
        &config.deliver,
        &config.smtp,
        store.clone(),
        composer,
        transport.clone(),
    );
    let (trigger, shutdown) = Shutdown::new();
    let ctrl_c = tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            trigger.fire();
        }
    });
    let mut progress = Progress::new(send.id, plan.deliveries);
    let stats = deliverer
        .run_until_empty(&shutdown, |s| progress.update(s))
        .await?;
    progress.finish();
    ctrl_c.abort();
    transport.close().await;
    // The summary is read back from the ledger; the delivery report below stands even
    // when the database cannot answer that.
    match store.send(send.id).await {
        Ok(Some(send)) => {
            println!("{}", super::sends::summary(&send));
            if !send.state.is_finished() {
                println!(
                    "the rest goes out with the daemon or `herald deliver`; follow it with `herald sends show {}`",
                    send.id
                );
            }
        }
        Ok(None) => {}
        Err(e) => eprintln!(
            "warning: cannot read send {} back ({e}); `herald sends show {}` shows it",
            send.id, send.id
        ),
    }
    store.close().await;
    Ok(super::deliver::report(&stats, config))
}

/// A field of a test copy's report.
fn report_field(send: &ManualSend, field: &str) -> String {
    send.report
        .as_deref()
        .and_then(|r| serde_json::from_str::<serde_json::Value>(r).ok())
        .and_then(|v| v[field].as_str().map(str::to_string))
        .unwrap_or_default()
}

/// How a send's progress is shown: a bar with rate and ETA on a terminal, a plain
/// line at most every few seconds otherwise (a log, a pipe).
struct Progress {
    bar: Option<ProgressBar>,
    id: crate::domain::SendId,
    total: u64,
    last_line: Option<Instant>,
    last_done: u64,
}

impl Progress {
    fn new(id: crate::domain::SendId, total: u64) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template(
                    "sending [{bar:30}] {pos}/{len}  {per_sec}  ETA {eta}  {msg}",
                )
                .expect("a valid progress template")
                .progress_chars("#>-"),
            );
            bar
        });
        Progress {
            bar,
            id,
            total,
            last_line: None,
            last_done: 0,
        }
    }

    fn update(&mut self, stats: &DeliverStats) {
        let done = (stats.sent + stats.bounced + stats.failed + stats.expired + stats.skipped)
            .min(self.total);
        if let Some(bar) = &self.bar {
            bar.set_position(done);
            bar.set_message(format!("{} sent, {} deferred", stats.sent, stats.deferred));
            return;
        }
        let due = self
            .last_line
            .is_none_or(|at| at.elapsed() >= Duration::from_secs(2));
        if done != self.last_done && (due || done == self.total) {
            println!(
                "send {}: {done}/{} ({} sent, {} deferred)",
                self.id, self.total, stats.sent, stats.deferred
            );
            self.last_line = Some(Instant::now());
            self.last_done = done;
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish();
        }
    }
}

//! `herald subscribers`: add, list, remove, import and export readers.

use std::borrow::Cow;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;

use super::format_time;
use crate::config::Config;
use crate::domain::{Cadence, Email, RegionSlug, Timestamp, Timezone};
use crate::store::{AddOutcome, NewSubscriber, Store};

/// Subcommands of `herald subscribers`.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Add a reader (an admin action).
    Add {
        /// The reader's address.
        email: String,
        /// Region(s) to follow; repeat or separate with commas.
        #[arg(long = "region", required = true, value_delimiter = ',')]
        regions: Vec<String>,
        /// Cadence for these regions.
        #[arg(long, default_value = "daily")]
        cadence: Cadence,
        /// IANA time zone (default: the first region's).
        #[arg(long)]
        timezone: Option<String>,
        /// Mark as confirmed (skip double opt-in).
        #[arg(long)]
        confirmed: bool,
    },
    /// One line per reader: address, state, regions with cadences, time zone.
    List,
    /// Erase a reader; a hashed suppression entry stays.
    Remove {
        /// The reader's address.
        email: String,
    },
    /// Import readers from CSV with header `email,regions,cadence,timezone`.
    Import {
        /// The CSV file (`-` for standard input).
        file: PathBuf,
        /// Mark every imported reader as confirmed.
        #[arg(long)]
        confirmed: bool,
    },
    /// Write every reader as CSV to standard output, with their consent record.
    Export,
    /// Erase now the sign-ups never confirmed within `signup.confirm_link_lifetime`
    /// (the daemon does it daily); only their number is kept.
    PurgePending,
}

/// Runs the subcommand.
pub async fn run(config: &Config, command: Command) -> anyhow::Result<ExitCode> {
    let store = crate::startup::open_store(config).await?;
    let code = match command {
        Command::PurgePending => {
            let erased = store
                .purge_pending(config.signup.confirm_link_lifetime, Timestamp::now())
                .await?;
            println!(
                "erased {erased} sign-up(s) never confirmed within {}s of signing up",
                config.signup.confirm_link_lifetime.as_secs()
            );
            ExitCode::SUCCESS
        }
        Command::Add {
            email,
            regions,
            cadence,
            timezone,
            confirmed,
        } => {
            let new = reader(
                config,
                &email,
                &regions,
                cadence,
                timezone.as_deref(),
                confirmed,
            )
            .map_err(anyhow::Error::msg)?;
            match store.add_subscriber(&new, Timestamp::now()).await? {
                AddOutcome::Added => println!(
                    "added {} ({})",
                    new.email,
                    if confirmed {
                        "confirmed"
                    } else {
                        "pending: gets no digests until confirmed"
                    }
                ),
                AddOutcome::AddedRegions(n) => {
                    println!("{} already exists; added {n} region(s)", new.email)
                }
                AddOutcome::Unchanged => println!("{} already exists; nothing changed", new.email),
            }
            ExitCode::SUCCESS
        }
        Command::List => {
            for row in store.list_subscribers().await? {
                let regions: Vec<String> = row
                    .regions
                    .iter()
                    .map(|(r, c)| format!("{r}:{c}"))
                    .collect();
                println!(
                    "{}\t{}\t{}\t{}",
                    row.email,
                    row.state,
                    if regions.is_empty() {
                        "-".into()
                    } else {
                        regions.join(",")
                    },
                    row.timezone
                );
            }
            ExitCode::SUCCESS
        }
        Command::Remove { email } => {
            let email = Email::parse(&email)?;
            if store.remove_subscriber(&email, Timestamp::now()).await? {
                println!("removed {email}; their data is erased and the address is suppressed");
                ExitCode::SUCCESS
            } else {
                eprintln!("error: {email} is not a subscriber");
                ExitCode::FAILURE
            }
        }
        Command::Import { file, confirmed } => import(config, &store, &file, confirmed).await?,
        Command::Export => {
            export(&store).await?;
            ExitCode::SUCCESS
        }
    };
    store.close().await;
    Ok(code)
}

/// Builds a validated reader from user input; the error says which value is wrong.
fn reader(
    config: &Config,
    email: &str,
    regions: &[String],
    cadence: Cadence,
    timezone: Option<&str>,
    confirmed: bool,
) -> Result<NewSubscriber, String> {
    let email = Email::parse(email).map_err(|e| e.to_string())?;
    let mut picked: Vec<(RegionSlug, Cadence)> = Vec::new();
    for entry in regions.iter().flat_map(|r| r.split(';')) {
        let entry = entry.trim();
        if entry.is_empty() {
            continue;
        }
        // `slug:cadence` overrides the cadence for one region (as `export` writes it).
        let (slug, own) = match entry.split_once(':') {
            Some((slug, c)) => (slug, Some(c.parse::<Cadence>()?)),
            None => (entry, None),
        };
        let region = config.regions.known(slug)?;
        picked.push((region.slug.clone(), own.unwrap_or(cadence)));
    }
    let Some((first, _)) = picked.first() else {
        return Err("no region given; use --region SLUG".into());
    };
    let timezone: Timezone = match timezone.map(str::trim).filter(|t| !t.is_empty()) {
        Some(t) => t.parse()?,
        None => config.regions.get(first).expect("known region").timezone,
    };
    Ok(NewSubscriber {
        email,
        regions: picked,
        timezone,
        confirmed,
    })
}

async fn import(
    config: &Config,
    store: &Store,
    file: &PathBuf,
    confirmed: bool,
) -> anyhow::Result<ExitCode> {
    let input: Box<dyn std::io::Read> = if file.as_os_str() == "-" {
        Box::new(std::io::stdin())
    } else {
        Box::new(
            std::fs::File::open(file).with_context(|| format!("cannot open {}", file.display()))?,
        )
    };
    let mut reader_csv = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .flexible(true)
        .from_reader(input);
    let headers = reader_csv
        .headers()
        .context("cannot read the CSV header")?
        .clone();
    let column = |name: &str| headers.iter().position(|h| h.eq_ignore_ascii_case(name));
    let (Some(email_col), Some(regions_col)) = (column("email"), column("regions")) else {
        anyhow::bail!(
            "the CSV header must name at least `email` and `regions` (expected: email,regions,cadence,timezone)"
        );
    };
    let cadence_col = column("cadence");
    let timezone_col = column("timezone");
    let (mut added, mut updated, mut unchanged, mut rejected) = (0, 0, 0, 0);
    let mut pending = Vec::new();
    let mut tally = |outcomes: Vec<AddOutcome>| {
        for outcome in outcomes {
            match outcome {
                AddOutcome::Added => added += 1,
                AddOutcome::AddedRegions(_) => updated += 1,
                AddOutcome::Unchanged => unchanged += 1,
            }
        }
    };
    for (i, record) in reader_csv.records().enumerate() {
        let line = i + 2;
        let record = match record {
            Ok(r) => r,
            Err(e) => {
                eprintln!("line {line}: skipped: {e}");
                rejected += 1;
                continue;
            }
        };
        let get = |col: Option<usize>| {
            from_spreadsheet_safe(col.and_then(|c| record.get(c)).unwrap_or("").trim()).to_string()
        };
        let cadence = match get(cadence_col).as_str() {
            "" => Ok(Cadence::Daily),
            c => c.parse::<Cadence>(),
        };
        let timezone = get(timezone_col);
        let result = cadence.and_then(|cadence| {
            reader(
                config,
                &get(Some(email_col)),
                &[get(Some(regions_col))],
                cadence,
                Some(timezone.as_str()),
                confirmed,
            )
        });
        match result {
            Ok(new) => pending.push(new),
            Err(e) => {
                eprintln!("line {line}: skipped: {e}");
                rejected += 1;
            }
        }
        // Commit in chunks: one forced flush per thousand readers, not per reader.
        if pending.len() >= 1_000 {
            tally(store.add_subscribers(&pending, Timestamp::now()).await?);
            pending.clear();
        }
    }
    tally(store.add_subscribers(&pending, Timestamp::now()).await?);
    println!(
        "imported: {added} added, {updated} updated, {unchanged} unchanged, {rejected} rejected"
    );
    Ok(if rejected > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// First characters that make a spreadsheet read a cell as a formula (OWASP's list).
const FORMULA_STARTS: [char; 6] = ['=', '+', '-', '@', '\t', '\r'];

/// A cell a spreadsheet shows as text: one that would start a formula (after any `'`
/// already there) gets a `'` in front. Addresses and consent records come from
/// anonymous sign-ups, and a formula runs when an admin opens the export.
fn spreadsheet_safe(cell: &str) -> Cow<'_, str> {
    if cell.trim_start_matches('\'').starts_with(FORMULA_STARTS) {
        Cow::Owned(format!("'{cell}"))
    } else {
        Cow::Borrowed(cell)
    }
}

/// Undoes [`spreadsheet_safe`], so an export imports back to the same addresses.
fn from_spreadsheet_safe(cell: &str) -> &str {
    match cell.strip_prefix('\'') {
        Some(rest) if rest.trim_start_matches('\'').starts_with(FORMULA_STARTS) => rest,
        _ => cell,
    }
}

async fn export(store: &Store) -> anyhow::Result<()> {
    let mut out = csv::Writer::from_writer(std::io::stdout());
    out.write_record([
        "email",
        "regions",
        "cadence",
        "timezone",
        "state",
        "created_at",
        "confirmed_at",
        "consent_given_at",
        "consent_ip",
        "consent_user_agent",
        "consent_version",
        "consent_confirmed_at",
        "consent_confirmed_ip",
    ])?;
    // Readers an admin added have no consent record: those columns stay empty.
    let consents = store.consent_records().await?;
    let time = |t: Option<Timestamp>| t.map(|t| format_time(Some(t))).unwrap_or_default();
    for row in store.list_subscribers().await? {
        let consent = consents.get(&row.id);
        let cadence = row
            .regions
            .first()
            .map(|(_, c)| *c)
            .unwrap_or(Cadence::Daily);
        let regions: Vec<String> = row
            .regions
            .iter()
            .map(|(r, c)| {
                if *c == cadence {
                    r.to_string()
                } else {
                    format!("{r}:{c}")
                }
            })
            .collect();
        let record = [
            row.email.as_str(),
            &regions.join(";"),
            cadence.as_str(),
            row.timezone.name(),
            row.state.as_str(),
            &format_time(Some(row.created_at)),
            &time(row.confirmed_at),
            &time(consent.map(|c| c.given_at)),
            consent.map(|c| c.ip.as_str()).unwrap_or(""),
            consent.map(|c| c.user_agent.as_str()).unwrap_or(""),
            consent.map(|c| c.text_version.as_str()).unwrap_or(""),
            &time(consent.and_then(|c| c.confirmed_at)),
            consent
                .and_then(|c| c.confirmed_ip.as_deref())
                .unwrap_or(""),
        ];
        out.write_record(
            record
                .iter()
                .map(|cell| spreadsheet_safe(cell).into_owned()),
        )?;
    }
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_that_start_a_formula_become_text() {
        for (cell, safe) in [
            ("=HYPERLINK(\"http://x\")", "'=HYPERLINK(\"http://x\")"),
            ("=1+2@example.org", "'=1+2@example.org"),
            ("+1", "'+1"),
            ("-2+3", "'-2+3"),
            ("@SUM(A1)", "'@SUM(A1)"),
            ("\tx", "'\tx"),
            ("\rx", "'\rx"),
            ("'=x", "''=x"),
            ("ada@example.org", "ada@example.org"),
            ("Mozilla/5.0 (X11)", "Mozilla/5.0 (X11)"),
            ("'quoted", "'quoted"),
            ("", ""),
        ] {
            assert_eq!(spreadsheet_safe(cell), safe, "{cell:?}");
            assert_eq!(from_spreadsheet_safe(safe), cell, "{safe:?} imports back");
        }
    }
}

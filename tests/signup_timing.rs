//! `POST /subscribe` takes as long for an address in one state as in any other, measured
//! against the real `herald daemon` over HTTP: otherwise the answer's timing would tell
//! a stranger whether an address is new, pending, confirmed, unsubscribed or suppressed,
//! though every answer is byte for byte the same.
//!
//! Samples of the five states are taken in rounds, each round in a shuffled order, so
//! that load on the machine falls on every state alike. For each state the median and
//! the fastest tenth (what a prober on a noisy network looks at) are compared against
//! their own noise, a bootstrap of each: the test holds on a busy machine and still
//! catches a gap of a fraction of a millisecond.

mod support;

use std::time::{Duration, Instant};

use support::web::{WebClient, csrf_of, encode};
use support::{Daemon, Site, SmtpServer};

/// Rounds (one sign-up of each state) measured before the first verdict.
const FIRST_ROUNDS: usize = 240;

/// Rounds added while the verdict is unclear, up to [`MAX_ROUNDS`].
const MORE_ROUNDS: usize = 120;

/// The most rounds measured.
const MAX_ROUNDS: usize = 720;

/// A gap of more than this many standard errors fails the test.
const SIGMAS: f64 = 4.0;

/// Gaps all below this many standard errors pass at once; between the two, more
/// samples decide.
const CLEAR: f64 = 2.5;

/// Gaps smaller than this are below what the test can tell from scheduling jitter, and
/// far below what anyone could measure across a network.
const FLOOR_MS: f64 = 0.05;

/// Between two sign-ups: time for the work after an answer (the sign-up itself, the
/// email it queued) to finish, as it would have on a site a prober finds quiet.
/// Back to back, each sign-up would wait behind that work, a wait as long for every
/// state but whose noise would hide a real gap.
const PAUSE: Duration = Duration::from_millis(10);

const STATES: [&str; 5] = ["new", "pending", "confirmed", "unsubscribed", "suppressed"];

/// The statistics compared, as (name, quantile).
const STATISTICS: [(&str, f64); 2] = [("median", 0.5), ("fastest tenth", 0.1)];

/// How many erased addresses the suppressed samples cycle through (erasing takes one
/// command per address; signing one up again leaves it suppressed all the same).
const ERASED: usize = 24;

fn address(state: &str, i: usize) -> String {
    format!("{state}-{i}@example.org")
}

/// Imports [`MAX_ROUNDS`] readers of `state`'s addresses.
fn import(site: &Site, state: &str, confirmed: bool) {
    let mut csv = String::from("email,regions,cadence,timezone\n");
    for i in 0..MAX_ROUNDS {
        csv.push_str(&format!("{},riverton,daily,UTC\n", address(state, i)));
    }
    let file = site.dir.path().join(format!("{state}.csv"));
    std::fs::write(&file, csv).unwrap();
    let file = file.to_str().unwrap();
    let mut args = vec!["subscribers", "import", file];
    if confirmed {
        args.push("--confirmed");
    }
    site.run(&args).ok();
}

/// The value at quantile `q` of sorted samples.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// Each of [`STATISTICS`] of one state's samples (ms), with its bootstrap standard error.
fn estimate(ms: &[f64], rng: &mut fastrand::Rng) -> Vec<(f64, f64)> {
    let mut sorted = ms.to_vec();
    sorted.sort_by(f64::total_cmp);
    let resamples: Vec<Vec<f64>> = (0..500)
        .map(|_| {
            let mut resample: Vec<f64> = (0..ms.len()).map(|_| ms[rng.usize(..ms.len())]).collect();
            resample.sort_by(f64::total_cmp);
            resample
        })
        .collect();
    STATISTICS
        .iter()
        .map(|&(_, q)| {
            let values: Vec<f64> = resamples.iter().map(|r| quantile(r, q)).collect();
            let mean = values.iter().sum::<f64>() / values.len() as f64;
            let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / values.len() as f64;
            (quantile(&sorted, q), var.sqrt())
        })
        .collect()
}

/// The largest gap between two states, in standard errors, and the gaps that fail.
fn verdict(times: &[Vec<f64>], rng: &mut fastrand::Rng) -> (f64, Vec<String>) {
    let estimates: Vec<Vec<(f64, f64)>> = times.iter().map(|t| estimate(t, rng)).collect();
    for (state, e) in STATES.iter().zip(&estimates) {
        let text: Vec<String> = STATISTICS
            .iter()
            .zip(e)
            .map(|((name, _), (value, se))| format!("{name} {value:.3} ± {se:.3} ms"))
            .collect();
        eprintln!(
            "{state:>12} ({} samples): {}",
            times[0].len(),
            text.join(", ")
        );
    }
    let mut worst: f64 = 0.0;
    let mut failures = Vec::new();
    for (k, (name, _)) in STATISTICS.iter().enumerate() {
        for a in 0..STATES.len() {
            for b in a + 1..STATES.len() {
                let ((x, sx), (y, sy)) = (estimates[a][k], estimates[b][k]);
                let gap = (x - y).abs();
                let se = (sx * sx + sy * sy).sqrt();
                if gap <= FLOOR_MS {
                    continue;
                }
                let z = gap / se;
                worst = worst.max(z);
                if z > SIGMAS {
                    failures.push(format!(
                        "{} vs {}: {name}s {x:.3} and {y:.3} ms differ by {gap:.3} ms, \
                         {z:.1} standard errors ({se:.3} ms)",
                        STATES[a], STATES[b]
                    ));
                }
            }
        }
    }
    (worst, failures)
}

#[test]
fn a_sign_up_takes_as_long_whatever_the_state_of_the_address() {
    let smtp = SmtpServer::start();
    let site = Site::new(smtp.port).with_extra(
        "[signup]\nip_limit = 1000000\naddress_limit = 1000000\nemails_per_day = 1000000\n",
    );
    import(&site, "pending", false);
    import(&site, "confirmed", true);
    import(&site, "unsubscribed", true);
    site.sql_write(
        "UPDATE subscribers SET state = 'unsubscribed' WHERE email LIKE 'unsubscribed-%'",
    );
    import(&site, "suppressed", true);
    for i in 0..ERASED {
        site.run(&["subscribers", "remove", &address("suppressed", i)])
            .ok();
    }
    let daemon = Daemon::start(&site);

    let mut rng = fastrand::Rng::with_seed(0x6865_7261_6c64);
    let mut order: Vec<usize> = (0..STATES.len()).collect();
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); STATES.len()];
    let mut reference: Option<(u16, String)> = None;
    let mut rounds = 0;
    let failures = loop {
        let target = if rounds == 0 {
            FIRST_ROUNDS
        } else {
            rounds + MORE_ROUNDS
        };
        while rounds < target {
            rng.shuffle(&mut order);
            for &s in &order {
                let email = match STATES[s] {
                    "suppressed" => address("suppressed", rounds % ERASED),
                    state => address(state, rounds),
                };
                std::thread::sleep(PAUSE);
                let mut browser = WebClient::new(site.http_port);
                let csrf = csrf_of(&browser.get("/").body);
                let form = encode(&[
                    ("csrf".into(), csrf),
                    ("email".into(), email),
                    ("region".into(), "riverton".into()),
                    ("cadence-riverton".into(), "weekly".into()),
                    ("timezone".into(), "UTC".into()),
                    ("website".into(), String::new()),
                ]);
                let start = Instant::now();
                let answer = browser.post("/subscribe", &form);
                times[s].push(start.elapsed().as_secs_f64() * 1e3);
                let got = (answer.status, answer.body);
                match &reference {
                    None => reference = Some(got),
                    Some(first) => assert_eq!(&got, first, "{}: the same answer", STATES[s]),
                }
            }
            rounds += 1;
        }
        let (worst, failures) = verdict(&times, &mut rng);
        if !failures.is_empty() || worst < CLEAR || rounds >= MAX_ROUNDS {
            break failures;
        }
        eprintln!("largest gap {worst:.1} standard errors: measuring more");
    };
    assert_eq!(reference.unwrap().0, 200);

    // The work the answers did not wait for was done all the same.
    site.wait_for_signups();
    let states = |prefix: &str| {
        site.sql(&format!(
            "SELECT state, COUNT(*) FROM subscribers WHERE email LIKE '{prefix}-%' \
             AND CAST(substr(email, length('{prefix}-') + 1) AS INTEGER) < {rounds} \
             GROUP BY state"
        ))
    };
    let all = |state: &str| vec![vec![state.to_string(), rounds.to_string()]];
    assert_eq!(states("new"), all("pending"));
    assert_eq!(states("pending"), all("pending"));
    assert_eq!(states("confirmed"), all("confirmed"));
    assert_eq!(states("unsubscribed"), all("pending"));
    assert_eq!(
        site.sql(&format!(
            "SELECT COUNT(*) FROM subscribers WHERE email LIKE 'suppressed-%' \
             AND CAST(substr(email, length('suppressed-') + 1) AS INTEGER) < {ERASED}"
        ))[0][0],
        "0",
        "the erased addresses stay erased"
    );
    assert!(
        failures.is_empty(),
        "sign-up time depends on the address's state:\n{}",
        failures.join("\n")
    );
    daemon.stop();
}

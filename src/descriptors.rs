//! Open-file descriptors: the daemon raises its soft limit to the hard one at start,
//! and budgets what it has, so that web clients can never take the descriptors that
//! SMTP, the database and feed fetches need.

/// The process's open-file limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileLimit {
    /// The soft limit before herald raised it.
    pub was: u64,
    /// The soft limit now (what herald can hold).
    pub soft: u64,
    /// The hard limit (the ceiling a process may raise itself to).
    pub hard: u64,
}

/// Raises the soft open-file limit to the hard limit (systemd's default soft limit is
/// 1024, its hard limit far higher) and returns both.
pub fn raise_open_file_limit() -> std::io::Result<FileLimit> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit through a valid pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let was = limit.rlim_cur;
    // Linux refuses a soft limit above fs.nr_open (an "unlimited" hard limit is one).
    let ceiling = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|text| text.trim().parse::<libc::rlim_t>().ok())
        .map_or(limit.rlim_max, |nr_open| nr_open.min(limit.rlim_max));
    if limit.rlim_cur < ceiling {
        let raised = libc::rlimit {
            rlim_cur: ceiling,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit reads one rlimit through a valid pointer.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit = raised;
        }
    }
    Ok(FileLimit {
        was,
        soft: limit.rlim_cur,
        hard: limit.rlim_max,
    })
}

/// Descriptors kept for everything but web clients: the database pool, SMTP
/// connections, feed fetches (a DNS lookup may hold a second one each), and a fixed
/// margin for the SQLite files, the listener, logs and the runtime.
pub fn reserve(database_connections: u32, smtp_connections: usize, feed_concurrency: usize) -> u64 {
    u64::from(database_connections) + smtp_connections as u64 + 2 * feed_concurrency as u64 + 64
}

/// Web connections to allow: the configured number, or as many as the limit holds
/// after the reserve, at most 4096. `Err` says why the limit is too low to run.
pub fn web_connections(
    configured: Option<usize>,
    soft_limit: u64,
    reserve: u64,
) -> Result<usize, String> {
    const AT_LEAST: u64 = 16;
    let room = soft_limit.saturating_sub(reserve);
    if room < AT_LEAST {
        return Err(format!(
            "the open-file limit is {soft_limit}, too low: herald keeps {reserve} descriptors for the database, SMTP and feeds and needs at least {AT_LEAST} more for web clients; raise it (e.g. LimitNOFILE=65536 in the systemd unit, or ulimit -n)"
        ));
    }
    Ok(match configured {
        Some(n) if n as u64 > room => {
            tracing::warn!(
                configured = n,
                allowed = room,
                "http.max_connections is more than the open-file limit leaves for web clients; using {room}"
            );
            room as usize
        }
        Some(n) => n,
        None => room.min(4096) as usize,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn web_clients_get_what_the_reserve_leaves() {
        let reserve = reserve(8, 4, 8);
        assert_eq!(reserve, 8 + 4 + 16 + 64);
        assert_eq!(web_connections(None, 1024, reserve), Ok(1024 - 92));
        assert_eq!(web_connections(None, 1_048_576, reserve), Ok(4096));
        assert_eq!(web_connections(Some(100), 1024, reserve), Ok(100));
        assert_eq!(
            web_connections(Some(5000), 1024, reserve),
            Ok(932),
            "capped"
        );
        let low = web_connections(None, 100, reserve).unwrap_err();
        assert!(low.contains("open-file limit is 100"), "{low}");
    }

    #[test]
    fn the_soft_limit_is_raised_to_the_hard_one() {
        let limit = raise_open_file_limit().unwrap();
        assert!(
            limit.was <= limit.soft && limit.soft <= limit.hard,
            "{limit:?}"
        );
        let again = raise_open_file_limit().unwrap();
        assert_eq!(again.was, limit.soft, "nothing left to raise");
    }
}

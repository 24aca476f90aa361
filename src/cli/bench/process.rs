//! Server-side cost, read from `/proc/<pid>`: CPU time (user + system) and resident memory.
//! Linux only; elsewhere the figures are simply absent.

use std::time::Instant;

/// One reading of a process.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub at: Instant,
    /// utime + stime, in seconds.
    pub cpu_secs: f64,
    pub rss_kib: u64,
    /// Peak resident memory (VmHWM) since the process started or since [`reset_peak`].
    pub peak_kib: u64,
}

pub fn sample(pid: u32) -> Option<Sample> {
    let at = Instant::now();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: fields count from the last ')'.
    let after = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after.split(' ').collect();
    // Fields 14 and 15 of stat(5), i.e. 11 and 12 after the state field (index 0 here).
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = |key: &str| -> Option<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    };
    let rss_kib = kib("VmRSS:")?;
    Some(Sample {
        at,
        cpu_secs: (utime + stime) as f64 / clock_ticks(),
        rss_kib,
        peak_kib: kib("VmHWM:").unwrap_or(rss_kib),
    })
}

/// Several processes as one (cluster nodes): CPU times and resident memory summed (peaks too: an
/// upper bound on their joint peak). `None` when any of them cannot be read.
pub fn sample_sum(pids: &[u32]) -> Option<Sample> {
    let mut samples = pids.iter().map(|pid| sample(*pid));
    let mut sum = samples.next()??;
    for s in samples {
        let s = s?;
        sum.cpu_secs += s.cpu_secs;
        sum.rss_kib += s.rss_kib;
        sum.peak_kib += s.peak_kib;
    }
    Some(sum)
}

/// Restarts the process's peak-RSS count (VmHWM) from its current RSS, so a peak read later
/// belongs to the load window rather than to an earlier run against the same server. Needs the
/// right to write `/proc/<pid>/clear_refs` (the same user, or root); without it the peak is the
/// process's lifetime peak, and the return value says so.
pub fn reset_peak(pid: u32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), b"5").is_ok()
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

/// CPU use between two samples, in percent of one core.
pub fn cpu_percent(before: &Sample, after: &Sample) -> f64 {
    let wall = after.at.duration_since(before.at).as_secs_f64();
    if wall <= 0.0 {
        return 0.0;
    }
    100.0 * (after.cpu_secs - before.cpu_secs) / wall
}

/// Raises the soft open-file limit to the hard limit; returns the limit now in force.
pub fn raise_fd_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit write/read only the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 1024;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                return raised.rlim_cur;
            }
        }
    }
    limit.rlim_cur
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let s = sample(std::process::id()).expect("own /proc entry");
        assert!(s.rss_kib > 0);
        assert!(s.peak_kib >= s.rss_kib);
        assert!(s.cpu_secs >= 0.0);
        let pid = std::process::id();
        let twice = sample_sum(&[pid, pid]).expect("own /proc entry");
        assert!(twice.rss_kib >= s.rss_kib * 2 - 1024);
        assert!(sample_sum(&[]).is_none());
    }
}

//! CPU time and resident memory of a process, from `/proc` (Linux).

use std::time::Instant;

/// Clock ticks per second of `/proc/*/stat` times (USER_HZ, 100 on every Linux ABI we run on).
const TICKS_PER_SEC: f64 = 100.0;

/// One reading of a process.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// User plus system CPU seconds consumed so far.
    pub cpu_secs: f64,
    /// Of which in the kernel (system calls, the TCP stack).
    pub sys_secs: f64,
    /// Resident set size in KiB.
    pub rss_kib: u64,
    /// When it was read.
    pub at: Instant,
    /// When it was read, Unix seconds: what a profiler sampling meanwhile (`perf record
    /// --clockid CLOCK_REALTIME`) stamps its samples with, so they can be matched to a span.
    pub unix_secs: f64,
}

/// Reads process `pid`, when it is given and can be read.
pub fn of(pid: Option<u32>) -> Option<Sample> {
    read(&format!("/proc/{}", pid?))
}

/// Reads this process.
pub fn this_process() -> Option<Sample> {
    read("/proc/self")
}

fn read(dir: &str) -> Option<Sample> {
    let stat = std::fs::read_to_string(format!("{dir}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat, i.e. 11 and 12 after the name.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    let status = std::fs::read_to_string(format!("{dir}/status")).ok()?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())?;
    Some(Sample {
        cpu_secs: (utime + stime) / TICKS_PER_SEC,
        sys_secs: stime / TICKS_PER_SEC,
        rss_kib,
        at: Instant::now(),
        unix_secs: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64()),
    })
}

/// CPU seconds between two readings, when both exist.
pub fn cpu_between(a: Option<Sample>, b: Option<Sample>) -> Option<f64> {
    Some(b?.cpu_secs - a?.cpu_secs)
}

/// The span between two readings as Unix seconds `[start, end]`, when both exist.
pub fn window_between(a: Option<Sample>, b: Option<Sample>) -> Option<[f64; 2]> {
    Some([a?.unix_secs, b?.unix_secs])
}

/// Kernel CPU seconds between two readings, when both exist.
pub fn sys_between(a: Option<Sample>, b: Option<Sample>) -> Option<f64> {
    Some(b?.sys_secs - a?.sys_secs)
}

/// The kernel's slab memory (`/proc/meminfo`, `Slab:`), in KiB: where sockets, their TCP
/// state, files and epoll entries live. Machine-wide, so it counts both ends of a loopback
/// connection.
pub fn kernel_slab_kib() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    parse_slab(&text)
}

fn parse_slab(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("Slab:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let s = this_process().expect("/proc/self");
        assert!(s.rss_kib > 0);
        assert!(s.cpu_secs >= 0.0);
        assert!(of(Some(u32::MAX)).is_none());
        assert!(of(None).is_none());
    }

    #[test]
    fn slab_memory_is_read_from_meminfo() {
        let text = "MemTotal: 24000000 kB\nSlab:             123456 kB\nSReclaimable: 1 kB\n";
        assert_eq!(parse_slab(text), Some(123456));
        assert_eq!(parse_slab("MemTotal: 1 kB"), None);
    }
}

//! A process's memory as the kernel reports it in `/proc/PID/status`, for the tests that
//! show memory stays flat under oversized or unread messages.

/// A line of `/proc/<pid>/status` in bytes (`VmHWM:`, `VmRSS:`); `None` once the process is
/// gone.
fn status_bytes(pid: u32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The largest resident memory process `pid` has held (`VmHWM`), since it started or since
/// [`reset_peak`], in bytes.
pub fn peak_rss(pid: u32) -> Option<u64> {
    status_bytes(pid, "VmHWM:")
}

/// Starts a new peak for process `pid` (`clear_refs` 5 resets `VmHWM` to the current
/// resident size) and returns that size: each measurement then covers one attack only.
pub fn reset_peak(pid: u32) -> u64 {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").expect("reset the peak memory");
    status_bytes(pid, "VmRSS:").expect("the process's memory")
}

//! Process readings from Linux /proc: resident set size now and at its peak.

/// Peak resident set size of this process so far (VmHWM), in bytes; 0 where unavailable.
pub fn peak_rss_bytes() -> u64 {
    read_status_kb("VmHWM:").unwrap_or(0) * 1024
}

/// Current resident set size (VmRSS), in bytes; 0 where unavailable.
pub fn rss_bytes() -> u64 {
    read_status_kb("VmRSS:").unwrap_or(0) * 1024
}

/// Physical memory of the machine (MemTotal), in bytes; None where unavailable.
pub fn mem_total_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = s.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb: u64 = line["MemTotal:".len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

fn read_status_kb(key: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with(key))?;
    line[key.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rss_is_read_on_linux() {
        if cfg!(target_os = "linux") {
            assert!(peak_rss_bytes() >= rss_bytes() && rss_bytes() > 0);
        }
    }
}

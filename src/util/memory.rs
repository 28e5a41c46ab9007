//! How much memory a job may plan for: the machine's available memory (MemAvailable), the
//! cgroup's limit when one is set (containers, Slurm), or `CNNPROBE_MEMORY_LIMIT`.
use std::path::Path;

/// Bytes from `12345`, `800M`, `16G` (powers of 1024).
pub fn parse_bytes(s: &str) -> Option<u64> {
    let s = s.trim();
    let (digits, unit) = match s.char_indices().find(|(_, c)| !c.is_ascii_digit() && *c != '.') {
        Some((i, _)) => (&s[..i], s[i..].trim().to_ascii_uppercase()),
        None => (s, String::new()),
    };
    let scale: u64 = match unit.trim_end_matches('B').trim_end_matches('I') {
        "" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        "T" => 1 << 40,
        _ => return None,
    };
    digits.parse::<f64>().ok().filter(|v| *v >= 0.0).map(|v| (v * scale as f64) as u64)
}

fn meminfo_available(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// The smallest of the limits that apply, `None` when none can be read.
pub fn available_bytes() -> Option<u64> {
    let mut limits = vec![];
    if let Ok(v) = std::env::var("CNNPROBE_MEMORY_LIMIT") {
        limits.extend(parse_bytes(&v));
    }
    if let Ok(text) = std::fs::read_to_string("/proc/meminfo") {
        limits.extend(meminfo_available(&text));
    }
    // cgroup v2: "max" means no limit.
    if let Ok(text) = std::fs::read_to_string(Path::new("/sys/fs/cgroup/memory.max")) {
        limits.extend(text.trim().parse::<u64>().ok());
    }
    limits.into_iter().min()
}

/// `bytes` as GB with two decimals.
pub fn gb(bytes: u64) -> String {
    format!("{:.2} GB", bytes as f64 / 1e9)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_meminfo_parse() {
        assert_eq!(parse_bytes("123"), Some(123));
        assert_eq!(parse_bytes("800M"), Some(800 << 20));
        assert_eq!(parse_bytes("1.5G"), Some(3 << 29));
        assert_eq!(parse_bytes("2GiB"), Some(2 << 30));
        assert_eq!(parse_bytes("lots"), None);
        assert_eq!(parse_bytes("5X"), None);
        let text = "MemTotal:       24000000 kB\nMemFree:  100 kB\nMemAvailable:   20000000 kB\n";
        assert_eq!(meminfo_available(text), Some(20_000_000 * 1024));
    }
}

//! Progress bars for long work. indicatif draws on stderr and stays silent when stderr is
//! not a terminal, so logs and tests see only the one-line summaries we print ourselves.
use indicatif::{ProgressBar, ProgressStyle};

fn bar(total: Option<u64>, template: &str, what: &str) -> ProgressBar {
    let bar = match total {
        Some(n) => ProgressBar::new(n),
        None => ProgressBar::new_spinner(),
    };
    bar.set_style(ProgressStyle::with_template(template).expect("static template").progress_chars("=> "));
    bar.set_message(what.to_string());
    bar
}

/// A bar over images, showing throughput in images/s.
pub fn images(total: u64, what: &str) -> ProgressBar {
    bar(Some(total), "{msg:>12} [{bar:30}] {pos}/{len} img  {per_sec}  eta {eta}", what)
}

/// A bar over bytes (downloads); a spinner when the size is unknown.
pub fn bytes(total: Option<u64>, what: &str) -> ProgressBar {
    bar(total, "{msg} [{bar:30}] {bytes}/{total_bytes}  {bytes_per_sec}  eta {eta}", what)
}

/// A bar over probe epochs.
pub fn epochs(total: u64) -> ProgressBar {
    bar(Some(total), "{msg:>12} [{bar:30}] epoch {pos}/{len}  eta {eta}", "probe")
}

/// A bar over rows written.
pub fn rows(total: u64, what: &str) -> ProgressBar {
    bar(Some(total), "{msg:>12} [{bar:30}] {pos}/{len} rows  {per_sec}  eta {eta}", what)
}

/// A bar over solver steps, up to a cap (an iterative solve may stop before it).
pub fn steps(cap: u64, what: &str) -> ProgressBar {
    bar(Some(cap), "{msg:>12} [{bar:30}] step {pos}/{len} (at most)  {per_sec}", what)
}

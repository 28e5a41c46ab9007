//! SIGINT/SIGTERM: long loops poll `check()` and return an "interrupted" error, so the
//! error path runs and every temp file is removed by its owner's Drop. A second signal
//! exits at once.
use std::sync::atomic::{AtomicBool, Ordering};

static STOP: AtomicBool = AtomicBool::new(false);

/// The message of the error `check` returns (main maps it to exit code 130).
pub const INTERRUPTED: &str = "interrupted by a signal; partial outputs were removed";

pub fn install() {
    let _ = ctrlc::set_handler(|| {
        if STOP.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
    });
}

/// Asks every long loop to stop, as a signal does (for library users and tests).
pub fn request() {
    STOP.store(true, Ordering::SeqCst);
}

/// Fails once a stop was requested.
pub fn check() -> anyhow::Result<()> {
    if STOP.load(Ordering::Relaxed) {
        anyhow::bail!(INTERRUPTED);
    }
    Ok(())
}

/// Whether a stop was requested (for loops that cannot return an error themselves).
pub fn requested() -> bool {
    STOP.load(Ordering::Relaxed)
}

//! SIGINT/SIGTERM: long loops poll `check()` and return an "interrupted" error, so the
//! error path runs and every temp file is removed by its owner's Drop. A second signal
//! exits at once, without cleanup.
use std::sync::atomic::{AtomicBool, Ordering};

static STOP: AtomicBool = AtomicBool::new(false);

/// The message of the error `check` returns (main maps it to exit code 130).
pub const INTERRUPTED: &str = "interrupted by a signal; partial outputs were removed";

pub fn install() {
    let _ = ctrlc::set_handler(|| {
        if STOP.swap(true, Ordering::SeqCst) {
            // _exit, not exit: exit's static destructors would tear libtorch down under the
            // main thread, which then dies in a libtorch assertion instead of quietly.
            // SAFETY: _exit only ends the process.
            unsafe { libc::_exit(130) };
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

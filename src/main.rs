//! Thin entry point: parse flags → validated config → run. Errors print as one line:
//! exit 2 for usage errors (clap's code, and bad flag combinations), 130 after a signal,
//! 1 for the rest.
use cnnprobe::cli::Cli;
use cnnprobe::util::{interrupt, libtorch};
use cnnprobe::{commands, UsageError};
use std::process::ExitCode;

fn main() -> ExitCode {
    libtorch::prefer_huge_pages();
    let cli = Cli::from_env();
    interrupt::install();
    let job = match cli.into_job() {
        Ok(job) => job,
        Err(e) => return fail(&e, 2),
    };
    match commands::dispatch(job) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.to_string() == interrupt::INTERRUPTED => fail(&e, 130),
        Err(e) if e.chain().any(|c| c.is::<UsageError>()) => fail(&e, 2),
        Err(e) => fail(&e, 1),
    }
}

fn fail(e: &anyhow::Error, code: u8) -> ExitCode {
    // One line, whatever a library's message contains.
    eprintln!("error: {}", format!("{e:#}").replace('\n', " "));
    ExitCode::from(code)
}

//! Thin entry point: parse flags → validated config → run. Errors print as one line:
//! exit 2 for usage errors (clap's code, and bad flag combinations), 1 for the rest.
use clap::Parser;
use cnnprobe::cli::{Cli, Command};
use cnnprobe::commands;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = Cli::parse_from(cnnprobe::presets::expand(std::env::args_os().collect()));
    cnnprobe::interrupt::install();
    let result = match cli.command {
        Command::Run(args) => match args.into_config() {
            Ok(cfg) => cnnprobe::pipeline::run(&cfg).map(|_| ()),
            Err(e) => return fail(&e, 2),
        },
        Command::Extract(args) => match commands::extract_config(&args) {
            Ok(cfg) => commands::extract(&cfg, &args.output, args.format),
            Err(e) => return fail(&e, 2),
        },
        Command::Fit(args) => commands::fit(&args),
        Command::Compare(args) => {
            let args = *args;
            cnnprobe::compare::run(args.run, &args.seeds, args.table).map(|_| ())
        }
        Command::Info => {
            cnnprobe::report::print_info();
            Ok(())
        }
        Command::Sweep(args) => cnnprobe::sweep::run(&args),
        Command::Plot(args) => {
            let chart = cnnprobe::plot::Chart { by: &args.by, metric: &args.metric, title: args.title.as_deref() };
            cnnprobe::plot::plot(&args.csv, &args.output, &chart)
        }
        Command::Models => {
            cnnprobe::report::print_models();
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.to_string() == cnnprobe::interrupt::INTERRUPTED => fail(&e, 130),
        Err(e) if e.chain().any(|c| c.is::<cnnprobe::UsageError>()) => fail(&e, 2),
        Err(e) => fail(&e, 1),
    }
}

fn fail(e: &anyhow::Error, code: u8) -> ExitCode {
    // One line, whatever a library's message contains.
    eprintln!("error: {}", format!("{e:#}").replace('\n', " "));
    ExitCode::from(code)
}

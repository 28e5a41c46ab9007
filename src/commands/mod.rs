//! One file per command, each thin: a validated config in, the stages called in order.
pub mod compare;
pub mod extract;
pub mod fit;
pub mod info;
pub mod merge;
pub mod models;
pub mod plot;
pub mod reproduce;
pub mod run;
pub mod scan;
pub mod sweep;
pub mod weights;

use crate::config::Job;
use anyhow::Result;

pub fn dispatch(job: Job) -> Result<()> {
    match job {
        Job::Run(cfg) => run::run(&cfg).map(|_| ()),
        Job::Extract(job) => extract::extract(&job),
        Job::Merge(job) => merge::merge(&job),
        Job::Scan(cfg) => scan::scan(&cfg),
        Job::Fit(cfg) => fit::fit(&cfg).map(|_| ()),
        Job::Compare(cfg) => compare::compare(&cfg).map(|_| ()),
        Job::Sweep(cfg) => sweep::sweep(&cfg),
        Job::Plot(cfg) => plot::plot(&cfg),
        Job::Weights(job) => weights::list(&job),
        Job::Reproduce(job) => reproduce::reproduce(&job),
        Job::Models => models::print(),
        Job::Info => info::print(),
    }
}

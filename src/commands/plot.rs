//! `cnnprobe plot`: a chart of a summary or sweep CSV.
use crate::config::PlotConfig;
use crate::report::plot::{self, Chart};
use anyhow::Result;

pub fn plot(cfg: &PlotConfig) -> Result<()> {
    let chart = Chart { by: &cfg.by, metric: &cfg.metric, title: cfg.title.as_deref() };
    plot::plot(&cfg.csv, &cfg.output, &chart)
}

//! Frozen feature extraction: uint8 batches go to the device, are converted and
//! normalised there, run through the network under no_grad, and pooled features are copied
//! into a preallocated CPU matrix.
use crate::data::normalize::ChannelStats;
use crate::data::Split;
use crate::models::Network;
use crate::progress;
use anyhow::Result;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// Features of one split: float32 (N, D) on the CPU, with the labels.
pub struct Features {
    pub x: Tensor,
    pub y: Tensor,
}

/// Extracts features of `split` in batches of `batch_size`. Returns them with the seconds spent.
pub fn extract(
    net: &Network,
    split: &Split,
    stats: ChannelStats,
    device: Device,
    batch_size: usize,
    what: &str,
) -> Result<(Features, f64)> {
    let n = split.len() as i64;
    let dim = net.feature_dim();
    let out = Tensor::empty([n, dim], (Kind::Float, Device::Cpu));
    // x/255 normalised = x·scale + shift, one fused multiply-add per pixel on the device.
    let scale: Vec<f32> = stats
        .std
        .iter()
        .map(|s| (1.0 / (255.0 * s)) as f32)
        .collect();
    let shift: Vec<f32> = stats
        .mean
        .iter()
        .zip(stats.std)
        .map(|(m, s)| (-m / s) as f32)
        .collect();
    let scale = Tensor::from_slice(&scale)
        .view([1, 3, 1, 1])
        .to_device(device);
    let shift = Tensor::from_slice(&shift)
        .view([1, 3, 1, 1])
        .to_device(device);

    let bar = progress::images(n as u64, what);
    let start = Instant::now();
    tch::no_grad(|| {
        let mut i = 0;
        while i < n {
            let len = (batch_size as i64).min(n - i);
            let mut x = split
                .images
                .narrow(0, i, len)
                .to_device(device)
                .to_kind(Kind::Float);
            x *= &scale;
            x += &shift;
            let f = net.features(&x);
            out.narrow(0, i, len).copy_(&f);
            i += len;
            bar.inc(len as u64);
        }
    });
    bar.finish_and_clear();
    let secs = start.elapsed().as_secs_f64();
    Ok((
        Features {
            x: out,
            y: split.labels.shallow_clone(),
        },
        secs,
    ))
}

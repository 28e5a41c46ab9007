//! `--first-layer patches`: the first convolution's filters are patches of training images
//! (after normalisation, and ZCA when `--whiten` is on) instead of random draws, as in
//! Coates & Ng (2011) and Thiry et al. (ICLR 2021). No labels and no gradients: a lever of
//! the no-gradient track, never of a data-free preset. Every later layer stays random.
use super::extract::{Normalizer, Preprocess};
use crate::data::split::{self, SplitMix64};
use crate::data::whiten::Moments;
use crate::data::Source;
use crate::models::patchnet::{self, PatchNet};
use crate::models::Network;
use anyhow::{ensure, Result};
use std::fmt;
use std::str::FromStr;
use tch::{Device, Kind, Tensor};

/// Where the first convolution's filters come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum FirstLayer {
    /// Drawn by the init scheme, like every other layer (data-free).
    #[default]
    Random,
    /// One training patch per filter.
    Patches,
    /// Half the filters are patches, the other half their negatives: the first layer's ReLU
    /// then keeps both signs of each patch's response (ReLU(x), ReLU(−x)).
    SignedPatches,
}

impl FromStr for FirstLayer {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "random" => Ok(FirstLayer::Random),
            "patches" => Ok(FirstLayer::Patches),
            "signed-patches" => Ok(FirstLayer::SignedPatches),
            _ => Err(format!("--first-layer: expected random, patches or signed-patches, got {s:?}")),
        }
    }
}

impl fmt::Display for FirstLayer {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(match self {
            FirstLayer::Random => "random",
            FirstLayer::Patches => "patches",
            FirstLayer::SignedPatches => "signed-patches",
        })
    }
}

crate::serde_as_str!(FirstLayer);

impl FirstLayer {
    pub fn is_random(&self) -> bool {
        *self == FirstLayer::Random
    }
}

/// `n` patches of `size`×`size` pixels, (n, C, size, size) float32 on the CPU, from a seeded
/// sample of `train`: image i of a seeded permutation gives patch i (cycling when n exceeds
/// the images), at a seeded position fully inside it. Patches whose norm is below 1e-6 (a
/// flat, whitened-away region) are passed over for the next draw.
pub fn sample(train: &Source, n: usize, size: i64, seed: u64, pre: &Preprocess) -> Result<Tensor> {
    ensure!(!train.is_empty(), "--first-layer patches: no train images to sample from");
    let (h, w) = (pre.input_size, pre.input_size);
    ensure!(size <= h && size <= w, "--first-layer patches: {size}×{size} filters on {h}×{w} images");
    let order = split::permutation(train.len(), seed ^ 0x09A7_C4E5);
    let mut rng = SplitMix64::new(seed ^ 0x51DE);
    let norm = Normalizer::new(pre, Device::Cpu);
    let (mut kept, mut drawn) = (Vec::with_capacity(n), 0usize);
    // Enough draws for every filter even when some patches are flat; then give up.
    while kept.len() < n && drawn < 4 * n + 64 {
        let idx: Vec<usize> = (drawn..drawn + 256).map(|i| order[i % order.len()]).collect();
        let batch = train.get(&idx)?;
        let images = tch::no_grad(|| norm.apply(&batch.images).to_kind(Kind::Float));
        for j in 0..idx.len() as i64 {
            let (y, x) = (rng.below((h - size + 1) as u64) as i64, rng.below((w - size + 1) as u64) as i64);
            let patch = images.get(j).narrow(1, y, size).narrow(2, x, size);
            if patch.norm().double_value(&[]) > 1e-6 && kept.len() < n {
                kept.push(patch.contiguous());
            }
        }
        drawn += idx.len();
    }
    ensure!(kept.len() == n, "--first-layer patches: only {} of {n} sampled patches are not flat", kept.len());
    Ok(Tensor::stack(&kept, 0))
}

/// `--whiten patch-zca:EPS` for `--arch patchnet`: the ZCA of every P×P patch of every
/// train image (normalised as for extraction; 50k CIFAR images give 36M patches), no labels.
pub fn whiten_patchnet(net: &mut Network, eps: f64, train: &Source, pre: &Preprocess, workers: usize) -> Result<()> {
    whiten_patchnets(std::slice::from_mut(net), eps, train, pre, workers)
}

/// `whiten_patchnet` for every network of `nets` (an ensemble's members): the statistics
/// are the same for all, so they are computed once.
pub fn whiten_patchnets(
    nets: &mut [Network],
    eps: f64,
    train: &Source,
    pre: &Preprocess,
    workers: usize,
) -> Result<()> {
    let mut pns = Vec::with_capacity(nets.len());
    for net in nets.iter_mut() {
        let Some(pn) = net.body.as_patchnet_mut() else {
            anyhow::bail!("--whiten patch-zca whitens --arch patchnet's patches; use --whiten zca for whole images")
        };
        pns.push(pn);
    }
    ensure!(!pns.is_empty() && !train.is_empty(), "--whiten patch-zca: no train images");
    let norm = Normalizer::new(pre, Device::Cpu);
    let d = pns[0].patch_dim();
    let mut moments = Moments::new(d);
    let mut first = None;
    tch::no_grad(|| -> Result<()> {
        for batch in train.batches(256, workers) {
            let x = norm.apply(&batch?.images).to_kind(Kind::Float);
            moments.add(&PatchNet::patches(&x).transpose(1, 2).reshape([-1, d]));
            first.get_or_insert(x);
        }
        Ok(())
    })?;
    let zca = moments.zca(eps)?;
    eprintln!("whitening: ZCA of the {0}×{0} patches of {1} train images (eps {eps})", patchnet::PATCH, train.len());
    let sample = first.expect("train is not empty");
    pns.into_iter().try_for_each(|pn| pn.set_whitening(&zca.matrix, &zca.mean, &sample))
}

/// `--first-layer patches` for `--arch patchnet`: each filter is a train patch mapped by the
/// network's patch transform (its whitening, when fitted), at unit norm.
fn patchnet_filters(pn: &mut PatchNet, how: FirstLayer, train: &Source, seed: u64, pre: &Preprocess) -> Result<()> {
    let k = pn.filter_count();
    let signed = how == FirstLayer::SignedPatches;
    ensure!(!signed || k % 2 == 0, "--first-layer signed-patches needs an even filter count, got {k}");
    let n = if signed { k / 2 } else { k };
    eprintln!(
        "filters: {n} {0}×{0} train patches{1}",
        patchnet::PATCH,
        if signed { ", and their negatives" } else { "" }
    );
    let p = sample(train, n as usize, patchnet::PATCH, seed, pre)?;
    let mut rows = tch::no_grad(|| pn.transform(&p.flatten(1, -1).tr()).tr());
    if signed {
        rows = Tensor::cat(&[rows.shallow_clone(), -rows], 0);
    }
    pn.set_filters(&rows)
}

/// Replaces `net`'s first convolution's filters with patches from `train` (see `sample`),
/// each scaled to the mean norm of the filters it replaces, so the random layers after it
/// see activations of the usual size. The bias is left as initialised.
pub fn init_first_layer(net: &mut Network, how: FirstLayer, train: &Source, seed: u64, pre: &Preprocess) -> Result<()> {
    if how.is_random() {
        return Ok(());
    }
    if let Some(pn) = net.body.as_patchnet_mut() {
        return patchnet_filters(pn, how, train, seed, pre);
    }
    let mut units = net.body.units_mut();
    let first = units.first_mut().expect("every network has a first convolution");
    let weight = &mut first.conv.weight;
    let [c_out, c_in, kh, kw] = weight.size()[..] else { unreachable!("conv weights are 4-D") };
    ensure!(c_in == 3 && kh == kw, "--first-layer patches: the first convolution is {c_in}×{kh}×{kw}, not RGB square");
    let signed = how == FirstLayer::SignedPatches;
    ensure!(!signed || c_out % 2 == 0, "--first-layer signed-patches needs an even filter count, got {c_out}");
    let n = if signed { c_out / 2 } else { c_out } as usize;
    eprintln!(
        "first layer: {n} {kh}×{kw} patches from the train images{}",
        if signed { ", and their negatives" } else { "" }
    );
    let mut p = sample(train, n, kh, seed, pre)?;
    let target = tch::no_grad(|| weight.flatten(1, -1).norm_scalaropt_dim(2.0, [1], false).mean(Kind::Float));
    p = &p / p.flatten(1, -1).norm_scalaropt_dim(2.0, [1], false).view([-1, 1, 1, 1]) * target;
    if signed {
        p = Tensor::cat(&[p.shallow_clone(), -p], 0);
    }
    tch::no_grad(|| weight.copy_(&p.to_kind(weight.kind()).to_device(weight.device())));
    Ok(())
}

//! The model zoo without Python: init statistics for every family and scheme, BN folding,
//! BN calibration, feature taps and pooling.
use cnnprobe::data::normalize;
use cnnprobe::data::{Source, Split};
use cnnprobe::features::{extract, taps, BatchSize, Encode, FeatureSpec, Pool, Precision, Preprocess, Resize};
use cnnprobe::models::init::{expected_std, InitScheme};
use cnnprobe::models::layers::LayerKind;
use cnnprobe::models::{Arch, ModelConfig, Network, Stem};
use tch::{Device, Kind, Tensor};

const PRE: Preprocess = Preprocess {
    stats: normalize::CIFAR10,
    input_size: 32,
    resize: Resize::Bilinear,
    precision: Precision::Fp32,
    zca: None,
};

fn cfg(arch: Arch, stem: Stem, init: InitScheme, seed: u64) -> ModelConfig {
    ModelConfig { arch, stem, init, zero_init_residual: false, seed, width_mult: 1.0 }
}

#[test]
fn every_layer_std_matches_its_scheme_formula() {
    let schemes = [
        InitScheme::Torchvision,
        InitScheme::PytorchDefault,
        InitScheme::KaimingNormal,
        InitScheme::XavierUniform,
        InitScheme::Orthogonal,
        InitScheme::Normal(0.05),
        InitScheme::Uniform(0.1),
    ];
    // One member of each family; VGG with the CIFAR stem keeps fc1 at 512×4096.
    for (arch, stem) in [(Arch::Resnet18, Stem::Imagenet), (Arch::Resnet20, Stem::Cifar), (Arch::Vgg11Bn, Stem::Cifar)]
    {
        for scheme in schemes {
            let net = Network::build(&cfg(arch, stem, scheme, 0)).unwrap();
            let mut checked = 0;
            for site in net.body.module_sites() {
                let w = &site.weight;
                if site.kind == LayerKind::BatchNorm {
                    assert!(w.equal(&w.ones_like()), "{} {scheme}: BN weight is not 1", site.name);
                    continue;
                }
                // Small layers' sample std is too noisy for a 5% bound (sd ≈ 1/√(2n)).
                if w.numel() < 2000 {
                    continue;
                }
                let want = expected_std(scheme, arch.family(), site.kind, w);
                let got = w.std(false).double_value(&[]);
                let rel = (got - want).abs() / want;
                assert!(rel < 0.05, "{} {} {scheme}: std {got:.5}, formula {want:.5}", arch.name(), site.name);
                checked += 1;
            }
            assert!(checked >= 5, "{} {scheme}: only {checked} layers checked", arch.name());
        }
    }
}

#[test]
fn zero_init_residual_zeroes_each_blocks_last_bn() {
    let mut c = cfg(Arch::Resnet50, Stem::Imagenet, InitScheme::Torchvision, 0);
    c.zero_init_residual = true;
    let net = Network::build(&c).unwrap();
    let vars = net.vs.variables();
    assert_eq!(vars["layer1.0.bn3.weight"].abs().sum(Kind::Float).double_value(&[]), 0.0);
    assert_eq!(vars["layer1.0.bn2.weight"].mean(Kind::Float).double_value(&[]), 1.0);
    assert_eq!(vars["bn1.weight"].mean(Kind::Float).double_value(&[]), 1.0);
}

fn images(n: i64, seed: i64) -> Source {
    tch::manual_seed(seed);
    Source::Memory(std::rc::Rc::new(Split {
        images: Tensor::randint(256, [n, 3, 32, 32], (Kind::Uint8, Device::Cpu)),
        labels: Tensor::zeros([n], (Kind::Int64, Device::Cpu)),
    }))
}

fn spec(taps: &[&str], pool: Pool, k: i64) -> FeatureSpec {
    FeatureSpec { taps: taps.iter().map(|s| s.to_string()).collect(), pool, pool_size: k, encode: Encode::None }
}

fn feats(net: &Network, s: &FeatureSpec, data: &Source) -> Tensor {
    let mut sink = extract::Collect::default();
    let feed = extract::Feed { batch_size: BatchSize::Fixed(16), workers: 1, flip: false, mean_flip: false };
    extract::extract(std::slice::from_ref(net), s, &PRE, data, feed, "test", &mut sink).unwrap();
    sink.parts.pop().unwrap().1.x
}

#[test]
fn folded_bn_matches_unfolded_within_1e4_relative() {
    let data = images(24, 1);
    for arch in [Arch::Resnet18, Arch::Vgg11Bn, Arch::Resnet20] {
        let stem = if arch == Arch::Resnet18 { Stem::Imagenet } else { Stem::Cifar };
        let mut net = Network::build(&cfg(arch, stem, InitScheme::Torchvision, 2)).unwrap();
        // Non-trivial BN statistics, so folding has something to fold.
        extract::calibrate_batchnorm(&mut net, &data, 24, 0, &PRE, 8).unwrap();
        let s = spec(&[], Pool::Avg, 1);
        let plain = feats(&net, &s, &data);
        assert!(!net.is_folded());
        net.fold_batchnorm();
        // The flag reports the fold (0.1 never set it).
        assert!(net.is_folded(), "fold_batchnorm must be reported by is_folded");
        let folded = feats(&net, &s, &data);
        let rel = ((&folded - &plain).abs().max() / plain.abs().max()).double_value(&[]);
        assert!(rel < 1e-4, "{}: folded differs by {rel:e} relative", arch.name());
        assert!(rel > 0.0 || arch == Arch::Resnet20, "folding changed nothing at all; is it applied?");
    }
}

#[test]
fn fused_convs_match_the_aten_path_within_1e4_relative() {
    // 24 images in batches of 16: the last batch's other size must not break the weights
    // packed for the first. Every stage tapped: a fused block must not overwrite a tap.
    // 2×2 pooling of channels-last maps where the maps are large enough.
    let data = images(24, 3);
    let nets = [
        (Arch::Resnet18, Stem::Cifar, "layer1,layer2,layer3,layer4", 2),
        (Arch::Resnet18, Stem::Imagenet, "layer1,layer2,layer3,layer4", 1),
        (Arch::Resnet50, Stem::Imagenet, "layer1,layer2,layer3,layer4", 1),
        (Arch::Resnet20, Stem::Cifar, "layer1,layer2,layer3", 2),
        (Arch::Vgg11Bn, Stem::Cifar, "block1,block2,block3,block4,block5", 1),
        // random-best's network: VGG-11 without BN (the conv's own bias), blocks 1–2.
        (Arch::Vgg11, Stem::Cifar, "block1,block2", 2),
    ];
    for (arch, stem, taps, k) in nets {
        let mut net = Network::build(&cfg(arch, stem, InitScheme::Torchvision, 4)).unwrap();
        if arch != Arch::Vgg11 {
            extract::calibrate_batchnorm(&mut net, &data, 24, 0, &PRE, 8).unwrap();
        }
        let s = spec(&taps.split(',').collect::<Vec<_>>(), Pool::Avg, k);
        net.fold_batchnorm();
        assert!(!net.fuse(false));
        let plain = feats(&net, &s, &data);
        assert!(net.fuse(true), "{}: fused convs unavailable on this CPU libtorch", arch.name());
        let fused = feats(&net, &s, &data);
        let rel = ((&fused - &plain).abs().max() / plain.abs().max()).double_value(&[]);
        assert!(rel < 1e-4, "{} {stem:?}: fused differs by {rel:e} relative", arch.name());
    }
}

#[test]
fn calibration_changes_features_and_is_seeded() {
    let data = images(32, 2);
    let build = || Network::build(&cfg(Arch::Resnet18, Stem::Cifar, InitScheme::Torchvision, 0)).unwrap();
    let s = spec(&[], Pool::Avg, 1);
    let before = feats(&build(), &s, &data);
    let mut a = build();
    extract::calibrate_batchnorm(&mut a, &data, 32, 5, &PRE, 8).unwrap();
    let mut b = build();
    extract::calibrate_batchnorm(&mut b, &data, 32, 5, &PRE, 8).unwrap();
    let (fa, fb) = (feats(&a, &s, &data), feats(&b, &s, &data));
    assert!(fa.equal(&fb), "same seed, same calibration");
    assert!(!fa.allclose(&before, 1e-3, 1e-3, false), "calibration left the features unchanged");
    // Running stats are no longer the 0/1 of init.
    let rv = &a.vs.variables()["layer4.1.bn2.running_var"];
    assert!((rv - 1.0).abs().max().double_value(&[]) > 1e-3);
}

#[test]
fn taps_and_pooling_give_documented_dimensions() {
    let data = images(4, 3);
    let net = Network::build(&cfg(Arch::Resnet18, Stem::Cifar, InitScheme::Torchvision, 0)).unwrap();
    let dim = |t: &[&str], p, k| taps::feature_dim(&net, &spec(t, p, k), 32).unwrap();
    assert_eq!(dim(&[], Pool::Avg, 1), 512);
    assert_eq!(dim(&[], Pool::Avg, 2), 2048);
    assert_eq!(dim(&[], Pool::Avgmax, 2), 4096);
    assert_eq!(dim(&["layer2", "layer3", "layer4"], Pool::Avg, 1), 128 + 256 + 512);
    assert_eq!(feats(&net, &spec(&["layer3", "layer4"], Pool::Max, 2), &data).size(), [4, (256 + 512) * 4]);
    // layer4 of a CIFAR-stem ResNet-18 is 4×4 at 32×32 input.
    let err = taps::feature_dim(&net, &spec(&[], Pool::Avg, 5), 32).unwrap_err().to_string();
    assert_eq!(err, "--pool-size 5 is larger than the 4×4 map of layer4 at 32×32 input");
    let err = taps::feature_dim(&net, &spec(&["layer9"], Pool::Avg, 1), 32).unwrap_err().to_string();
    assert_eq!(err, "--features layer9: resnet18 has no such stage; choose from layer1, layer2, layer3, layer4");

    let vgg = Network::build(&cfg(Arch::Vgg11, Stem::Cifar, InitScheme::Torchvision, 0)).unwrap();
    assert_eq!(taps::feature_dim(&vgg, &spec(&[], Pool::Avg, 1), 32).unwrap(), 512);
    assert_eq!(taps::feature_dim(&vgg, &spec(&["fc2"], Pool::Avg, 1), 32).unwrap(), 4096);
    // `name:K` pools one tap K×K; --width-mult scales every stage's channels.
    assert_eq!(taps::feature_dim(&vgg, &spec(&["block1:4", "block2:2"], Pool::Avg, 1), 32).unwrap(), 64 * 16 + 128 * 4);
    let wide =
        Network::build(&ModelConfig { width_mult: 2.0, ..cfg(Arch::Vgg11, Stem::Cifar, InitScheme::Torchvision, 0) })
            .unwrap();
    assert_eq!(
        taps::feature_dim(&wide, &spec(&["block1:4", "block2:2"], Pool::Avg, 1), 32).unwrap(),
        2 * (64 * 16 + 128 * 4)
    );
    assert_eq!(taps::feature_dim(&wide, &spec(&[], Pool::Avg, 1), 32).unwrap(), 1024);
    let narrow = Network::build(&ModelConfig {
        width_mult: 0.5,
        ..cfg(Arch::Resnet18, Stem::Cifar, InitScheme::Torchvision, 0)
    })
    .unwrap();
    assert_eq!(taps::feature_dim(&narrow, &spec(&[], Pool::Avg, 1), 32).unwrap(), 256);
    let err = taps::feature_dim(&vgg, &spec(&["block1:0"], Pool::Avg, 1), 32).unwrap_err().to_string();
    assert_eq!(
        err,
        "--features block1:0: the pooling after ':' must be K (K×K cells) or W/S (W×W windows at stride S), \
         positive whole numbers"
    );
    // Windows: block1's 16×16 map, 5×5 at stride 3 gives 4×4 values per channel, 8×8 at
    // stride 4 gives 3×3.
    assert_eq!(taps::feature_dim(&vgg, &spec(&["block1:5/3"], Pool::Avg, 1), 32).unwrap(), 64 * 16);
    assert_eq!(taps::feature_dim(&vgg, &spec(&["block1:8/4"], Pool::Max, 1), 32).unwrap(), 64 * 9);
    let err = taps::feature_dim(&vgg, &spec(&["block5:2/1"], Pool::Avg, 1), 32).unwrap_err().to_string();
    assert_eq!(err, "--features block5:2/1: a 2×2 window exceeds the 1×1 map of block5 at 32×32 input");
    let err = taps::feature_dim(&vgg, &spec(&["block5:2"], Pool::Avg, 1), 32).unwrap_err().to_string();
    assert_eq!(err, "--pool-size 2 is larger than the 1×1 map of block5 at 32×32 input");
    let r20 = Network::build(&cfg(Arch::Resnet20, Stem::Cifar, InitScheme::Torchvision, 0)).unwrap();
    assert_eq!(taps::feature_dim(&r20, &spec(&[], Pool::Avg, 1), 32).unwrap(), 64);
    // He et al.'s ResNet-20 has 269,722 parameters (conv, BN affine, fc to 10 classes).
    let params: i64 = r20.vs.trainable_variables().iter().map(|t| t.numel() as i64).sum();
    assert_eq!(params, 269_722);
}

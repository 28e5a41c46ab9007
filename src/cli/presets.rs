//! Named bundles of `run` flags (`--preset NAME`). A preset's flags are inserted before the
//! user's, so any flag given on the command line wins. Each preset's flags come from a
//! study whose every row is in `results/` (see README, "How good are untrained CNN
//! features?").
use std::ffi::OsString;

pub struct Preset {
    pub name: &'static str,
    pub about: &'static str,
    /// Flags for every weight source.
    pub flags: &'static [&'static str],
    /// Flags that only apply to random weights (pretrained checkpoints fix widths and stem).
    pub random_only: &'static [&'static str],
}

pub const PRESETS: &[Preset] = &[
    Preset {
        name: "random-best",
        about: "the best untrained-feature recipe of results/random_study.csv, chosen on validation: \
            VGG-11 with torchvision's init (no data in the weights), CIFAR stem, 4x wide; block1 \
            pooled 4x4 + block2 pooled 2x2 (6144 features); each image one row, the mean of its \
            two mirrored views; kernel ridge readout on the arc-cosine kernel with λ chosen on \
            validation (--solver lbfgs gives the linear probe of the earlier finalists)",
        flags: &[
            "--arch",
            "vgg11",
            "--features",
            "block1:4,block2:2",
            "--pool",
            "avg",
            "--hflip",
            "--hflip-test",
            "--solver",
            "kernel",
            "--wd-search",
            "--normalize",
            "standardize",
        ],
        random_only: &["--stem", "cifar", "--width-mult", "4"],
    },
    Preset {
        name: "random-patches",
        about: "the best data-free recipe of results/random_study.csv since 29 November, chosen on \
            validation (issue 13): patches-best's one-layer patch network with nothing from the \
            data: 1024 random 6x6 filters (uniform directions from the seed), no whitening, \
            cosine responses soft-thresholded at 0.1 with both polarities, averaged over 3x3 \
            overlapping windows (13x13 at stride 7: 18432 features); kernel ridge readout on the \
            arc-cosine kernel averaged over the four pairs of two images' mirrored views \
            (--kernel-views pairs), rows in bf16, λ chosen on validation (--kernel-views mean \
            --kernel-precision fp32 gives the earlier finalists). random-best stays the \
            deep-network recipe (and the one with a pretrained comparison)",
        flags: &[
            "--arch",
            "patchnet",
            "--width-mult",
            "4",
            "--encode",
            "soft:0.1",
            "--features",
            "encode:13/7",
            "--hflip",
            "--hflip-test",
            "--solver",
            "kernel",
            "--wd-search",
            "--normalize",
            "standardize",
            "--kernel-precision",
            "bf16",
            "--kernel-views",
            "pairs",
        ],
        random_only: &[],
    },
    Preset {
        name: "transfer",
        about: "the standard linear transfer protocol on torchvision's ImageNet weights (Kornblith et al. \
            2019; Ericsson et al. 2021): ResNet-50, images resized to 224 px with bicubic \
            interpolation, ImageNet mean/std, the penultimate (globally average-pooled) features, \
            L-BFGS with the L2 strength chosen on a 20% validation split, then a refit on \
            train+val. Ericsson et al. report 91.47% CIFAR-10 test top-1 for this setting",
        flags: &[
            "--arch",
            "resnet50",
            "--weights",
            "imagenet",
            "--input-size",
            "224",
            "--resize",
            "bicubic",
            "--input-norm",
            "imagenet",
            "--solver",
            "lbfgs",
            "--wd-search",
            "--val-fraction",
            "0.2",
            "--normalize",
            "standardize",
        ],
        random_only: &[],
    },
    Preset {
        name: "patches-best",
        about: "the best no-gradient recipe of results/random_study.csv so far, chosen on validation \
            (issue 13): one layer of 3072 6x6 filters, each a ZCA-whitened patch sampled from the \
            train images (no labels, no gradients, but not data-free), cosine responses \
            soft-thresholded at 0.25 with both polarities, averaged over 3x3 overlapping windows \
            (13x13 at stride 7 on the 27x27 responses: 55296 features); each image one row, the \
            mean of its two mirrored views, averaged as extracted and held in bf16 \
            (--kernel-precision bf16-lean); kernel ridge readout on the arc-cosine kernel with λ \
            chosen on validation, as in random-best (--width-mult 4 --kernel-precision fp32 \
            gives the earlier finalists, --solver lbfgs --kernel-precision fp32 their linear probe)",
        flags: &[
            "--arch",
            "patchnet",
            "--width-mult",
            "12",
            "--whiten",
            "patch-zca:0.1",
            "--first-layer",
            "patches",
            "--encode",
            "soft:0.25",
            "--features",
            "encode:13/7",
            "--hflip",
            "--hflip-test",
            "--solver",
            "kernel",
            "--wd-search",
            "--normalize",
            "standardize",
            "--kernel-precision",
            "bf16-lean",
        ],
        random_only: &[],
    },
];

pub fn find(name: &str) -> Option<&'static Preset> {
    PRESETS.iter().find(|p| p.name == name)
}

/// `--preset` values for clap.
pub fn parse(name: &str) -> Result<String, String> {
    match find(name) {
        Some(p) => Ok(p.name.to_string()),
        None => Err(format!(
            "no preset '{name}'; choose from {}",
            PRESETS.iter().map(|p| p.name).collect::<Vec<_>>().join(", ")
        )),
    }
}

/// The value of `--flag V` or `--flag=V` in `args`, if given (the last one wins, as in clap).
fn value_of(args: &[OsString], flag: &str) -> Option<String> {
    let mut found = None;
    let mut it = args.iter().map(|a| a.to_string_lossy());
    while let Some(a) = it.next() {
        if a == flag {
            found = it.next().map(|v| v.into_owned());
        } else if let Some(v) = a.strip_prefix(flag).and_then(|r| r.strip_prefix('=')) {
            found = Some(v.to_string());
        }
    }
    found
}

/// Inserts the flags of `run --preset NAME` right after `run`, before the user's own flags
/// (which then override them). An unknown name is left for clap to report.
pub fn expand(args: Vec<OsString>) -> Vec<OsString> {
    if args.get(1).is_none_or(|a| a != "run") {
        return args;
    }
    let Some(preset) = value_of(&args[2..], "--preset").and_then(|n| find(&n)) else {
        return args;
    };
    let random = value_of(&args[2..], "--weights").is_none_or(|w| w == "random");
    let mut out: Vec<OsString> = args[..2].to_vec();
    out.extend(preset.flags.iter().map(OsString::from));
    if random {
        out.extend(preset.random_only.iter().map(OsString::from));
    }
    out.extend(args[2..].iter().cloned());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn user_flags_come_after_the_preset() {
        let out = expand(os(&["cnnprobe", "run", "--preset", "random-best", "--width-mult", "2"]));
        let pos = |f: &str| out.iter().rposition(|a| a == f).unwrap();
        assert!(pos("--width-mult") > pos("--hflip"));
        assert_eq!(out.last().unwrap(), "2");
        assert_eq!(out.iter().filter(|a| *a == "--width-mult").count(), 2);
    }

    #[test]
    fn pretrained_weights_drop_the_random_only_flags() {
        let out = expand(os(&["cnnprobe", "run", "--preset=random-best", "--weights", "imagenet"]));
        assert!(out.iter().all(|a| a != "--width-mult" && a != "--stem"));
        assert!(out.iter().any(|a| a == "--hflip"));
    }

    #[test]
    fn transfer_sets_the_protocol_and_yields_to_the_user() {
        let out = expand(os(&["cnnprobe", "run", "--preset", "transfer", "--arch", "vgg16"]));
        for (flag, value) in [("--resize", "bicubic"), ("--weights", "imagenet"), ("--val-fraction", "0.2")] {
            assert_eq!(value_of(&out, flag).as_deref(), Some(value), "{flag}");
        }
        assert_eq!(value_of(&out, "--arch").as_deref(), Some("vgg16"));
    }

    #[test]
    fn patches_best_is_the_patch_network_with_its_data_steps() {
        let out = expand(os(&["cnnprobe", "run", "--preset", "patches-best", "--encode", "soft:0.1"]));
        for (flag, value) in [("--arch", "patchnet"), ("--whiten", "patch-zca:0.1"), ("--first-layer", "patches")] {
            assert_eq!(value_of(&out, flag).as_deref(), Some(value), "{flag}");
        }
        assert_eq!(value_of(&out, "--encode").as_deref(), Some("soft:0.1"));
    }

    #[test]
    fn other_commands_and_unknown_presets_are_untouched() {
        let a = os(&["cnnprobe", "extract", "--preset", "random-best"]);
        assert_eq!(expand(a.clone()), a);
        let b = os(&["cnnprobe", "run", "--preset", "nope"]);
        assert_eq!(expand(b.clone()), b);
    }
}

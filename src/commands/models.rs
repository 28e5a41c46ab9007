//! `cnnprobe models`: the architectures, their stages, default features and presets.
use crate::cli::presets::PRESETS;
use crate::models::Arch;
use anyhow::Result;
use clap::ValueEnum;

/// `cnnprobe models`: every architecture with its stages and default features.
pub fn print() -> Result<()> {
    println!("{:<10} {:<9} description", "arch", "stages");
    for arch in Arch::value_variants() {
        let stages = if *arch == Arch::Patchnet {
            "encode"
        } else if arch.is_vgg() {
            "block1-5"
        } else if arch.is_cifar_resnet() {
            "layer1-3"
        } else {
            "layer1-4"
        };
        println!("{:<10} {:<9} {}", arch.name(), stages, arch.describe());
    }
    println!();
    println!("Features: the last stage, globally average-pooled, unless --features/--taps names stages");
    println!("(pooled with --pool avg|max|avgmax over --pool-size K×K cells, or per stage NAME:K cells or");
    println!("NAME:W/S windows of W×W at stride S, then concatenated) or fc2 (VGG).");
    println!("Init (--init): torchvision (default; the family's torchvision formulas), pytorch-default,");
    println!("kaiming-normal, xavier-uniform, orthogonal, normal:STD, uniform:A. Drawn on the CPU from --seed.");
    println!();
    println!("Presets (run --preset NAME; flags given on the command line override them):");
    for p in PRESETS {
        println!("  {}: {}", p.name, p.about);
        println!("    flags: {}", p.flags.join(" "));
        if !p.random_only.is_empty() {
            println!("    with random weights also: {}", p.random_only.join(" "));
        }
    }
    Ok(())
}

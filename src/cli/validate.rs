//! Flags → validated configs. Every default that depends on other flags is derived here,
//! once; a bad combination fails with one sentence (exit code 2) before any work starts.
use super::args::*;
use crate::config::{CompareConfig, ExtractJob, FitConfig, PlotConfig, RunConfig};
use crate::data::{source, DataConfig, DatasetName, InputNorm};
use crate::features::{cache, ExtractConfig, FeatureSpec};
use crate::models::{ModelConfig, Stem, WeightsSource};
use crate::probe::kernel::KernelFn;
use crate::probe::{KernelPrecision, KernelViews, ProbeConfig, Solver};
use crate::report::{OutputConfig, RUNS_DIR};
use crate::util::device::Compute;
use crate::util::names::value_name;
use anyhow::{bail, Result};
use std::path::PathBuf;

impl ModelArgs {
    /// The model with the input size and normalisation its weights call for.
    pub fn resolve(&self) -> Result<(ModelConfig, i64, InputNorm)> {
        let stem = match (self.stem, self.arch.cifar_only()) {
            (Some(Stem::Imagenet), true) => {
                bail!("--stem imagenet: {} is made for 32×32 images and only has the cifar stem", self.arch.name())
            }
            (Some(s), _) => s,
            (None, true) => Stem::Cifar,
            (None, false) => Stem::Imagenet,
        };
        if self.weights == WeightsSource::Imagenet {
            if !self.arch.in_torchvision() {
                bail!("--weights imagenet: torchvision publishes no ImageNet weights for {}", self.arch.name());
            }
            if stem == Stem::Cifar {
                bail!("--weights imagenet needs --stem imagenet: torchvision's checkpoints have the ImageNet stem");
            }
        }
        if self.width_mult != 1.0 && self.weights != WeightsSource::Random {
            bail!("--width-mult {} changes every layer's shape; it needs --weights random", self.width_mult);
        }
        let patchnet = self.arch == crate::models::Arch::Patchnet;
        if self.whiten.is_some_and(|w| w.patches) && !patchnet {
            bail!("--whiten patch-zca whitens --arch patchnet's patches; use --whiten zca for whole images");
        }
        if !self.encode.is_none() && !patchnet {
            bail!(
                "--encode {} is for --arch patchnet, whose responses are signed; other networks' stages end in a ReLU",
                self.encode
            );
        }
        if self.ensemble > 1 && self.weights != WeightsSource::Random {
            bail!("--ensemble {} draws several networks; it needs --weights random", self.ensemble);
        }
        if !self.first_layer.is_random() && self.weights != WeightsSource::Random {
            bail!("--first-layer {} replaces random filters; it needs --weights random", self.first_layer);
        }
        let pretrained = self.weights == WeightsSource::Imagenet;
        let input_size = self.input_size.map(|n| n as i64).unwrap_or(if pretrained { 224 } else { 32 });
        let random = self.weights == WeightsSource::Random;
        let input_norm = self.input_norm.unwrap_or(if random { InputNorm::Dataset } else { InputNorm::Imagenet });
        let model = ModelConfig {
            arch: self.arch,
            stem,
            init: self.init,
            zero_init_residual: self.zero_init_residual,
            seed: self.seed,
            width_mult: self.width_mult,
        };
        Ok((model, input_size, input_norm))
    }

    /// The extraction these flags describe, on the data of `data`.
    pub fn extract_config(&self, data: &DataArgs) -> Result<ExtractConfig> {
        let (model, input_size, input_norm) = self.resolve()?;
        data.check(self.input_size)?;
        Ok(ExtractConfig {
            data: data.config(self.input_size),
            model,
            weights: self.weights.clone(),
            weights_mirror: self.weights_mirror.clone(),
            input_size,
            resize: self.resize,
            input_norm,
            bn: self.bn,
            fold_bn: self.fold_bn,
            whiten: self.whiten,
            first_layer: self.first_layer,
            ensemble: self.ensemble,
            fused: self.fused,
            allow_degenerate: self.allow_degenerate,
            features: FeatureSpec {
                taps: self.features.clone(),
                pool: self.pool,
                pool_size: self.pool_size as i64,
                encode: self.encode,
            },
            hflip: self.hflip,
            hflip_test: self.hflip_test,
            lean: false,
            lean_views: false,
            compute: self.compute.config(),
            batch_size: self.batch_size,
            precision: self.precision,
        })
    }
}

impl DataArgs {
    /// The folder-only flags make sense together.
    fn check(&self, input_size: Option<usize>) -> Result<()> {
        if self.dataset == DatasetName::Folder && self.data.is_none() {
            bail!("--dataset folder needs --data DIR (with train/<class>/ and test/<class>/ inside)");
        }
        if self.center_crop && (self.dataset != DatasetName::Folder || input_size.is_none()) {
            bail!("--center-crop needs --dataset folder and --input-size N (the crop's size)");
        }
        Ok(())
    }

    /// `folder_size`: a folder dataset is resized at load time only when --input-size is given.
    pub fn config(&self, folder_size: Option<usize>) -> DataConfig {
        DataConfig {
            dataset: self.dataset,
            labels: self.labels,
            data: self.data.clone(),
            data_dir: self.data_dir.clone().unwrap_or_else(source::default_data_dir),
            mirror: self.mirror.clone(),
            archive_md5: self.archive_md5.clone(),
            limit: self.limit,
            skip_bad_images: self.skip_bad_images,
            folder_size,
            center_crop: self.center_crop,
            shard: None,
            workers: self.workers.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
        }
    }
}

impl ComputeArgs {
    pub fn config(&self) -> Compute {
        let threads = self.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        Compute { device: self.device.clone(), threads }
    }
}

impl ProbeArgs {
    /// `--kernel-precision bf16-lean`: the extraction's part of it.
    fn lean(&self) -> bool {
        self.kernel_precision == KernelRows::Bf16Lean
    }

    pub fn config(&self, seed: u64) -> Result<ProbeConfig> {
        if self.kernel_precision != KernelRows::Fp32 && self.solver != Solver::Kernel {
            bail!(
                "--kernel-precision {} sets how --solver kernel holds its features; this run uses --solver {} \
                 (add --kernel-precision fp32)",
                value_name(&self.kernel_precision),
                value_name(&self.solver)
            );
        }
        if self.kernel != KernelFn::default() && self.solver != Solver::Kernel {
            bail!(
                "--kernel {} is --solver kernel's kernel; this run uses --solver {}",
                self.kernel,
                value_name(&self.solver)
            );
        }
        if self.kernel_views != KernelViews::Mean && self.solver != Solver::Kernel {
            bail!(
                "--kernel-views {} is --solver kernel's; this run uses --solver {} (linear heads train on \
                 both views already)",
                value_name(&self.kernel_views),
                value_name(&self.solver)
            );
        }
        Ok(ProbeConfig {
            val_fraction: self.val_fraction,
            solver: self.solver,
            normalize: self.normalize,
            weight_decay: self.weight_decay,
            wd_search: self.wd_search,
            epochs: self.epochs,
            lr: self.lr,
            batch_size: self.probe_batch_size,
            schedule: self.schedule,
            patience: self.patience,
            max_iter: self.max_iter,
            seed,
            val_only: self.val_only,
            kernel_precision: match self.kernel_precision {
                KernelRows::Fp32 => KernelPrecision::Fp32,
                KernelRows::Bf16 | KernelRows::Bf16Lean => KernelPrecision::Bf16,
            },
            kernel: self.kernel,
            kernel_views: self.kernel_views,
        })
    }
}

impl OutputArgs {
    fn config(&self, save_head: Option<PathBuf>, preset: Option<String>) -> OutputConfig {
        OutputConfig {
            out: self.out.clone(),
            summary: self.summary.clone(),
            cache_dir: (!self.no_cache).then(|| self.cache_dir.clone().unwrap_or_else(cache::default_dir)),
            save_head,
            tag: self.tag.clone(),
            preset,
        }
    }
}

impl RunArgs {
    pub fn config(&self, preset: Option<String>) -> Result<RunConfig> {
        if self.probe.kernel_views == KernelViews::Pairs && !self.model.hflip {
            bail!("--kernel-views pairs compares both mirrored views of each image: add --hflip (and --hflip-test)");
        }
        Ok(RunConfig {
            extract: ExtractConfig {
                lean: self.probe.lean(),
                lean_views: self.probe.lean() && self.probe.kernel_views == KernelViews::Pairs,
                ..self.model.extract_config(&self.data)?
            },
            probe: self.probe.config(self.model.seed)?,
            output: self.output.config(self.probe.save_head.clone(), preset),
        })
    }
}

impl ExtractArgs {
    pub fn config(&self) -> Result<ExtractJob> {
        let mut extract = self.model.extract_config(&self.data)?;
        extract.data.shard = self.shard;
        Ok(ExtractJob { extract, dir: self.output.clone(), format: self.format })
    }
}

impl ScanArgs {
    pub fn config(&self) -> Result<DataConfig> {
        if self.data.dataset != DatasetName::Folder {
            bail!("scan reads image folders: pass --dataset folder --data DIR");
        }
        self.data.check(self.input_size)?;
        Ok(self.data.config(self.input_size))
    }
}

impl FitArgs {
    pub fn config(&self) -> Result<FitConfig> {
        if self.probe.lean() {
            bail!("--kernel-precision bf16-lean changes how run extracts features; fit reads features exported before (use bf16)");
        }
        Ok(FitConfig {
            features: self.features.clone(),
            compute: self.compute.config(),
            probe: self.probe.config(self.seed)?,
            output: self.output.config(self.probe.save_head.clone(), None),
        })
    }
}

impl CompareArgs {
    pub fn config(&self) -> Result<CompareConfig> {
        if self.run.model.weights != WeightsSource::Random {
            bail!("compare runs both random and imagenet weights itself: drop --weights");
        }
        let random = self.run.config(None)?;
        let mut model = self.run.model.clone();
        model.weights = WeightsSource::Imagenet;
        model.seed = self.seeds[0];
        let pretrained = if !self.run.model.arch.in_torchvision() {
            Err(format!("no torchvision ImageNet weights for {}", self.run.model.arch.name()))
        } else if random.extract.model.stem != Stem::Imagenet {
            Err("not applicable: torchvision checkpoints have the ImageNet stem".into())
        } else {
            // The pretrained defaults (224 px, ImageNet statistics) come from the same place as run's.
            let args = RunArgs { model, ..self.run.clone() };
            args.config(None).map_err(|e| format!("{e:#}"))
        };
        let table = self.table.clone().unwrap_or_else(|| {
            let name = format!("{}-{}.csv", random.extract.data.dataset_name(), random.extract.model.arch.name());
            PathBuf::from(RUNS_DIR).join("compare").join(name)
        });
        Ok(CompareConfig { random, seeds: self.seeds.clone(), pretrained, table })
    }
}

impl PlotArgs {
    pub fn config(&self) -> PlotConfig {
        PlotConfig {
            csv: self.csv.clone(),
            output: self.output.clone(),
            title: self.title.clone(),
            by: self.by.clone(),
            metric: self.metric.clone(),
        }
    }
}

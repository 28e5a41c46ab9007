//! torchvision's official ImageNet checkpoints: where they are published, and where
//! torchvision caches them, so an existing torchvision cache is reused as it is.
use super::Arch;
use crate::util::fetch::{self, Checksum};
use anyhow::{anyhow, Result};
use std::path::PathBuf;

/// Where torchvision publishes its checkpoints.
pub const TORCHVISION_BASE: &str = "https://download.pytorch.org/models";

/// torchvision's checkpoint file name for `arch` (`IMAGENET1K_V1`); the 8 hex digits
/// after the dash are the start of the file's sha256.
pub fn checkpoint_file(arch: Arch) -> Option<&'static str> {
    Some(match arch {
        Arch::Resnet18 => "resnet18-f37072fd.pth",
        Arch::Resnet34 => "resnet34-b627a593.pth",
        Arch::Resnet50 => "resnet50-0676ba61.pth",
        Arch::Resnet101 => "resnet101-63fe2227.pth",
        Arch::Resnet152 => "resnet152-394f9c45.pth",
        Arch::Vgg11 => "vgg11-8a719046.pth",
        Arch::Vgg13 => "vgg13-19584684.pth",
        Arch::Vgg16 => "vgg16-397923af.pth",
        Arch::Vgg19 => "vgg19-dcbb9e9d.pth",
        Arch::Vgg11Bn => "vgg11_bn-6002323d.pth",
        Arch::Vgg13Bn => "vgg13_bn-abd245e5.pth",
        Arch::Vgg16Bn => "vgg16_bn-6c64b313.pth",
        Arch::Vgg19Bn => "vgg19_bn-c79401a0.pth",
        _ => return None,
    })
}

/// torch.hub's checkpoint dir: `$TORCH_HOME/hub/checkpoints`, else
/// `$XDG_CACHE_HOME/torch/hub/checkpoints`, else `~/.cache/torch/hub/checkpoints`.
pub fn hub_checkpoints_dir() -> PathBuf {
    let env = |k| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    let torch_home = env("TORCH_HOME")
        .or_else(|| env("XDG_CACHE_HOME").map(|c| c.join("torch")))
        .or_else(|| env("HOME").map(|h| h.join(".cache").join("torch")))
        .unwrap_or_else(|| PathBuf::from(".torch"));
    torch_home.join("hub").join("checkpoints")
}

/// The cached checkpoint of `arch`, downloaded (with progress, sha256-prefix verified)
/// when absent. `mirror` replaces torchvision's base URL.
pub fn ensure_checkpoint(arch: Arch, mirror: Option<&str>) -> Result<PathBuf> {
    let file = checkpoint_file(arch)
        .ok_or_else(|| anyhow!("--weights imagenet: torchvision publishes no ImageNet weights for {}", arch.name()))?;
    let path = hub_checkpoints_dir().join(file);
    if path.is_file() {
        return Ok(path);
    }
    let url = url(file, mirror);
    fetch::download(&url, &path, &Checksum::Sha256Prefix(sha256_prefix(file).to_string())).map_err(|e| {
        e.context(format!(
            "--weights imagenet: {url} is not available offline; place that file at {} (torchvision's cache, moved by $TORCH_HOME)",
            path.display()
        ))
    })?;
    Ok(path)
}

/// Where `file` is downloaded from: torchvision's server, or `mirror`.
pub fn url(file: &str, mirror: Option<&str>) -> String {
    format!("{}/{file}", mirror.unwrap_or(TORCHVISION_BASE).trim_end_matches('/'))
}

/// The sha256 prefix in a torchvision file name (`resnet18-f37072fd.pth` → `f37072fd`).
pub fn sha256_prefix(file: &str) -> &str {
    file.rsplit_once('-').map(|(_, h)| h.trim_end_matches(".pth")).unwrap_or_default()
}

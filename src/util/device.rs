//! `--device auto|cpu|cuda|cuda:N` → a tch Device, with a clear error when it is absent.
use anyhow::{bail, Result};
use tch::{Cuda, Device};

/// Checks the syntax only (used while parsing flags).
pub fn parse_spec(s: &str) -> Result<String, String> {
    match s {
        "auto" | "cpu" | "cuda" => Ok(s.to_string()),
        _ => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(_)) => Ok(s.to_string()),
            _ => Err(format!("'{s}' is not a device: use auto, cpu, cuda or cuda:N")),
        },
    }
}

/// Resolves a spec against the machine.
pub fn resolve(spec: &str) -> Result<Device> {
    let cuda = Cuda::is_available();
    let count = Cuda::device_count() as usize;
    match spec {
        "auto" => Ok(if cuda { Device::Cuda(0) } else { Device::Cpu }),
        "cpu" => Ok(Device::Cpu),
        _ => {
            let index = spec.strip_prefix("cuda:").and_then(|n| n.parse().ok()).unwrap_or(0);
            if !cuda {
                bail!(
                    "--device {spec}: CUDA is not available on this machine (libtorch sees no GPU); use --device cpu"
                );
            }
            if index >= count {
                bail!("--device {spec}: this machine has {count} CUDA device(s), cuda:0..cuda:{}", count - 1);
            }
            Ok(Device::Cuda(index))
        }
    }
}

/// The name recorded in logs: cpu or cuda:N.
pub fn name(d: Device) -> String {
    match d {
        Device::Cuda(i) => format!("cuda:{i}"),
        _ => "cpu".into(),
    }
}

/// Where the work runs: a device spec (checked against the machine by `setup`) and the
/// libtorch CPU thread count.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Compute {
    pub device: String,
    pub threads: usize,
}

impl Compute {
    /// Sets the thread count and resolves the device.
    pub fn setup(&self) -> Result<Device> {
        tch::set_num_threads(self.threads as i32);
        let device = resolve(&self.device)?;
        if device.is_cuda() {
            Cuda::cudnn_set_benchmark(cudnn_search());
        }
        Ok(device)
    }
}

/// Whether cuDNN times its kernels for each new input shape and keeps the fastest
/// (`CNNPROBE_CUDNN_BENCHMARK=1`) rather than taking its heuristic's choice (the default, as
/// in PyTorch). Measured on an H100 (results/gpu_check.csv), the search costs 0.6–0.8 s per
/// shape and buys ~10% per batch: a loss for CIFAR-sized jobs, a gain for hours-long ones.
pub fn cudnn_search() -> bool {
    std::env::var("CNNPROBE_CUDNN_BENCHMARK").is_ok_and(|v| v == "1")
}

/// The libtorch version this process runs on, and where the loader found it: a portable
/// binary may run on another install than the one it was built against.
pub fn libtorch_runtime() -> (String, Option<std::path::PathBuf>) {
    let dir = super::libtorch::loaded_lib_dir();
    let version =
        dir.as_deref().and_then(super::libtorch::version_of).unwrap_or_else(|| crate::LIBTORCH_VERSION.into());
    (version, dir)
}

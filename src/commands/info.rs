//! `cnnprobe info`: what this binary sees.
use anyhow::Result;

pub fn print() -> Result<()> {
    println!("cnnprobe: {}", crate::VERSION);
    println!("libtorch: {}", crate::LIBTORCH_VERSION);
    println!("threads: {}", tch::get_num_threads());
    if tch::Cuda::is_available() {
        println!(
            "cuda: available, {} device(s), cudnn: {}",
            tch::Cuda::device_count(),
            tch::Cuda::cudnn_is_available()
        );
    } else {
        println!("cuda: not available");
    }
    Ok(())
}

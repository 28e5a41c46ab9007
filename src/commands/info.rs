//! `cnnprobe info`: what this binary sees.
use anyhow::Result;

pub fn print() -> Result<()> {
    println!("cnnprobe: {}", crate::VERSION);
    let (version, dir) = crate::util::device::libtorch_runtime();
    match dir {
        Some(dir) => println!("libtorch: {version} ({})", dir.display()),
        None => println!("libtorch: {version} (location unknown; the build-time version)"),
    }
    println!("built against libtorch: {}", crate::LIBTORCH_VERSION);
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

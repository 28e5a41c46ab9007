//! Makes the binary (and test binaries) run without LD_LIBRARY_PATH and see CUDA.
//!
//! torch-sys exports the libtorch lib dir as DEP_TCH_LIBTORCH_LIB (its `links = "tch"`).
//! We add a RUNPATH to it, and when the CUDA build of libtorch is present we link
//! `torch_cuda` with --no-as-needed: nothing references its symbols directly, so the
//! linker would otherwise drop it and `tch::Cuda::is_available()` would be false.
//! We also record the libtorch version for the result logs, and compile the C++ shim that
//! reaches oneDNN's fused convolutions (src/models/fused.cpp) against the same libtorch.
use std::{env, path::Path};

// The same reader the binary uses for the run-time version.
#[allow(dead_code)]
#[path = "src/util/libtorch.rs"]
mod libtorch;

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    println!("cargo:rerun-if-changed=build.rs");
    let lib_dir = env::var("DEP_TCH_LIBTORCH_LIB").unwrap_or_default();
    let version = libtorch::version_of(Path::new(&lib_dir)).unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=CNNPROBE_LIBTORCH_VERSION={version}");
    if lib_dir.is_empty() {
        println!("cargo:warning=DEP_TCH_LIBTORCH_LIB not set; no rpath added");
        return;
    }
    compile_fused_shim(Path::new(&lib_dir));
    println!("cargo:rustc-link-arg=-Wl,--enable-new-dtags,-rpath,{lib_dir}");
    if Path::new(&lib_dir).join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-L{lib_dir}");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-ltorch");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
}

/// Builds src/models/fused.cpp with torch-sys's flags (C++17, the C++ ABI libtorch was built
/// with) and sets `cnnprobe_fused`; without it the Rust side reports the fused path absent.
fn compile_fused_shim(lib_dir: &Path) {
    println!("cargo:rustc-check-cfg=cfg(cnnprobe_fused)");
    println!("cargo:rerun-if-changed=src/models/fused.cpp");
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    let Some(root) = lib_dir.parent() else { return };
    let include = root.join("include");
    cc::Build::new()
        .cpp(true)
        .pic(true)
        .warnings(false)
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .flag("-std=c++17")
        .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={}", cxx11_abi(lib_dir)))
        .file("src/models/fused.cpp")
        .compile("cnnprobe_fused");
    println!("cargo:rustc-cfg=cnnprobe_fused");
}

/// torch-sys's answer when scripts/env.sh gave one; else read from libc10.so, whose
/// std::string symbols carry `__cxx11` only under the new ABI (PyPI wheels since 2.7).
fn cxx11_abi(lib_dir: &Path) -> &'static str {
    if let Ok(v) = env::var("LIBTORCH_CXX11_ABI") {
        return if v.trim() == "0" { "0" } else { "1" };
    }
    let bytes = std::fs::read(lib_dir.join("libc10.so")).unwrap_or_default();
    if bytes.windows(7).any(|w| w == b"__cxx11") {
        "1"
    } else {
        "0"
    }
}

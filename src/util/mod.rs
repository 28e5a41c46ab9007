//! What every stage leans on and nothing else: atomic files, downloads, signals, progress
//! bars and the compute device. Nothing here imports a pipeline stage.
pub mod device;
pub mod digest;
pub mod fetch;
pub mod files;
pub mod interrupt;
pub mod libtorch;
pub mod memory;
pub mod names;
pub mod progress;

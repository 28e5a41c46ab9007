//! Frozen features: which stages to tap and how to pool them (`taps`), the batched
//! extraction loop (`extract`), a whole run's train/test features (`set`), the feature
//! cache (`cache`), feature files on disk (`store`) and first-layer filters sampled from
//! training patches (`patches`).
pub mod cache;
pub mod export;
pub mod extract;
pub mod npy;
pub mod patches;
pub mod set;
pub mod store;
pub mod taps;

pub use extract::{BatchSize, BnSetting, Features, FusedConvs, Precision, Preprocess, Resize};
pub use set::{extract_features, ExtractConfig, FeatureSet};
pub use taps::{Encode, FeatureSpec, Pool};

//! Loading state dicts into a network's VarStore; reading them from files is
//! `checkpoint`'s job.
use super::checkpoint::list;
use anyhow::{anyhow, bail, Result};
use std::path::Path;
use tch::{nn, Tensor};

pub use super::checkpoint::read_state_dict;

/// Copies a state dict into `vs`'s variables, strictly by name.
///
/// Nothing is copied unless every variable has a same-shaped tensor in `tensors` and every
/// tensor has a variable; otherwise one error lists the missing keys, the unexpected keys and
/// the shape mismatches. Values are converted to each variable's kind and device; the
/// variables take over the tensors' memory.
pub fn load_into(vs: &nn::VarStore, tensors: Vec<(String, Tensor)>, source: &Path) -> Result<()> {
    let vars = vs.variables();
    let mut seen = std::collections::HashSet::new();
    let mut unexpected = Vec::new();
    let mut wrong = Vec::new();
    let mut duplicate = Vec::new();
    for (name, t) in &tensors {
        if !seen.insert(name.as_str()) {
            duplicate.push(name.clone());
            continue;
        }
        match vars.get(name) {
            None => unexpected.push(name.clone()),
            Some(v) => {
                let (fs, ms) = (t.size(), v.size());
                if fs != ms {
                    wrong.push(format!("{name}: file {fs:?}, model {ms:?}"));
                }
            }
        }
    }
    let mut missing: Vec<String> = vars.keys().filter(|k| !seen.contains(k.as_str())).cloned().collect();
    missing.sort();
    if !(missing.is_empty() && unexpected.is_empty() && wrong.is_empty() && duplicate.is_empty()) {
        let mut parts = Vec::new();
        if !missing.is_empty() {
            parts.push(format!("missing keys {}", list(&missing, 10)));
        }
        if !unexpected.is_empty() {
            parts.push(format!("unexpected keys {}", list(&unexpected, 10)));
        }
        if !wrong.is_empty() {
            parts.push(format!("wrong shapes {}", list(&wrong, 10)));
        }
        if !duplicate.is_empty() {
            parts.push(format!("duplicate keys {}", list(&duplicate, 10)));
        }
        bail!("{} does not fit the network: {}", source.display(), parts.join("; "));
    }
    // Each variable takes the file's tensor as its data instead of copying it: no second copy
    // of a 0.5 GB checkpoint, and no libtorch copy kernel (an OpenMP region per tensor, slow on
    // a busy machine). `checkpoint` hands out tensors that share no memory.
    tch::no_grad(|| -> Result<()> {
        for (name, t) in tensors {
            if let Some(v) = vars.get(&name) {
                let converted = t.f_to_device(v.device()).and_then(|t| t.f_to_kind(v.kind()));
                let mut v = v.shallow_clone();
                converted
                    .and_then(|t| v.f_set_data(&t))
                    .map_err(|e| anyhow!("{}: cannot load {name} into the network: {e}", source.display()))?;
            }
        }
        Ok(())
    })
}

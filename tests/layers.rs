//! The house rule that keeps the pipeline readable: a module imports only modules of lower
//! layers (util → data → models → features → probe → report → config → cli → commands).
//! Read from the sources, like the before-stop hook's cycle check, but stricter: an upward
//! import fails even where it closes no cycle.
use std::path::{Path, PathBuf};

const LAYERS: &[&str] = &["util", "data", "models", "features", "probe", "report", "config", "cli", "commands"];

fn rank(module: &str) -> Option<usize> {
    LAYERS.iter().position(|m| *m == module)
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The top-level modules that `text` names through `crate::x` paths or `use crate::{x, …}`.
fn imports(text: &str) -> Vec<String> {
    // Unit tests may reach anywhere.
    let text = text.split("#[cfg(test)]").next().unwrap_or("");
    let mut found = Vec::new();
    for (i, _) in text.match_indices("crate::") {
        let rest = &text[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let group = &group[..group.find('}').unwrap_or(group.len())];
            found.extend(group.split(',').filter_map(|s| s.trim().split("::").next()).map(str::to_string));
        } else {
            found.push(rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect());
        }
    }
    found
}

#[test]
fn lower_layers_never_import_upper_ones() {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut violations = Vec::new();
    let mut modules = 0;
    for entry in std::fs::read_dir(&src).unwrap().flatten() {
        let p = entry.path();
        let name = p.file_stem().unwrap().to_string_lossy().into_owned();
        if name == "main" || name == "lib" {
            continue;
        }
        let own = rank(&name).unwrap_or_else(|| panic!("src/{name}: a top-level module outside the layer list"));
        modules += 1;
        let mut files = Vec::new();
        if p.is_dir() {
            rust_files(&p, &mut files);
        } else {
            files.push(p.clone());
        }
        for f in files {
            for m in imports(&std::fs::read_to_string(&f).unwrap()) {
                if rank(&m).is_some_and(|r| r > own) {
                    violations.push(format!("{} imports {m}", f.strip_prefix(&src).unwrap().display()));
                }
            }
        }
    }
    assert_eq!(modules, LAYERS.len(), "every layer is a module of src/");
    assert!(violations.is_empty(), "upward imports:\n{}", violations.join("\n"));
}

#[test]
fn the_scan_sees_both_import_forms() {
    let text = "use crate::features::x;\nuse crate::{probe, report::Row};\nlet a = crate::cli::args;";
    assert_eq!(imports(text), ["features", "probe", "report", "cli"]);
}

/// The README and scripts stand alone: nothing points outside the repository.
#[test]
fn docs_and_scripts_stay_inside_the_repository() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut files = vec![root.join("README.md")];
    files.extend(std::fs::read_dir(root.join("scripts")).unwrap().flatten().map(|e| e.path()));
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap_or_default();
        assert!(!text.contains("../shared"), "{} points at ../shared", f.display());
    }
}

/// Benchmark tables report no "fraction of peak" (oneDNN's 3×3 kernels do fewer operations
/// than a matmul peak assumes, so such a fraction exceeds 1 and means nothing).
#[test]
fn benchmark_tables_have_no_fraction_of_peak() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    for f in std::fs::read_dir(root.join("results")).unwrap().flatten().map(|e| e.path()) {
        if f.extension().is_some_and(|e| e == "csv") {
            let header = std::fs::read_to_string(&f).unwrap().lines().next().unwrap_or_default().to_string();
            assert!(!header.contains("fraction_of_peak"), "{}: {header}", f.display());
        }
    }
}

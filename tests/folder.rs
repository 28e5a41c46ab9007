//! Image-folder datasets (torchvision ImageFolder layout), with fixtures the test writes.
mod common;

use common::*;
use std::path::Path;

fn run(cwd: &Path, root: &Path, extra: &[&str]) -> std::process::Output {
    let mut args =
        vec!["run", "--dataset", "folder", "--data", root.to_str().unwrap(), "--out", "r", "--summary", "s.csv"];
    args.extend_from_slice(extra);
    args.extend_from_slice(QUICK);
    cnnprobe(cwd, &args)
}

#[test]
fn folder_dataset_runs_with_sorted_classes() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("imgs");
    write_folder(&root, &["zebra", "apple", "mango"], 10, 4, 32);
    let o = run(tmp.path(), &root, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let per_class = std::fs::read_to_string(tmp.path().join("r/per_class.csv")).unwrap();
    let names: Vec<&str> = per_class.lines().skip(1).map(|l| l.split(',').next().unwrap()).collect();
    assert_eq!(names, ["apple", "mango", "zebra"]);
    let summary = std::fs::read_to_string(tmp.path().join("s.csv")).unwrap();
    assert!(summary.lines().nth(1).unwrap().contains(",folder,"));
}

#[test]
fn bad_images_empty_classes_and_mixed_sizes() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("imgs");
    write_folder(&root, &["a", "b"], 6, 3, 32);
    // A zero-byte image is an error naming it, or skipped with a count.
    let bad = root.join("train/a/9999.jpg");
    std::fs::write(&bad, b"").unwrap();
    let o = run(tmp.path(), &root, &[]);
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(e.contains("9999.jpg: unreadable image") && e.contains("--skip-bad-images"), "{e}");
    // The decoder's message spans lines; the error still prints as one.
    assert!(e.trim_end().lines().last().unwrap().ends_with("pass --skip-bad-images to skip such files"), "{e}");
    let o = run(tmp.path(), &root, &["--skip-bad-images"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("warning: skipped 1 unreadable image(s)"), "{}", stderr(&o));
    std::fs::remove_file(&bad).unwrap();

    // A corrupt (non-empty) image too.
    std::fs::write(root.join("test/b/0000.png"), b"\x89PNG\r\n\x1a\ngarbage").unwrap();
    let o = run(tmp.path(), &root, &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("0000.png: unreadable image"), "{}", stderr(&o));
    std::fs::remove_file(root.join("test/b/0000.png")).unwrap();

    // An empty class folder.
    std::fs::create_dir_all(root.join("train/c")).unwrap();
    std::fs::create_dir_all(root.join("test/c")).unwrap();
    let o = run(tmp.path(), &root, &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("class folder") && stderr(&o).contains("has no images"), "{}", stderr(&o));
    std::fs::remove_dir(root.join("train/c")).unwrap();
    std::fs::remove_dir(root.join("test/c")).unwrap();

    // Mixed sizes need --input-size.
    image::RgbImage::new(40, 24).save(root.join("train/b/big.png")).unwrap();
    let o = run(tmp.path(), &root, &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("images differ in size") && stderr(&o).contains("--input-size"), "{}", stderr(&o));
    let o = run(tmp.path(), &root, &["--input-size", "32"]);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn folder_without_data_is_a_usage_error() {
    let tmp = tempfile::tempdir().unwrap();
    let o = cnnprobe(tmp.path(), &["run", "--dataset", "folder"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--dataset folder needs --data DIR"));
}

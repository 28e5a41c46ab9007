//! The download path against a local HTTP server and file:// URLs, never the internet:
//! verified md5, temp name then rename, extraction, reuse, and clear offline errors.
mod common;

use common::*;
use md5::{Digest, Md5};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;

/// A gzipped tar holding a small cifar-10-batches-bin folder, and its md5.
fn archive(dir: &Path) -> (Vec<u8>, String) {
    let src = dir.join("src");
    write_cifar10(&src, 10, 10);
    let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast()));
    tar.append_dir_all("cifar-10-batches-bin", src.join("cifar-10-batches-bin")).unwrap();
    let bytes = tar.into_inner().unwrap().finish().unwrap();
    let md5 = format!("{:x}", Md5::digest(&bytes));
    (bytes, md5)
}

/// Serves `body` at /cifar-10-binary.tar.gz for up to `max` requests; 404 elsewhere.
fn serve(body: Vec<u8>, max: usize) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming().take(max) {
            let mut s = stream.unwrap();
            let mut req = [0u8; 2048];
            let n = s.read(&mut req).unwrap_or(0);
            let head = String::from_utf8_lossy(&req[..n]);
            if head.starts_with("GET /cifar-10-binary.tar.gz ") {
                write!(s, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len()).unwrap();
                s.write_all(&body).unwrap();
            } else {
                s.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").unwrap();
            }
        }
    });
    url
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

fn run_download(cwd: &Path, data_dir: &Path, mirror: &str, md5: Option<&str>) -> std::process::Output {
    let mut args =
        vec!["run", "--data-dir", data_dir.to_str().unwrap(), "--mirror", mirror, "--out", "r", "--summary", "s.csv"];
    if let Some(m) = md5 {
        args.extend(["--archive-md5", m]);
    }
    args.extend_from_slice(QUICK);
    cnnprobe(cwd, &args)
}

#[test]
fn downloads_verifies_extracts_and_reuses() {
    let tmp = tempfile::tempdir().unwrap();
    let (bytes, md5) = archive(tmp.path());
    let url = serve(bytes, 1);
    let data_dir = tmp.path().join("data");
    let out = run_download(tmp.path(), &data_dir, &url, Some(&md5));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(entries(&data_dir), ["cifar-10-batches-bin", "cifar-10-binary.tar.gz"]);
    // Second run: the server is gone (it served one request), the extracted folder is reused.
    let out = run_download(tmp.path(), &data_dir, &url, Some(&md5));
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn md5_mismatch_leaves_nothing_behind() {
    let tmp = tempfile::tempdir().unwrap();
    let (bytes, md5) = archive(tmp.path());
    let url = serve(bytes, 1);
    let data_dir = tmp.path().join("data");
    // No --archive-md5: the official checksum cannot match the fixture.
    let out = run_download(tmp.path(), &data_dir, &url, None);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains(&format!("has md5 {md5}, expected c32a1d4ab5d03f1284b67883e8d87530")), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(entries(&data_dir).is_empty(), "left behind: {:?}", entries(&data_dir));
}

#[test]
fn offline_error_says_which_file_goes_where() {
    let tmp = tempfile::tempdir().unwrap();
    // A port with nothing listening.
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let data_dir = tmp.path().join("data");
    let out = run_download(tmp.path(), &data_dir, &format!("http://127.0.0.1:{port}"), None);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    let want = format!(
        "error: CIFAR-10 is not available offline: place cifar-10-binary.tar.gz (md5 c32a1d4ab5d03f1284b67883e8d87530) at {}",
        data_dir.join("cifar-10-binary.tar.gz").display()
    );
    assert!(err.starts_with(&want), "{err}");
    assert!(entries(&data_dir).is_empty());
}

#[test]
fn file_url_mirror_and_a_placed_archive_work() {
    let tmp = tempfile::tempdir().unwrap();
    let (bytes, md5) = archive(tmp.path());
    let mirror_dir = tmp.path().join("mirror");
    std::fs::create_dir(&mirror_dir).unwrap();
    std::fs::write(mirror_dir.join("cifar-10-binary.tar.gz"), &bytes).unwrap();
    let data_dir = tmp.path().join("data");
    let out = run_download(tmp.path(), &data_dir, &format!("file://{}", mirror_dir.display()), Some(&md5));
    assert!(out.status.success(), "{}", stderr(&out));

    // An archive placed by hand (the offline recipe) is verified and extracted.
    let data2 = tmp.path().join("data2");
    std::fs::create_dir(&data2).unwrap();
    std::fs::write(data2.join("cifar-10-binary.tar.gz"), &bytes).unwrap();
    let out = run_download(tmp.path(), &data2, "http://127.0.0.1:9", Some(&md5));
    assert!(out.status.success(), "{}", stderr(&out));
    // A corrupt placed archive is refused with advice, and not extracted.
    let data3 = tmp.path().join("data3");
    std::fs::create_dir(&data3).unwrap();
    std::fs::write(data3.join("cifar-10-binary.tar.gz"), &bytes[..bytes.len() / 2]).unwrap();
    let out = run_download(tmp.path(), &data3, "http://127.0.0.1:9", Some(&md5));
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("is corrupt or incomplete; delete it and run again"), "{}", stderr(&out));
    assert_eq!(entries(&data3), ["cifar-10-binary.tar.gz"]);
}

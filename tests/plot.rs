//! `cnnprobe plot`: SVG and PNG charts from a summary-shaped CSV.
mod common;

use common::*;

const CSV: &str = "arch,stem,weights,seed,test_top1,status\n\
resnet18,cifar,random,0,0.43,ok\nresnet18,cifar,random,1,0.44,ok\nresnet18,cifar,random,2,0.42,ok\n\
resnet18,imagenet,imagenet,0,,not available offline\n\
resnet20,cifar,random,0,0.35,ok\nresnet20,cifar,random,1,0.36,ok\n\
vgg11_bn,cifar,random,0,0.50,ok\nvgg11_bn,imagenet,imagenet,0,0.80,ok\n";

#[test]
fn svg_and_png_charts() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("s.csv"), CSV).unwrap();
    let o = cnnprobe(tmp.path(), &["plot", "s.csv", "-o", "chart.svg"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let svg = std::fs::read_to_string(tmp.path().join("chart.svg")).unwrap();
    for text in ["resnet18", "resnet20", "vgg11_bn", "43.0±1.0 (n=3)", "not available offline", "80.0"] {
        assert!(svg.contains(text), "chart lacks {text}");
    }
    // The font ships with the crate: PNG text renders without any system font.
    let o = cnnprobe(tmp.path(), &["plot", "s.csv", "-o", "chart.png"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let img = image::open(tmp.path().join("chart.png")).unwrap().to_rgb8();
    assert!(img.width() >= 760 && img.height() == 520);
    // Labels are drawn: many dark pixels beyond the bars' own colours.
    let dark = img.pixels().filter(|p| p.0.iter().all(|&c| c < 80)).count();
    assert!(dark > 500, "only {dark} dark pixels: no text?");
    let o = cnnprobe(tmp.path(), &["plot", "s.csv", "-o", "chart.pdf"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("use a .svg or .png file name"));
    std::fs::write(tmp.path().join("bad.csv"), "a,b\n1,2\n").unwrap();
    let o = cnnprobe(tmp.path(), &["plot", "bad.csv", "-o", "x.svg"]);
    assert!(stderr(&o).contains("needs the columns arch, weights and test_top1"));
    assert!(!tmp.path().join("x.svg").exists());
}

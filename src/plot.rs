//! `cnnprobe plot`: test top-1 per architecture, random weights (mean ± sd over seeds)
//! beside pretrained, from a summary or sweep CSV, as SVG or PNG.
use crate::report::mean_sd;
use anyhow::{bail, ensure, Context, Result};
use plotters::coord::ranged1d::{IntoSegmentedCoord, SegmentValue};
use plotters::prelude::*;
use std::collections::BTreeMap;
use std::path::Path;

/// One group of bars: its label and the test top-1 values (%) of each weights kind.
struct Group {
    label: String,
    random: Vec<f64>,
    pretrained: Vec<f64>,
    /// Why there is no pretrained bar (a row's status, e.g. "not available offline").
    pretrained_note: Option<String>,
}

fn read_groups(csv_path: &Path) -> Result<Vec<Group>> {
    let mut rdr = csv::Reader::from_path(csv_path).with_context(|| format!("cannot read {}", csv_path.display()))?;
    let h = rdr.headers().with_context(|| format!("{}: unreadable header", csv_path.display()))?.clone();
    let col = |name: &str| h.iter().position(|c| c == name);
    let (Some(arch), Some(weights), Some(top1)) = (col("arch"), col("weights"), col("test_top1")) else {
        bail!("{}: needs the columns arch, weights and test_top1 (a summary or sweep CSV)", csv_path.display());
    };
    let status = col("status");
    let mut groups: BTreeMap<String, Group> = BTreeMap::new();
    for (i, rec) in rdr.records().enumerate() {
        let rec = rec.with_context(|| format!("{}: row {} is not valid CSV", csv_path.display(), i + 2))?;
        let label = rec[arch].to_string();
        let g = groups.entry(label.clone()).or_insert(Group {
            label,
            random: vec![],
            pretrained: vec![],
            pretrained_note: None,
        });
        if let Some(st) = status.and_then(|s| rec.get(s)).filter(|s| *s != "ok") {
            if &rec[weights] != "random" {
                g.pretrained_note = Some(if st.contains("publishes no ImageNet weights") {
                    "no torchvision weights".to_string()
                } else {
                    st.to_string()
                });
            }
            continue;
        }
        let Ok(v) = rec.get(top1).unwrap_or("").parse::<f64>() else { continue };
        if &rec[weights] == "random" {
            g.random.push(100.0 * v);
        } else {
            g.pretrained.push(100.0 * v);
        }
    }
    groups.retain(|_, g| !g.random.is_empty() || !g.pretrained.is_empty() || g.pretrained_note.is_some());
    ensure!(!groups.is_empty(), "{}: no rows with a test_top1 to plot", csv_path.display());
    Ok(groups.into_values().collect())
}

/// Draws the chart to `out` (.svg or .png, by extension).
pub fn plot(csv_path: &Path, out: &Path, title: Option<&str>) -> Result<()> {
    let groups = read_groups(csv_path)?;
    let ext = out.extension().map(|e| e.to_string_lossy().to_ascii_lowercase()).unwrap_or_default();
    let title =
        title.map(String::from).unwrap_or_else(|| "Linear-probe test top-1: random vs pretrained weights".into());
    let size = ((260 * groups.len() as u32 + 200).max(760), 520);
    // Write beside the destination, then rename: a chart is complete or absent.
    let dir = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let tmp = tempfile::Builder::new().prefix(".chart.").suffix(&format!(".{ext}")).tempfile_in(dir)?.into_temp_path();
    if !matches!(ext.as_str(), "svg" | "png") {
        bail!("-o {}: use a .svg or .png file name", out.display());
    }
    register_font()?;
    match ext.as_str() {
        "svg" => draw(SVGBackend::new(&tmp, size).into_drawing_area(), &groups, &title)?,
        _ => {
            // Render into memory, encode with the image crate cnnprobe already uses.
            let mut rgb = vec![0u8; (size.0 * size.1 * 3) as usize];
            draw(BitMapBackend::with_buffer(&mut rgb, size).into_drawing_area(), &groups, &title)?;
            image::save_buffer_with_format(&tmp, &rgb, size.0, size.1, image::ColorType::Rgb8, image::ImageFormat::Png)
                .with_context(|| format!("cannot write {}", out.display()))?;
        }
    }
    crate::files::make_public(&tmp)?;
    tmp.persist(out).with_context(|| format!("cannot move the chart to {}", out.display()))?;
    Ok(())
}

/// Text layout needs a TrueType font (plotters measures text with it, for SVG too).
fn register_font() -> Result<()> {
    const CANDIDATES: &[&str] = &[
        "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
        "/usr/share/fonts/TTF/DejaVuSans.ttf",
        "/usr/share/fonts/dejavu/DejaVuSans.ttf",
        "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    ];
    for path in CANDIDATES {
        if let Ok(bytes) = std::fs::read(path) {
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                return Ok(());
            }
        }
    }
    bail!("charts need a TrueType font (e.g. Debian's fonts-dejavu-core); none found in the usual places")
}

fn draw<DB: DrawingBackend>(root: DrawingArea<DB, plotters::coord::Shift>, groups: &[Group], title: &str) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow::anyhow!("drawing the chart: {e:?}");
    root.fill(&WHITE).map_err(err)?;
    let top = groups
        .iter()
        .flat_map(|g| {
            let r = if g.random.is_empty() {
                0.0
            } else {
                let (m, s) = mean_sd(&g.random);
                m + s
            };
            let p = if g.pretrained.is_empty() { 0.0 } else { mean_sd(&g.pretrained).0 };
            [r, p]
        })
        .fold(0.0, f64::max);
    let ymax = ((top / 10.0).ceil() * 10.0 + 10.0).min(100.0);
    let n = groups.len();
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(56)
        // Segments 0..=n-1, one per group.
        .build_cartesian_2d((0..n - 1).into_segmented(), 0.0..ymax)
        .map_err(err)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .y_desc("test top-1 (%)")
        .x_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) if *i < n => groups[*i].label.clone(),
            _ => String::new(),
        })
        .draw()
        .map_err(err)?;
    let random_color = RGBColor(70, 110, 180);
    let pre_color = RGBColor(220, 130, 50);
    // Each segment holds two bars, placed in pixels between the segment's edges
    // (SegmentValue::Exact(i) and Exact(i + 1)).
    let area = chart.plotting_area();
    let px1 = area.get_pixel_range().0.end;
    let y = |v: f64| area.map_coordinate(&(SegmentValue::Exact(0), v)).1;
    let x = |i: usize| area.map_coordinate(&(SegmentValue::Exact(i), 0.0)).0 as f64;
    for (i, g) in groups.iter().enumerate() {
        let (x0, width) = (x(i), if i + 1 < n { x(i + 1) - x(i) } else { px1 as f64 - x(i) });
        for (k, values, color) in [(0, &g.random, random_color), (1, &g.pretrained, pre_color)] {
            let (l, r) =
                ((x0 + width * (0.15 + 0.36 * k as f64)) as i32, (x0 + width * (0.47 + 0.36 * k as f64)) as i32);
            if values.is_empty() {
                let label = match (k, &g.pretrained_note) {
                    (1, Some(note)) => note.as_str(),
                    (1, None) => "no pretrained run",
                    _ => "no random run",
                };
                root.draw(&Text::new(
                    label,
                    ((l + r) / 2 - 60, y(2.0) - 14),
                    ("sans-serif", 13).into_font().color(&BLACK),
                ))
                .map_err(err)?;
                continue;
            }
            let (m, sd) = mean_sd(values);
            root.draw(&Rectangle::new([(l, y(m)), (r, y(0.0))], color.filled())).map_err(err)?;
            if values.len() > 1 {
                let c = (l + r) / 2;
                let style = BLACK.stroke_width(2);
                root.draw(&PathElement::new(vec![(c, y(m - sd)), (c, y(m + sd))], style)).map_err(err)?;
                root.draw(&PathElement::new(vec![(c - 8, y(m + sd)), (c + 8, y(m + sd))], style)).map_err(err)?;
                root.draw(&PathElement::new(vec![(c - 8, y(m - sd)), (c + 8, y(m - sd))], style)).map_err(err)?;
            }
            let text =
                if values.len() > 1 { format!("{m:.1}±{sd:.1} (n={})", values.len()) } else { format!("{m:.1}") };
            root.draw(&Text::new(text, (l, y(m + sd) - 18), ("sans-serif", 13).into_font().color(&BLACK)))
                .map_err(err)?;
        }
    }
    // Legend.
    let (lx, ly) = (px1 - 230, 50);
    for (k, (name, color)) in
        [("random (mean ± sd over seeds)", random_color), ("pretrained (ImageNet)", pre_color)].into_iter().enumerate()
    {
        let yy = ly + 20 * k as i32;
        root.draw(&Rectangle::new([(lx, yy), (lx + 14, yy + 12)], color.filled())).map_err(err)?;
        root.draw(&Text::new(name, (lx + 20, yy), ("sans-serif", 13).into_font().color(&BLACK))).map_err(err)?;
    }
    root.present().map_err(err)?;
    Ok(())
}

//! `cnnprobe plot`: test top-1 (or another metric column) per architecture (or another
//! grouping column), random weights (mean ± sd over seeds) beside pretrained, from a
//! summary or sweep CSV, as SVG or PNG.
use super::aggregate::mean_sd;
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

/// What to chart: bars grouped by the `by` column, heights from the `metric` column.
pub struct Chart<'a> {
    pub by: &'a str,
    pub metric: &'a str,
    pub title: Option<&'a str>,
}

/// Groups in order of first appearance in the CSV.
fn read_groups(csv_path: &Path, chart: &Chart) -> Result<Vec<Group>> {
    let mut rdr = csv::Reader::from_path(csv_path).with_context(|| format!("cannot read {}", csv_path.display()))?;
    let h = rdr.headers().with_context(|| format!("{}: unreadable header", csv_path.display()))?.clone();
    let col = |name: &str| h.iter().position(|c| c == name);
    let (Some(arch), Some(weights), Some(top1)) = (col(chart.by), col("weights"), col(chart.metric)) else {
        bail!(
            "{}: needs the columns {}, weights and {} (a summary or sweep CSV)",
            csv_path.display(),
            chart.by,
            chart.metric
        );
    };
    let status = col("status");
    let mut order: Vec<String> = Vec::new();
    let mut groups: BTreeMap<String, Group> = BTreeMap::new();
    for (i, rec) in rdr.records().enumerate() {
        let rec = rec.with_context(|| format!("{}: row {} is not valid CSV", csv_path.display(), i + 2))?;
        let label = rec.get(arch).unwrap_or("").to_string();
        if !groups.contains_key(&label) {
            order.push(label.clone());
        }
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
    ensure!(!groups.is_empty(), "{}: no rows with a {} to plot", csv_path.display(), chart.metric);
    Ok(order.iter().filter_map(|l| groups.remove(l)).collect())
}

/// Draws the chart to `out` (.svg or .png, by extension).
pub fn plot(csv_path: &Path, out: &Path, chart: &Chart) -> Result<()> {
    let groups = read_groups(csv_path, chart)?;
    let ext = out.extension().map(|e| e.to_string_lossy().to_ascii_lowercase()).unwrap_or_default();
    let title = chart
        .title
        .map(String::from)
        .unwrap_or_else(|| format!("Linear probe, {}: random vs pretrained weights", metric_name(chart.metric)));
    // Charts with only one kind of weights get one bar per group, and need less room.
    let both = groups.iter().any(|g| !g.pretrained.is_empty() || g.pretrained_note.is_some());
    let per_group = if both { 260 } else { 110 };
    let label_area =
        if groups.len() > 6 { 40 + 7 * groups.iter().map(|g| g.label.len() as u32).max().unwrap_or(0) } else { 40 };
    let size = ((per_group * groups.len() as u32 + 200).max(760), 480 + label_area);
    // Write beside the destination, then rename: a chart is complete or absent.
    let dir = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let tmp = tempfile::Builder::new().prefix(".chart.").suffix(&format!(".{ext}")).tempfile_in(dir)?.into_temp_path();
    if !matches!(ext.as_str(), "svg" | "png") {
        bail!("-o {}: use a .svg or .png file name", out.display());
    }
    register_font()?;
    match ext.as_str() {
        "svg" => draw(SVGBackend::new(&tmp, size).into_drawing_area(), &groups, &title, chart.metric, label_area)?,
        _ => {
            // Render into memory, encode with the image crate cnnprobe already uses.
            let mut rgb = vec![0u8; (size.0 * size.1 * 3) as usize];
            let area = BitMapBackend::with_buffer(&mut rgb, size).into_drawing_area();
            draw(area, &groups, &title, chart.metric, label_area)?;
            image::save_buffer_with_format(&tmp, &rgb, size.0, size.1, image::ColorType::Rgb8, image::ImageFormat::Png)
                .with_context(|| format!("cannot write {}", out.display()))?;
        }
    }
    crate::util::files::make_public(&tmp)?;
    tmp.persist(out).with_context(|| format!("cannot move the chart to {}", out.display()))?;
    Ok(())
}

/// Text layout needs a TrueType font (plotters measures text with it, for SVG too): one
/// ships with the crate (see font/LICENSE), so charts never depend on the system's fonts.
fn register_font() -> Result<()> {
    static FONT: &[u8] = include_bytes!("font/DejaVuSans-subset.ttf");
    plotters::style::register_font("sans-serif", FontStyle::Normal, FONT)
        .map_err(|_| anyhow::anyhow!("the built-in chart font could not be loaded"))
}

/// The colour key in the top right corner: random, and pretrained when shown.
fn draw_legend<DB: DrawingBackend>(
    root: &DrawingArea<DB, plotters::coord::Shift>,
    right: i32,
    both: bool,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let (lx, ly) = (right - 230, 50);
    let legend = [("random (mean ± sd over seeds)", RANDOM_COLOR), ("pretrained (ImageNet)", PRETRAINED_COLOR)];
    for (k, (name, color)) in legend.into_iter().take(if both { 2 } else { 1 }).enumerate() {
        let yy = ly + 20 * k as i32;
        root.draw(&Rectangle::new([(lx, yy), (lx + 14, yy + 12)], color.filled()))?;
        root.draw(&Text::new(name, (lx + 20, yy), ("sans-serif", 13).into_font().color(&BLACK)))?;
    }
    Ok(())
}

const RANDOM_COLOR: RGBColor = RGBColor(70, 110, 180);
const PRETRAINED_COLOR: RGBColor = RGBColor(220, 130, 50);

/// The y axis' top (%): the highest bar or error bar, rounded up to ten, plus ten.
fn y_max(groups: &[Group]) -> f64 {
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
    ((top / 10.0).ceil() * 10.0 + 10.0).min(100.0)
}

/// One bar from pixel `l` to `r`: the mean, an sd error bar over several seeds, its value.
fn draw_bar<DB: DrawingBackend>(
    root: &DrawingArea<DB, plotters::coord::Shift>,
    (l, r): (i32, i32),
    values: &[f64],
    color: RGBColor,
    y: &dyn Fn(f64) -> i32,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let (m, sd) = mean_sd(values);
    root.draw(&Rectangle::new([(l, y(m)), (r, y(0.0))], color.filled()))?;
    if values.len() > 1 {
        let c = (l + r) / 2;
        let style = BLACK.stroke_width(2);
        root.draw(&PathElement::new(vec![(c, y(m - sd)), (c, y(m + sd))], style))?;
        root.draw(&PathElement::new(vec![(c - 8, y(m + sd)), (c + 8, y(m + sd))], style))?;
        root.draw(&PathElement::new(vec![(c - 8, y(m - sd)), (c + 8, y(m - sd))], style))?;
    }
    let text = if values.len() > 1 { format!("{m:.1}±{sd:.1} (n={})", values.len()) } else { format!("{m:.1}") };
    root.draw(&Text::new(text, (l, y(m + sd) - 18), ("sans-serif", 13).into_font().color(&BLACK)))
}

/// "test top-1" for test_top1, "val acc" for val_acc, …
fn metric_name(metric: &str) -> String {
    metric.replace("_top", " top-").replace('_', " ")
}

fn draw<DB: DrawingBackend>(
    root: DrawingArea<DB, plotters::coord::Shift>,
    groups: &[Group],
    title: &str,
    metric: &str,
    label_area: u32,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow::anyhow!("drawing the chart: {e:?}");
    root.fill(&WHITE).map_err(err)?;
    let ymax = y_max(groups);
    let n = groups.len();
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(16)
        .x_label_area_size(label_area)
        .y_label_area_size(56)
        // Segments 0..=n-1, one per group.
        .build_cartesian_2d((0..n - 1).into_segmented(), 0.0..ymax)
        .map_err(err)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .y_desc(format!("{} (%)", metric_name(metric)))
        .light_line_style(WHITE)
        .x_label_style(("sans-serif", 13).into_font())
        // Many groups: their labels are drawn below, turned to read downwards.
        .x_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) if *i < n && label_area <= 40 => groups[*i].label.clone(),
            _ => String::new(),
        })
        .draw()
        .map_err(err)?;
    let (random_color, pre_color) = (RANDOM_COLOR, PRETRAINED_COLOR);
    // Each segment holds two bars, placed in pixels between the segment's edges
    // (SegmentValue::Exact(i) and Exact(i + 1)).
    let area = chart.plotting_area();
    let px1 = area.get_pixel_range().0.end;
    let y = |v: f64| area.map_coordinate(&(SegmentValue::Exact(0), v)).1;
    let x = |i: usize| area.map_coordinate(&(SegmentValue::Exact(i), 0.0)).0 as f64;
    let both = groups.iter().any(|g| !g.pretrained.is_empty() || g.pretrained_note.is_some());
    for (i, g) in groups.iter().enumerate() {
        let (x0, width) = (x(i), if i + 1 < n { x(i + 1) - x(i) } else { px1 as f64 - x(i) });
        if label_area > 40 {
            let font = ("sans-serif", 13).into_font().transform(FontTransform::Rotate90).color(&BLACK);
            root.draw(&Text::new(g.label.clone(), ((x0 + width / 2.0) as i32 + 6, y(0.0) + 8), font)).map_err(err)?;
        }
        let kinds: &[(usize, &Vec<f64>, RGBColor)] = if both {
            &[(0, &g.random, random_color), (1, &g.pretrained, pre_color)]
        } else {
            &[(0, &g.random, random_color)]
        };
        for &(k, values, color) in kinds {
            let (l, r) = if both {
                ((x0 + width * (0.15 + 0.36 * k as f64)) as i32, (x0 + width * (0.47 + 0.36 * k as f64)) as i32)
            } else {
                ((x0 + width * 0.2) as i32, (x0 + width * 0.8) as i32)
            };
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
            draw_bar(&root, (l, r), values, color, &y).map_err(err)?;
        }
    }
    draw_legend(&root, px1, both).map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

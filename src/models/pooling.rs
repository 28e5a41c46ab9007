//! Where a tapped map is averaged (or maxed) into features: adaptive K×K cells, or square
//! windows at a stride (Thiry et al.'s local pooling: 5×5 windows at stride 3 on the patch
//! responses). `--features NAME:K` and `NAME:W/S`.
use anyhow::{bail, ensure, Result};
use std::fmt;
use std::str::FromStr;
use tch::{Device, Kind, Tensor};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Grid {
    /// PyTorch's adaptive pooling into K×K cells, which tile the map (cell i spans
    /// ⌊i·S/K⌋ .. ⌈(i+1)·S/K⌉).
    Cells(i64),
    /// Every `size`×`size` window whose top-left corner is a multiple of `stride`, no
    /// padding: PyTorch's avg_pool2d/max_pool2d (windows overlap when the stride is smaller).
    Window { size: i64, stride: i64 },
}

impl Grid {
    /// The (rows, columns) of pooled values on an `h`×`w` map; an error when it does not fit.
    pub fn out_size(&self, h: i64, w: i64) -> Result<(i64, i64)> {
        match *self {
            Grid::Cells(k) => {
                ensure!(k <= h.min(w), "{k}×{k} cells on a {h}×{w} map");
                Ok((k, k))
            }
            Grid::Window { size, stride } => {
                ensure!(size <= h.min(w), "a {size}×{size} window on a {h}×{w} map");
                Ok(((h - size) / stride + 1, (w - size) / stride + 1))
            }
        }
    }

    /// The (y0..y1, x0..x1) span of output value (gy, gx) on an `h`×`w` map.
    fn span(&self, gy: i64, gx: i64, h: i64, w: i64) -> ((i64, i64), (i64, i64)) {
        match *self {
            Grid::Cells(k) => {
                let cell = |i: i64, s: i64| ((i * s) / k, ((i + 1) * s + k - 1) / k);
                (cell(gy, h), cell(gx, w))
            }
            Grid::Window { size, stride } => ((gy * stride, gy * stride + size), (gx * stride, gx * stride + size)),
        }
    }

    /// Average pooling as a (outputs, h·w) matrix: row g holds 1/area over g's span, so
    /// `weights · map` (positions in row-major order) averages every output at once.
    pub fn weights(&self, h: i64, w: i64, device: Device) -> Result<Tensor> {
        let (oh, ow) = self.out_size(h, w)?;
        let mut m = vec![0f32; (oh * ow * h * w) as usize];
        for (gy, gx) in (0..oh).flat_map(|gy| (0..ow).map(move |gx| (gy, gx))) {
            let ((y0, y1), (x0, x1)) = self.span(gy, gx, h, w);
            let area = ((y1 - y0) * (x1 - x0)) as f32;
            for y in y0..y1 {
                for x in x0..x1 {
                    m[((gy * ow + gx) * h * w + y * w + x) as usize] = 1.0 / area;
                }
            }
        }
        Ok(Tensor::from_slice(&m).view([oh * ow, h * w]).to_kind(Kind::Float).to_device(device))
    }

    /// The average of each span of an (N, C, H, W) map, flattened to (N, C·outputs).
    pub fn avg(&self, map: &Tensor) -> Tensor {
        match *self {
            Grid::Cells(k) => map.adaptive_avg_pool2d([k, k]),
            Grid::Window { size, stride } => map.avg_pool2d([size, size], [stride, stride], [0, 0], false, true, None),
        }
        .flatten(1, -1)
    }

    /// The maximum of each span, flattened as `avg`.
    pub fn max(&self, map: &Tensor) -> Tensor {
        match *self {
            Grid::Cells(k) => map.adaptive_max_pool2d([k, k]).0,
            Grid::Window { size, stride } => map.max_pool2d([size, size], [stride, stride], [0, 0], [1, 1], false),
        }
        .flatten(1, -1)
    }
}

impl FromStr for Grid {
    type Err = anyhow::Error;
    /// `K` (cells) or `W/S` (windows), each a positive whole number.
    fn from_str(s: &str) -> Result<Grid> {
        let whole = |v: &str| v.parse::<i64>().ok().filter(|n| *n > 0);
        match s.split_once('/') {
            None => match whole(s) {
                Some(k) => Ok(Grid::Cells(k)),
                None => bail!("the pooling after ':' must be K (K×K cells) or W/S (W×W windows at stride S), positive whole numbers"),
            },
            Some((w, st)) => match (whole(w), whole(st)) {
                (Some(size), Some(stride)) => Ok(Grid::Window { size, stride }),
                _ => bail!("the window pooling W/S needs positive whole numbers, got {s:?}"),
            },
        }
    }
}

impl fmt::Display for Grid {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Grid::Cells(k) => write!(f, "{k}"),
            Grid::Window { size, stride } => write!(f, "{size}/{stride}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_equal_libtorchs_pooling() {
        let map = Tensor::randn([2, 3, 11, 9], (Kind::Float, Device::Cpu));
        for grid in
            [Grid::Cells(3), Grid::Cells(1), Grid::Window { size: 5, stride: 3 }, Grid::Window { size: 4, stride: 4 }]
        {
            let (oh, ow) = grid.out_size(11, 9).unwrap();
            let by_weights = map.flatten(2, -1).matmul(&grid.weights(11, 9, Device::Cpu).unwrap().tr());
            let want = grid.avg(&map);
            assert_eq!(want.size(), [2, 3 * oh * ow], "{grid}");
            let diff = (by_weights.flatten(1, -1) - &want).abs().max().double_value(&[]);
            assert!(diff < 1e-6, "{grid}: {diff}");
        }
        // 5×5 windows at stride 3 on 27×27 responses: Thiry et al.'s 8×8.
        assert_eq!(Grid::Window { size: 5, stride: 3 }.out_size(27, 27).unwrap(), (8, 8));
        assert!(Grid::Window { size: 12, stride: 1 }.out_size(11, 20).is_err());
    }

    #[test]
    fn parses_cells_and_windows() {
        assert_eq!("4".parse::<Grid>().unwrap(), Grid::Cells(4));
        assert_eq!("5/3".parse::<Grid>().unwrap(), Grid::Window { size: 5, stride: 3 });
        for bad in ["0", "5/0", "x", "5/", "-2"] {
            assert!(bad.parse::<Grid>().is_err(), "{bad}");
        }
        assert_eq!(Grid::Window { size: 13, stride: 7 }.to_string(), "13/7");
    }
}

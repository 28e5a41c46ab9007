//! `--arch patchnet`: the one-layer patch networks of Coates & Ng (2011) and Thiry et al.
//! (ICLR 2021) in one frozen stage, `encode`. Every P×P patch x of the image (P = 6) is
//! mapped to v = W·x + b (identity by default; `--whiten patch-zca` makes it the patches'
//! ZCA), then to the K responses f·v / √(‖v‖² + floor): the cosine between the patch and
//! each unit filter f, softened where the patch is nearly flat. `--encode soft:A` turns the
//! responses into features; K = 256 × `--width-mult`.
//!
//! Data-free as built: the filters are uniform random directions and W is the identity.
//! `--whiten patch-zca` and `--first-layer patches` fill W and the filters from unlabelled
//! train images (the no-gradient track).
use super::init::Family;
use super::layers::{BnMode, ConvBn, Site};
use super::pooling::Grid;
use super::{fused, scaled, Backbone};
use anyhow::{ensure, Result};
use tch::{nn, Kind, Tensor};

/// Patch side: Coates & Ng's and Thiry et al.'s choice for 32×32 images.
pub const PATCH: i64 = 6;
/// Filters at `--width-mult 1`.
pub const BASE_FILTERS: i64 = 256;
/// The norm floor is this fraction of a patch's mean squared norm (after W).
pub const FLOOR_FRACTION: f64 = 0.1;
/// Images per feature chunk (`Backbone::chunk`): one chunk's responses (K × 27 × 27 floats
/// each) stay in the tens of MB whatever the batch size.
const CHUNK: i64 = 16;

pub struct PatchNet {
    /// (D, D), D = 3·P·P in im2col order (channel, row, column).
    whiten: Tensor,
    /// (D, 1).
    shift: Tensor,
    /// (K, D), rows of unit norm.
    filters: Tensor,
    /// (1,): added to ‖v‖² before the square root.
    floor: Tensor,
}

impl PatchNet {
    pub fn new(p: &nn::Path, width_mult: f64) -> PatchNet {
        let d = 3 * PATCH * PATCH;
        let k = scaled(BASE_FILTERS, width_mult);
        // Drawn from libtorch's generator, seeded by the caller like every other network.
        let draw = Tensor::randn([k, d], (Kind::Float, p.device()));
        let filters = unit_rows(&draw);
        let eye = Tensor::eye(d, (Kind::Float, p.device()));
        // Standardised channels: a patch's mean squared norm is about D without whitening.
        let floor = Tensor::from_slice(&[(FLOOR_FRACTION * d as f64) as f32]);
        PatchNet {
            whiten: (p / "whiten").var_copy("weight", &eye),
            shift: (p / "whiten").var_copy("bias", &Tensor::zeros([d, 1], (Kind::Float, p.device()))),
            filters: (p / "filters").var_copy("weight", &filters),
            floor: (p / "norm").var_copy("floor", &floor),
        }
    }

    /// Patch dimension D.
    pub fn patch_dim(&self) -> i64 {
        self.whiten.size()[0]
    }

    pub fn filter_count(&self) -> i64 {
        self.filters.size()[0]
    }

    /// The image's P×P patches as columns: (N, D, L).
    pub fn patches(x: &Tensor) -> Tensor {
        x.im2col([PATCH, PATCH], [1, 1], [0, 0], [1, 1])
    }

    /// Sets W and b of v = W·x + b to the ZCA transform `matrix`·(x − `mean`), and the norm
    /// floor from the whitened patches of `sample` (a normalised image batch).
    pub fn set_whitening(&mut self, matrix: &Tensor, mean: &Tensor, sample: &Tensor) -> Result<()> {
        let d = self.patch_dim();
        ensure!(matrix.size() == [d, d], "patch whitening: a {:?} matrix for {d}-dimensional patches", matrix.size());
        tch::no_grad(|| {
            self.whiten.copy_(matrix);
            self.shift.copy_(&(-matrix.matmul(&mean.view([d, 1]))));
            let v = self.transform(&Self::patches(sample));
            let mean_sq = v.square().sum_dim_intlist(1, false, Kind::Float).mean(Kind::Float);
            self.floor.copy_(&(mean_sq * FLOOR_FRACTION).view([1]));
        });
        Ok(())
    }

    /// Sets the filters to `rows` (K, D) in the transformed patch space, each scaled to unit norm.
    pub fn set_filters(&mut self, rows: &Tensor) -> Result<()> {
        ensure!(
            rows.size() == self.filters.size(),
            "patch filters: {:?}, expected {:?}",
            rows.size(),
            self.filters.size()
        );
        tch::no_grad(|| self.filters.copy_(&unit_rows(rows)));
        Ok(())
    }

    /// v = W·x + b of patch columns (N, D, L) or rows (M, D)ᵀ given as (D, M).
    pub fn transform(&self, cols: &Tensor) -> Tensor {
        self.whiten.matmul(cols) + &self.shift
    }

    /// The (N, K, H−P+1, W−P+1) responses of a normalised batch.
    pub fn responses(&self, x: &Tensor) -> Tensor {
        let size = x.size();
        let (n, h, w) = (size[0], size[2] - PATCH + 1, size[3] - PATCH + 1);
        let v = self.transform(&Self::patches(x));
        let norm = (v.square().sum_dim_intlist(1, true, v.kind()) + &self.floor).sqrt();
        (self.filters.matmul(&v) / norm).view([n, -1, h, w])
    }

    /// The responses' features without their maps: soft-encoded with threshold `soft` (or
    /// as they are) and averaged over `grid`'s cells or windows, laid out as the generic path
    /// lays them out (both polarities' K·k² values, positive first). Per chunk of images,
    /// one matrix product into a reused buffer gives the responses in (position, filter)
    /// order, and relu(z/n − a) = relu(z − a·n)/n lets the shim's one pass (fused.cpp)
    /// threshold and pool them with the division moved into the pooling weights.
    pub fn pooled(&self, x: &Tensor, soft: Option<f64>, grid: Grid) -> Result<Tensor> {
        self.pooled_with(x, soft, grid, true)
    }

    /// `pooled`, with the shim's one pass (`shim`, where built) or libtorch's ops (as on CUDA).
    pub fn pooled_with(&self, x: &Tensor, soft: Option<f64>, grid: Grid, shim: bool) -> Result<Tensor> {
        let size = x.size();
        let (n, h, w) = (size[0], size[2] - PATCH + 1, size[3] - PATCH + 1);
        let (d, l) = (self.patch_dim(), h * w);
        let cells = grid.weights(h, w, x.device())?;
        let filters_t = self.filters.tr().contiguous();
        let (whiten_t, shift) = (self.whiten.tr().contiguous(), self.shift.view([1, d]));
        // Buffers for a whole chunk, reused (a short last chunk takes their leading rows):
        // fresh multi-MB tensors per chunk cost more in page faults than the products.
        let c = CHUNK.min(n);
        let opts = (Kind::Float, x.device());
        let (cols, rows, v) =
            (Tensor::empty([c, d, l], opts), Tensor::empty([c, l, d], opts), Tensor::empty([c * l, d], opts));
        let z = Tensor::empty([c * l, filters_t.size()[1]], opts);
        let parts: Vec<Tensor> = (0..n)
            .step_by(CHUNK as usize)
            .map(|i| {
                let m = CHUNK.min(n - i);
                let cols = x.narrow(0, i, m).im2col_out(&cols.narrow(0, 0, m), [PATCH, PATCH], [1, 1], [0, 0], [1, 1]);
                let mut rows = rows.narrow(0, 0, m);
                rows.copy_(&cols.transpose(1, 2));
                let rows = rows.view([m * l, d]);
                let mut v = rows.mm_out(&v.narrow(0, 0, m * l), &whiten_t);
                let _ = v.g_add_(&shift);
                let norm = (v.square().sum_dim_intlist(1, false, Kind::Float) + &self.floor).sqrt().view([m, l]);
                let z = v.mm_out(&z.narrow(0, 0, m * l), &filters_t).view([m, l, -1]);
                let (inv, thr) = (norm.reciprocal(), &norm * soft.unwrap_or(0.0));
                let by_shim = (shim && x.device() == tch::Device::Cpu)
                    .then(|| fused::encode_pool(&z, &inv, &thr, &cells, soft.is_some()).ok())
                    .flatten();
                match by_shim {
                    Some(t) => t.flatten(1, -1),
                    None => pool_with_ops(&z, &inv, &thr, &cells, soft.is_some()),
                }
            })
            .collect();
        Ok(if parts.len() == 1 { parts.into_iter().next().expect("one chunk") } else { Tensor::cat(&parts, 0) })
    }
}

/// `fused::encode_pool` with libtorch's ops (CUDA, or a build without the shim).
fn pool_with_ops(z: &Tensor, inv: &Tensor, thr: &Tensor, cells: &Tensor, soft: bool) -> Tensor {
    let weights = cells.unsqueeze(0) * inv.unsqueeze(1);
    let pool = |t: &Tensor| weights.bmm(t).transpose(1, 2).flatten(1, -1);
    if !soft {
        return pool(z);
    }
    let thr = thr.unsqueeze(2);
    // relu(−z − t) = −min(z + t, 0)
    Tensor::cat(&[pool(&(z - &thr).clamp_min(0.0)), -pool(&(z + thr).clamp_max(0.0))], 1)
}

fn unit_rows(t: &Tensor) -> Tensor {
    t / t.norm_scalaropt_dim(2.0, [1], true).clamp_min(1e-12)
}

impl Backbone for PatchNet {
    fn family(&self) -> Family {
        Family::Patch
    }

    fn stage_names(&self) -> Vec<String> {
        vec!["encode".into()]
    }

    fn forward_stages(&self, x: &Tensor, _mode: BnMode, _until: usize) -> Vec<Tensor> {
        vec![self.responses(x)]
    }

    /// No classifier of its own: the globally averaged responses stand in (checks only).
    fn logits(&self, x: &Tensor) -> Tensor {
        self.forward_stages(x, BnMode::Eval, 0)[0].mean_dim([2, 3].as_slice(), false, Kind::Float)
    }

    fn built_sites(&self) -> &[Site] {
        &[]
    }

    fn module_sites(&self) -> Vec<Site> {
        vec![]
    }

    fn units_mut(&mut self) -> Vec<&mut ConvBn> {
        vec![]
    }

    fn as_patchnet_mut(&mut self) -> Option<&mut PatchNet> {
        Some(self)
    }

    fn chunk(&self) -> Option<i64> {
        Some(CHUNK)
    }

    fn pooled_features(&self, x: &Tensor, soft: Option<f64>, grid: Grid) -> Option<Result<Tensor>> {
        Some(self.pooled(x, soft, grid))
    }
}

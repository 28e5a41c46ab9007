//! CPU loops for the kernel readout where libtorch's general routines fall short. Each
//! conjugate-gradient step multiplies the n×n kernel matrix by a 10-column block; `linear`
//! and MKL's GEMM ran that at about half the speed of the loop here (20k rows, 2 threads:
//! 0.43 s against 0.23 s; one column through MKL's GEMV, 0.12 s), and the solve is up to a
//! thousand such steps. With 10 columns the loop is bound by its multiply-adds, not by
//! reading K. The arc-cosine map over a Gram block is one pass here against six libtorch
//! passes with block-sized temporaries.
use anyhow::{ensure, Result};
use tch::{Device, Kind, Tensor};

/// Accumulators of one pass (rows × classes): one AVX register each, beside K's rows and a
/// row of P (16 registers in all).
const ACCUMULATORS: usize = 12;

/// Columns of K per tile: the tile's rows of P (256 KB) stay in the L2 cache while K's rows
/// stream past once. Shorter tiles (P in L1) ran slower here: K then arrives in short runs
/// that the hardware prefetcher serves badly (20k rows: 0.41 s a product at 608 columns,
/// 0.17–0.21 s at 2048–8192).
fn tile(c: usize) -> usize {
    ((256 << 10) / (4 * c)).clamp(512, 8192) / 8 * 8
}

/// A float32 CPU matrix with unit column stride, as a slice from its first element and its
/// row stride (a leading block of a larger matrix included).
fn rows_of(t: &Tensor) -> Result<(&[f32], usize)> {
    let (size, stride) = (t.size(), t.stride());
    ensure!(
        t.device() == Device::Cpu && t.kind() == Kind::Float && size.len() == 2 && stride[1] == 1,
        "dense: expected a float32 CPU matrix with contiguous rows"
    );
    let (m, n, ld) = (size[0] as usize, size[1] as usize, stride[0] as usize);
    let len = if m == 0 { 0 } else { (m - 1) * ld + n };
    // SAFETY: the tensor owns `len` floats from its data pointer on (its sizes and strides
    // say so), and the borrow of `t` keeps the storage alive while the slice is used.
    Ok((unsafe { std::slice::from_raw_parts(t.data_ptr() as *const f32, len) }, ld))
}

/// The same, writable. The caller holds the only use of the storage while it writes.
fn rows_of_mut(t: &mut Tensor) -> Result<(&mut [f32], usize)> {
    let (slice, ld) = rows_of(t)?;
    let len = slice.len();
    // SAFETY: as in `rows_of`; `&mut Tensor` rules out another borrow through this handle.
    Ok((unsafe { std::slice::from_raw_parts_mut(t.data_ptr() as *mut f32, len) }, ld))
}

fn threads() -> usize {
    (tch::get_num_threads().max(1) as usize).min(64)
}

/// K·Pᵀ for a square K (m, m) that may be a leading block of a larger matrix, and `pt`
/// (c, m): returns (m, c). K is read once, split by rows over libtorch's thread count.
pub fn times(k: &Tensor, pt: &Tensor) -> Result<Tensor> {
    let (m, c) = (k.size()[0] as usize, pt.size()[0] as usize);
    ensure!(k.size()[1] as usize == m && pt.size()[1] as usize == m, "dense: K·Pᵀ needs K (m, m) and P (c, m)");
    let pt = pt.contiguous();
    let (kd, ld) = rows_of(k)?;
    let (pd, _) = rows_of(&pt)?;
    let mut out = vec![0f32; m * c];
    let per = m.div_ceil(threads()).max(1);
    std::thread::scope(|s| {
        for (t, chunk) in out.chunks_mut(per * c).enumerate() {
            let first = t * per;
            s.spawn(move || rows_times(kd, ld, first, m, pd, c, chunk));
        }
    });
    Ok(Tensor::from_slice(&out).view([m as i64, c as i64]))
}

/// Rows `first..` of K (as many as `out` holds) times Pᵀ, tile by tile of columns, two
/// rows at a time so that each load of P serves both.
fn rows_times(k: &[f32], ld: usize, first: usize, m: usize, pt: &[f32], c: usize, out: &mut [f32]) {
    let rows = out.len() / c;
    let t = tile(c);
    let avx = avx2();
    for j0 in (0..m).step_by(t) {
        let n = t.min(m - j0);
        let mut r = 0;
        while r < rows {
            let pair = if r + 1 < rows { 2 } else { 1 };
            // Classes in equal groups that fit the registers beside `pair` rows.
            let groups = c.div_ceil(ACCUMULATORS / pair);
            let size = c.div_ceil(groups);
            let mut g0 = 0;
            while g0 < c {
                let g = size.min(c - g0);
                let seg = &k[(first + r) * ld + j0..];
                let o = &mut out[r * c + g0..];
                dot(avx, (pair, g), Block { k: seg, kld: ld, p: &pt[g0 * m + j0..], pld: m, n, c }, o);
                g0 += g;
            }
            r += pair;
        }
    }
}

#[cfg(target_arch = "x86_64")]
fn avx2() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
}

#[cfg(not(target_arch = "x86_64"))]
fn avx2() -> bool {
    false
}

/// R rows of K from `k` (row stride `kld`) against G rows of P from `p` (row stride `pld`),
/// `n` columns each; results go to o[r·c + g].
struct Block<'a> {
    k: &'a [f32],
    kld: usize,
    p: &'a [f32],
    pld: usize,
    n: usize,
    c: usize,
}

impl Block<'_> {
    fn check(&self, r: usize, g: usize, o: &[f32]) {
        assert!(self.k.len() >= (r - 1) * self.kld + self.n, "K rows out of range");
        assert!(self.p.len() >= (g - 1) * self.pld + self.n, "P rows out of range");
        assert!(o.len() >= (r - 1) * self.c + g, "output out of range");
    }
}

/// o[r·c + g] += ⟨K row r, P row g⟩ for (R, G) = `shape`.
fn dot(avx: bool, shape: (usize, usize), b: Block, o: &mut [f32]) {
    macro_rules! by_shape {
        ($f:ident, $(($r:literal, $g:literal))*) => {
            match shape {
                $(($r, $g) => $f::<$r, $g>(&b, o),)*
                _ => unreachable!("at most {ACCUMULATORS} accumulators"),
            }
        };
    }
    // One line per row count: rustfmt would break the list mid-pair.
    #[rustfmt::skip]
    macro_rules! all_shapes {
        ($f:ident) => {
            by_shape!($f, (1, 1) (1, 2) (1, 3) (1, 4) (1, 5) (1, 6) (1, 7) (1, 8) (1, 9) (1, 10) (1, 11) (1, 12)
                (2, 1) (2, 2) (2, 3) (2, 4) (2, 5) (2, 6))
        };
    }
    #[cfg(target_arch = "x86_64")]
    if avx {
        // SAFETY: the CPU has AVX2 and FMA (checked at run time).
        unsafe { all_shapes!(dot_avx2) };
        return;
    }
    let _ = avx;
    all_shapes!(dot_portable)
}

fn dot_portable<const R: usize, const G: usize>(b: &Block, o: &mut [f32]) {
    b.check(R, G, o);
    for r in 0..R {
        let seg = &b.k[r * b.kld..r * b.kld + b.n];
        for g in 0..G {
            let row = &b.p[g * b.pld..g * b.pld + b.n];
            o[r * b.c + g] += seg.iter().zip(row).map(|(x, y)| x * y).sum::<f32>();
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
// The accumulators are a (row, class) register block: indices read as the arithmetic does.
#[allow(clippy::needless_range_loop)]
unsafe fn dot_avx2<const R: usize, const G: usize>(b: &Block, o: &mut [f32]) {
    use std::arch::x86_64::*;
    b.check(R, G, o);
    let (kp, pp, n) = (b.k.as_ptr(), b.p.as_ptr(), b.n);
    let mut acc = [[_mm256_setzero_ps(); G]; R];
    let full = n / 8 * 8;
    let mut j = 0;
    while j < full {
        // SAFETY: j + 8 ≤ n, and every row read has n floats (checked above).
        let mut kv = [_mm256_setzero_ps(); R];
        for (r, v) in kv.iter_mut().enumerate() {
            *v = _mm256_loadu_ps(kp.add(r * b.kld + j));
        }
        for g in 0..G {
            let pv = _mm256_loadu_ps(pp.add(g * b.pld + j));
            for r in 0..R {
                acc[r][g] = _mm256_fmadd_ps(kv[r], pv, acc[r][g]);
            }
        }
        j += 8;
    }
    for r in 0..R {
        for g in 0..G {
            let mut lanes = [0f32; 8];
            _mm256_storeu_ps(lanes.as_mut_ptr(), acc[r][g]);
            let tail: f32 = (full..n).map(|j| b.k[r * b.kld + j] * b.p[g * b.pld + j]).sum();
            o[r * b.c + g] += lanes.iter().sum::<f32>() + tail;
        }
    }
}

/// Turns inner products ⟨a_i, b_j⟩ (a block of rows, any row stride) into kernel values
/// `k(‖u‖‖v‖, cos θ)` of u = a/√d and v = b/√d in place, with `na` and `nb` the scaled
/// norms ‖a_i‖/√d and ‖b_j‖/√d. Zero rows give k = 0.
pub fn dot_kernel_in_place(
    block: &mut Tensor,
    na: &[f32],
    nb: &[f32],
    d: usize,
    k: impl Fn(f32, f32) -> f32 + Copy + Send,
) -> Result<()> {
    let (rows, cols) = (block.size()[0] as usize, block.size()[1] as usize);
    ensure!(na.len() == rows && nb.len() == cols, "dense: norms do not match the block");
    let (data, ld) = rows_of_mut(block)?;
    let per = rows.div_ceil(threads()).max(1);
    let inv_d = 1.0 / d as f32;
    std::thread::scope(|s| {
        // Each thread owns whole rows: split the slice at row starts.
        let mut rest = data;
        let mut first = 0;
        while first < rows {
            let take = per.min(rows - first);
            let len = if first + take == rows { rest.len() } else { take * ld };
            let (mine, tail) = rest.split_at_mut(len);
            rest = tail;
            let na = &na[first..first + take];
            s.spawn(move || {
                for (r, &a) in na.iter().enumerate() {
                    let row = &mut mine[r * ld..r * ld + cols];
                    for (x, &b) in row.iter_mut().zip(nb) {
                        let norms = a * b;
                        *x = if norms > 1e-12 { k(norms, (*x * inv_d / norms).clamp(-1.0, 1.0)) } else { 0.0 };
                    }
                }
            });
            first += take;
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_equals_libtorch_on_a_leading_block_for_any_class_count() {
        tch::manual_seed(1);
        let big = Tensor::randn([301, 301], (Kind::Float, Device::Cpu));
        for (m, c) in [(297, 10), (300, 3), (64, 1), (150, 25), (9, 13)] {
            let k = big.narrow(0, 0, m).narrow(1, 0, m);
            let pt = Tensor::randn([c, m], (Kind::Float, Device::Cpu));
            let want = k.to_kind(Kind::Double).mm(&pt.to_kind(Kind::Double).tr());
            let got = times(&k, &pt).unwrap().to_kind(Kind::Double);
            let err = (&got - &want).abs().max().double_value(&[]);
            assert!(err < 1e-3 * want.abs().max().double_value(&[]), "m {m}, c {c}: {err}");
        }
    }

    #[test]
    fn the_portable_loop_equals_the_vector_one() {
        let p: Vec<f32> = (0..3 * 40).map(|i| (i as f32 * 0.11).cos()).collect();
        // Two rows of K 40 apart in `seg`'s extension, three rows of P; c = 3.
        let k: Vec<f32> = (0..40 + 37).map(|i| (i as f32 * 0.37).sin()).collect();
        let (mut a, mut b) = (vec![0f32; 6], vec![0f32; 6]);
        let block = || Block { k: &k, kld: 40, p: &p, pld: 40, n: 37, c: 3 };
        dot(false, (2, 3), block(), &mut a);
        dot(avx2(), (2, 3), block(), &mut b);
        for (r, g) in [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)] {
            let want: f32 = (0..37).map(|j| k[r * 40 + j] * p[g * 40 + j]).sum();
            let (x, y) = (a[r * 3 + g], b[r * 3 + g]);
            assert!((x - want).abs() < 1e-4 && (y - want).abs() < 1e-4, "{a:?} {b:?} {want}");
        }
    }
}

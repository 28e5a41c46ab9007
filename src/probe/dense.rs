//! CPU loops for the kernel readout where libtorch's general routines leave most of the
//! memory bandwidth unused. Each conjugate-gradient step multiplies the n×n kernel matrix
//! by a 10-column block: `linear` and MKL's GEMM ran that at a quarter of what reading the
//! matrix once costs on these CPUs (45k rows: 1.6 s against 0.4 s), and the solve is a
//! thousand such steps. The arc-cosine map over a Gram block is one pass here against six
//! libtorch passes with block-sized temporaries.
use anyhow::{ensure, Result};
use std::f32::consts::PI;
use tch::{Device, Kind, Tensor};

/// At most this many classes share one pass over a segment of K (one AVX register each,
/// beside K's and a product's: 16 in all).
const GROUP: usize = 12;

/// Columns of K per tile: the tile's rows of P stay in the L1 cache (L2 for many classes)
/// while each row of K streams past once.
fn tile(c: usize) -> usize {
    let budget = if c <= GROUP { 24 << 10 } else { 256 << 10 };
    (budget / (4 * c)).clamp(64, 4096) / 8 * 8
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

/// Rows `first..` of K (as many as `out` holds) times Pᵀ, tile by tile of columns.
fn rows_times(k: &[f32], ld: usize, first: usize, m: usize, pt: &[f32], c: usize, out: &mut [f32]) {
    let rows = out.len() / c;
    let t = tile(c);
    let avx = avx2();
    for j0 in (0..m).step_by(t) {
        let len = t.min(m - j0);
        for r in 0..rows {
            let at = (first + r) * ld + j0;
            let seg = &k[at..at + len];
            let o = &mut out[r * c..(r + 1) * c];
            let mut g0 = 0;
            while g0 < c {
                let g = (c - g0).min(GROUP);
                dot(avx, g, seg, &pt[g0 * m + j0..], m, &mut o[g0..g0 + g]);
                g0 += g;
            }
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

/// o[g] += ⟨seg, p_g⟩ for the `o.len()` rows of P starting at `p` (row stride `ld`).
fn dot(avx: bool, g: usize, seg: &[f32], p: &[f32], ld: usize, o: &mut [f32]) {
    macro_rules! by_group {
        ($f:ident, $($n:literal)*) => {
            match g {
                $($n => $f::<$n>(seg, p, ld, o),)*
                _ => unreachable!("groups hold 1..={GROUP} classes"),
            }
        };
    }
    #[cfg(target_arch = "x86_64")]
    if avx {
        // SAFETY: the CPU has AVX2 and FMA (checked at run time).
        unsafe { by_group!(dot_avx2, 1 2 3 4 5 6 7 8 9 10 11 12) };
        return;
    }
    let _ = avx;
    by_group!(dot_portable, 1 2 3 4 5 6 7 8 9 10 11 12)
}

fn dot_portable<const G: usize>(seg: &[f32], p: &[f32], ld: usize, o: &mut [f32]) {
    let mut acc = [[0f32; 8]; G];
    let full = seg.len() / 8 * 8;
    for j in (0..full).step_by(8) {
        for (g, a) in acc.iter_mut().enumerate() {
            let row = &p[g * ld + j..g * ld + j + 8];
            for l in 0..8 {
                a[l] += seg[j + l] * row[l];
            }
        }
    }
    for (g, a) in acc.iter().enumerate() {
        let tail: f32 = (full..seg.len()).map(|j| seg[j] * p[g * ld + j]).sum();
        o[g] += a.iter().sum::<f32>() + tail;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_avx2<const G: usize>(seg: &[f32], p: &[f32], ld: usize, o: &mut [f32]) {
    use std::arch::x86_64::*;
    let n = seg.len();
    assert!(p.len() >= (G - 1) * ld + n && o.len() >= G);
    let (kp, pp) = (seg.as_ptr(), p.as_ptr());
    let mut acc = [_mm256_setzero_ps(); G];
    let full = n / 8 * 8;
    let mut j = 0;
    while j < full {
        // SAFETY: j + 8 ≤ n, and row g of P has n floats from g·ld (asserted above).
        let kv = _mm256_loadu_ps(kp.add(j));
        for (g, a) in acc.iter_mut().enumerate() {
            *a = _mm256_fmadd_ps(kv, _mm256_loadu_ps(pp.add(g * ld + j)), *a);
        }
        j += 8;
    }
    for (g, a) in acc.iter().enumerate() {
        let mut lanes = [0f32; 8];
        _mm256_storeu_ps(lanes.as_mut_ptr(), *a);
        let tail: f32 = (full..n).map(|j| seg[j] * p[g * ld + j]).sum();
        o[g] += lanes.iter().sum::<f32>() + tail;
    }
}

/// Turns inner products ⟨a_i, b_j⟩ (a block of rows, any row stride) into the arc-cosine
/// kernel of a/√d and b/√d in place: k = ‖u‖‖v‖ (sin θ + (π − θ) cos θ) / π, with `na`
/// and `nb` the scaled norms ‖a_i‖/√d and ‖b_j‖/√d. Zero rows give k = 0.
pub fn arc_cosine_in_place(block: &mut Tensor, na: &[f32], nb: &[f32], d: usize) -> Result<()> {
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
                        *x = if norms > 1e-12 {
                            let cos = (*x * inv_d / norms).clamp(-1.0, 1.0);
                            norms * ((1.0 - cos * cos).max(0.0).sqrt() + (PI - cos.acos()) * cos) / PI
                        } else {
                            0.0
                        };
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
        let seg: Vec<f32> = (0..37).map(|i| (i as f32 * 0.37).sin()).collect();
        let p: Vec<f32> = (0..3 * 40).map(|i| (i as f32 * 0.11).cos()).collect();
        let (mut a, mut b) = (vec![0f32; 3], vec![0f32; 3]);
        dot(false, 3, &seg, &p, 40, &mut a);
        dot(avx2(), 3, &seg, &p, 40, &mut b);
        for g in 0..3 {
            let want: f32 = (0..37).map(|j| seg[j] * p[g * 40 + j]).sum();
            assert!((a[g] - want).abs() < 1e-4 && (b[g] - want).abs() < 1e-4, "{a:?} {b:?} {want}");
        }
    }
}

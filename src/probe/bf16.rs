//! Inner products of bfloat16 rows into float32, for the kernel readout's
//! `--kernel-precision bf16`. libtorch's bf16 matrix product rounds its output to bf16
//! (three significant digits: too coarse for a ridge system at λ 3e-3), its float32
//! product needs float32 copies of the rows, and its bf16 → f32 product is CUDA-only. Here
//! each pair of bf16 inputs is multiplied and added into float32 lanes by AVX512-BF16's
//! `vdpbf16ps`, so an entry is the exact inner product of the rounded rows up to float32
//! summation: the kernel of slightly perturbed features, still positive semi-definite.
//! 12 rows × 32 columns of output stay in 24 registers while K streams past (Goto's
//! blocking: a group of rows in L2, one packed panel of columns reused across it). On this
//! 2-core Zen 5, 8192 × 1536 × 36,864: 812 GFLOP/s, against 204 for libtorch's float32
//! product of the same shapes.
use anyhow::{ensure, Result};
use tch::{Device, Kind, Tensor};

/// Output rows per micro tile and columns per packed panel (two 16-lane registers).
const MR: usize = 12;
const NR: usize = 32;
/// Pairs of K per chunk (2048 values): a panel's chunk (128 KB) and a group's (480 KB) share
/// the L2 cache.
const KC: usize = 1024;
/// Rows of `a` per group: the unit of work a thread takes.
const MC: usize = 120;

/// Whether this CPU runs the products here (AVX512-BF16); elsewhere the caller converts.
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether `products` takes these operands: bf16 CPU matrices with contiguous rows and an
/// even row length and stride (the kernel reads the rows as pairs).
pub fn fits(a: &Tensor, b: &Tensor) -> bool {
    let ok = |t: &Tensor| {
        let (size, stride) = (t.size(), t.stride());
        t.device() == Device::Cpu
            && t.kind() == Kind::BFloat16
            && size.len() == 2
            && stride[1] == 1
            && size[1] % 2 == 0
            && stride[0] % 2 == 0
    };
    available() && ok(a) && ok(b) && a.size()[1] == b.size()[1]
}

/// The rows of a matrix that `fits`, as 32-bit words (pairs of bf16) from its first
/// element, and its row stride in words.
fn pairs(t: &Tensor) -> (&[u32], usize) {
    let (m, d, ld) = (t.size()[0] as usize, t.size()[1] as usize / 2, t.stride()[0] as usize / 2);
    let len = if m == 0 { 0 } else { (m - 1) * ld + d };
    // SAFETY: `fits` checked a CPU bf16 matrix with unit column stride and even strides:
    // its storage holds `len` aligned pairs from the data pointer, alive while `t` is borrowed.
    (unsafe { std::slice::from_raw_parts(t.data_ptr() as *const u32, len) }, ld)
}

/// out (m, nb) = a (m, d) · b (nb, d)ᵀ in float32, for operands that `fits` and a float32
/// `out` with contiguous rows (any row stride: a block of a larger matrix). `b` is packed
/// once (nb × d bf16); threads take groups of `a`'s rows.
pub fn products(a: &Tensor, b: &Tensor, out: &mut Tensor) -> Result<()> {
    ensure!(fits(a, b), "bf16: operands the AVX512-BF16 products do not take");
    let (m, nb) = (a.size()[0] as usize, b.size()[0] as usize);
    let (os, ostride) = (out.size(), out.stride());
    ensure!(
        out.device() == Device::Cpu && out.kind() == Kind::Float && os == [m as i64, nb as i64] && ostride[1] == 1,
        "bf16: the output must be a float32 ({m}, {nb}) CPU matrix with contiguous rows"
    );
    if m == 0 || nb == 0 {
        return Ok(());
    }
    let ((ad, lda), (bd, ldb)) = (pairs(a), pairs(b));
    let kp = a.size()[1] as usize / 2;
    let packed = pack(bd, ldb, nb, kp);
    let ldc = ostride[0] as usize;
    // Threads write disjoint row groups of `out`; the address crosses as an integer.
    let c = out.data_ptr() as usize;
    let groups = m.div_ceil(MC);
    let next = std::sync::atomic::AtomicUsize::new(0);
    let threads = (tch::get_num_threads().max(1) as usize).min(groups);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let g = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if g >= groups {
                    break;
                }
                let rows = g * MC..(g * MC + MC).min(m);
                // SAFETY: this group's rows of `out` are written by this thread only, and
                // every offset stays inside the operands (`tile` checks).
                unsafe { group(ad, lda, rows, &packed, nb, kp, c as *mut f32, ldc) };
            });
        }
    });
    Ok(())
}

/// b's rows in panels of NR: panel p holds, for each pair q, the q-th pairs of its NR rows
/// side by side ([panel][q][NR], zeros past nb), which `vdpbf16ps` multiplies lane by lane.
fn pack(b: &[u32], ldb: usize, nb: usize, kp: usize) -> Vec<u32> {
    let panels = nb.div_ceil(NR);
    let mut out = vec![0u32; panels * kp * NR];
    for (p, panel) in out.chunks_mut(kp * NR).enumerate() {
        for c in 0..NR.min(nb - p * NR) {
            let row = &b[(p * NR + c) * ldb..(p * NR + c) * ldb + kp];
            for (q, &w) in row.iter().enumerate() {
                panel[q * NR + c] = w;
            }
        }
    }
    out
}

/// One group of `a`'s rows against every panel, K chunk by chunk: the group's chunk stays
/// in L2 while the panels pass.
///
/// # Safety
/// `c` must point at a float32 matrix of row stride `ldc` with the group's rows and nb
/// columns, written by no one else meanwhile.
#[allow(clippy::too_many_arguments)]
unsafe fn group(
    a: &[u32],
    lda: usize,
    rows: std::ops::Range<usize>,
    packed: &[u32],
    nb: usize,
    kp: usize,
    c: *mut f32,
    ldc: usize,
) {
    for k0 in (0..kp).step_by(KC) {
        let kl = KC.min(kp - k0);
        for p in 0..nb.div_ceil(NR) {
            let cols = NR.min(nb - p * NR);
            let panel = &packed[p * kp * NR + k0 * NR..p * kp * NR + (k0 + kl) * NR];
            for t in rows.clone().step_by(MR) {
                let n = MR.min(rows.end - t);
                let a_tile = &a[t * lda + k0..(t + n - 1) * lda + k0 + kl];
                tile(a_tile, lda, n, panel, kl, c.add(t * ldc + p * NR), ldc, cols, k0 > 0);
            }
        }
    }
}

/// out[r][j] (+)= Σ_q a[r][q] · panel[q][j] over `kl` pairs for r < `n` ≤ MR rows, j < `cols`.
///
/// # Safety
/// `out` must hold `n` rows of stride `ldc` with `cols` floats each.
#[allow(clippy::too_many_arguments)]
unsafe fn tile(
    a: &[u32],
    lda: usize,
    n: usize,
    panel: &[u32],
    kl: usize,
    out: *mut f32,
    ldc: usize,
    cols: usize,
    add: bool,
) {
    assert!((1..=MR).contains(&n) && a.len() >= (n - 1) * lda + kl && panel.len() >= kl * NR && cols <= NR);
    let mut acc = [[0f32; NR]; MR];
    #[cfg(target_arch = "x86_64")]
    {
        tile_avx512(a.as_ptr(), lda, n, panel.as_ptr(), kl, &mut acc);
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (a, lda, panel, kl);
        unreachable!("bf16 products need x86_64 (`available` says no elsewhere)");
    }
    for (r, row) in acc.iter().enumerate().take(n) {
        let dst = std::slice::from_raw_parts_mut(out.add(r * ldc), cols);
        for (o, &v) in dst.iter_mut().zip(row) {
            *o = if add { *o + v } else { v };
        }
    }
}

/// The 12 × 32 register tile. Rows past `n` reread the last row (their sums are dropped),
/// so the loop has no branch.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn tile_avx512(a: *const u32, lda: usize, n: usize, panel: *const u32, kl: usize, acc: &mut [[f32; NR]; MR]) {
    use std::arch::x86_64::*;
    let mut sums = [[_mm512_setzero_ps(); 2]; MR];
    let rows: [*const u32; MR] = std::array::from_fn(|r| a.add(r.min(n - 1) * lda));
    for q in 0..kl {
        let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(panel.add(q * NR) as *const _));
        let b1: __m512bh = std::mem::transmute(_mm512_loadu_si512(panel.add(q * NR + 16) as *const _));
        for r in 0..MR {
            let pair: __m512bh = std::mem::transmute(_mm512_set1_epi32(*rows[r].add(q) as i32));
            sums[r][0] = _mm512_dpbf16_ps(sums[r][0], pair, b0);
            sums[r][1] = _mm512_dpbf16_ps(sums[r][1], pair, b1);
        }
    }
    for r in 0..MR {
        _mm512_storeu_ps(acc[r].as_mut_ptr(), sums[r][0]);
        _mm512_storeu_ps(acc[r].as_mut_ptr().add(16), sums[r][1]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Exact products of the rounded rows in float64, against the kernel's float32 sums:
    /// shapes with partial tiles, panels and K chunks, and an output inside a larger matrix.
    /// A CPU without AVX512-BF16 must refuse the operands instead (the kernel readout then
    /// converts to float32; tests/probe.rs and kernel.rs's tests cover that path).
    #[test]
    fn products_equal_float64_products_of_the_rounded_rows_where_the_cpu_has_avx512_bf16() {
        tch::manual_seed(11);
        if !available() {
            let x = Tensor::ones([4, 6], (Kind::BFloat16, Device::Cpu));
            let mut out = Tensor::zeros([4, 4], (Kind::Float, Device::Cpu));
            assert!(!fits(&x, &x) && products(&x, &x, &mut out).is_err());
            eprintln!("no AVX512-BF16 on this CPU: checked that the products are refused");
            return;
        }
        for (m, nb, d) in [(131i64, 45i64, 2 * KC as i64 + 70), (12, 32, 64), (1, 1, 2), (250, 97, 4100)] {
            let a = Tensor::randn([m, d], (Kind::Float, Device::Cpu)).to_kind(Kind::BFloat16);
            let b = Tensor::randn([nb, d], (Kind::Float, Device::Cpu)).to_kind(Kind::BFloat16);
            let big = Tensor::full([m + 3, nb + 5], 7.0, (Kind::Float, Device::Cpu));
            let mut out = big.narrow(0, 2, m).narrow(1, 1, nb);
            products(&a, &b, &mut out).unwrap();
            let want = a.to_kind(Kind::Double).mm(&b.to_kind(Kind::Double).tr());
            let err = (out.to_kind(Kind::Double) - &want).abs().max().double_value(&[]);
            assert!(err < 1e-5 * d as f64, "({m}, {nb}, {d}): {err}");
            // Nothing outside the block was touched.
            assert_eq!(big.narrow(0, 0, 2).ne(7.0).sum(Kind::Int64).int64_value(&[]), 0);
            assert_eq!(big.narrow(1, nb + 1, 4).ne(7.0).sum(Kind::Int64).int64_value(&[]), 0);
        }
    }

    #[test]
    fn odd_rows_and_float32_operands_are_not_taken() {
        let x = Tensor::ones([4, 6], (Kind::Float, Device::Cpu));
        assert!(!fits(&x, &x));
        let odd = Tensor::ones([4, 5], (Kind::BFloat16, Device::Cpu));
        assert!(!fits(&odd, &odd));
    }
}

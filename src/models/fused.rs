//! oneDNN's fused CPU convolutions for frozen, BN-folded fp32 weights: conv + ReLU, and a
//! ResNet block's last conv + residual add + ReLU written in place into the shortcut, with
//! weights pre-packed once into oneDNN's blocked layout. On ResNet-18 this measured
//! 1.06–1.20× TorchScript's `freeze` + `optimize_for_inference` (which fuses the same way).
//! The ops are libtorch's `mkldnn::_convolution_pointwise*`, reached through fused.cpp.
//! Convs with tiny output maps run as one oneDNN inner product instead (`LINEAR_MAX_POSITIONS`),
//! and wide stride-1 3×3 convs as Winograd F(4×4, 3×3), or F(2×2, 3×3) where the map is not
//! a whole number of 4×4 tiles (`WINO_MIN_CHANNELS`).
use anyhow::{anyhow, Result};
use std::cell::{OnceCell, RefCell};
use std::sync::OnceLock;
use tch::{Device, Kind, Tensor};

/// What a fused conv applies after the convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Post {
    Relu,
    None,
}

impl Post {
    fn attr(self) -> &'static std::ffi::CStr {
        match self {
            Post::Relu => c"relu",
            Post::None => c"none",
        }
    }
}

#[cfg(cnnprobe_fused)]
mod ffi {
    use std::os::raw::{c_char, c_int};
    use torch_sys::C_tensor;
    extern "C" {
        #[allow(clippy::too_many_arguments)]
        pub fn cnnprobe_fused_prepack(
            out: *mut *mut C_tensor,
            w: *const C_tensor,
            padding: i64,
            stride: i64,
            groups: i64,
            input_size: *const i64,
            err: *mut c_char,
            err_len: usize,
        ) -> c_int;
        #[allow(clippy::too_many_arguments)]
        pub fn cnnprobe_fused_conv(
            out: *mut *mut C_tensor,
            x: *const C_tensor,
            w: *const C_tensor,
            b: *const C_tensor,
            padding: i64,
            stride: i64,
            groups: i64,
            attr: *const c_char,
            other: *mut C_tensor,
            err: *mut c_char,
            err_len: usize,
        ) -> c_int;
        pub fn cnnprobe_linear_prepack(
            out: *mut *mut C_tensor,
            w: *const C_tensor,
            rows: i64,
            err: *mut c_char,
            err_len: usize,
        ) -> c_int;
        pub fn cnnprobe_linear(
            out: *mut *mut C_tensor,
            x: *const C_tensor,
            w: *const C_tensor,
            b: *const C_tensor,
            attr: *const c_char,
            err: *mut c_char,
            err_len: usize,
        ) -> c_int;
        pub fn cnnprobe_wino_weights(
            out: *mut *mut C_tensor,
            w: *const C_tensor,
            m: i64,
            err: *mut c_char,
            err_len: usize,
        ) -> c_int;
        #[allow(clippy::too_many_arguments)]
        pub fn cnnprobe_wino_input(
            out: *mut *mut C_tensor,
            x: *const C_tensor,
            m: i64,
            n0: i64,
            n1: i64,
            err: *mut c_char,
            err_len: usize,
        ) -> c_int;
        #[allow(clippy::too_many_arguments)]
        pub fn cnnprobe_wino_output(
            y: *mut C_tensor,
            m: *const C_tensor,
            bias: *const C_tensor,
            tile: i64,
            n0: i64,
            n1: i64,
            relu: c_int,
            add: c_int,
            err: *mut c_char,
            err_len: usize,
        ) -> c_int;
        pub fn cnnprobe_fp_raised() -> c_int;
        pub fn cnnprobe_pin_memory(
            out: *mut *mut C_tensor,
            x: *const C_tensor,
            err: *mut c_char,
            err_len: usize,
        ) -> c_int;
        #[allow(clippy::too_many_arguments)]
        pub fn cnnprobe_encode_pool(
            out: *mut *mut C_tensor,
            z: *const C_tensor,
            inv: *const C_tensor,
            thr: *const C_tensor,
            cells: *const C_tensor,
            soft: c_int,
            err: *mut c_char,
            err_len: usize,
        ) -> c_int;
    }
}

/// A build without libtorch's headers (no shim): the same calls, always failing.
#[cfg(not(cnnprobe_fused))]
#[allow(clippy::too_many_arguments)]
mod ffi {
    use std::os::raw::{c_char, c_int};
    use torch_sys::C_tensor;
    fn absent(err: *mut c_char, len: usize) -> c_int {
        let msg = b"this build has no shim (libtorch not found at build time)\0";
        // SAFETY: `err` holds `len` bytes (see `call`).
        unsafe { std::ptr::copy_nonoverlapping(msg.as_ptr().cast(), err, msg.len().min(len)) };
        1
    }
    pub unsafe fn cnnprobe_fused_prepack(
        _: *mut *mut C_tensor,
        _: *const C_tensor,
        _: i64,
        _: i64,
        _: i64,
        _: *const i64,
        err: *mut c_char,
        len: usize,
    ) -> c_int {
        absent(err, len)
    }
    pub unsafe fn cnnprobe_fused_conv(
        _: *mut *mut C_tensor,
        _: *const C_tensor,
        _: *const C_tensor,
        _: *const C_tensor,
        _: i64,
        _: i64,
        _: i64,
        _: *const c_char,
        _: *mut C_tensor,
        err: *mut c_char,
        len: usize,
    ) -> c_int {
        absent(err, len)
    }
    pub unsafe fn cnnprobe_linear_prepack(
        _: *mut *mut C_tensor,
        _: *const C_tensor,
        _: i64,
        err: *mut c_char,
        len: usize,
    ) -> c_int {
        absent(err, len)
    }
    pub unsafe fn cnnprobe_linear(
        _: *mut *mut C_tensor,
        _: *const C_tensor,
        _: *const C_tensor,
        _: *const C_tensor,
        _: *const c_char,
        err: *mut c_char,
        len: usize,
    ) -> c_int {
        absent(err, len)
    }
    pub unsafe fn cnnprobe_wino_weights(
        _: *mut *mut C_tensor,
        _: *const C_tensor,
        _: i64,
        err: *mut c_char,
        len: usize,
    ) -> c_int {
        absent(err, len)
    }
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn cnnprobe_wino_input(
        _: *mut *mut C_tensor,
        _: *const C_tensor,
        _: i64,
        _: i64,
        _: i64,
        err: *mut c_char,
        len: usize,
    ) -> c_int {
        absent(err, len)
    }
    pub unsafe fn cnnprobe_wino_output(
        _: *mut C_tensor,
        _: *const C_tensor,
        _: *const C_tensor,
        _: i64,
        _: i64,
        _: i64,
        _: c_int,
        _: c_int,
        err: *mut c_char,
        len: usize,
    ) -> c_int {
        absent(err, len)
    }
    /// Nothing runs fused without the shim; "raised" keeps any caller on the exact path.
    pub unsafe fn cnnprobe_fp_raised() -> c_int {
        1
    }
    pub unsafe fn cnnprobe_pin_memory(
        _: *mut *mut C_tensor,
        _: *const C_tensor,
        err: *mut c_char,
        len: usize,
    ) -> c_int {
        absent(err, len)
    }
    pub unsafe fn cnnprobe_encode_pool(
        _: *mut *mut C_tensor,
        _: *const C_tensor,
        _: *const C_tensor,
        _: *const C_tensor,
        _: *const C_tensor,
        _: c_int,
        err: *mut c_char,
        len: usize,
    ) -> c_int {
        absent(err, len)
    }
}

/// Runs one shim call with an error buffer; Err carries the C++ exception's message.
fn call(f: impl FnOnce(*mut std::os::raw::c_char, usize) -> i32) -> Result<()> {
    let mut err = vec![0u8; 1024];
    if f(err.as_mut_ptr().cast(), err.len()) == 0 {
        return Ok(());
    }
    let msg = std::ffi::CStr::from_bytes_until_nul(&err).map(|s| s.to_string_lossy().into_owned());
    // The first line: libtorch appends a C++ backtrace.
    Err(anyhow!("oneDNN fused conv: {}", msg.unwrap_or_default().lines().next().unwrap_or("")))
}

/// Runs a shim call that hands over one new tensor through its first argument.
fn new_tensor(
    f: impl FnOnce(*mut *mut torch_sys::C_tensor, *mut std::os::raw::c_char, usize) -> i32,
) -> Result<Tensor> {
    let mut out = std::ptr::null_mut();
    call(|err, len| f(&mut out, err, len))?;
    // SAFETY: on success `out` is a heap at::Tensor the shim gave up; Tensor owns it now.
    Ok(unsafe { Tensor::from_ptr(out) })
}

/// Whether a floating-point invalid operation or overflow happened on the calling thread or
/// libtorch's CPU thread pool since the last call (the flags are cleared either way).
///
/// Why: oneDNN's fused ReLU is max(x, 0), which maps a NaN to 0, where aten's ReLU keeps
/// it. A NaN can arise from finite inputs and weights only through an invalid operation
/// (inf − inf, inf·0), which raises IEEE's sticky flag, so a clean flag after a fused
/// forward pass proves the fused result equals aten's, NaN-faithfulness included.
pub fn fp_raised() -> bool {
    // SAFETY: no arguments; the shim only reads and clears floating-point status flags.
    unsafe { ffi::cnnprobe_fp_raised() != 0 }
}

/// `x` in page-locked memory, for an asynchronous upload to `device`. The shim calls
/// libtorch's `pin_memory()`; tch's binding passes a device, which libtorch 2.11+ answers
/// with a deprecation warning on every call (two lines per batch). Without the shim, that.
pub fn pin_memory(x: &Tensor, device: Device) -> Tensor {
    let mut out = std::ptr::null_mut();
    // SAFETY: `x` is a live tensor; on success the shim hands over a new at::Tensor.
    match call(|err, len| unsafe { ffi::cnnprobe_pin_memory(&mut out, x.as_ptr(), err, len) }) {
        Ok(()) => unsafe { Tensor::from_ptr(out) },
        Err(_) => x.pin_memory(device),
    }
}

/// `--arch patchnet`'s soft threshold and pooling in one pass over the responses `z`
/// (n, L, K), float32 on the CPU: (n, 2, K, C) sums over positions l of
/// `cells`[c, l]·`inv`[l]·relu(±z − `thr`[l]) with `soft`, else (n, 1, K, C) of `cells`·`inv`·z.
/// Err where the shim is absent (the caller then takes libtorch's ops).
pub fn encode_pool(z: &Tensor, inv: &Tensor, thr: &Tensor, cells: &Tensor, soft: bool) -> Result<Tensor> {
    // SAFETY: the shim reads the four live tensors and writes one new tensor into `out`.
    new_tensor(|out, err, len| unsafe {
        ffi::cnnprobe_encode_pool(out, z.as_ptr(), inv.as_ptr(), thr.as_ptr(), cells.as_ptr(), soft as i32, err, len)
    })
}

/// `w` (OIHW fp32) reordered for inputs of `input_size` (N, C, H, W).
fn prepack(w: &Tensor, padding: i64, stride: i64, groups: i64, input_size: &[i64]) -> Result<Tensor> {
    let size: [i64; 4] = input_size.try_into().map_err(|_| anyhow!("fused conv: input is not 4-d"))?;
    // SAFETY: the shim reads `w` and `size` and writes one new tensor into `out`.
    new_tensor(|out, err, len| unsafe {
        ffi::cnnprobe_fused_prepack(out, w.as_ptr(), padding, stride, groups, size.as_ptr(), err, len)
    })
}

/// Whether the CPU has AVX-512, where the inner-product and Winograd paths were measured to pay.
/// Elsewhere (the AVX2 machines of earlier measurements) every conv keeps the channels-last
/// fused path, the one measured best there.
fn avx512() -> bool {
    static YES: OnceLock<bool> = OnceLock::new();
    #[cfg(target_arch = "x86_64")]
    return *YES.get_or_init(|| std::arch::is_x86_feature_detected!("avx512f"));
    #[cfg(not(target_arch = "x86_64"))]
    return *YES.get_or_init(|| false);
}

/// (a, b, c, d) over 0..a × 0..b × 0..c × 0..d, the last fastest.
fn product4(a: i64, b: i64, c: i64, d: i64) -> impl Iterator<Item = (i64, i64, i64, i64)> {
    (0..a).flat_map(move |i| (0..b).flat_map(move |j| (0..c).flat_map(move |k| (0..d).map(move |l| (i, j, k, l)))))
}

/// Input shapes whose packed weights a conv keeps: a split's full batches and its short last
/// one.
const SHAPES: usize = 2;

/// One conv's folded weights, packed per input shape on first use.
pub struct FusedConv {
    weight: Tensor,
    bias: Tensor,
    padding: i64,
    stride: i64,
    /// (input size, packed weights), the most recently used first. oneDNN picks the blocked
    /// layout from the whole input size, batch included, and a conv handed weights packed
    /// for another shape reorders them again on every call: ResNet-50 at 32 px spent a
    /// fifth of its time so on an AVX-512 machine, its weights packed for one image. The
    /// inner-product path keeps its packed matrices here too, under (rows, H, W, -1).
    packed: RefCell<Vec<(Vec<i64>, Tensor)>>,
    /// The A² products of the Winograd transform domain as one A²-group 1×1 conv, for the
    /// convs `wino_tile` picks: [0] for F(2×2, 3×3), [1] for F(4×4, 3×3).
    wino: [OnceCell<Box<FusedConv>>; 2],
    /// Groups (A² for the Winograd products, else 1).
    groups: i64,
    /// The Winograd products themselves: always the channels-last path.
    plain: bool,
}

/// Stride-1 3×3 convs with at least this many input and output channels run as Winograd
/// F(4×4, 3×3) (4× fewer multiplications) or F(2×2, 3×3) (2.25×), where the map is larger
/// than `LINEAR_MAX_POSITIONS`. With fewer channels the transforms' memory traffic outweighs
/// the saving. On the 2-core AVX-512 machine (ad hoc `cnnprobe extract` runs, alternated):
/// F(2×2) took random-best's 256→512 conv at 16×16 to 3.6 ms per 4 images against 4.3
/// direct; F(4×4) then took the whole network from 673–712 to 992–1041 images/s and
/// ResNet-18 from 388–400 to 452–465; letting ResNet-18's 128- or 64-channel stages in
/// as well gained nothing (460–528 and 341–473 against 493–524).
const WINO_MIN_CHANNELS: i64 = 256;

/// Tile components (tiles × A²) per round of the Winograd transforms (a chunk of the batch):
/// the round's transform-domain buffers, rows × (C + K) floats (12 MB at C + K = 768), stay
/// in the last-level cache between the transforms and the products. Rounds of 1024 F(2×2)
/// tiles ran slower; for F(4×4), 2048–16384 rows ran within noise of each other.
const WINO_ROWS: i64 = 4096;

/// Output maps of at most this many positions run as one oneDNN inner product (`run_linear`)
/// on channels-last memory. oneDNN's channels-last convolutions run such maps at about 95
/// GFLOP/s on the 2-core AVX-512 machine (a 2048→512 1×1 conv at 1×1, batch 256), its
/// inner product at about 500 with packed weights. Against the blocked-layout convolutions
/// used before (reorders in and out of oneDNN's layout each call), ad hoc alternated
/// `cnnprobe extract` runs gave ResNet-50 at 32 px 1923–2071 images/s against 1059–1087 and
/// VGG-11-BN 2199 against 1943–2051, but with a 16 GB process paused beside them: on a quiet
/// machine the benchmark had the blocked build at 0.911× TorchScript on ResNet-50 and this
/// one at 0.901× (before the heap change in features::taps), so the gain there is unproven.
/// Sending 4×4 maps (16 positions) this way too lowered ResNet-50 to 1564–1589 against
/// 1772–1929.
const LINEAR_MAX_POSITIONS: i64 = 4;

impl FusedConv {
    pub fn new(weight: &Tensor, bias: &Tensor, padding: i64, stride: i64) -> FusedConv {
        let bias = bias.contiguous();
        let (packed, wino) = (RefCell::new(Vec::new()), Default::default());
        FusedConv { weight: weight.contiguous(), bias, padding, stride, packed, wino, groups: 1, plain: false }
    }

    /// The packed weights under `key`, made by `make` on a miss; the most recent `SHAPES`
    /// entries are kept.
    fn cached(&self, key: Vec<i64>, make: impl FnOnce() -> Result<Tensor>) -> Result<Tensor> {
        let mut cache = self.packed.borrow_mut();
        if let Some(i) = cache.iter().position(|(s, _)| *s == key) {
            cache[..=i].rotate_right(1);
            return Ok(cache[0].1.shallow_clone());
        }
        let w = make()?;
        cache.insert(0, (key, w.shallow_clone()));
        cache.truncate(SHAPES);
        Ok(w)
    }

    fn packed(&self, x: &Tensor) -> Result<Tensor> {
        let size = x.size();
        self.cached(size.clone(), || prepack(&self.weight, self.padding, self.stride, self.groups, &size))
    }

    /// post(conv(x) + bias), channels-last like `x`.
    pub fn forward(&self, x: &Tensor, post: Post) -> Result<Tensor> {
        self.run(x, post, None).map(|y| y.expect("a new tensor"))
    }

    /// shortcut ← relu(conv(x) + bias + shortcut), in place: the block's output reuses the
    /// shortcut's memory instead of a fresh activation.
    pub fn forward_add_relu_(&self, x: &Tensor, shortcut: &mut Tensor) -> Result<()> {
        self.run(x, Post::Relu, Some(shortcut)).map(|_| ())
    }

    /// Whether `x`'s output map is small enough for the inner-product path (see
    /// `LINEAR_MAX_POSITIONS`).
    fn linear_for(&self, x: &Tensor) -> bool {
        let size = x.size();
        size.len() == 4 && {
            let (ho, wo) = self.out_hw(size[2], size[3]);
            ho * wo <= LINEAR_MAX_POSITIONS
        }
    }

    /// The Winograd tile M for `x` (see `WINO_MIN_CHANNELS`): 4 where the map is a whole
    /// number of 4×4 tiles, else 2 where it has even sides, else none.
    fn wino_tile(&self, x: &Tensor) -> Option<i64> {
        let (size, w) = (x.size(), self.weight.size());
        let eligible = size.len() == 4
            && w[2..] == [3, 3]
            && (self.stride, self.padding) == (1, 1)
            && w[0].min(w[1]) >= WINO_MIN_CHANNELS;
        [4, 2].into_iter().find(|m| eligible && size[2] % m == 0 && size[3] % m == 0)
    }

    fn run(&self, x: &Tensor, post: Post, other: Option<&mut Tensor>) -> Result<Option<Tensor>> {
        let tuned = !self.plain && avx512();
        if tuned && self.linear_for(x) {
            return self.run_linear(x, post, other);
        }
        if let Some(m) = self.wino_tile(x).filter(|_| tuned) {
            return self.run_wino(x, m, post, other);
        }
        let w = self.packed(x)?;
        let other = other.map_or(std::ptr::null_mut(), |t| t.as_mut_ptr());
        let mut out = std::ptr::null_mut();
        let (b, attr) = (self.bias.as_ptr(), post.attr().as_ptr());
        // SAFETY: the shim reads x, w, bias, writes `other` in place or one new tensor to `out`.
        call(|err, len| unsafe {
            ffi::cnnprobe_fused_conv(
                &mut out,
                x.as_ptr(),
                w.as_ptr(),
                b,
                self.padding,
                self.stride,
                self.groups,
                attr,
                other,
                err,
                len,
            )
        })?;
        // SAFETY: a non-null `out` is a heap at::Tensor the shim gave up.
        Ok((!out.is_null()).then(|| unsafe { Tensor::from_ptr(out) }))
    }

    /// The A² transform-domain filters of tile `m` as one A²-group 1×1 conv, (T, A²·C) →
    /// (T, A²·K), made on first use. One grouped call ran F(2×2)'s products at 456–496
    /// GFLOP/s against 367–423 for 16 calls (256 tiles; C, K = 256, 512), and lays each
    /// tile's components side by side.
    fn wino_products(&self, m: i64) -> Result<&FusedConv> {
        let cell = &self.wino[(m == 4) as usize];
        if let Some(u) = cell.get() {
            return Ok(u);
        }
        // SAFETY: the shim reads the weights and writes one new tensor into `out`.
        let u =
            new_tensor(|out, err, len| unsafe { ffi::cnnprobe_wino_weights(out, self.weight.as_ptr(), m, err, len) })?;
        let (groups, k, c) = (u.size()[0], u.size()[1], u.size()[2]);
        let zeros = Tensor::zeros([groups * k], (Kind::Float, Device::Cpu));
        let mut conv = FusedConv::new(&u.view([groups * k, c, 1, 1]), &zeros, 0, 1);
        (conv.groups, conv.plain) = (groups, true);
        Ok(cell.get_or_init(|| Box::new(conv)))
    }

    /// post(conv(x) + bias) through Winograd F(m×m, 3×3), in rounds of about `WINO_ROWS`
    /// tile components; with `other`, the residual is added and the result written there.
    fn run_wino(&self, x: &Tensor, m: i64, post: Post, other: Option<&mut Tensor>) -> Result<Option<Tensor>> {
        let products = self.wino_products(m)?;
        let _keep = crate::util::libtorch::keep_freed_memory();
        let size = x.size();
        let (n, c, h, w, k) = (size[0], size[1], size[2], size[3], self.weight.size()[0]);
        let add = other.is_some();
        let mut y = match other {
            Some(o) => o.shallow_clone(),
            // Channels-last (N, K, H, W): NHWC memory seen through NCHW sizes.
            None => Tensor::empty([n, h, w, k], (Kind::Float, Device::Cpu)).permute([0, 3, 1, 2]),
        };
        let components = (m + 2) * (m + 2);
        let chunk = (WINO_ROWS / components / (h / m * (w / m))).max(1);
        let relu = (post == Post::Relu) as i32;
        for n0 in (0..n).step_by(chunk as usize) {
            let n1 = (n0 + chunk).min(n);
            // SAFETY: the shim reads `x` and writes one new tensor into `out`.
            let v =
                new_tensor(|out, err, len| unsafe { ffi::cnnprobe_wino_input(out, x.as_ptr(), m, n0, n1, err, len) })?;
            let tiles = v.size()[0];
            // (1, A²·C, T, 1) channels-last: one image of T positions, so oneDNN blocks over
            // the tiles (as T images of one position each it ran at a quarter of the speed).
            let p = products.forward(&v.view([1, tiles, 1, components * c]).permute([0, 3, 1, 2]), Post::None)?;
            // SAFETY: the shim reads the products and the bias and writes into `y`'s storage.
            call(|err, len| unsafe {
                ffi::cnnprobe_wino_output(
                    y.as_mut_ptr(),
                    p.as_ptr(),
                    self.bias.as_ptr(),
                    m,
                    n0,
                    n1,
                    relu,
                    add as i32,
                    err,
                    len,
                )
            })?;
        }
        Ok((!add).then_some(y))
    }

    /// Output size (ho, wo) for an h×w input.
    fn out_hw(&self, h: i64, w: i64) -> (i64, i64) {
        let k = self.weight.size()[2];
        let out = |n: i64| (n + 2 * self.padding - k) / self.stride + 1;
        (out(h), out(w))
    }

    /// Whether `x` goes through the whole-map weight matrix (each output position's taps
    /// over every input position) rather than im2col: where the input has fewer positions
    /// than the kernel has taps, so the matrix multiplies fewer (padding) zeros.
    fn whole_map(&self, x: &Tensor) -> bool {
        let (size, w) = (x.size(), self.weight.size());
        size[2] * size[3] <= w[2] * w[3] && w[2] * w[3] > 1
    }

    /// The weight matrix (out_features, in_features) of `run_linear` for `x`'s size.
    fn linear_weight(&self, x: &Tensor) -> Tensor {
        let (size, w) = (x.size(), self.weight.size());
        let (h, wd, (k, c, kh, kw)) = (size[2], size[3], (w[0], w[1], w[2], w[3]));
        if !self.whole_map(x) {
            // im2col's (K, kh·kw·C), taps in (dy, dx, c) order.
            return self.weight.permute([0, 2, 3, 1]).contiguous().view([k, kh * kw * c]);
        }
        let (ho, wo) = self.out_hw(h, wd);
        let m = Tensor::zeros([ho, wo, k, h, wd, c], (Kind::Float, Device::Cpu));
        for (oy, ox, iy, ix) in product4(ho, wo, h, wd) {
            let (dy, dx) = (iy - oy * self.stride + self.padding, ix - ox * self.stride + self.padding);
            if (0..kh).contains(&dy) && (0..kw).contains(&dx) {
                let tap = self.weight.select(3, dx).select(2, dy);
                m.get(oy).get(ox).select(1, iy).select(1, ix).copy_(&tap);
            }
        }
        m.view([ho * wo * k, h * wd * c])
    }

    /// The conv as one oneDNN inner product, channels-last in and out: the whole map as
    /// one row per image (`whole_map`), or im2col's row per output position.
    fn run_linear(&self, x: &Tensor, post: Post, other: Option<&mut Tensor>) -> Result<Option<Tensor>> {
        let size = x.size();
        let (n, c, h, w) = (size[0], size[1], size[2], size[3]);
        let (kh, kw) = (self.weight.size()[2], self.weight.size()[3]);
        let k = self.weight.size()[0];
        let (ho, wo) = self.out_hw(h, w);
        let nhwc = x.permute([0, 2, 3, 1]);
        let (rows, bias) = if self.whole_map(x) {
            (nhwc.contiguous().view([n, h * w * c]), self.bias.repeat([ho * wo]))
        } else {
            let (p, s) = (self.padding, self.stride);
            let padded = if p > 0 { nhwc.constant_pad_nd([0, 0, p, p, p, p]) } else { nhwc };
            let taps: Vec<Tensor> = product4(kh, kw, 1, 1)
                .map(|(dy, dx, _, _)| {
                    padded.slice(1, dy, dy + s * (ho - 1) + 1, s).slice(2, dx, dx + s * (wo - 1) + 1, s)
                })
                .collect();
            let cols = if taps.len() == 1 { taps[0].contiguous() } else { Tensor::stack(&taps, 3) };
            (cols.view([n * ho * wo, kh * kw * c]), self.bias.shallow_clone())
        };
        // Keyed apart from the conv path's (N, C, H, W) sizes by the -1.
        let r = rows.size()[0];
        let wp = self.cached(vec![r, h, w, -1], || {
            let m = self.linear_weight(x);
            // SAFETY: the shim reads the matrix and writes one new tensor into `out`.
            new_tensor(|out, err, len| unsafe { ffi::cnnprobe_linear_prepack(out, m.as_ptr(), r, err, len) })
        })?;
        // The residual add and its ReLU run as aten ops afterwards (NaN kept).
        let attr = if other.is_some() { Post::None.attr() } else { post.attr() };
        // SAFETY: the shim reads the rows, weights and bias and writes one new tensor.
        let y = new_tensor(|out, err, len| unsafe {
            ffi::cnnprobe_linear(out, rows.as_ptr(), wp.as_ptr(), bias.as_ptr(), attr.as_ptr(), err, len)
        })?;
        let y = y.view([n, ho, wo, k]).permute([0, 3, 1, 2]);
        match other {
            Some(o) => {
                let _ = o.f_add_(&y)?;
                if post == Post::Relu {
                    let _ = o.f_relu_()?;
                }
                Ok(None)
            }
            None => Ok(Some(y)),
        }
    }
}

/// Whether this libtorch runs the fused ops correctly, checked once per process on a tiny
/// conv against aten's: a libtorch without them (or one that errors) keeps the aten path.
pub fn available() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| {
        let r = tch::no_grad(self_check);
        if let Err(e) = &r {
            if std::env::var_os("CNNPROBE_DEBUG").is_some() {
                eprintln!("debug: fused convolutions off: {e:#}");
            }
        }
        r.is_ok()
    })
}

fn self_check() -> Result<()> {
    let opts = (Kind::Float, tch::Device::Cpu);
    // A 5×5 map runs channels-last, a 2×2 one (with AVX-512) the inner-product path.
    for side in [5, 2] {
        let x = Tensor::randn([2, 4, side, side], opts)
            .contiguous()
            .permute([0, 2, 3, 1])
            .contiguous()
            .permute([0, 3, 1, 2]);
        let (w, b) = (Tensor::randn([4, 4, 3, 3], opts), Tensor::randn([4], opts));
        let conv = FusedConv::new(&w, &b, 1, 1);
        let want = x.conv2d(&w, Some(&b), [1, 1], [1, 1], [1, 1], 1);
        let relu = conv.forward(&x, Post::Relu)?;
        let mut sum = x.copy();
        conv.forward_add_relu_(&x, &mut sum)?;
        let close = |a: &Tensor, b: &Tensor| a.allclose(b, 1e-4, 1e-4, false);
        if !(close(&relu, &want.relu()) && close(&sum, &(want + &x).relu())) {
            return Err(anyhow!("fused conv: results differ from aten's conv2d ({side}×{side} map)"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Winograd paths (both tiles) and the inner-product path against aten's conv2d, ReLU and
    /// residual add, on channel counts that are not multiples of 16 (the transforms' tail
    /// blocks) and batches that split into several rounds of tiles. Each path is called
    /// directly, whatever this CPU's `avx512()`. F(4×4)'s larger transform constants cost
    /// accuracy: about 1.3e-5 of the largest output here, against 1.2e-6 for F(2×2).
    #[test]
    fn winograd_and_linear_convs_match_aten() {
        if !available() {
            panic!("fused convolutions unavailable on this CPU libtorch");
        }
        tch::no_grad(|| {
            let opts = (Kind::Float, Device::Cpu);
            tch::manual_seed(0);
            let shapes = [(70, 264, 280, 4, 6), (5, 256, 260, 2, 2), (3, 300, 256, 8, 8), (40, 256, 264, 12, 8)];
            for (n, c, k, h, w) in shapes {
                let x = crate::models::layers::channels_last(&Tensor::randn([n, c, h, w], opts));
                let weight = Tensor::randn([k, c, 3, 3], opts) / (3.0 * (c as f64).sqrt());
                let bias = Tensor::randn([k], opts);
                let conv = &FusedConv::new(&weight, &bias, 1, 1);
                let tile = if h % 4 == 0 && w % 4 == 0 { 4 } else { 2 };
                assert_eq!(conv.wino_tile(&x), Some(tile), "{n}×{c}×{h}×{w}");
                let want = x.conv2d(&weight, Some(&bias), [1, 1], [1, 1], [1, 1], 1);
                let want_sum_of = |s: &Tensor| (&want + s).relu();
                let rel = |a: &Tensor, b: &Tensor| ((a - b).abs().max() / b.abs().max()).double_value(&[]);
                type Path<'a> = Box<dyn Fn(&Tensor, Post, Option<&mut Tensor>) -> Result<Option<Tensor>> + 'a>;
                let mut paths: Vec<(String, f64, Path)> =
                    vec![("linear".into(), 1e-5, Box::new(|x, p, o| conv.run_linear(x, p, o)))];
                for m in (2..=tile).step_by(2) {
                    let limit = if m == 2 { 1e-5 } else { 5e-5 };
                    paths.push((
                        format!("winograd F({m}×{m})"),
                        limit,
                        Box::new(move |x, p, o| conv.run_wino(x, m, p, o)),
                    ));
                }
                for (name, limit, path) in &paths {
                    let relu = path(&x, Post::Relu, None).unwrap().unwrap();
                    let err = rel(&relu, &want.relu());
                    assert!(err < *limit, "{name} relu {n}×{c}×{h}×{w}: {err:e}");
                    let shortcut = crate::models::layers::channels_last(&Tensor::randn([n, k, h, w], opts));
                    let mut sum = shortcut.copy();
                    assert!(path(&x, Post::Relu, Some(&mut sum)).unwrap().is_none());
                    let err = rel(&sum, &want_sum_of(&shortcut));
                    assert!(err < *limit, "{name} add {n}×{c}×{h}×{w}: {err:e}");
                }
            }
        });
    }

    /// The inner-product path on every conv shape the tiny maps of ResNet-50 and VGG bring:
    /// 3×3 at stride 1 and 2 through the whole-map matrix and through im2col, 1×1 at
    /// stride 1 and 2, with and without the residual add; a batch of another size reuses
    /// nothing packed for the first.
    #[test]
    fn linear_path_matches_aten_on_every_tiny_map_shape() {
        if !available() {
            panic!("fused convolutions unavailable on this CPU libtorch");
        }
        tch::no_grad(|| {
            let opts = (Kind::Float, Device::Cpu);
            tch::manual_seed(1);
            // (kernel, stride, padding, input side)
            for (kk, stride, pad, side) in
                [(3, 1, 1, 2), (3, 1, 1, 1), (3, 2, 1, 4), (3, 2, 1, 2), (1, 1, 0, 2), (1, 2, 0, 4)]
            {
                let (c, k) = (40, 24);
                let weight = Tensor::randn([k, c, kk, kk], opts) / (kk as f64 * (c as f64).sqrt());
                let bias = Tensor::randn([k], opts);
                let conv = FusedConv::new(&weight, &bias, pad, stride);
                for n in [7, 3] {
                    let x = crate::models::layers::channels_last(&Tensor::randn([n, c, side, side], opts));
                    assert!(conv.linear_for(&x), "{kk}×{kk}/{stride} on {side}×{side}");
                    let want = x.conv2d(&weight, Some(&bias), [stride, stride], [pad, pad], [1, 1], 1);
                    let rel = |a: &Tensor, b: &Tensor| ((a - b).abs().max() / b.abs().max()).double_value(&[]);
                    let plain = conv.run_linear(&x, Post::None, None).unwrap().unwrap();
                    assert_eq!(plain.size(), want.size());
                    assert!(rel(&plain, &want) < 1e-5, "{kk}×{kk}/{stride} on {side}×{side}: {:e}", rel(&plain, &want));
                    let relu = conv.run_linear(&x, Post::Relu, None).unwrap().unwrap();
                    assert!(rel(&relu, &want.relu()) < 1e-5, "relu {kk}×{kk}/{stride} on {side}×{side}");
                    let shortcut = crate::models::layers::channels_last(&Tensor::randn(want.size(), opts));
                    let mut sum = shortcut.copy();
                    assert!(conv.run_linear(&x, Post::Relu, Some(&mut sum)).unwrap().is_none());
                    assert!(rel(&sum, &(&want + &shortcut).relu()) < 1e-5, "add {kk}×{kk}/{stride} on {side}×{side}");
                }
            }
        });
    }
}

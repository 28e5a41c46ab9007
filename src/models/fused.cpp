// oneDNN's fused convolutions (conv + ReLU, conv + add + ReLU), which libtorch registers as
// mkldnn:: operators but tch's generated bindings do not reach. Called through the
// dispatcher (boxed), so a libtorch without them fails at run time with a message, never
// at link time. Tensors cross as at::Tensor* (tch's C_tensor); every C++ exception becomes
// an error string for Rust.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <algorithm>
#include <atomic>
#include <cfenv>
#include <cstring>
#include <vector>

namespace {

void set_error(char* err, size_t len, const char* msg) {
  if (err && len) {
    std::strncpy(err, msg, len - 1);
    err[len - 1] = '\0';
  }
}

std::vector<int64_t> pair(int64_t v) { return {v, v}; }

// The transforms' loops, compiled for AVX-512, AVX2 and the baseline, picked at load time
// (GCC's function multiversioning): the rest of the shim keeps the baseline ISA. Channels
// go in blocks of 16 through local arrays, which the compiler vectorizes without aliasing
// doubts about the 16 input and 16 output streams.
constexpr int64_t CB = 16;

// Copies of one block of 16 floats (`n` of them in a tail block): a fixed trip count on the
// common path, which the compiler turns into vector loads and stores instead of a call.
inline void load16(float* dst, const float* src, int64_t n) {
  if (n == CB) {
    for (int64_t c = 0; c < CB; ++c) dst[c] = src[c];
  } else {
    for (int64_t c = 0; c < CB; ++c) dst[c] = c < n ? src[c] : 0.f;
  }
}

inline void store16(float* dst, const float* src, int64_t n) {
  if (n == CB) {
    for (int64_t c = 0; c < CB; ++c) dst[c] = src[c];
  } else {
    for (int64_t c = 0; c < n; ++c) dst[c] = src[c];
  }
}

// Winograd F(M×M, 3×3), M = 2 or 4: each (M+2)×(M+2) input tile d goes to Bᵀ d B, and the
// (M+2)² products of a tile back to its M×M outputs by Aᵀ m A. Bᵀ and Aᵀ are Lavin & Gray's
// (interpolation points 0, ±1 for M = 2; 0, ±1, ±2 for M = 4), written out by hand: a
// generic matrix loop would multiply by every zero.

// Bᵀ applied to the six (M = 4) or four (M = 2) rows d[0..A) of one column, 16 channels.
template <int M>
inline __attribute__((always_inline)) void input_rows(const float (*d)[CB], float (*u)[CB]) {
  for (int64_t c = 0; c < CB; ++c) {
    if constexpr (M == 2) {
      u[0][c] = d[0][c] - d[2][c];
      u[1][c] = d[1][c] + d[2][c];
      u[2][c] = d[2][c] - d[1][c];
      u[3][c] = d[1][c] - d[3][c];
    } else {
      const float a = d[4][c] - d[2][c], b = d[1][c] - d[3][c];
      u[0][c] = 4.f * d[0][c] - 5.f * d[2][c] + d[4][c];
      u[1][c] = d[3][c] + d[4][c] - 4.f * (d[1][c] + d[2][c]);
      u[2][c] = d[4][c] - d[3][c] + 4.f * (d[1][c] - d[2][c]);
      u[3][c] = a - 2.f * b;
      u[4][c] = a + 2.f * b;
      u[5][c] = 4.f * d[1][c] - 5.f * d[3][c] + d[5][c];
    }
  }
}

// Aᵀ applied to the A rows m[0..A) of one column: M outputs, 16 channels.
template <int M>
inline __attribute__((always_inline)) void output_rows(const float (*m)[CB], float (*o)[CB]) {
  for (int64_t k = 0; k < CB; ++k) {
    if constexpr (M == 2) {
      o[0][k] = m[0][k] + m[1][k] + m[2][k];
      o[1][k] = m[1][k] - m[2][k] - m[3][k];
    } else {
      const float a = m[1][k] + m[2][k], b = m[1][k] - m[2][k], c = m[3][k] + m[4][k], e = m[3][k] - m[4][k];
      o[0][k] = m[0][k] + a + c;
      o[1][k] = b + 2.f * e;
      o[2][k] = a + 4.f * c;
      o[3][k] = b + 8.f * e + m[5][k];
    }
  }
}

// Bᵀ d B for tiles [t0, t1) of images from n0 on: V (T, A², C).
template <int M>
inline __attribute__((always_inline)) void input_tiles(const float* px, float* pv, const float* zeros, int64_t n0,
                                                       int64_t t0, int64_t t1, int64_t C, int64_t H, int64_t W) {
  constexpr int A = M + 2;
  const int64_t th = H / M, tw = W / M;
  const float* d[A][A];
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t n = n0 + t / (th * tw), i = (t / tw) % th, j = t % tw;
    for (int a = 0; a < A; ++a)
      for (int b = 0; b < A; ++b) {
        const int64_t r = M * i - 1 + a, q = M * j - 1 + b;
        d[a][b] = (r < 0 || r >= H || q < 0 || q >= W) ? zeros : px + ((n * H + r) * W + q) * C;
      }
    for (int64_t c0 = 0; c0 < C; c0 += CB) {
      const int64_t cn = std::min(CB, C - c0);
      // Columns first: in[b] holds column b's A rows, u[b] their transform; then each
      // transformed row a, gathered across the columns, goes through Bᵀ again.
      float in[A][A][CB], u[A][A][CB], row[A][CB], o[A][CB];
      for (int a = 0; a < A; ++a)
        for (int b = 0; b < A; ++b) load16(in[b][a], d[a][b] + c0, cn);
      for (int b = 0; b < A; ++b) input_rows<M>(in[b], u[b]);
      for (int a = 0; a < A; ++a) {
        for (int b = 0; b < A; ++b)
          for (int64_t c = 0; c < CB; ++c) row[b][c] = u[b][a][c];
        input_rows<M>(row, o);
        for (int b = 0; b < A; ++b) store16(pv + (t * A * A + A * a + b) * C + c0, o[b], cn);
      }
    }
  }
}

// Aᵀ M A + bias (+ the residual already in y), ReLU as aten's (NaN stays), into y.
template <int M>
inline __attribute__((always_inline)) void output_tiles(const float* pm, const float* pb, float* py, int64_t n0,
                                                        int64_t t0, int64_t t1, int64_t K, int64_t H, int64_t W,
                                                        bool relu, bool add) {
  constexpr int A = M + 2;
  const int64_t th = H / M, tw = W / M;
  const float zero[CB] = {};
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t n = n0 + t / (th * tw), i = (t / tw) % th, j = t % tw;
    float* yo[M][M];
    for (int a = 0; a < M; ++a)
      for (int b = 0; b < M; ++b) yo[a][b] = py + ((n * H + M * i + a) * W + M * j + b) * K;
    for (int64_t k0 = 0; k0 < K; k0 += CB) {
      const int64_t kn = std::min(CB, K - k0);
      // Rows first: s[a] = Aᵀ applied along row a of the A×A products; then each output
      // column q gathers s[·][q] and goes through Aᵀ again.
      float m[A][A][CB], s[A][M][CB], col[A][CB], o[M][CB], bias[CB], r[CB];
      for (int a = 0; a < A; ++a)
        for (int b = 0; b < A; ++b) load16(m[a][b], pm + (t * A * A + A * a + b) * K + k0, kn);
      load16(bias, pb + k0, kn);
      for (int a = 0; a < A; ++a) output_rows<M>(m[a], s[a]);
      for (int q = 0; q < M; ++q) {
        for (int a = 0; a < A; ++a)
          for (int64_t k = 0; k < CB; ++k) col[a][k] = s[a][q][k];
        output_rows<M>(col, o);
        for (int p = 0; p < M; ++p) {
          load16(r, add ? yo[p][q] + k0 : zero, add ? kn : CB);
          for (int64_t k = 0; k < CB; ++k) {
            float v = o[p][k] + bias[k] + r[k];
            r[k] = relu && v < 0.f ? 0.f : v;
          }
          store16(yo[p][q] + k0, r, kn);
        }
      }
    }
  }
}

__attribute__((target_clones("avx512f", "avx2", "default")))
void wino_input_tiles2(const float* px, float* pv, const float* zeros, int64_t n0, int64_t t0, int64_t t1, int64_t C,
                       int64_t H, int64_t W) {
  input_tiles<2>(px, pv, zeros, n0, t0, t1, C, H, W);
}

__attribute__((target_clones("avx512f", "avx2", "default")))
void wino_input_tiles4(const float* px, float* pv, const float* zeros, int64_t n0, int64_t t0, int64_t t1, int64_t C,
                       int64_t H, int64_t W) {
  input_tiles<4>(px, pv, zeros, n0, t0, t1, C, H, W);
}

__attribute__((target_clones("avx512f", "avx2", "default")))
void wino_output_tiles2(const float* pm, const float* pb, float* py, int64_t n0, int64_t t0, int64_t t1, int64_t K,
                        int64_t H, int64_t W, bool relu, bool add) {
  output_tiles<2>(pm, pb, py, n0, t0, t1, K, H, W, relu, add);
}

__attribute__((target_clones("avx512f", "avx2", "default")))
void wino_output_tiles4(const float* pm, const float* pb, float* py, int64_t n0, int64_t t0, int64_t t1, int64_t K,
                        int64_t H, int64_t W, bool relu, bool add) {
  output_tiles<4>(pm, pb, py, n0, t0, t1, K, H, W, relu, add);
}

bool tile_ok(int64_t m) { return m == 2 || m == 4; }

}  // namespace

extern "C" {

// Weights reordered once into the blocked layout oneDNN picks for inputs of `input_size`
// (N, C, H, W): without the size, every call would reorder them again.
int cnnprobe_fused_prepack(at::Tensor** out, const at::Tensor* w, int64_t padding, int64_t stride, int64_t groups,
                           const int64_t* input_size, char* err, size_t err_len) {
  try {
    std::vector<int64_t> size(input_size, input_size + 4);
    auto packed = at::mkldnn_reorder_conv2d_weight(w->contiguous().to_mkldnn(), pair(padding), pair(stride),
                                                   pair(1), groups, at::IntArrayRef(size));
    *out = new at::Tensor(std::move(packed));
    return 0;
  } catch (const std::exception& e) {
    set_error(err, err_len, e.what());
    return 1;
  }
}

// y = conv(x) + bias, then `attr` ("relu" or "none"). With `other`: other ← relu(conv(x) +
// bias + other) in place (`*out` is then null), the residual add of a ResNet block.
int cnnprobe_fused_conv(at::Tensor** out, const at::Tensor* x, const at::Tensor* w, const at::Tensor* b,
                        int64_t padding, int64_t stride, int64_t groups, const char* attr, at::Tensor* other, char* err,
                        size_t err_len) {
  try {
    auto& dispatcher = c10::Dispatcher::singleton();
    std::vector<c10::IValue> stack;
    if (other) {
      TORCH_CHECK(groups == 1, "fused conv: the residual add takes one group");
      static auto op = dispatcher.findSchemaOrThrow("mkldnn::_convolution_pointwise_", "binary");
      stack = {*other, *x, *w, *b, pair(padding), pair(stride), pair(1), int64_t{1}, std::string("add"),
               c10::Scalar(1.0), std::string(attr), c10::List<std::optional<c10::Scalar>>(), c10::IValue()};
      op.callBoxed(&stack);
      *out = nullptr;
    } else {
      static auto op = dispatcher.findSchemaOrThrow("mkldnn::_convolution_pointwise", "");
      stack = {*x, *w, *b, pair(padding), pair(stride), pair(1), groups, std::string(attr),
               c10::List<std::optional<c10::Scalar>>(), c10::IValue()};
      op.callBoxed(&stack);
      *out = new at::Tensor(stack[0].toTensor());
    }
    return 0;
  } catch (const std::exception& e) {
    set_error(err, err_len, e.what());
    return 1;
  }
}

// A (out_features, in_features) weight matrix packed for oneDNN's inner product with `rows`
// input rows, for `cnnprobe_linear`.
int cnnprobe_linear_prepack(at::Tensor** out, const at::Tensor* w, int64_t rows, char* err, size_t err_len) {
  try {
    static auto op = c10::Dispatcher::singleton().findSchemaOrThrow("mkldnn::_reorder_linear_weight", "");
    std::vector<c10::IValue> stack{w->contiguous(), c10::IValue(rows)};
    op.callBoxed(&stack);
    *out = new at::Tensor(stack[0].toTensor());
    return 0;
  } catch (const std::exception& e) {
    set_error(err, err_len, e.what());
    return 1;
  }
}

// y = x wᵀ + bias, then `attr` ("relu" or "none"): oneDNN's inner product on a (rows,
// in_features) x and weights from `cnnprobe_linear_prepack`.
int cnnprobe_linear(at::Tensor** out, const at::Tensor* x, const at::Tensor* w, const at::Tensor* b, const char* attr,
                    char* err, size_t err_len) {
  try {
    static auto op = c10::Dispatcher::singleton().findSchemaOrThrow("mkldnn::_linear_pointwise", "");
    std::vector<c10::IValue> stack{*x, *w, *b, std::string(attr), c10::List<std::optional<c10::Scalar>>(),
                                   c10::IValue()};
    op.callBoxed(&stack);
    *out = new at::Tensor(stack[0].toTensor());
    return 0;
  } catch (const std::exception& e) {
    set_error(err, err_len, e.what());
    return 1;
  }
}

// Winograd F(M×M, 3×3), M = 2 or 4, for stride-1, padding-1 3×3 convolutions: each
// (M+2)×(M+2) input tile and 3×3 filter go to an A×A transform domain (A = M + 2) where the
// convolution is A² independent matrix products (tiles × C by C × K): 16 multiplications per
// 2×2 outputs, or 36 per 4×4, instead of 9 per output. The products run as oneDNN 1×1
// convolutions (fused.rs); here are the transforms.

// The filters in the transform domain, G g Gᵀ computed in float64: (A², K, C) float.
int cnnprobe_wino_weights(at::Tensor** out, const at::Tensor* w, int64_t m, char* err, size_t err_len) {
  try {
    TORCH_CHECK(w->dim() == 4 && w->size(2) == 3 && w->size(3) == 3, "wino_weights: w must be (K, C, 3, 3)");
    TORCH_CHECK(tile_ok(m), "wino_weights: the tile must be 2 or 4");
    const std::vector<double> g2{1, 0, 0, .5, .5, .5, .5, -.5, .5, 0, 0, 1};
    const std::vector<double> g4{1. / 4,  0,         0,        -1. / 6, -1. / 6, -1. / 6, -1. / 6, 1. / 6, -1. / 6,
                                 1. / 24, 1. / 12,  1. / 6,   1. / 24, -1. / 12, 1. / 6,  0,       0,      1};
    const int64_t a = m + 2;
    auto g = at::tensor(m == 2 ? g2 : g4, at::kDouble).view({a, 3});
    auto u = at::einsum("ai,kcij,bj->abkc", {g, w->to(at::kDouble), g});
    *out = new at::Tensor(u.reshape({a * a, w->size(0), w->size(1)}).to(at::kFloat).contiguous());
    return 0;
  } catch (const std::exception& e) {
    set_error(err, err_len, e.what());
    return 1;
  }
}

// Bᵀ d B for every A×A tile of images [n0, n1) of x (N, C, H, W) channels-last, H and W
// multiples of M, zero padding of 1: V (T, A², C) with T = (n1 − n0)·(H/M)·(W/M) tiles,
// image-major (each tile's A² transform components side by side: the input of one A²-group
// 1×1 conv).
int cnnprobe_wino_input(at::Tensor** out, const at::Tensor* x, int64_t m, int64_t n0, int64_t n1, char* err,
                        size_t err_len) {
  try {
    TORCH_CHECK(x->dim() == 4 && x->scalar_type() == at::kFloat, "wino_input: x must be a float (N, C, H, W)");
    TORCH_CHECK(tile_ok(m), "wino_input: the tile must be 2 or 4");
    const auto xc = x->contiguous(at::MemoryFormat::ChannelsLast);
    const int64_t C = x->size(1), H = x->size(2), W = x->size(3), a = m + 2;
    TORCH_CHECK(H % m == 0 && W % m == 0 && 0 <= n0 && n0 < n1 && n1 <= x->size(0), "wino_input: bad shape or range");
    const int64_t T = (n1 - n0) * (H / m) * (W / m);
    auto v = at::empty({T, a * a, C}, x->options().memory_format(at::MemoryFormat::Contiguous));
    const float* px = xc.data_ptr<float>();
    float* pv = v.data_ptr<float>();
    const std::vector<float> zeros(C, 0.f);
    at::parallel_for(0, T, 8, [&](int64_t t0, int64_t t1) {
      if (m == 2)
        wino_input_tiles2(px, pv, zeros.data(), n0, t0, t1, C, H, W);
      else
        wino_input_tiles4(px, pv, zeros.data(), n0, t0, t1, C, H, W);
    });
    *out = new at::Tensor(std::move(v));
    return 0;
  } catch (const std::exception& e) {
    set_error(err, err_len, e.what());
    return 1;
  }
}

// Aᵀ M A + bias for the tiles of images [n0, n1), written into y (N, K, H, W) channels-last:
// m holds the A² products, (1, A²·K, T, 1) channels-last, i.e. (T, A², K) in memory. With
// `add`, y's own values are added first (the residual); with `relu`, negatives become 0 and
// NaN stays NaN, as aten's.
int cnnprobe_wino_output(at::Tensor* y, const at::Tensor* m, const at::Tensor* bias, int64_t tile, int64_t n0,
                         int64_t n1, int relu, int add, char* err, size_t err_len) {
  try {
    TORCH_CHECK(y->dim() == 4 && y->scalar_type() == at::kFloat && y->is_contiguous(at::MemoryFormat::ChannelsLast),
                "wino_output: y must be a channels-last float (N, K, H, W)");
    TORCH_CHECK(tile_ok(tile), "wino_output: the tile must be 2 or 4");
    const int64_t K = y->size(1), H = y->size(2), W = y->size(3), a = tile + 2;
    TORCH_CHECK(H % tile == 0 && W % tile == 0, "wino_output: the map is not a whole number of tiles");
    const int64_t T = (n1 - n0) * (H / tile) * (W / tile);
    const auto mc = m->contiguous(at::MemoryFormat::ChannelsLast);
    TORCH_CHECK(mc.numel() == T * a * a * K && mc.scalar_type() == at::kFloat,
                "wino_output: the products have the wrong size");
    const float* pm = mc.data_ptr<float>();
    auto b = bias->contiguous();
    const float* pb = b.data_ptr<float>();
    float* py = y->data_ptr<float>();
    at::parallel_for(0, T, 8, [&](int64_t t0, int64_t t1) {
      if (tile == 2)
        wino_output_tiles2(pm, pb, py, n0, t0, t1, K, H, W, relu != 0, add != 0);
      else
        wino_output_tiles4(pm, pb, py, n0, t0, t1, K, H, W, relu != 0, add != 0);
    });
    return 0;
  } catch (const std::exception& e) {
    set_error(err, err_len, e.what());
    return 1;
  }
}

// Whether an invalid operation (the only source of a NaN from finite numbers) or an overflow
// happened on this thread or any intra-op (OpenMP) thread since the last call; clears the
// flags either way. IEEE's sticky status flags are per thread, so each pool thread reads
// its own: at::parallel_for over [0, threads) with grain 1 gives every thread one index.
int cnnprobe_fp_raised() {
  std::atomic<int> raised{0};
  auto visit = [&raised] {
    if (std::fetestexcept(FE_INVALID | FE_OVERFLOW)) raised = 1;
    std::feclearexcept(FE_ALL_EXCEPT);
  };
  visit();
  const int64_t n = at::get_num_threads();
  at::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) visit();
  });
  return raised.load();
}

// x copied into page-locked memory for an asynchronous upload. Through the C++ API because
// tch's binding passes a device, which libtorch 2.11+ deprecates with a warning per call.
int cnnprobe_pin_memory(at::Tensor** out, const at::Tensor* x, char* err, size_t err_len) {
  try {
    *out = new at::Tensor(x->pin_memory());
    return 0;
  } catch (const std::exception& e) {
    set_error(err, err_len, e.what());
    return 1;
  }
}

// Patch responses to pooled features in one pass (`--arch patchnet`): z (n, L, K) float
// responses at L positions, inv (n, L) each position's pooling scale, thr (n, L) each
// position's threshold, cells (C, L) the pooling weights. With `soft`, out is (n, 2, K, C):
// Σ_l cells[c,l]·inv[l]·relu(z − thr) and the same of relu(−z − thr); without, (n, 1, K, C)
// of z itself. Reads z once where separate ops would write and reread two maps its size.
int cnnprobe_encode_pool(at::Tensor** out, const at::Tensor* z, const at::Tensor* inv, const at::Tensor* thr,
                         const at::Tensor* cells, int soft, char* err, size_t err_len) {
  try {
    TORCH_CHECK(z->dim() == 3 && z->scalar_type() == at::kFloat && z->device().is_cpu(), "encode_pool: z must be (n, L, K) float on the CPU");
    auto Z = z->contiguous();
    auto I = inv->contiguous().to(at::kFloat);
    auto T = thr->contiguous().to(at::kFloat);
    auto P = cells->contiguous().to(at::kFloat);
    const int64_t n = Z.size(0), L = Z.size(1), K = Z.size(2), C = P.size(0);
    TORCH_CHECK(P.size(1) == L && I.numel() == n * L && T.numel() == n * L, "encode_pool: shapes disagree");
    const int64_t parts = soft ? 2 : 1;
    // Each position's cells (a position lies in one to four overlapping adaptive cells).
    std::vector<std::vector<std::pair<int64_t, float>>> where(L);
    const float* pc = P.data_ptr<float>();
    for (int64_t c = 0; c < C; ++c)
      for (int64_t l = 0; l < L; ++l)
        if (pc[c * L + l] != 0.f) where[l].emplace_back(c, pc[c * L + l]);
    auto result = at::empty({n, parts, K, C}, Z.options());
    const float* pz = Z.data_ptr<float>();
    const float* pi = I.data_ptr<float>();
    const float* pt = T.data_ptr<float>();
    float* po = result.data_ptr<float>();
    at::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) {
      std::vector<float> acc(parts * C * K);
      for (int64_t i = begin; i < end; ++i) {
        std::fill(acc.begin(), acc.end(), 0.f);
        for (int64_t l = 0; l < L; ++l) {
          const float* zr = pz + (i * L + l) * K;
          const float s = pi[i * L + l], a = pt[i * L + l];
          for (const auto& [c, w] : where[l]) {
            const float ws = w * s;
            float* ap = acc.data() + c * K;
            if (soft) {
              float* an = acc.data() + (C + c) * K;
              for (int64_t k = 0; k < K; ++k) {
                const float v = zr[k];
                // v − a > 0 ? v − a : 0, written so that a NaN response stays NaN.
                const float p = v - a, q = -v - a;
                ap[k] += ws * (p < 0.f ? 0.f : p);
                an[k] += ws * (q < 0.f ? 0.f : q);
              }
            } else {
              for (int64_t k = 0; k < K; ++k) ap[k] += ws * zr[k];
            }
          }
        }
        float* oi = po + i * parts * K * C;
        for (int64_t p = 0; p < parts; ++p)
          for (int64_t k = 0; k < K; ++k)
            for (int64_t c = 0; c < C; ++c) oi[(p * K + k) * C + c] = acc[(p * C + c) * K + k];
      }
    });
    *out = new at::Tensor(std::move(result));
    return 0;
  } catch (const std::exception& e) {
    set_error(err, err_len, e.what());
    return 1;
  }
}

}  // extern "C"

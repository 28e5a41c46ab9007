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

__attribute__((target_clones("avx512f", "avx2", "default")))
void wino_input_tiles(const float* px, float* pv, const float* zeros, int64_t n0, int64_t t0, int64_t t1, int64_t C,
                      int64_t H, int64_t W) {
  const int64_t th = H / 2, tw = W / 2;
  const float* d[4][4];
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t n = n0 + t / (th * tw), i = (t / tw) % th, j = t % tw;
    for (int a = 0; a < 4; ++a)
      for (int b = 0; b < 4; ++b) {
        const int64_t r = 2 * i - 1 + a, q = 2 * j - 1 + b;
        d[a][b] = (r < 0 || r >= H || q < 0 || q >= W) ? zeros : px + ((n * H + r) * W + q) * C;
      }
    for (int64_t c0 = 0; c0 < C; c0 += CB) {
      const int64_t cn = std::min(CB, C - c0);
      float in[4][4][CB], u[4][4][CB], o[16][CB];
      for (int a = 0; a < 4; ++a)
        for (int b = 0; b < 4; ++b) load16(in[a][b], d[a][b] + c0, cn);
      for (int b = 0; b < 4; ++b)  // Bᵀ d, column b
        for (int64_t c = 0; c < CB; ++c) {
          u[0][b][c] = in[0][b][c] - in[2][b][c];
          u[1][b][c] = in[1][b][c] + in[2][b][c];
          u[2][b][c] = in[2][b][c] - in[1][b][c];
          u[3][b][c] = in[1][b][c] - in[3][b][c];
        }
      for (int a = 0; a < 4; ++a)  // (Bᵀ d) B, row a
        for (int64_t c = 0; c < CB; ++c) {
          o[4 * a + 0][c] = u[a][0][c] - u[a][2][c];
          o[4 * a + 1][c] = u[a][1][c] + u[a][2][c];
          o[4 * a + 2][c] = u[a][2][c] - u[a][1][c];
          o[4 * a + 3][c] = u[a][1][c] - u[a][3][c];
        }
      for (int e = 0; e < 16; ++e) store16(pv + (t * 16 + e) * C + c0, o[e], cn);
    }
  }
}

__attribute__((target_clones("avx512f", "avx2", "default")))
void wino_output_tiles(const float* pm, const float* pb, float* py, int64_t n0, int64_t t0, int64_t t1,
                       int64_t K, int64_t H, int64_t W, bool relu, bool add) {
  const int64_t th = H / 2, tw = W / 2;
  const float zero[CB] = {};
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t n = n0 + t / (th * tw), i = (t / tw) % th, j = t % tw;
    float* yo[4];
    for (int a = 0; a < 2; ++a)
      for (int c = 0; c < 2; ++c) yo[2 * a + c] = py + ((n * H + 2 * i + a) * W + 2 * j + c) * K;
    for (int64_t k0 = 0; k0 < K; k0 += CB) {
      const int64_t kn = std::min(CB, K - k0);
      float m[16][CB], s[2][4][CB], r[4][CB], bias[CB];
      for (int e = 0; e < 16; ++e) load16(m[e], pm + (t * 16 + e) * K + k0, kn);
      for (int q = 0; q < 4; ++q) load16(r[q], add ? yo[q] + k0 : zero, add ? kn : CB);
      load16(bias, pb + k0, kn);
      for (int q = 0; q < 4; ++q)  // Aᵀ M, column q
        for (int64_t k = 0; k < CB; ++k) {
          s[0][q][k] = m[q][k] + m[4 + q][k] + m[8 + q][k];
          s[1][q][k] = m[4 + q][k] - m[8 + q][k] - m[12 + q][k];
        }
      for (int a = 0; a < 2; ++a)  // (Aᵀ M) A + bias (+ residual), ReLU as aten's (NaN stays)
        for (int64_t k = 0; k < CB; ++k) {
          float v0 = s[a][0][k] + s[a][1][k] + s[a][2][k] + bias[k] + r[2 * a][k];
          float v1 = s[a][1][k] - s[a][2][k] - s[a][3][k] + bias[k] + r[2 * a + 1][k];
          if (relu) {
            v0 = v0 < 0.f ? 0.f : v0;
            v1 = v1 < 0.f ? 0.f : v1;
          }
          r[2 * a][k] = v0;
          r[2 * a + 1][k] = v1;
        }
      for (int q = 0; q < 4; ++q) store16(yo[q] + k0, r[q], kn);
    }
  }
}

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

// Weights reordered for oneDNN's blocked-layout convolution (no input size: the layout
// oneDNN picks for a plain source), for `cnnprobe_blocked_conv`.
int cnnprobe_blocked_prepack(at::Tensor** out, const at::Tensor* w, int64_t padding, int64_t stride, char* err,
                             size_t err_len) {
  try {
    auto packed = at::mkldnn_reorder_conv2d_weight(w->contiguous().to_mkldnn(), pair(padding), pair(stride), pair(1), 1);
    *out = new at::Tensor(std::move(packed));
    return 0;
  } catch (const std::exception& e) {
    set_error(err, err_len, e.what());
    return 1;
  }
}

// The same result as cnnprobe_fused_conv, through oneDNN's blocked layout: x (dense) is
// reordered in, the convolution runs on oneDNN's own tensors, and the output comes back
// channels-last, where the ReLU and the residual add run as aten ops (NaN kept).
int cnnprobe_blocked_conv(at::Tensor** out, const at::Tensor* x, const at::Tensor* w, const at::Tensor* b,
                          int64_t padding, int64_t stride, int relu, at::Tensor* other, char* err, size_t err_len) {
  try {
    auto y = at::mkldnn_convolution(x->contiguous().to_mkldnn(), *w, *b, pair(padding), pair(stride), pair(1), 1)
                 .to_dense()
                 .contiguous(at::MemoryFormat::ChannelsLast);
    if (other) {
      other->add_(y);
      if (relu) other->relu_();
      *out = nullptr;
    } else {
      if (relu) y.relu_();
      *out = new at::Tensor(std::move(y));
    }
    return 0;
  } catch (const std::exception& e) {
    set_error(err, err_len, e.what());
    return 1;
  }
}

// Winograd F(2×2, 3×3) for stride-1, padding-1 3×3 convolutions: each 4×4 input tile and
// 3×3 filter go to a 4×4 transform domain where the convolution is 16 independent matrix
// products (tiles × C by C × K), 16 multiplications per 2×2 outputs instead of 36. The
// products run as oneDNN 1×1 convolutions (fused.rs); here are the transforms.

// The filters in the transform domain, G g Gᵀ computed in float64: (16, K, C) float.
int cnnprobe_wino_weights(at::Tensor** out, const at::Tensor* w, char* err, size_t err_len) {
  try {
    TORCH_CHECK(w->dim() == 4 && w->size(2) == 3 && w->size(3) == 3, "wino_weights: w must be (K, C, 3, 3)");
    auto g = at::tensor(std::vector<double>{1, 0, 0, .5, .5, .5, .5, -.5, .5, 0, 0, 1}, at::kDouble).view({4, 3});
    auto u = at::einsum("ai,kcij,bj->abkc", {g, w->to(at::kDouble), g});
    *out = new at::Tensor(u.reshape({16, w->size(0), w->size(1)}).to(at::kFloat).contiguous());
    return 0;
  } catch (const std::exception& e) {
    set_error(err, err_len, e.what());
    return 1;
  }
}

// Bᵀ d B for every 4×4 tile of images [n0, n1) of x (N, C, H, W) channels-last, H and W
// even, zero padding of 1: V (T, 16, C) with T = (n1 − n0)·H/2·W/2 tiles, image-major (each
// tile's 16 transform components side by side: the input of one 16-group 1×1 conv).
int cnnprobe_wino_input(at::Tensor** out, const at::Tensor* x, int64_t n0, int64_t n1, char* err, size_t err_len) {
  try {
    TORCH_CHECK(x->dim() == 4 && x->scalar_type() == at::kFloat, "wino_input: x must be a float (N, C, H, W)");
    const auto xc = x->contiguous(at::MemoryFormat::ChannelsLast);
    const int64_t C = x->size(1), H = x->size(2), W = x->size(3), th = H / 2, tw = W / 2;
    TORCH_CHECK(H % 2 == 0 && W % 2 == 0 && 0 <= n0 && n0 < n1 && n1 <= x->size(0), "wino_input: bad shape or range");
    const int64_t T = (n1 - n0) * th * tw;
    auto v = at::empty({T, 16, C}, x->options().memory_format(at::MemoryFormat::Contiguous));
    const float* px = xc.data_ptr<float>();
    float* pv = v.data_ptr<float>();
    const std::vector<float> zeros(C, 0.f);
    at::parallel_for(0, T, 8, [&](int64_t t0, int64_t t1) {
      wino_input_tiles(px, pv, zeros.data(), n0, t0, t1, C, H, W);
    });
    *out = new at::Tensor(std::move(v));
    return 0;
  } catch (const std::exception& e) {
    set_error(err, err_len, e.what());
    return 1;
  }
}

// Aᵀ M A + bias for the tiles of images [n0, n1), written into y (N, K, H, W) channels-last:
// m holds the 16 products, (1, 16·K, T, 1) channels-last, i.e. (T, 16, K) in memory. With
// `add`, y's own values are added first (the residual); with `relu`, negatives become 0 and
// NaN stays NaN, as aten's.
int cnnprobe_wino_output(at::Tensor* y, const at::Tensor* m, const at::Tensor* bias, int64_t n0, int64_t n1, int relu,
                         int add, char* err, size_t err_len) {
  try {
    TORCH_CHECK(y->dim() == 4 && y->scalar_type() == at::kFloat && y->is_contiguous(at::MemoryFormat::ChannelsLast),
                "wino_output: y must be a channels-last float (N, K, H, W)");
    const int64_t K = y->size(1), H = y->size(2), W = y->size(3), th = H / 2, tw = W / 2;
    const int64_t T = (n1 - n0) * th * tw;
    const auto mc = m->contiguous(at::MemoryFormat::ChannelsLast);
    TORCH_CHECK(mc.numel() == T * 16 * K && mc.scalar_type() == at::kFloat, "wino_output: the products have the wrong size");
    const float* pm = mc.data_ptr<float>();
    auto b = bias->contiguous();
    const float* pb = b.data_ptr<float>();
    float* py = y->data_ptr<float>();
    at::parallel_for(0, T, 8, [&](int64_t t0, int64_t t1) {
      wino_output_tiles(pm, pb, py, n0, t0, t1, K, H, W, relu != 0, add != 0);
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

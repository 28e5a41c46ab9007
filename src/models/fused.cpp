// oneDNN's fused convolutions (conv + ReLU, conv + add + ReLU), which libtorch registers as
// mkldnn:: operators but tch's generated bindings do not reach. Called through the
// dispatcher (boxed), so a libtorch without them fails at run time with a message, never
// at link time. Tensors cross as at::Tensor* (tch's C_tensor); every C++ exception becomes
// an error string for Rust.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
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

}  // namespace

extern "C" {

// Weights reordered once into the blocked layout oneDNN picks for inputs of `input_size`
// (N, C, H, W): without the size, every call would reorder them again.
int cnnprobe_fused_prepack(at::Tensor** out, const at::Tensor* w, int64_t padding, int64_t stride,
                           const int64_t* input_size, char* err, size_t err_len) {
  try {
    std::vector<int64_t> size(input_size, input_size + 4);
    auto packed = at::mkldnn_reorder_conv2d_weight(w->contiguous().to_mkldnn(), pair(padding), pair(stride),
                                                   pair(1), 1, at::IntArrayRef(size));
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
                        int64_t padding, int64_t stride, const char* attr, at::Tensor* other, char* err,
                        size_t err_len) {
  try {
    auto& dispatcher = c10::Dispatcher::singleton();
    std::vector<c10::IValue> stack;
    if (other) {
      static auto op = dispatcher.findSchemaOrThrow("mkldnn::_convolution_pointwise_", "binary");
      stack = {*other, *x, *w, *b, pair(padding), pair(stride), pair(1), int64_t{1}, std::string("add"),
               c10::Scalar(1.0), std::string(attr), c10::List<std::optional<c10::Scalar>>(), c10::IValue()};
      op.callBoxed(&stack);
      *out = nullptr;
    } else {
      static auto op = dispatcher.findSchemaOrThrow("mkldnn::_convolution_pointwise", "");
      stack = {*x, *w, *b, pair(padding), pair(stride), pair(1), int64_t{1}, std::string(attr),
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

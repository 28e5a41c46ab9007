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

}  // extern "C"

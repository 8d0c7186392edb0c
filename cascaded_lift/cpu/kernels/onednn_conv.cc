// XLA FFI handlers: float32 NHWC/HWIO 2-D convolution and its two gradients, computed by oneDNN.
//
// Each handler receives row-major buffers exactly as JAX lays them out: x (N, H, W, C), kernel
// (KH, KW, C, F), y (N, HO, WO, F); attributes stride, dilation (1 = none) and the explicit zero
// padding (top, bottom, left, right). Activations stay NHWC (oneDNN's "nhwc" tag, served by its
// channels-last JIT kernels); only the kernel is reordered to and from the blocked layout the chosen
// oneDNN kernel asks for (weights are small next to the activations).
//
// Plans: building a oneDNN primitive descriptor walks its list of implementations (tens to hundreds
// of microseconds), which would dominate small convolutions. Each distinct (direction, geometry) gets
// its primitives built once and kept for the life of the process.
//
// Thread safety: XLA may run several of these calls at once (independent ops, or one program per
// device of a multi-device CPU client), and plans are shared. oneDNN primitives are safe to execute
// concurrently when they do not own their scratchpad, so every primitive here is created with a user
// scratchpad, and the scratchpad and the reordered kernel live in buffers of the calling thread.
//
// One call at a time: every call's OpenMP team already uses all the cores, so two calls at once (XLA
// running independent ops concurrently, or several CPU devices in one process) only oversubscribe
// them; the full model's training step was 1.5 % faster with the calls serialised (BENCHMARKS.md).
// CascadedLiftOnednnMaxConcurrency() reports the most calls ever seen executing at once (1).
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <unordered_map>
#include <vector>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dnnl::memory;
using tag = dnnl::memory::format_tag;
using dt = dnnl::memory::data_type;

namespace {

enum class Direction { kForward, kBackwardData, kBackwardWeights };

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

struct Geometry {
  memory::dims src, weights, dst, strides, dilates, pad_l, pad_r;
};

ffi::Error MakeGeometry(ffi::Span<const int64_t> x, ffi::Span<const int64_t> k,
                        ffi::Span<const int64_t> y, int64_t stride, int64_t dilation,
                        int64_t pad_top, int64_t pad_bottom, int64_t pad_left,
                        int64_t pad_right, Geometry* g) {
  if (x.size() != 4 || k.size() != 4 || y.size() != 4)
    return ffi::Error::InvalidArgument("onednn conv: operands must be rank 4 (NHWC, HWIO)");
  if (k[2] != x[3] || y[3] != k[3] || y[0] != x[0])
    return ffi::Error::InvalidArgument("onednn conv: channel or batch sizes disagree");
  if (stride < 1 || dilation < 1)
    return ffi::Error::InvalidArgument("onednn conv: stride and dilation must be >= 1");
  g->src = {x[0], x[3], x[1], x[2]};
  g->weights = {k[3], k[2], k[0], k[1]};
  g->dst = {y[0], y[3], y[1], y[2]};
  g->strides = {stride, stride};
  g->dilates = {dilation - 1, dilation - 1};
  g->pad_l = {pad_top, pad_left};
  g->pad_r = {pad_bottom, pad_right};
  return ffi::Error::Success();
}

memory::desc Md(const memory::dims& d, tag t) { return memory::desc(d, dt::f32, t); }

dnnl::primitive_attr UserScratchpad() {
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  return attr;
}

// The primitives for one direction and geometry. `kernel_md` is the layout the convolution wants
// its (diff) weights in; when it is not plain HWIO, `kernel_reorder` converts (HWIO -> kernel_md for
// the forward and backward-data passes, kernel_md -> HWIO for backward-weights).
struct Plan {
  dnnl::primitive conv;
  memory::desc kernel_md;
  bool reorder_kernel = false;
  dnnl::primitive kernel_reorder;
  size_t scratchpad_bytes = 0;
};

std::string Key(Direction d, const Geometry& g) {
  std::ostringstream key;
  key << static_cast<int>(d);
  for (const memory::dims* dims : {&g.src, &g.weights, &g.dst, &g.strides, &g.dilates, &g.pad_l,
                                   &g.pad_r})
    for (auto v : *dims) key << ',' << v;
  return key.str();
}

// oneDNN 3.x dropped the operation descriptors: primitive descriptors take the engine and the
// problem directly. Both generations are supported (Debian ships 2.x, PyPI's onednn-cpu-gomp 3.x).
#if DNNL_VERSION_MAJOR >= 3
using FwdPd = dnnl::convolution_forward::primitive_desc;
using BwdDataPd = dnnl::convolution_backward_data::primitive_desc;
using BwdWeightsPd = dnnl::convolution_backward_weights::primitive_desc;

FwdPd MakeForward(const memory::desc& src, const memory::desc& kernel, const memory::desc& dst,
                  const Geometry& g) {
  return FwdPd(Engine(), dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct, src,
               kernel, dst, g.strides, g.dilates, g.pad_l, g.pad_r, UserScratchpad());
}
BwdDataPd MakeBackwardData(const memory::desc& src, const memory::desc& kernel,
                           const memory::desc& dst, const Geometry& g, const FwdPd& hint) {
  return BwdDataPd(Engine(), dnnl::algorithm::convolution_direct, src, kernel, dst, g.strides,
                   g.dilates, g.pad_l, g.pad_r, hint, UserScratchpad());
}
BwdWeightsPd MakeBackwardWeights(const memory::desc& src, const memory::desc& kernel,
                                 const memory::desc& dst, const Geometry& g, const FwdPd& hint) {
  return BwdWeightsPd(Engine(), dnnl::algorithm::convolution_direct, src, kernel, dst, g.strides,
                      g.dilates, g.pad_l, g.pad_r, hint, UserScratchpad());
}
#else
using FwdPd = dnnl::convolution_forward::primitive_desc;
using BwdDataPd = dnnl::convolution_backward_data::primitive_desc;
using BwdWeightsPd = dnnl::convolution_backward_weights::primitive_desc;

FwdPd MakeForward(const memory::desc& src, const memory::desc& kernel, const memory::desc& dst,
                  const Geometry& g) {
  dnnl::convolution_forward::desc d(dnnl::prop_kind::forward_training,
                                    dnnl::algorithm::convolution_direct, src, kernel, dst,
                                    g.strides, g.dilates, g.pad_l, g.pad_r);
  return FwdPd(d, UserScratchpad(), Engine());
}
BwdDataPd MakeBackwardData(const memory::desc& src, const memory::desc& kernel,
                           const memory::desc& dst, const Geometry& g, const FwdPd& hint) {
  dnnl::convolution_backward_data::desc d(dnnl::algorithm::convolution_direct, src, kernel, dst,
                                          g.strides, g.dilates, g.pad_l, g.pad_r);
  return BwdDataPd(d, UserScratchpad(), Engine(), hint);
}
BwdWeightsPd MakeBackwardWeights(const memory::desc& src, const memory::desc& kernel,
                                 const memory::desc& dst, const Geometry& g, const FwdPd& hint) {
  dnnl::convolution_backward_weights::desc d(dnnl::algorithm::convolution_direct, src, kernel, dst,
                                             g.strides, g.dilates, g.pad_l, g.pad_r);
  return BwdWeightsPd(d, UserScratchpad(), Engine(), hint);
}
#endif

std::unique_ptr<Plan> BuildPlan(Direction direction, const Geometry& g) {
  const memory::desc src = Md(g.src, tag::nhwc), dst = Md(g.dst, tag::nhwc);
  const memory::desc any_kernel = Md(g.weights, tag::any), hwio = Md(g.weights, tag::hwio);
  const FwdPd fwd = MakeForward(src, any_kernel, dst, g);
  auto plan = std::make_unique<Plan>();
  memory::desc conv_scratch;
  if (direction == Direction::kForward) {
    plan->conv = dnnl::convolution_forward(fwd);
    plan->kernel_md = fwd.weights_desc();
    conv_scratch = fwd.scratchpad_desc();
  } else if (direction == Direction::kBackwardData) {
    const BwdDataPd pd = MakeBackwardData(src, any_kernel, dst, g, fwd);
    plan->conv = dnnl::convolution_backward_data(pd);
    plan->kernel_md = pd.weights_desc();
    conv_scratch = pd.scratchpad_desc();
  } else {
    const BwdWeightsPd pd = MakeBackwardWeights(src, any_kernel, dst, g, fwd);
    plan->conv = dnnl::convolution_backward_weights(pd);
    plan->kernel_md = pd.diff_weights_desc();
    conv_scratch = pd.scratchpad_desc();
  }
  plan->scratchpad_bytes = conv_scratch.get_size();
  plan->reorder_kernel = !(plan->kernel_md == hwio);
  if (plan->reorder_kernel) {
    const bool to_user = direction == Direction::kBackwardWeights;
    dnnl::reorder::primitive_desc rpd(Engine(), to_user ? plan->kernel_md : hwio, Engine(),
                                      to_user ? hwio : plan->kernel_md, UserScratchpad());
    plan->kernel_reorder = dnnl::reorder(rpd);
    plan->scratchpad_bytes = std::max(plan->scratchpad_bytes, rpd.scratchpad_desc().get_size());
  }
  return plan;
}

const Plan& GetPlan(Direction direction, const Geometry& g) {
  static std::mutex mutex;
  static auto* plans = new std::unordered_map<std::string, std::unique_ptr<Plan>>();
  const std::string key = Key(direction, g);
  {
    std::lock_guard<std::mutex> lock(mutex);
    auto it = plans->find(key);
    if (it != plans->end()) return *it->second;
  }
  std::unique_ptr<Plan> plan = BuildPlan(direction, g);  // outside the lock: it can take a while
  std::lock_guard<std::mutex> lock(mutex);
  auto [it, inserted] = plans->emplace(key, std::move(plan));
  return *it->second;
}

// Buffers of the calling thread, grown on demand and reused by every later call on it.
char* ThreadBuffer(int which, size_t bytes) {
  thread_local std::vector<char> buffers[2];
  std::vector<char>& buffer = buffers[which];
  if (buffer.size() < bytes) buffer.resize(bytes);
  return buffer.data();
}

// Runs `plan` on the caller's buffers. `a` and `b` are the convolution's two inputs and `out` its
// output, in the order of Direction's signature; `kernel` is whichever of them is the HWIO kernel.
void Execute(Direction direction, const Plan& plan, const Geometry& g, void* a, void* b, void* out) {
  dnnl::stream stream(Engine());
  const size_t scratch_bytes = std::max<size_t>(plan.scratchpad_bytes, 1);
  memory scratchpad(memory::desc({static_cast<memory::dim>(scratch_bytes)}, dt::u8, tag::a), Engine(),
                    ThreadBuffer(0, scratch_bytes));
  const memory::desc hwio = Md(g.weights, tag::hwio);
  void* user_kernel = direction == Direction::kBackwardWeights ? out : b;
  memory kernel(hwio, Engine(), user_kernel);
  if (plan.reorder_kernel) {
    kernel = memory(plan.kernel_md, Engine(), ThreadBuffer(1, plan.kernel_md.get_size()));
    if (direction != Direction::kBackwardWeights) {
      memory user(hwio, Engine(), user_kernel);
      plan.kernel_reorder.execute(stream, {{DNNL_ARG_FROM, user},
                                           {DNNL_ARG_TO, kernel},
                                           {DNNL_ARG_SCRATCHPAD, scratchpad}});
    }
  }
  const memory::desc src = Md(g.src, tag::nhwc), dst = Md(g.dst, tag::nhwc);
  if (direction == Direction::kForward) {
    plan.conv.execute(stream, {{DNNL_ARG_SRC, memory(src, Engine(), a)},
                               {DNNL_ARG_WEIGHTS, kernel},
                               {DNNL_ARG_DST, memory(dst, Engine(), out)},
                               {DNNL_ARG_SCRATCHPAD, scratchpad}});
  } else if (direction == Direction::kBackwardData) {
    plan.conv.execute(stream, {{DNNL_ARG_DIFF_DST, memory(dst, Engine(), a)},
                               {DNNL_ARG_WEIGHTS, kernel},
                               {DNNL_ARG_DIFF_SRC, memory(src, Engine(), out)},
                               {DNNL_ARG_SCRATCHPAD, scratchpad}});
  } else {
    plan.conv.execute(stream, {{DNNL_ARG_SRC, memory(src, Engine(), a)},
                               {DNNL_ARG_DIFF_DST, memory(dst, Engine(), b)},
                               {DNNL_ARG_DIFF_WEIGHTS, kernel},
                               {DNNL_ARG_SCRATCHPAD, scratchpad}});
    if (plan.reorder_kernel) {
      memory user(hwio, Engine(), out);
      plan.kernel_reorder.execute(stream, {{DNNL_ARG_FROM, kernel},
                                           {DNNL_ARG_TO, user},
                                           {DNNL_ARG_SCRATCHPAD, scratchpad}});
    }
  }
  stream.wait();
}

std::mutex execute_mutex;
std::atomic<int> executing{0}, max_executing{0};

// Execute under execute_mutex, counting how many calls are inside at once (for the test).
void ExecuteSerially(Direction direction, const Plan& plan, const Geometry& g, void* a, void* b,
                     void* out) {
  std::lock_guard<std::mutex> lock(execute_mutex);
  const int now = ++executing;
  int seen = max_executing.load();
  while (now > seen && !max_executing.compare_exchange_weak(seen, now)) {
  }
  try {
    Execute(direction, plan, g, a, b, out);
  } catch (...) {
    --executing;
    throw;
  }
  --executing;
}

ffi::Error Run(Direction direction, ffi::Span<const int64_t> x_dims,
               ffi::Span<const int64_t> kernel_dims, ffi::Span<const int64_t> y_dims, void* a,
               void* b, void* out, int64_t stride, int64_t dilation, int64_t pad_top,
               int64_t pad_bottom, int64_t pad_left, int64_t pad_right) {
  Geometry g;
  if (auto e = MakeGeometry(x_dims, kernel_dims, y_dims, stride, dilation, pad_top, pad_bottom,
                            pad_left, pad_right, &g);
      e.failure())
    return e;
  try {
    ExecuteSerially(direction, GetPlan(direction, g), g, a, b, out);
  } catch (const dnnl::error& e) {
    return ffi::Error::Internal(std::string("onednn conv: ") + e.what());
  }
  return ffi::Error::Success();
}

ffi::Error ConvForward(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> kernel,
                       ffi::ResultBuffer<ffi::F32> y, int64_t stride, int64_t dilation,
                       int64_t pad_top, int64_t pad_bottom, int64_t pad_left, int64_t pad_right) {
  return Run(Direction::kForward, x.dimensions(), kernel.dimensions(), y->dimensions(),
             x.untyped_data(), kernel.untyped_data(), y->untyped_data(), stride, dilation, pad_top,
             pad_bottom, pad_left, pad_right);
}

ffi::Error ConvBackwardData(ffi::Buffer<ffi::F32> dy, ffi::Buffer<ffi::F32> kernel,
                            ffi::ResultBuffer<ffi::F32> dx, int64_t stride, int64_t dilation,
                            int64_t pad_top, int64_t pad_bottom, int64_t pad_left,
                            int64_t pad_right) {
  return Run(Direction::kBackwardData, dx->dimensions(), kernel.dimensions(), dy.dimensions(),
             dy.untyped_data(), kernel.untyped_data(), dx->untyped_data(), stride, dilation,
             pad_top, pad_bottom, pad_left, pad_right);
}

ffi::Error ConvBackwardWeights(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy,
                               ffi::ResultBuffer<ffi::F32> dk, int64_t stride, int64_t dilation,
                               int64_t pad_top, int64_t pad_bottom, int64_t pad_left,
                               int64_t pad_right) {
  return Run(Direction::kBackwardWeights, x.dimensions(), dk->dimensions(), dy.dimensions(),
             x.untyped_data(), dy.untyped_data(), dk->untyped_data(), stride, dilation, pad_top,
             pad_bottom, pad_left, pad_right);
}

}  // namespace

#define CONV_BINDING                \
  ffi::Ffi::Bind()                  \
      .Arg<ffi::Buffer<ffi::F32>>() \
      .Arg<ffi::Buffer<ffi::F32>>() \
      .Ret<ffi::Buffer<ffi::F32>>() \
      .Attr<int64_t>("stride")      \
      .Attr<int64_t>("dilation")    \
      .Attr<int64_t>("pad_top")     \
      .Attr<int64_t>("pad_bottom")  \
      .Attr<int64_t>("pad_left")    \
      .Attr<int64_t>("pad_right")

XLA_FFI_DEFINE_HANDLER_SYMBOL(CascadedLiftConvForward, ConvForward, CONV_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(CascadedLiftConvBackwardData, ConvBackwardData, CONV_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(CascadedLiftConvBackwardWeights, ConvBackwardWeights, CONV_BINDING);

extern "C" int CascadedLiftOnednnMaxConcurrency() { return max_executing.load(); }

// XLA FFI handlers: float32 NHWC/HWIO 2-D convolution and its two gradients, computed by oneDNN.
//
// Each handler receives row-major buffers exactly as JAX lays them out: x (N, H, W, C), kernel
// (KH, KW, C, F), y (N, HO, WO, F); attributes stride, dilation (1 = none) and the explicit zero
// padding (top, bottom, left, right). Activations stay NHWC (oneDNN's "nhwc" tag, served by its
// channels-last JIT kernels); only the kernel is reordered to and from the blocked layout the chosen
// oneDNN kernel asks for (weights are small next to the activations).
//
// Thread safety: XLA may run several of these calls at once (independent ops, or one program per
// device of a multi-device CPU client), and oneDNN's primitive cache hands equal convolutions the same
// primitive object. Its default ("library") scratchpad belongs to that object, so concurrent runs
// would share it; every primitive here therefore gets a user scratchpad from the calling thread.
#include <cstdint>
#include <string>
#include <vector>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dnnl::memory;
using tag = dnnl::memory::format_tag;
using dt = dnnl::memory::data_type;

namespace {

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

// A scratchpad memory for `pd`, backed by a buffer owned by (and reused on) the calling thread.
memory Scratchpad(const memory::desc& md) {
  thread_local std::vector<char> buffer;
  if (buffer.size() < md.get_size()) buffer.resize(md.get_size());
  return memory(md, Engine(), buffer.data());
}

dnnl::convolution_forward::primitive_desc ForwardPd(const Geometry& g) {
  dnnl::convolution_forward::desc d(dnnl::prop_kind::forward_training,
                                    dnnl::algorithm::convolution_direct, Md(g.src, tag::nhwc),
                                    Md(g.weights, tag::any), Md(g.dst, tag::nhwc), g.strides,
                                    g.dilates, g.pad_l, g.pad_r);
  return dnnl::convolution_forward::primitive_desc(d, UserScratchpad(), Engine());
}

void Reorder(dnnl::stream& s, memory& from, memory& to) {
  dnnl::reorder::primitive_desc pd(from, to, UserScratchpad());
  dnnl::reorder(pd).execute(s, {{DNNL_ARG_FROM, from},
                                {DNNL_ARG_TO, to},
                                {DNNL_ARG_SCRATCHPAD, Scratchpad(pd.scratchpad_desc())}});
}

// Reorders `from` into `to_md` unless the layouts already agree; returns the memory to use.
memory Reordered(dnnl::stream& s, memory from, const memory::desc& to_md) {
  if (from.get_desc() == to_md) return from;
  memory to(to_md, Engine());
  Reorder(s, from, to);
  return to;
}

template <typename Fn>
ffi::Error Guard(Fn&& fn) {
  try {
    fn();
  } catch (const dnnl::error& e) {
    return ffi::Error::Internal(std::string("onednn conv: ") + e.what());
  }
  return ffi::Error::Success();
}

ffi::Error ConvForward(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> kernel,
                       ffi::ResultBuffer<ffi::F32> y, int64_t stride, int64_t dilation,
                       int64_t pad_top, int64_t pad_bottom, int64_t pad_left, int64_t pad_right) {
  Geometry g;
  if (auto e = MakeGeometry(x.dimensions(), kernel.dimensions(), y->dimensions(), stride,
                            dilation, pad_top, pad_bottom, pad_left, pad_right, &g);
      e.failure())
    return e;
  return Guard([&] {
    auto pd = ForwardPd(g);
    dnnl::stream s(Engine());
    memory src(Md(g.src, tag::nhwc), Engine(), x.typed_data());
    memory w_user(Md(g.weights, tag::hwio), Engine(), kernel.typed_data());
    memory dst(Md(g.dst, tag::nhwc), Engine(), y->typed_data());
    memory w = Reordered(s, w_user, pd.weights_desc());
    dnnl::convolution_forward(pd).execute(s, {{DNNL_ARG_SRC, src},
                                              {DNNL_ARG_WEIGHTS, w},
                                              {DNNL_ARG_DST, dst},
                                              {DNNL_ARG_SCRATCHPAD, Scratchpad(pd.scratchpad_desc())}});
    s.wait();
  });
}

ffi::Error ConvBackwardData(ffi::Buffer<ffi::F32> dy, ffi::Buffer<ffi::F32> kernel,
                            ffi::ResultBuffer<ffi::F32> dx, int64_t stride, int64_t dilation,
                            int64_t pad_top, int64_t pad_bottom, int64_t pad_left,
                            int64_t pad_right) {
  Geometry g;
  if (auto e = MakeGeometry(dx->dimensions(), kernel.dimensions(), dy.dimensions(), stride,
                            dilation, pad_top, pad_bottom, pad_left, pad_right, &g);
      e.failure())
    return e;
  return Guard([&] {
    auto fwd = ForwardPd(g);
    dnnl::convolution_backward_data::desc d(dnnl::algorithm::convolution_direct,
                                            Md(g.src, tag::nhwc), Md(g.weights, tag::any),
                                            Md(g.dst, tag::nhwc), g.strides, g.dilates, g.pad_l,
                                            g.pad_r);
    dnnl::convolution_backward_data::primitive_desc pd(d, UserScratchpad(), Engine(), fwd);
    dnnl::stream s(Engine());
    memory diff_dst(Md(g.dst, tag::nhwc), Engine(), dy.typed_data());
    memory w_user(Md(g.weights, tag::hwio), Engine(), kernel.typed_data());
    memory diff_src(Md(g.src, tag::nhwc), Engine(), dx->typed_data());
    memory w = Reordered(s, w_user, pd.weights_desc());
    dnnl::convolution_backward_data(pd).execute(
        s, {{DNNL_ARG_DIFF_DST, diff_dst},
            {DNNL_ARG_WEIGHTS, w},
            {DNNL_ARG_DIFF_SRC, diff_src},
            {DNNL_ARG_SCRATCHPAD, Scratchpad(pd.scratchpad_desc())}});
    s.wait();
  });
}

ffi::Error ConvBackwardWeights(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy,
                               ffi::ResultBuffer<ffi::F32> dk, int64_t stride, int64_t dilation,
                               int64_t pad_top, int64_t pad_bottom, int64_t pad_left,
                               int64_t pad_right) {
  Geometry g;
  if (auto e = MakeGeometry(x.dimensions(), dk->dimensions(), dy.dimensions(), stride, dilation,
                            pad_top, pad_bottom, pad_left, pad_right, &g);
      e.failure())
    return e;
  return Guard([&] {
    auto fwd = ForwardPd(g);
    dnnl::convolution_backward_weights::desc d(dnnl::algorithm::convolution_direct,
                                               Md(g.src, tag::nhwc), Md(g.weights, tag::any),
                                               Md(g.dst, tag::nhwc), g.strides, g.dilates,
                                               g.pad_l, g.pad_r);
    dnnl::convolution_backward_weights::primitive_desc pd(d, UserScratchpad(), Engine(), fwd);
    dnnl::stream s(Engine());
    memory src(Md(g.src, tag::nhwc), Engine(), x.typed_data());
    memory diff_dst(Md(g.dst, tag::nhwc), Engine(), dy.typed_data());
    memory dw_user(Md(g.weights, tag::hwio), Engine(), dk->typed_data());
    bool direct = pd.diff_weights_desc() == dw_user.get_desc();
    memory dw = direct ? dw_user : memory(pd.diff_weights_desc(), Engine());
    dnnl::convolution_backward_weights(pd).execute(
        s, {{DNNL_ARG_SRC, src},
            {DNNL_ARG_DIFF_DST, diff_dst},
            {DNNL_ARG_DIFF_WEIGHTS, dw},
            {DNNL_ARG_SCRATCHPAD, Scratchpad(pd.scratchpad_desc())}});
    if (!direct) Reorder(s, dw, dw_user);
    s.wait();
  });
}

}  // namespace

#define CONV_ATTRS                  \
  .Attr<int64_t>("stride")          \
      .Attr<int64_t>("dilation")    \
      .Attr<int64_t>("pad_top")     \
      .Attr<int64_t>("pad_bottom")  \
      .Attr<int64_t>("pad_left")    \
      .Attr<int64_t>("pad_right")

XLA_FFI_DEFINE_HANDLER_SYMBOL(CascadedLiftConvForward, ConvForward,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>() CONV_ATTRS);
XLA_FFI_DEFINE_HANDLER_SYMBOL(CascadedLiftConvBackwardData, ConvBackwardData,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>() CONV_ATTRS);
XLA_FFI_DEFINE_HANDLER_SYMBOL(CascadedLiftConvBackwardWeights, ConvBackwardWeights,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>() CONV_ATTRS);

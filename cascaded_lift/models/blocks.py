"""Building blocks shared by the backbone and the heads: conv/BN factories and residual blocks.

Layouts are NHWC. Every convolution pads explicitly, (k - 1) / 2 * dilation on each side, as the
PyTorch reference does; Flax's "SAME" would pad strided convolutions asymmetrically and shift the
feature maps by half a pixel relative to the reference. BatchNorm follows PyTorch's defaults
(momentum 0.1, i.e. Flax momentum 0.9; epsilon 1e-5) and names no device axis: cross-device
statistics are the training code's business.

Convolutions go through `Conv`, which holds exactly nn.Conv's parameters ('kernel' (kh, kw, in, out),
'bias' (out,)) and computes them with conv_ops.conv2d: on CPU in float32 that is oneDNN's kernels
when they are available (conv_ops.onednn_active), for every kernel size. Without them a 1x1
convolution is computed as a matrix product (dot_general over the channel axis, after a strided slice
when strided): the same operator, but XLA:CPU's generic convolution is 2-5x slower than its matrix
product for 1x1 kernels in the backward pass (measured in benchmarks/BENCHMARKS.md: e.g. 1x1
512->1152 at 64 x 64, batch 8, forward + backward 4.6 s as a convolution, 0.9 s as a dot). Larger
kernels stay convolutions (im2col + dot measured no faster). `formulation="conv"` forces
lax.conv_general_dilated (XLA's own kernels) for every kernel size.
"""

from __future__ import annotations

import functools

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from cascaded_lift.models import conv_ops

Dtype = Any
Initializer = Callable[..., Any]

# Heads (DESIGN.md section 3): convs and deconvs N(0, 0.001), biases 0, BN scale 1 / bias 0.
HEAD_INIT: Initializer = nn.initializers.normal(stddev=0.001)
# Backbone without a weights file: He (kaiming) normal, fan_out, as torchvision does.
BACKBONE_INIT: Initializer = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
ZEROS: Initializer = nn.initializers.zeros


CONV_FORMULATIONS = ("auto", "conv")


class Conv(nn.Module):
  """A k x k NHWC convolution with nn.Conv's parameters: (B, H, W, C) -> (B, H', W', features).

  Attributes mirror nn.Conv's (explicit symmetric padding, dilation, stride); `formulation` "auto"
  uses conv_ops.conv2d (oneDNN on CPU where active; else 1x1 kernels as a matrix product), "conv"
  lax.conv_general_dilated for all (see the module docstring).
  """

  features: int
  kernel_size: int = 1
  stride: int = 1
  dilation: int = 1
  padding: int = 0
  use_bias: bool = False
  kernel_init: Initializer = nn.initializers.lecun_normal()
  bias_init: Initializer = nn.initializers.zeros
  formulation: str = "auto"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    if self.formulation not in CONV_FORMULATIONS:
      raise ValueError(f"Conv: unknown formulation {self.formulation!r}; choose one of {CONV_FORMULATIONS}")
    k = self.kernel_size
    kernel = self.param("kernel", self.kernel_init, (k, k, x.shape[-1], self.features), self.param_dtype)
    bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype) if self.use_bias else None
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    if k == 1 and self.formulation == "auto" and not conv_ops.onednn_active(x.dtype):
      if self.padding:
        x = jnp.pad(x, ((0, 0), (self.padding, self.padding), (self.padding, self.padding), (0, 0)))
      if self.stride != 1:
        x = x[:, ::self.stride, ::self.stride]
      y = jax.lax.dot_general(x, kernel[0, 0], (((3,), (0,)), ((), ())))
    else:
      p = self.padding
      impl = conv_ops.conv2d if self.formulation == "auto" else conv_ops.xla_conv2d
      y = impl(x, kernel, self.stride, ((p, p), (p, p)), self.dilation)
    return y + bias if bias is not None else y


def conv(features: int, kernel: int, *, stride: int = 1, dilation: int = 1, use_bias: bool = False,
         init: Initializer = HEAD_INIT, dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32,
         name: str | None = None) -> Conv:
  """A k x k convolution with PyTorch-style symmetric padding dilation * (k - 1) / 2."""
  pad = dilation * (kernel - 1) // 2
  return Conv(features, kernel, stride=stride, dilation=dilation, padding=pad, use_bias=use_bias,
              kernel_init=init, bias_init=ZEROS, dtype=dtype, param_dtype=param_dtype, name=name)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def max_pool(x: jnp.ndarray, window: int, stride: int, padding: int) -> jnp.ndarray:
  """Max-pooling of (B, H, W, C) with -inf padding, as the maximum of window**2 strided slices.

  The same values as nn.max_pool; the gradient goes to the first maximum of each window in row-major
  order (PyTorch's rule). Why not reduce_window: XLA:CPU's gradient of reduce_window-max
  (select_and_scatter) took 124 ms for the ResNet stem's pool (batch 8, 128 x 128 x 64) against 4 ms
  forward. The custom VJP keeps the winning tap's index (int8) and scatters the output gradient with
  one strided pad per tap; differentiating the chain of maxima instead re-ran the comparisons in a
  52 ms fusion.
  """
  return _max_pool_with_index(x, window, stride, padding)[0]


def _max_pool_with_index(x: jnp.ndarray, window: int, stride: int, padding: int):
  """(pooled, index of the winning tap i * window + j as int8, both (B, H', W', C))."""
  _, h, w, _ = x.shape
  xp = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)), constant_values=-jnp.inf)
  ho, wo = (h + 2 * padding - window) // stride + 1, (w + 2 * padding - window) // stride + 1
  out = index = None
  for i in range(window):
    for j in range(window):
      tap = conv_ops.strided_tap(xp, i, j, ho, wo, stride)
      if out is None:
        out, index = tap, jnp.zeros(tap.shape, jnp.int8)
      else:
        better = tap > out  # strict: an equal later tap leaves the first maximum in place
        out, index = jnp.where(better, tap, out), jnp.where(better, jnp.int8(i * window + j), index)
  return out, index


def _max_pool_fwd(x, window, stride, padding):
  out, index = _max_pool_with_index(x, window, stride, padding)
  return out, (index, x)  # x only for its shape: unused in the backward, so it is not kept alive


def _max_pool_bwd(window, stride, padding, residuals, dy):
  index, x = residuals
  _, h, w, _ = x.shape
  _, ho, wo, _ = dy.shape
  hp, wp = h + 2 * padding, w + 2 * padding
  dxp = None
  for i in range(window):
    for j in range(window):
      contribution = jnp.where(index == i * window + j, dy, jnp.zeros((), dy.dtype))
      # Output (r, q) read padded pixel (i + stride r, j + stride q): put it back there.
      placed = jax.lax.pad(contribution, jnp.zeros((), dy.dtype), (
          (0, 0, 0), (i, hp - i - (ho - 1) * stride - 1, stride - 1),
          (j, wp - j - (wo - 1) * stride - 1, stride - 1), (0, 0, 0)))
      dxp = placed if dxp is None else dxp + placed
  return (dxp[:, padding:padding + h, padding:padding + w, :],)


max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


def batch_norm(train: bool, *, dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32,
               name: str | None = None) -> nn.BatchNorm:
  """BatchNorm with PyTorch's defaults; batch statistics in train mode, running averages otherwise."""
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype,
                      param_dtype=param_dtype, name=name)


class Bottleneck(nn.Module):
  """ResNet v1.5 bottleneck: 1x1 (planes) -> 3x3 (planes, stride) -> 1x1 (expansion * planes) + shortcut.

  The shortcut is the identity unless the stride or the channel count changes, in which case it is a
  strided 1x1 conv + BN ("downsample" in torchvision). Input (B, H, W, C) -> (B, H/s, W/s, 4 planes).
  """

  planes: int
  stride: int = 1
  dilation: int = 1
  expansion: int = 4
  kernel_init: Initializer = HEAD_INIT
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, *, train: bool) -> jnp.ndarray:
    kw = dict(init=self.kernel_init, dtype=self.dtype, param_dtype=self.param_dtype)
    bn = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    out_ch = self.planes * self.expansion
    y = conv(self.planes, 1, name="conv1", **kw)(x)
    y = nn.relu(batch_norm(train, name="bn1", **bn)(y))
    y = conv(self.planes, 3, stride=self.stride, dilation=self.dilation, name="conv2", **kw)(y)
    y = nn.relu(batch_norm(train, name="bn2", **bn)(y))
    y = conv(out_ch, 1, name="conv3", **kw)(y)
    y = batch_norm(train, name="bn3", **bn)(y)
    shortcut = x
    if self.stride != 1 or x.shape[-1] != out_ch:
      shortcut = conv(out_ch, 1, stride=self.stride, name="downsample_conv", **kw)(x)
      shortcut = batch_norm(train, name="downsample_bn", **bn)(shortcut)
    return nn.relu(y + shortcut)


class BasicBlock(nn.Module):
  """ResNet-18/34 block: 3x3 (planes, stride) -> 3x3 (planes) + shortcut (1x1 conv + BN when reshaped)."""

  planes: int
  stride: int = 1
  dilation: int = 1
  expansion: int = 1
  kernel_init: Initializer = BACKBONE_INIT
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, *, train: bool) -> jnp.ndarray:
    kw = dict(init=self.kernel_init, dtype=self.dtype, param_dtype=self.param_dtype)
    bn = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    y = conv(self.planes, 3, stride=self.stride, dilation=self.dilation, name="conv1", **kw)(x)
    y = nn.relu(batch_norm(train, name="bn1", **bn)(y))
    y = conv(self.planes, 3, dilation=self.dilation, name="conv2", **kw)(y)
    y = batch_norm(train, name="bn2", **bn)(y)
    shortcut = x
    if self.stride != 1 or x.shape[-1] != self.planes:
      shortcut = conv(self.planes, 1, stride=self.stride, name="downsample_conv", **kw)(x)
      shortcut = batch_norm(train, name="downsample_bn", **bn)(shortcut)
    return nn.relu(y + shortcut)


class ASPP(nn.Module):
  """The dilated block: atrous spatial pyramid pooling on a (B, H, W, C) map -> (B, H, W, width).

  Five parallel branches, each conv (with bias) + BN + ReLU: 1x1; 3x3 at each dilation; global average
  pool -> 1x1, broadcast back to H x W (the reference's bilinear upsampling of a 1x1 map is a
  broadcast). Concatenated, then 1x1 (with bias) + BN + ReLU. Submodule names follow the released
  model (conv_1x1_1, conv_3x3_k, conv_1x1_2 for the pooled branch, conv_1x1_3 for the fusion).
  """

  width: int = 256
  dilations: tuple[int, ...] = (4, 8, 12)
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, *, train: bool) -> jnp.ndarray:
    kw = dict(use_bias=True, dtype=self.dtype, param_dtype=self.param_dtype)
    bn = dict(dtype=self.dtype, param_dtype=self.param_dtype)

    def branch(y, kernel, dilation, name):
      y = conv(self.width, kernel, dilation=dilation, name="conv_" + name, **kw)(y)
      return nn.relu(batch_norm(train, name="bn_conv_" + name, **bn)(y))

    outs = [branch(x, 1, 1, "1x1_1")]
    outs += [branch(x, 3, d, f"3x3_{k + 1}") for k, d in enumerate(self.dilations)]
    # Average in float32: a bfloat16 sum over 64 x 64 pixels would lose most of its precision.
    pooled = jnp.mean(x.astype(jnp.float32), axis=(1, 2), keepdims=True).astype(x.dtype)
    pooled = branch(pooled, 1, 1, "1x1_2")
    outs.append(jnp.broadcast_to(pooled, x.shape[:3] + (self.width,)))
    return branch(jnp.concatenate(outs, axis=-1), 1, 1, "1x1_3")

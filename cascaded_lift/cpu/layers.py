"""The XLA:CPU forms of the network's layers, as LayerOps with the standard layers' parameters.

`cpu_ops(conv, kernel_grad, deconv)` returns a models.LayerOps whose three members hold exactly the
parameters of nn.Conv, nn.ConvTranspose and compute nn.max_pool's values, computed in the forms that
measured fastest on a 2-core XLA:CPU (docs/design.md section 10):

CpuConv   every convolution through conv_ops.conv2d: oneDNN's kernels in float32 where they build;
          without them a 1x1 convolution is a matrix product (dot_general over the channel axis,
          after a strided slice when strided), because XLA:CPU's generic convolution is 2-5x slower
          than its matrix product for 1x1 kernels in the backward pass (e.g. 1x1 512->1152 at 64 x 64,
          batch 8, forward + backward 4.6 s as a convolution, 0.9 s as a dot).
CpuDeconv the 2x upsampling transposed convolution (kernel 4, stride 2, padding 1) in one of these
          formulations, all of the same operator and parameter:
  "auto"           "adjoint_conv" where oneDNN's kernels are active, else "four_phase".
  "adjoint_conv"   conv_ops.conv2d_transpose with G[a, b, o, i] = K[3 - a, 3 - b, i, o]: the adjoint
                   (input gradient) of the k4/s2/p1 convolution from the 2x map back to the input,
                   which is how cuDNN and oneDNN compute "deconvolutions"; with oneDNN one
                   backward-data call, and a forward and a backward-weights call in training.
  "four_phase"     four 2x2 VALID convolutions, interleaved. Writing out even and odd output
                   positions per axis (x the input, m an input index):
                     out[2m]     = K[0] x[m - 1] + K[2] x[m]
                     out[2m + 1] = K[1] x[m]     + K[3] x[m + 1]
                   so each output phase (a, b) is a 2x2 convolution of x (padded by one pixel) with
                   K[a::2, b::2]. Same FLOPs as the transposed conv and, unlike it, a fast weight
                   gradient on XLA:CPU (about 3x faster measured in training).
  "depth_to_space" one 3x3 convolution into 4 * out channels (the four phases' kernels scattered into
                   a zero 3x3 kernel), then depth-to-space. 9/4 the FLOPs, one large matmul.
  "conv_transpose" jax.lax.conv_transpose, i.e. exactly what nn.ConvTranspose computes.
          The kernel K (4, 4, in, out) means what nn.ConvTranspose(features, (4, 4), strides=(2, 2),
          padding=((2, 2), (2, 2))) gives it; PyTorch's ConvTranspose2d weight W (in, out, kh, kw) is
          the same operator with K[a, b] = W[:, :, 3 - a, 3 - b] (weights/convert.py applies it).
max_pool  the maximum of window**2 strided slices with a custom VJP (below).
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from cascaded_lift.cpu import conv_ops
from cascaded_lift.errors import ConfigError
from cascaded_lift.models.ops import LayerOps

Dtype = Any
Initializer = Callable[..., Any]
DECONV_FORMULATIONS = ("auto", "adjoint_conv", "four_phase", "depth_to_space", "conv_transpose")
_DN = ("NHWC", "HWIO", "NHWC")


def _pair(v: Any) -> tuple[int, int]:
  return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


class CpuConv(nn.Module):
  """nn.Conv's parameters and operator (square kernels, symmetric explicit padding), computed for XLA:CPU.

  `kernels` and `kernel_grad` go to conv_ops.conv2d (its KERNELS and KERNEL_GRADS).
  """

  features: int
  kernel_size: Any = (1, 1)
  strides: Any = (1, 1)
  padding: Any = ((0, 0), (0, 0))
  kernel_dilation: Any = (1, 1)
  use_bias: bool = True
  kernel_init: Initializer = nn.initializers.lecun_normal()
  bias_init: Initializer = nn.initializers.zeros
  dtype: Dtype = None
  param_dtype: Dtype = jnp.float32
  kernels: str = "auto"
  kernel_grad: str = "auto"

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    (kh, kw), (sh, sw), (dh, dw) = _pair(self.kernel_size), _pair(self.strides), _pair(self.kernel_dilation)
    (pt, pb), (pl, pr) = self.padding
    if kh != kw or sh != sw or dh != dw or pt != pb or pl != pr or pt != pl:
      raise ValueError(f"CpuConv: square kernels, strides, dilations and symmetric padding only, got "
                       f"kernel {self.kernel_size}, strides {self.strides}, dilation {self.kernel_dilation}, "
                       f"padding {self.padding}")
    kernel = self.param("kernel", self.kernel_init, (kh, kw, x.shape[-1], self.features), self.param_dtype)
    bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype) if self.use_bias else None
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    p = pt
    if kh == 1 and not conv_ops.onednn_active(x.dtype, self.kernels):
      if p:
        x = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
      if sh != 1:
        x = x[:, ::sh, ::sh]
      y = jax.lax.dot_general(x, kernel[0, 0], (((3,), (0,)), ((), ())))
    else:
      y = conv_ops.conv2d(x, kernel, sh, ((p, p), (p, p)), dh, kernels=self.kernels, kernel_grad=self.kernel_grad)
    return y + bias if bias is not None else y


def _interleave(phases: jnp.ndarray) -> jnp.ndarray:
  """(B, H, W, 2, 2, C) phases indexed (a, b) -> (B, 2H, 2W, C) with out[2m + a, 2n + b]."""
  b, h, w, _, _, c = phases.shape
  return phases.transpose(0, 1, 3, 2, 4, 5).reshape(b, 2 * h, 2 * w, c)


def four_phase(x: jnp.ndarray, kernel: jnp.ndarray, kernels: str = "auto", kernel_grad: str = "auto"
               ) -> jnp.ndarray:
  """Transposed conv k4/s2/p1 of NHWC x with a (4, 4, in, out) kernel as four 2x2 convolutions."""
  _, h, w, _ = x.shape
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  rows = []
  for a in (0, 1):
    cols = []
    for b in (0, 1):
      window = xp[:, a:a + h + 1, b:b + w + 1]
      cols.append(conv_ops.conv2d(window, kernel[a::2, b::2], 1, ((0, 0), (0, 0)), 1, kernels=kernels,
                                  kernel_grad=kernel_grad))
    rows.append(jnp.stack(cols, axis=3))  # (B, H, W, 2b, C)
  return _interleave(jnp.stack(rows, axis=3))  # (B, H, W, 2a, 2b, C)


def depth_to_space(x: jnp.ndarray, kernel: jnp.ndarray) -> jnp.ndarray:
  """The same operator as one 3x3 convolution into 4 * out channels followed by depth-to-space."""
  cin, cout = kernel.shape[2:]
  big = jnp.zeros((3, 3, cin, 2, 2, cout), kernel.dtype)
  for a in (0, 1):
    for b in (0, 1):
      # Phase (a, b) reads padded rows m + a, m + a + 1 and columns n + b, n + b + 1.
      big = big.at[a:a + 2, b:b + 2, :, a, b, :].set(kernel[a::2, b::2])
  y = jax.lax.conv_general_dilated(x, big.reshape(3, 3, cin, 4 * cout), (1, 1), ((1, 1), (1, 1)),
                                   dimension_numbers=_DN)
  return _interleave(y.reshape(y.shape[:3] + (2, 2, cout)))


def conv_transpose(x: jnp.ndarray, kernel: jnp.ndarray) -> jnp.ndarray:
  """The reference: lax.conv_transpose with padding 2 on the dilated input (= PyTorch padding 1)."""
  return jax.lax.conv_transpose(x, kernel, (2, 2), ((2, 2), (2, 2)), dimension_numbers=_DN)


def adjoint_conv(x: jnp.ndarray, kernel: jnp.ndarray, kernels: str = "auto") -> jnp.ndarray:
  """The same operator as the adjoint of the k4/s2/p1 convolution from (B, 2H, 2W, out) to x."""
  _, h, w, _ = x.shape
  adjoint_kernel = jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2)  # G: (4, 4, out, in)
  return conv_ops.conv2d_transpose(x, adjoint_kernel, 2, ((1, 1), (1, 1)), 1, (2 * h, 2 * w), kernels=kernels)


def resolve(formulation: str, dtype: Any, kernels: str = "auto") -> str:
  """The formulation "auto" stands for with inputs of `dtype` and conv_ops `kernels`."""
  if formulation != "auto":
    return formulation
  return "adjoint_conv" if conv_ops.onednn_active(dtype, kernels) else "four_phase"


class CpuDeconv(nn.Module):
  """nn.ConvTranspose's parameter for the k4/s2/p1 upsampling, in one of DECONV_FORMULATIONS.

  Only what the network uses is accepted: kernel (4, 4), strides (2, 2), padding ((2, 2), (2, 2)), no
  bias. (B, H, W, C) -> (B, 2H, 2W, features).
  """

  features: int
  kernel_size: Any = (4, 4)
  strides: Any = (2, 2)
  padding: Any = ((2, 2), (2, 2))
  use_bias: bool = False
  kernel_init: Initializer = nn.initializers.lecun_normal()
  dtype: Dtype = None
  param_dtype: Dtype = jnp.float32
  formulation: str = "auto"
  kernels: str = "auto"
  kernel_grad: str = "auto"

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    if self.formulation not in DECONV_FORMULATIONS:
      raise ConfigError(f"config.cpu.deconv: unknown formulation {self.formulation!r}; choose one of "
                       f"{DECONV_FORMULATIONS}")
    if (_pair(self.kernel_size), _pair(self.strides), tuple(map(tuple, self.padding)), self.use_bias) != (
        (4, 4), (2, 2), ((2, 2), (2, 2)), False):
      raise ValueError("CpuDeconv: only kernel (4, 4), strides (2, 2), padding ((2, 2), (2, 2)) without bias")
    kernel = self.param("kernel", self.kernel_init, (4, 4, x.shape[-1], self.features), self.param_dtype)
    x, kernel = nn.dtypes.promote_dtype(x, kernel, dtype=self.dtype)
    form = resolve(self.formulation, x.dtype, self.kernels)
    if form == "four_phase":
      return four_phase(x, kernel, self.kernels, self.kernel_grad)
    if form == "adjoint_conv":
      return adjoint_conv(x, kernel, self.kernels)
    return {"depth_to_space": depth_to_space, "conv_transpose": conv_transpose}[form](x, kernel)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def max_pool_taps(x: jnp.ndarray, window: int, stride: int, padding: int) -> jnp.ndarray:
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


max_pool_taps.defvjp(_max_pool_fwd, _max_pool_bwd)


def max_pool(x: jnp.ndarray, window_shape: Any, strides: Any = None, padding: Any = "VALID") -> jnp.ndarray:
  """nn.max_pool's signature for square windows, strides and symmetric padding, via max_pool_taps."""
  (wh, ww), (sh, sw) = _pair(window_shape), _pair(strides if strides is not None else 1)
  pads = ((0, 0), (0, 0)) if padding == "VALID" else tuple(map(tuple, padding))
  if wh != ww or sh != sw or pads[0] != pads[1] or pads[0][0] != pads[0][1]:
    raise ValueError(f"cpu max_pool: square windows and symmetric padding only, got {window_shape}, "
                     f"{strides}, {padding}")
  return max_pool_taps(x, wh, sh, pads[0][0])


def cpu_ops(conv: str = "auto", kernel_grad: str = "auto", deconv: str = "auto") -> LayerOps:
  """The CPU LayerOps (module docstring); equal settings give the same (hashable) value, however passed.

  Args:
    conv: conv_ops.KERNELS ("auto": oneDNN where it builds, else XLA's).
    kernel_grad: conv_ops.KERNEL_GRADS.
    deconv: DECONV_FORMULATIONS.
  """
  check_settings(conv, kernel_grad, deconv)
  return _cpu_ops(conv, kernel_grad, deconv)


def check_settings(conv: str, kernel_grad: str, deconv: str) -> None:
  """ValueError naming the config.cpu field whose value is unknown."""
  conv_ops.check_modes(conv, kernel_grad)
  if deconv not in DECONV_FORMULATIONS:
    raise ConfigError(f"config.cpu.deconv must be one of {DECONV_FORMULATIONS}, got {deconv!r}")


@functools.cache
def _cpu_ops(conv: str, kernel_grad: str, deconv: str) -> LayerOps:
  # Cached on positional arguments: functools.partial compares by identity, so one value per setting.
  return LayerOps(conv=functools.partial(CpuConv, kernels=conv, kernel_grad=kernel_grad),
                  deconv=functools.partial(CpuDeconv, formulation=deconv, kernels=conv, kernel_grad=kernel_grad),
                  max_pool=max_pool, name=f"cpu(conv={conv}, kernel_grad={kernel_grad}, deconv={deconv})")

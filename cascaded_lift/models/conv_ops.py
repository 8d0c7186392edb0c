"""NHWC convolution whose kernel gradient is computed as matrix products on CPU.

`conv2d(x, kernel, stride, padding, dilation)` is exactly `lax.conv_general_dilated` (NHWC, HWIO,
symmetric explicit padding): the same forward and the same input gradient. Only the kernel gradient
differs in how it is computed, and only when the program is lowered for CPU.

Why: XLA:CPU computes a convolution's kernel gradient as one more convolution whose "window" is the
whole output map (e.g. a 64 x 64 window producing a 3 x 3 result), which runs at about a third of the
matrix-product throughput of the same machine. Written per kernel tap instead,

  dK[i, j] = sum_{b, h, w} x_pad[b, h * s + i * d, w * s + j * d, :]^T  dy[b, h, w, :]     (C x F)

is kh * kw matrix products with a long contraction (B * H' * W') over strided slices of the padded
input, the shape matrix-product kernels run fastest. benchmarks/bench_breakdown.py measures both. On
GPU and TPU (`lax.platform_dependent`'s default branch) the kernel gradient stays XLA's own, which
cuDNN and the TPU compiler already handle well.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

_DN = ("NHWC", "HWIO", "NHWC")

# How conv2d's kernel gradient is computed when lowered for CPU: "taps" (the matrix products above),
# "xla" (XLA's own, as on other platforms), or "auto": taps where they measured faster (dilated kernels
# and the 2x2 phase kernels of the four-phase deconvolution, both with at least 128 x 128 channels:
# 1.35x for the ASPP's dilated 3x3 256->256 at 64 x 64, 1.6-3.3x for the deconvolutions' phases),
# XLA's own elsewhere (it is up to 3x faster for undilated 3x3 kernels, and for narrow layers).
# Read when a function is traced; the benchmarks set it to compare.
CPU_KERNEL_GRAD = "auto"
_TAPS_MIN_CHANNEL_PRODUCT = 128 * 128


def _prefer_taps(kernel_shape: tuple[int, ...], dilation: int) -> bool:
  if CPU_KERNEL_GRAD != "auto":
    return CPU_KERNEL_GRAD == "taps"
  kh, kw, cin, cout = kernel_shape
  return cin * cout >= _TAPS_MIN_CHANNEL_PRODUCT and (dilation > 1 or (kh, kw) == (2, 2))


def strided_tap(xp: jax.Array, row: int, col: int, out_h: int, out_w: int, stride: int) -> jax.Array:
  """The (B, out_h, out_w, C) window of padded NHWC `xp` that one kernel tap at (row, col) reads."""
  b, _, _, c = xp.shape
  return jax.lax.slice(xp, (0, row, col, 0), (b, row + (out_h - 1) * stride + 1, col + (out_w - 1) * stride + 1, c),
                       (1, stride, stride, 1))


def xla_conv2d(x: jax.Array, kernel: jax.Array, stride: int, padding: tuple[tuple[int, int], tuple[int, int]],
               dilation: int) -> jax.Array:
  """lax.conv_general_dilated in NHWC / HWIO with explicit padding; XLA's own gradients."""
  return jax.lax.conv_general_dilated(x, kernel, (stride, stride), padding,
                                      rhs_dilation=(dilation, dilation), dimension_numbers=_DN)


def _kernel_grad_by_taps(x: jax.Array, dy: jax.Array, kernel_shape: tuple[int, ...], stride: int,
                         padding: tuple[tuple[int, int], tuple[int, int]], dilation: int) -> jax.Array:
  """dL/dK (kh, kw, C, F) as kh * kw matrix products; accumulates in float32."""
  kh, kw = kernel_shape[:2]
  _, ho, wo, _ = dy.shape
  xp = jnp.pad(x, ((0, 0), padding[0], padding[1], (0, 0)))
  taps = [jax.lax.dot_general(strided_tap(xp, i * dilation, j * dilation, ho, wo, stride), dy,
                              (((0, 1, 2), (0, 1, 2)), ((), ())), preferred_element_type=jnp.float32)
          for i in range(kh) for j in range(kw)]
  return jnp.stack(taps).reshape(kernel_shape)


def _kernel_grad_xla(x: jax.Array, dy: jax.Array, kernel_shape: tuple[int, ...], stride: int,
                     padding: tuple[tuple[int, int], tuple[int, int]], dilation: int) -> jax.Array:
  zeros = jnp.zeros(kernel_shape, x.dtype)
  _, vjp = jax.vjp(lambda k: xla_conv2d(x, k, stride, padding, dilation), zeros)
  return vjp(dy)[0].astype(jnp.float32)


def conv2d(x: jax.Array, kernel: jax.Array, stride: int,
           padding: tuple[tuple[int, int], tuple[int, int]], dilation: int) -> jax.Array:
  """(B, H, W, C) conv (kh, kw, C, F) -> (B, H', W', F); same operator as lax.conv_general_dilated.

  Where CPU_KERNEL_GRAD picks the tap products for this kernel, the convolution carries a custom VJP
  that uses them on CPU; elsewhere it is plain xla_conv2d with XLA's own gradients.

  Args:
    x: NHWC input.
    kernel: HWIO kernel, same dtype as x.
    stride: spatial stride (both axes).
    padding: ((top, bottom), (left, right)) explicit zero padding.
    dilation: kernel (atrous) dilation (both axes).
  """
  if _prefer_taps(kernel.shape, dilation):
    return _conv2d_tap_grad(x, kernel, stride, padding, dilation)
  return xla_conv2d(x, kernel, stride, padding, dilation)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv2d_tap_grad(x: jax.Array, kernel: jax.Array, stride: int,
                     padding: tuple[tuple[int, int], tuple[int, int]], dilation: int) -> jax.Array:
  return xla_conv2d(x, kernel, stride, padding, dilation)


def _conv2d_fwd(x, kernel, stride, padding, dilation):
  return xla_conv2d(x, kernel, stride, padding, dilation), (x, kernel)


def _conv2d_bwd(stride, padding, dilation, residuals, dy):
  x, kernel = residuals
  _, input_vjp = jax.vjp(lambda v: xla_conv2d(v, kernel, stride, padding, dilation), x)
  dx = input_vjp(dy)[0]
  args = (kernel.shape, stride, padding, dilation)
  dk = jax.lax.platform_dependent(x, dy, cpu=lambda a, g: _kernel_grad_by_taps(a, g, *args),
                                  default=lambda a, g: _kernel_grad_xla(a, g, *args))
  return dx, dk.astype(kernel.dtype)


_conv2d_tap_grad.defvjp(_conv2d_fwd, _conv2d_bwd)

"""NHWC convolution with fast XLA:CPU gradients: oneDNN kernels, or XLA's with per-tap kernel gradients.

`conv2d(x, kernel, stride, padding, dilation)` is exactly `lax.conv_general_dilated` (NHWC, HWIO,
explicit padding): the same operator and the same gradients. What differs is which kernels compute it
when the program is lowered for CPU; GPU and TPU (`lax.platform_dependent`'s default branches) always
get XLA's own, which cuDNN and the TPU compiler handle well.

CPU, float32, `kernels` "auto" or "onednn": oneDNN's convolution forward, backward-data and
backward-weights primitives as XLA FFI custom calls (cascaded_lift/cpu/kernels/onednn.py), on the NHWC
activations in place. They are what PyTorch's CPU convolutions run; XLA:CPU's own backward passes are
2-5x slower (docs/design.md section 10). "auto" falls back to XLA when the kernels cannot be built (no compiler or
no oneDNN: `onednn.unavailable_reason()` says which); "onednn" raises instead; "xla" never uses them.
Other dtypes (bfloat16) always take XLA's path.

XLA's path, kernel gradient: XLA:CPU computes it as one more convolution whose "window" is the whole
output map (e.g. a 64 x 64 window producing a 3 x 3 result), which runs at about a third of the
matrix-product throughput. Written per kernel tap instead,

  dK[i, j] = sum_{b, h, w} x_pad[b, h * s + i * d, w * s + j * d, :]^T  dy[b, h, w, :]     (C x F)

is kh * kw matrix products with a long contraction (B * H' * W'); `kernel_grad` picks where.
benchmarks/bench_breakdown.py measures both.

Both settings are arguments (from config.cpu through cascaded_lift.platform), never module state, so
a traced function depends only on what it was given.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.experimental.custom_partitioning import custom_partitioning
from jax.sharding import NamedSharding, PartitionSpec as P

from cascaded_lift.cpu.kernels import onednn
from cascaded_lift.errors import ConfigError

_DN = ("NHWC", "HWIO", "NHWC")
Padding = tuple[tuple[int, int], tuple[int, int]]

KERNELS = ("auto", "onednn", "xla")      # which kernels compute float32 convolutions lowered for CPU
# How XLA's path computes a kernel gradient on CPU: "taps" (the matrix products above), "xla" (XLA's
# own, as on other platforms), or "auto": taps where they measured faster (dilated kernels and the 2x2
# phase kernels of the four-phase deconvolution, both with at least 128 x 128 channels: 1.35x for the
# ASPP's dilated 3x3 256->256 at 64 x 64, 1.6-3.3x for the deconvolutions' phases), XLA's own elsewhere
# (it is up to 3x faster for undilated 3x3 kernels, and for narrow layers).
KERNEL_GRADS = ("auto", "taps", "xla")
_TAPS_MIN_CHANNEL_PRODUCT = 128 * 128


def check_modes(kernels: str, kernel_grad: str = "auto") -> None:
  """ValueError naming the setting when `kernels` or `kernel_grad` is not one of the known values."""
  if kernels not in KERNELS:
    raise ConfigError(f"config.cpu.conv must be one of {KERNELS}, got {kernels!r}")
  if kernel_grad not in KERNEL_GRADS:
    raise ConfigError(f"config.cpu.kernel_grad must be one of {KERNEL_GRADS}, got {kernel_grad!r}")


def onednn_active(dtype: Any, kernels: str = "auto") -> bool:
  """Whether conv2d on `dtype` inputs uses the oneDNN custom calls on CPU with `kernels`."""
  check_modes(kernels)
  if kernels == "xla" or jnp.dtype(dtype) != jnp.float32:
    return False
  if kernels == "onednn":
    onednn.register()  # raises KernelUnavailable with the reason
    return True
  # auto: where the kernels build. (cascaded_lift.platform picks the CPU forms only for a CPU backend
  # unless config.platform_ops = "cpu" asks for them anywhere.)
  if not onednn.available():
    _log_fallback_once(onednn.unavailable_reason())
    return False
  return True


@functools.cache
def _log_fallback_once(reason: str | None) -> None:
  logging.warning("cpu.conv_ops: oneDNN kernels unavailable, CPU convolutions use XLA's (2-5x slower "
                  "backward passes): %s", reason)


def _prefer_taps(kernel_shape: tuple[int, ...], dilation: int, kernel_grad: str) -> bool:
  if kernel_grad != "auto":
    return kernel_grad == "taps"
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
           padding: tuple[tuple[int, int], tuple[int, int]], dilation: int, *, kernels: str = "auto",
           kernel_grad: str = "auto") -> jax.Array:
  """(B, H, W, C) conv (kh, kw, C, F) -> (B, H', W', F); same operator as lax.conv_general_dilated.

  With oneDNN active (onednn_active(dtype, kernels)) the CPU program calls oneDNN for the convolution
  and both gradients. Otherwise, where `kernel_grad` picks the tap products for this kernel, the
  convolution carries a custom VJP that uses them on CPU; elsewhere it is plain xla_conv2d with XLA's
  own gradients.

  Args:
    x: NHWC input.
    kernel: HWIO kernel, same dtype as x.
    stride: spatial stride (both axes).
    padding: ((top, bottom), (left, right)) explicit zero padding.
    dilation: kernel (atrous) dilation (both axes).
    kernels, kernel_grad: see KERNELS and KERNEL_GRADS.
  """
  check_modes(kernels, kernel_grad)
  if onednn_active(x.dtype, kernels) and onednn_active(kernel.dtype, kernels):
    return _conv2d_onednn(x, kernel, stride, padding, dilation)
  if _prefer_taps(kernel.shape, dilation, kernel_grad):
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


# --- oneDNN custom calls (CPU, float32) -------------------------------------------------------------


def _onednn_attrs(stride: int, padding: Padding, dilation: int) -> dict[str, np.int64]:
  (top, bottom), (left, right) = padding
  return dict(stride=np.int64(stride), dilation=np.int64(dilation), pad_top=np.int64(top),
              pad_bottom=np.int64(bottom), pad_left=np.int64(left), pad_right=np.int64(right))


_FORWARD = "cascaded_lift_onednn_conv_forward"
_BACKWARD_DATA = "cascaded_lift_onednn_conv_backward_data"
_BACKWARD_WEIGHTS = "cascaded_lift_onednn_conv_backward_weights"


def _output_shape(x_shape, kernel_shape, stride: int, padding: Padding, dilation: int) -> tuple[int, ...]:
  b, h, w, _ = x_shape
  kh, kw, _, f = kernel_shape
  ho = (h + sum(padding[0]) - dilation * (kh - 1) - 1) // stride + 1
  wo = (w + sum(padding[1]) - dilation * (kw - 1) - 1) // stride + 1
  return (b, ho, wo, f)


# The custom calls are batch-parallel: each device convolves its own slice of the batch (the kernel
# replicated), and the kernel gradient is summed over the devices. custom_partitioning tells XLA's SPMD
# partitioner so; without it a data-parallel jit would all-gather every activation onto each device.
_FORWARD_RULE = "b h w c, i j c f -> b o p f"          # (x, kernel) -> y
_BACKWARD_DATA_RULE = "b o p f, i j c f -> b h w c"    # (dy, kernel) -> dx
_BACKWARD_WEIGHTS_RULE = "b h w c, b o p f -> i j c f"  # (x, dy) -> dkernel, summed over b


def _non_batch_factors(rule: str) -> tuple[str, ...]:
  """Every factor of `rule` but b, in order of first appearance (Shardy wants them sorted so)."""
  seen: list[str] = []
  for name in rule.replace(",", " ").replace("->", " ").split():
    if name != "b" and name not in seen:
      seen.append(name)
  return tuple(seen)


def _batch_axes(arg_shapes) -> Any:
  """The mesh axes the first operand's batch dimension is sharded over (None when replicated)."""
  spec = arg_shapes[0].sharding.spec
  return spec[0] if len(spec) else None


@functools.cache
def _partitioned_call(target: str, global_out: tuple[int, ...] | None, stride: int, padding: Padding,
                      dilation: int):
  """One custom call, batch-partitioned. `global_out` is the output's shape over the whole batch for
  the two gradients (x's, the kernel's); the forward's follows from its operands."""
  attrs = dict(stride=stride, padding=padding, dilation=dilation)
  reduce_batch = target == _BACKWARD_WEIGHTS

  def local_call(a, b):
    if target == _FORWARD:
      shape = _output_shape(a.shape, b.shape, **attrs)
    elif target == _BACKWARD_DATA:
      shape = (a.shape[0],) + global_out[1:]  # x's, with dy's (per-device) batch
    else:
      shape = global_out  # the kernel's: not batched
    return jax.ffi.ffi_call(target, jax.ShapeDtypeStruct(shape, a.dtype), vmap_method="sequential")(
        a, b, **_onednn_attrs(**attrs))

  call = custom_partitioning(local_call)

  def partition(mesh, arg_shapes, result_shape):
    del result_shape
    batch = _batch_axes(arg_shapes)
    batched = NamedSharding(mesh, P(batch, None, None, None))
    replicated = NamedSharding(mesh, P())
    if reduce_batch:
      axes = () if batch is None else (batch if isinstance(batch, tuple) else (batch,))
      lower = (lambda a, b: jax.lax.psum(local_call(a, b), axes)) if axes else local_call
      return mesh, lower, replicated, (batched, batched)
    return mesh, local_call, batched, (batched, replicated)

  rule = {_FORWARD: _FORWARD_RULE, _BACKWARD_DATA: _BACKWARD_DATA_RULE}.get(target, _BACKWARD_WEIGHTS_RULE)
  call.def_partition(partition=partition, sharding_rule=rule,
                     reduction_factors=("b",) if reduce_batch else (),
                     need_replication_factors=_non_batch_factors(rule))
  return call


def _ffi(target: str, a: jax.Array, b: jax.Array, global_out: tuple[int, ...] | None, *, stride: int,
         padding: Padding, dilation: int) -> jax.Array:
  return _partitioned_call(target, global_out, stride, padding, dilation)(a, b)


def _onednn_forward(x, kernel, stride, padding, dilation):
  return jax.lax.platform_dependent(
      x, kernel,
      cpu=lambda a, k: _ffi(_FORWARD, a, k, None, stride=stride, padding=padding, dilation=dilation),
      default=lambda a, k: xla_conv2d(a, k, stride, padding, dilation))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv2d_onednn(x: jax.Array, kernel: jax.Array, stride: int, padding: Padding, dilation: int) -> jax.Array:
  return _onednn_forward(x, kernel, stride, padding, dilation)


def _onednn_fwd(x, kernel, stride, padding, dilation):
  return _onednn_forward(x, kernel, stride, padding, dilation), (x, kernel)


def _xla_input_grad(dy: jax.Array, kernel: jax.Array, x_shape: tuple[int, ...], stride: int, padding: Padding,
                    dilation: int) -> jax.Array:
  """XLA's input gradient of xla_conv2d for an input of x_shape: the convolution's adjoint applied to dy."""
  x = jax.ShapeDtypeStruct(tuple(x_shape), dy.dtype)
  return jax.linear_transpose(lambda v: xla_conv2d(v, kernel, stride, padding, dilation), x)(dy)[0]


def _onednn_kernel_grad(x: jax.Array, dy: jax.Array, kernel: jax.Array, stride: int, padding: Padding,
                        dilation: int) -> jax.Array:
  """The kernel gradient of conv2d(x, kernel, ...) for output gradient dy: oneDNN's on CPU, else XLA's."""
  conv = dict(stride=stride, padding=padding, dilation=dilation)
  return jax.lax.platform_dependent(
      x, dy,
      cpu=lambda a, g: _ffi(_BACKWARD_WEIGHTS, a, g, tuple(kernel.shape), **conv),
      default=lambda a, g: _kernel_grad_xla(a, g, kernel.shape, stride, padding, dilation).astype(kernel.dtype))


def _onednn_backward_data(dy: jax.Array, kernel: jax.Array, x_shape: tuple[int, ...], stride: int,
                          padding: Padding, dilation: int) -> jax.Array:
  """The input gradient of conv2d for an input of x_shape: oneDNN's on CPU, else XLA's."""
  return jax.lax.platform_dependent(
      dy, kernel,
      cpu=lambda g, k: _ffi(_BACKWARD_DATA, g, k, tuple(x_shape), stride=stride, padding=padding,
                            dilation=dilation),
      default=lambda g, k: _xla_input_grad(g, k, x_shape, stride, padding, dilation))


def _onednn_bwd(stride, padding, dilation, residuals, dy):
  x, kernel = residuals
  return (_onednn_backward_data(dy, kernel, x.shape, stride, padding, dilation),
          _onednn_kernel_grad(x, dy, kernel, stride, padding, dilation))


_conv2d_onednn.defvjp(_onednn_fwd, _onednn_bwd)


# --- The adjoint of a convolution (transposed convolution) -------------------------------------------


def conv2d_transpose(y: jax.Array, kernel: jax.Array, stride: int, padding: Padding, dilation: int,
                     x_hw: tuple[int, int], *, kernels: str = "auto") -> jax.Array:
  """The adjoint (transpose) of `conv2d(., kernel, stride, padding, dilation)`, applied to y.

  (B, H', W', F) -> (B, H, W, C) for a (kh, kw, C, F) kernel, where (H, W) = x_hw is the size of the
  convolution's input (several sizes give the same H' when stride > 1). It is the input gradient of
  the convolution, jax.vjp(lambda x: conv2d(x, ...), x)[1](y), i.e. what cuDNN's and oneDNN's
  "deconvolutions" compute. With oneDNN active: one backward-data call, and the gradients are a forward
  call (for y) and a backward-weights call with the roles of the maps swapped (for the kernel).
  """
  if onednn_active(y.dtype, kernels) and onednn_active(kernel.dtype, kernels):
    return _conv2d_transpose_onednn(y, kernel, stride, padding, dilation, tuple(x_hw))
  return _xla_input_grad(y, kernel, _adjoint_shape(y, kernel, x_hw), stride, padding, dilation)


def _adjoint_shape(y: jax.Array, kernel: jax.Array, x_hw: tuple[int, int]) -> tuple[int, ...]:
  """The shape conv2d_transpose returns: the convolution's input, (B, H, W, C)."""
  return (y.shape[0], *x_hw, kernel.shape[2])


def _onednn_transpose(y, kernel, stride, padding, dilation, x_hw):
  return _onednn_backward_data(y, kernel, _adjoint_shape(y, kernel, x_hw), stride, padding, dilation)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _conv2d_transpose_onednn(y: jax.Array, kernel: jax.Array, stride: int, padding: Padding, dilation: int,
                             x_hw: tuple[int, int]) -> jax.Array:
  return _onednn_transpose(y, kernel, stride, padding, dilation, x_hw)


def _transpose_fwd(y, kernel, stride, padding, dilation, x_hw):
  return _onednn_transpose(y, kernel, stride, padding, dilation, x_hw), (y, kernel)


def _transpose_bwd(stride, padding, dilation, x_hw, residuals, dx):
  del x_hw
  y, kernel = residuals
  # The adjoint's adjoint is the convolution itself; its kernel gradient is the convolution's, with
  # the cotangent dx in the input's place and y in the output gradient's.
  return (_onednn_forward(dx, kernel, stride, padding, dilation),
          _onednn_kernel_grad(dx, y, kernel, stride, padding, dilation))


_conv2d_transpose_onednn.defvjp(_transpose_fwd, _transpose_bwd)

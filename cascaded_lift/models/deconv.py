"""The 2x upsampling transposed convolution (kernel 4, stride 2, padding 1) in three formulations.

All three hold one parameter, `kernel` of shape (4, 4, in, out), with the meaning Flax's
`nn.ConvTranspose(features, (4, 4), strides=(2, 2), padding=((2, 2), (2, 2)))` gives it (no kernel
transpose): out[o] = sum_t K[t] * x_dilated_padded[o + t]. PyTorch's ConvTranspose2d(k=4, s=2, p=1)
weight W (in, out, kh, kw) is the same operator with K[a, b] = W[:, :, 3 - a, 3 - b] (the spatial
flip that turns a scatter into a gather); convert.py applies it.

Writing out even and odd output positions (per axis; x is the input, m an input index):
  out[2m]     = K[0] x[m - 1] + K[2] x[m]
  out[2m + 1] = K[1] x[m]     + K[3] x[m + 1]
so each of the four output phases (a, b) is a 2x2 convolution of x (padded by one pixel) with the
kernel slice K[a::2, b::2].

The same operator is the adjoint (input gradient) of a 4x4 convolution with stride 2 and padding 1
from the 2x map back to the input, with the kernel G[a, b, o, i] = K[3 - a, 3 - b, i, o]: that is
how cuDNN and oneDNN compute "deconvolutions".

Formulations (the `formulation` attribute):
  "auto"           (the default) "adjoint_conv" where conv_ops uses oneDNN's kernels (CPU,
                   float32), else "four_phase".
  "adjoint_conv"   conv_ops.conv2d_transpose with G: with oneDNN, one backward-data call, and in
                   training a forward and a backward-weights call; no interleave (PyTorch's
                   ConvTranspose2d runs the same oneDNN primitive). Elsewhere XLA's transposed conv.
  "four_phase"     four 2x2 VALID convolutions, interleaved. Same FLOPs as the transposed conv and,
                   unlike it, a fast weight gradient on XLA:CPU (about 3x faster measured in training).
  "depth_to_space" one 3x3 convolution into 4 * out channels (the four phases' kernels scattered into a
                   zero 3x3 kernel), then depth-to-space. 9/4 the FLOPs, one large matmul.
  "conv_transpose" jax.lax.conv_transpose, i.e. exactly what nn.ConvTranspose computes.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cascaded_lift.models import conv_ops
from cascaded_lift.models.blocks import HEAD_INIT, Initializer

Dtype = Any
FORMULATIONS = ("auto", "adjoint_conv", "four_phase", "depth_to_space", "conv_transpose")
_DN = ("NHWC", "HWIO", "NHWC")


def _interleave(phases: jnp.ndarray) -> jnp.ndarray:
  """(B, H, W, 2, 2, C) phases indexed (a, b) -> (B, 2H, 2W, C) with out[2m + a, 2n + b]."""
  b, h, w, _, _, c = phases.shape
  return phases.transpose(0, 1, 3, 2, 4, 5).reshape(b, 2 * h, 2 * w, c)


def four_phase(x: jnp.ndarray, kernel: jnp.ndarray) -> jnp.ndarray:
  """Transposed conv k4/s2/p1 of NHWC x with a (4, 4, in, out) kernel as four 2x2 convolutions."""
  _, h, w, _ = x.shape
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  rows = []
  for a in (0, 1):
    cols = []
    for b in (0, 1):
      window = xp[:, a:a + h + 1, b:b + w + 1]
      cols.append(conv_ops.conv2d(window, kernel[a::2, b::2], 1, ((0, 0), (0, 0)), 1))
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


def adjoint_conv(x: jnp.ndarray, kernel: jnp.ndarray) -> jnp.ndarray:
  """The same operator as the adjoint of the k4/s2/p1 convolution from (B, 2H, 2W, out) to x."""
  _, h, w, _ = x.shape
  adjoint_kernel = jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2)  # G: (4, 4, out, in)
  return conv_ops.conv2d_transpose(x, adjoint_kernel, 2, ((1, 1), (1, 1)), 1, (2 * h, 2 * w))


def resolve(formulation: str, dtype: Any) -> str:
  """The formulation "auto" stands for with inputs of `dtype` under the current conv_ops settings."""
  if formulation != "auto":
    return formulation
  return "adjoint_conv" if conv_ops.onednn_active(dtype) else "four_phase"


_IMPLS = {"adjoint_conv": adjoint_conv, "four_phase": four_phase, "depth_to_space": depth_to_space,
          "conv_transpose": conv_transpose}


class Deconv(nn.Module):
  """2x upsampling transposed conv, kernel 4, stride 2, padding 1, no bias: (B, H, W, C) -> (B, 2H, 2W, F)."""

  features: int
  formulation: str = "auto"
  kernel_init: Initializer = HEAD_INIT
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    if self.formulation not in FORMULATIONS:
      raise ValueError(f"Deconv: unknown formulation {self.formulation!r}; choose one of {FORMULATIONS}")
    kernel = self.param("kernel", self.kernel_init, (4, 4, x.shape[-1], self.features), self.param_dtype)
    x, kernel = nn.dtypes.promote_dtype(x, kernel, dtype=self.dtype)
    return _IMPLS[resolve(self.formulation, x.dtype)](x, kernel)

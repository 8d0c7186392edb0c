"""LayerOps: which implementations of convolution, transposed convolution and max-pooling the network uses.

Every module of the network takes `ops: LayerOps` and builds its layers through it, in the manner of
flax's ImageNet example passing `conv: ModuleDef` into its blocks. The network never decides how a
layer is computed; cascaded_lift.platform does, from the config (docs/design.md section 9).

Each field has the signature of the Flax layer it stands for, and any replacement must hold the same
parameters under the same names, so that checkpoints do not depend on the choice:
  conv      nn.Conv(features, kernel_size, strides=, padding=, kernel_dilation=, use_bias=,
            kernel_init=, bias_init=, dtype=, param_dtype=, name=) -> params 'kernel' (kh, kw, in, out)
            and 'bias' (out,)
  deconv    nn.ConvTranspose(features, kernel_size, strides=, padding=, use_bias=, kernel_init=,
            dtype=, param_dtype=, name=) -> param 'kernel' (kh, kw, in, out), no kernel transpose
  max_pool  nn.max_pool(x, window_shape, strides=, padding=) with -inf padding

STANDARD_OPS is plain Flax/lax, what GPU and TPU compilers are tuned for.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn

ModuleDef = Any


@dataclasses.dataclass(frozen=True)
class LayerOps:
  """The three layer implementations (module docstring). Frozen and hashable: a Flax attribute."""

  conv: ModuleDef = nn.Conv
  deconv: ModuleDef = nn.ConvTranspose
  max_pool: Callable[..., Any] = nn.max_pool
  name: str = "standard"


STANDARD_OPS = LayerOps()

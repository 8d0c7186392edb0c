"""The 3D lifting block (docs/design.md section 3 item 8): 2.5D joints (B, 5 J) -> root-relative 3D (B, J, 3) mm.

Dense(5J -> width, no bias) + BN + ReLU, then `num_blocks` residual blocks of `layers_per_block` x
[Dense (no bias) + BN + ReLU + Dropout] with the block input added to the output, then Dense(width -> 3J)
with bias. The released model has 5 blocks of 3 layers at width 1024 and dropout 0 (the paper's text
says 2 layers per block). Names follow the released model (fc1, bn1, block{k}/fc{l}, bn{l}, fc2).

Dense kernels start as PyTorch's nn.Linear does, U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (the released
lifter keeps PyTorch's defaults), biases 0.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from cascaded_lift.models.blocks import ZEROS, batch_norm

Dtype = Any
LINEAR_INIT = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


class _ResidualBlock(nn.Module):
  width: int
  num_layers: int
  dropout: float
  dtype: Dtype
  param_dtype: Dtype

  @nn.compact
  def __call__(self, x: jnp.ndarray, *, train: bool) -> jnp.ndarray:
    y = x
    for l in range(1, self.num_layers + 1):
      y = nn.Dense(self.width, use_bias=False, kernel_init=LINEAR_INIT, dtype=self.dtype,
                   param_dtype=self.param_dtype, name=f"fc{l}")(y)
      y = nn.relu(batch_norm(train, name=f"bn{l}", dtype=self.dtype, param_dtype=self.param_dtype)(y))
      y = nn.Dropout(self.dropout, deterministic=not train)(y)
    return x + y


class Lifter(nn.Module):
  """(B, 5 J) lifting input -> (B, J, 3) root-relative joints in mm (float32).

  Dropout (when `dropout` > 0 and train) draws from the 'dropout' RNG stream.
  """

  num_joints: int = 18
  width: int = 1024
  num_blocks: int = 5
  layers_per_block: int = 3
  dropout: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, *, train: bool) -> jnp.ndarray:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = nn.Dense(self.width, use_bias=False, kernel_init=LINEAR_INIT, name="fc1", **kw)(x)
    x = nn.relu(batch_norm(train, name="bn1", **kw)(x))
    for k in range(1, self.num_blocks + 1):
      x = _ResidualBlock(self.width, self.layers_per_block, self.dropout, name=f"block{k}", **kw)(x, train=train)
    x = nn.Dense(3 * self.num_joints, kernel_init=LINEAR_INIT, bias_init=ZEROS, name="fc2", **kw)(x)
    return x.astype(jnp.float32).reshape(x.shape[0], self.num_joints, 3)

"""ResNet trunk (v1.5: the stride sits on the 3x3 conv of each bottleneck), returning C5.

Stem: 7x7/2 conv + BN + ReLU + 3x3/2 max-pool (padding 1), then four stages with stride 1, 2, 2, 2:
C5 has stride 32 and 8 * width * expansion channels (2048 for ResNet-50/101/152, 512 for 18/34 at the
standard width 64). Submodule names mirror torchvision's (conv1, bn1, layer{i}_{j} for layer{i}.{j},
downsample_conv / downsample_bn for downsample.0 / .1), which is what convert.py relies on.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from cascaded_lift.models.blocks import (BACKBONE_INIT, BasicBlock, Bottleneck, Initializer, batch_norm, conv)
from cascaded_lift.models.ops import STANDARD_OPS, LayerOps

Dtype = Any

# depth -> (block type, blocks per stage)
RESNET_SPECS: dict[int, tuple[type[nn.Module], tuple[int, ...]]] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
    152: (Bottleneck, (3, 8, 36, 3)),
}


class ResNet(nn.Module):
  """ResNet-{18, 34, 50, 101, 152} trunk without the classifier.

  Attributes:
    depth: one of RESNET_SPECS.
    width: channels of the stem and of the first stage's 3x3 convs (64 for the standard nets).
    stage_sizes: blocks per stage, overriding the depth's (e.g. (1, 1, 1, 1) for a shallow test net).
    output_stride: 32, or 16 to keep C5 at twice the resolution: the last stage drops its stride and
      its later blocks' 3x3 convs use dilation 2 (torchvision's replace_stride_with_dilation for that
      stage; the same parameters, so ImageNet weights still load).
    kernel_init: kernel initialiser (He normal fan_out; ImageNet weights come in through convert.py).
  Input: (B, S, S, 3) normalised images. Output: C5, (B, S/os, S/os, 8 * width * expansion), os the
  output_stride.
  """

  depth: int = 50
  width: int = 64
  stage_sizes: Sequence[int] | None = None
  output_stride: int = 32
  kernel_init: Initializer = BACKBONE_INIT
  ops: LayerOps = STANDARD_OPS
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @property
  def out_channels(self) -> int:
    block, _ = self._spec()
    return 8 * self.width * block.expansion

  def _spec(self) -> tuple[type[nn.Module], tuple[int, ...]]:
    if self.depth not in RESNET_SPECS:
      raise ValueError(f"ResNet: unsupported depth {self.depth}; choose one of {sorted(RESNET_SPECS)}")
    block, sizes = RESNET_SPECS[self.depth]
    return block, tuple(self.stage_sizes) if self.stage_sizes is not None else sizes

  @nn.compact
  def __call__(self, x: jnp.ndarray, *, train: bool) -> jnp.ndarray:
    block, sizes = self._spec()
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = jnp.asarray(x, self.dtype)
    x = conv(self.ops, self.width, 7, stride=2, init=self.kernel_init, name="conv1", **kw)(x)
    x = nn.relu(batch_norm(train, name="bn1", **kw)(x))
    x = self.ops.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    if self.output_stride not in (16, 32):
      raise ValueError(f"ResNet: output_stride must be 16 or 32, got {self.output_stride}")
    for i, n in enumerate(sizes):
      dilate = self.output_stride == 16 and i == len(sizes) - 1
      for j in range(n):
        stride = 2 if (i > 0 and j == 0 and not dilate) else 1
        dilation = 2 if (dilate and j > 0) else 1
        x = block(self.width * 2 ** i, stride=stride, dilation=dilation, kernel_init=self.kernel_init,
                  ops=self.ops, name=f"layer{i + 1}_{j}", **kw)(x, train=train)
    return x

"""Building blocks shared by the backbone and the heads: conv/BN factories and residual blocks.

Layouts are NHWC. Every convolution pads explicitly, (k - 1) / 2 * dilation on each side, as the
PyTorch reference does; Flax's "SAME" would pad strided convolutions asymmetrically and shift the
feature maps by half a pixel relative to the reference. BatchNorm follows PyTorch's defaults
(momentum 0.1, i.e. Flax momentum 0.9; epsilon 1e-5) and names no device axis: cross-device
statistics are the training code's business.

Convolutions are built through `ops.conv` (models/ops.py): nn.Conv by default, or whatever
implementation with nn.Conv's parameters the platform policy passes in.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp

from cascaded_lift.models.ops import STANDARD_OPS, LayerOps

Dtype = Any
Initializer = Callable[..., Any]

# Heads (docs/design.md section 3): convs and deconvs N(0, 0.001), biases 0, BN scale 1 / bias 0.
HEAD_INIT: Initializer = nn.initializers.normal(stddev=0.001)
# Backbone without a weights file: He (kaiming) normal, fan_out, as torchvision does.
BACKBONE_INIT: Initializer = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
ZEROS: Initializer = nn.initializers.zeros


def conv(ops: LayerOps, features: int, kernel: int, *, stride: int = 1, dilation: int = 1,
         use_bias: bool = False, init: Initializer = HEAD_INIT, dtype: Dtype = jnp.float32,
         param_dtype: Dtype = jnp.float32, name: str | None = None) -> nn.Module:
  """A k x k `ops.conv` with PyTorch-style symmetric padding dilation * (k - 1) / 2."""
  pad = dilation * (kernel - 1) // 2
  return ops.conv(features, (kernel, kernel), strides=(stride, stride), padding=((pad, pad), (pad, pad)),
                  kernel_dilation=(dilation, dilation), use_bias=use_bias, kernel_init=init, bias_init=ZEROS,
                  dtype=dtype, param_dtype=param_dtype, name=name)


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
  ops: LayerOps = STANDARD_OPS
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, *, train: bool) -> jnp.ndarray:
    kw = dict(init=self.kernel_init, dtype=self.dtype, param_dtype=self.param_dtype)
    bn = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    out_ch = self.planes * self.expansion
    y = conv(self.ops, self.planes, 1, name="conv1", **kw)(x)
    y = nn.relu(batch_norm(train, name="bn1", **bn)(y))
    y = conv(self.ops, self.planes, 3, stride=self.stride, dilation=self.dilation, name="conv2", **kw)(y)
    y = nn.relu(batch_norm(train, name="bn2", **bn)(y))
    y = conv(self.ops, out_ch, 1, name="conv3", **kw)(y)
    y = batch_norm(train, name="bn3", **bn)(y)
    shortcut = x
    if self.stride != 1 or x.shape[-1] != out_ch:
      shortcut = conv(self.ops, out_ch, 1, stride=self.stride, name="downsample_conv", **kw)(x)
      shortcut = batch_norm(train, name="downsample_bn", **bn)(shortcut)
    return nn.relu(y + shortcut)


class BasicBlock(nn.Module):
  """ResNet-18/34 block: 3x3 (planes, stride) -> 3x3 (planes) + shortcut (1x1 conv + BN when reshaped)."""

  planes: int
  stride: int = 1
  dilation: int = 1
  expansion: int = 1
  kernel_init: Initializer = BACKBONE_INIT
  ops: LayerOps = STANDARD_OPS
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, *, train: bool) -> jnp.ndarray:
    kw = dict(init=self.kernel_init, dtype=self.dtype, param_dtype=self.param_dtype)
    bn = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    y = conv(self.ops, self.planes, 3, stride=self.stride, dilation=self.dilation, name="conv1", **kw)(x)
    y = nn.relu(batch_norm(train, name="bn1", **bn)(y))
    y = conv(self.ops, self.planes, 3, dilation=self.dilation, name="conv2", **kw)(y)
    y = batch_norm(train, name="bn2", **bn)(y)
    shortcut = x
    if self.stride != 1 or x.shape[-1] != self.planes:
      shortcut = conv(self.ops, self.planes, 1, stride=self.stride, name="downsample_conv", **kw)(x)
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
  ops: LayerOps = STANDARD_OPS
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, *, train: bool) -> jnp.ndarray:
    kw = dict(use_bias=True, dtype=self.dtype, param_dtype=self.param_dtype)
    bn = dict(dtype=self.dtype, param_dtype=self.param_dtype)

    def branch(y, kernel, dilation, name):
      y = conv(self.ops, self.width, kernel, dilation=dilation, name="conv_" + name, **kw)(y)
      return nn.relu(batch_norm(train, name="bn_conv_" + name, **bn)(y))

    outs = [branch(x, 1, 1, "1x1_1")]
    outs += [branch(x, 3, d, f"3x3_{k + 1}") for k, d in enumerate(self.dilations)]
    # Average in float32: a bfloat16 sum over 64 x 64 pixels would lose most of its precision.
    pooled = jnp.mean(x.astype(jnp.float32), axis=(1, 2), keepdims=True).astype(x.dtype)
    pooled = branch(pooled, 1, 1, "1x1_2")
    outs.append(jnp.broadcast_to(pooled, x.shape[:3] + (self.width,)))
    return branch(jnp.concatenate(outs, axis=-1), 1, 1, "1x1_3")

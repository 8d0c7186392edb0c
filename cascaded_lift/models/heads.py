"""The heads between C5 and the per-joint volumes (docs/design.md section 3 items 1-5).

All NHWC; `width` is the 256-channel feature width of the released model, `bone_width` its 128.
Convs and deconvs are initialised N(0, 0.001) with zero biases, BN with scale 1 / bias 0. Every module
returns features in the compute dtype.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from cascaded_lift.models.blocks import HEAD_INIT, ASPP, Bottleneck, batch_norm, conv
from cascaded_lift.models.ops import STANDARD_OPS, LayerOps

Dtype = Any


class _Upsampler(nn.Module):
  """num_deconvs x (deconv k4/s2 -> BN -> ReLU): (B, h, w, C) -> (B, h 2^n, w 2^n, width)."""

  width: int
  num_deconvs: int = 3
  ops: LayerOps = STANDARD_OPS
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def _upsample(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    for i in range(self.num_deconvs):
      x = self.ops.deconv(self.width, (4, 4), strides=(2, 2), padding=((2, 2), (2, 2)), use_bias=False,
                         kernel_init=HEAD_INIT, name=f"deconv{i}", **kw)(x)
      x = nn.relu(batch_norm(train, name=f"bn{i}", **kw)(x))
    return x


class ContextBranch(_Upsampler):
  """Image-context branch ("up"): deconvs, then 3x3 conv (no bias) + BN + ReLU -> F_ctx (B, H, W, width)."""

  @nn.compact
  def __call__(self, c5: jnp.ndarray, *, train: bool) -> jnp.ndarray:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = self._upsample(c5, train)
    x = conv(self.ops, self.width, 3, name="final_conv", **kw)(x)
    return nn.relu(batch_norm(train, name="final_bn", **kw)(x))


class BoneBranch(_Upsampler):
  """Bone branch ("limb"): deconvs -> F_limb (B, H, W, width); 3x3 conv with bias -> bone heatmaps.

  The released model also holds a 3x3 conv + BN here that its forward pass never uses; they are left
  out (convert.py skips their weights).
  """

  num_bones: int = 16

  @nn.compact
  def __call__(self, c5: jnp.ndarray, *, train: bool) -> tuple[jnp.ndarray, jnp.ndarray]:
    features = self._upsample(c5, train)
    heatmaps = conv(self.ops, self.num_bones, 3, use_bias=True, name="heatmap_conv", dtype=self.dtype,
                    param_dtype=self.param_dtype)(features)
    return features, heatmaps


class BoneJointBlock(nn.Module):
  """concat(F_ctx, F_limb) -> 1x1 (no bias) + BN + ReLU -> bottlenecks -> 3x3 conv (no bias) = joint
  heatmaps (B, H, W, J); one more bottleneck -> F_joint (B, H, W, width)."""

  width: int = 256
  num_joints: int = 18
  num_bottlenecks: int = 2
  ops: LayerOps = STANDARD_OPS
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, context: jnp.ndarray, limb: jnp.ndarray, *, train: bool
               ) -> tuple[jnp.ndarray, jnp.ndarray]:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = conv(self.ops, self.width, 1, name="reduce_conv", **kw)(jnp.concatenate([context, limb], axis=-1))
    x = nn.relu(batch_norm(train, name="reduce_bn", **kw)(x))
    for i in range(self.num_bottlenecks):
      x = Bottleneck(self.width // 4, ops=self.ops, name=f"bottleneck{i}", **kw)(x, train=train)
    heatmaps = conv(self.ops, self.num_joints, 3, name="joint_conv", **kw)(x)
    features = Bottleneck(self.width // 4, ops=self.ops, name="feature_bottleneck", **kw)(x, train=train)
    return features, heatmaps


class DilatedBlock(nn.Module):
  """Context path beside the bone-joint block: bottlenecks then ASPP -> F_ctx' (B, H, W, width)."""

  width: int = 256
  num_bottlenecks: int = 2
  dilations: tuple[int, ...] = (4, 8, 12)
  ops: LayerOps = STANDARD_OPS
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, context: jnp.ndarray, *, train: bool) -> jnp.ndarray:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = context
    for i in range(self.num_bottlenecks):
      x = Bottleneck(self.width // 4, ops=self.ops, name=f"bottleneck{i}", **kw)(x, train=train)
    return ASPP(self.width, self.dilations, ops=self.ops, name="aspp", **kw)(x, train=train)


class DepthCentricBlock(nn.Module):
  """concat(F_ctx', F_joint) -> 1x1 (no bias) + BN + ReLU -> bottlenecks -> F_depth (B, H, W, width);
  3x3 conv (no bias) -> the depth-centric volume (B, H, W, D), one channel per depth bin."""

  width: int = 256
  depth_bins: int = 64
  num_bottlenecks: int = 1
  ops: LayerOps = STANDARD_OPS
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, context: jnp.ndarray, joint: jnp.ndarray, *, train: bool
               ) -> tuple[jnp.ndarray, jnp.ndarray]:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = conv(self.ops, self.width, 1, name="reduce_conv", **kw)(jnp.concatenate([context, joint], axis=-1))
    x = nn.relu(batch_norm(train, name="reduce_bn", **kw)(x))
    for i in range(self.num_bottlenecks):
      x = Bottleneck(self.width // 4, ops=self.ops, name=f"bottleneck{i}", **kw)(x, train=train)
    return x, conv(self.ops, self.depth_bins, 3, name="volume_conv", **kw)(x)


class VolumetricHead(nn.Module):
  """concat(F_ctx', F_depth) (2 width channels) -> bottlenecks -> 1x1 conv (bias) to J * D channels.

  The channels are joint-major (channel j * D + d). Output: (B, H, W, J, D) per-joint volumes, the
  convolution's own layout (soft_argmax_3d reads it directly with layout="BHWJD"; CascadedLiftNet
  transposes to (B, J, D, H, W) only for its 'joint_volumes' output, which training never reads).
  """

  num_joints: int = 18
  depth_bins: int = 64
  num_bottlenecks: int = 3
  ops: LayerOps = STANDARD_OPS
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, context: jnp.ndarray, depth: jnp.ndarray, *, train: bool) -> jnp.ndarray:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = jnp.concatenate([context, depth], axis=-1)
    for i in range(self.num_bottlenecks):
      x = Bottleneck(x.shape[-1] // 4, ops=self.ops, name=f"bottleneck{i}", **kw)(x, train=train)
    x = conv(self.ops, self.num_joints * self.depth_bins, 1, use_bias=True, name="final_conv", **kw)(x)
    b, h, w, _ = x.shape
    return x.reshape(b, h, w, self.num_joints, self.depth_bins)

"""CascadedLiftNet: the whole network of docs/design.md section 3, config-driven.

Image (B, S, S, 3) on the 0..255 scale -> ResNet C5 (S/32) -> context branch F_ctx and bone branch
(F_limb, bone heatmaps) at S/4 -> bone-joint block (F_joint, joint heatmaps) and dilated block F_ctx' ->
depth-centric block (F_depth, depth volume) with the parallel 1x1 ordinal-depth head -> volumetric head
(J volumes of D x S/4 x S/4) -> soft-argmax (x, y, z) -> 2.5D lifting input -> lifter -> 3D pose (mm).

The defaults are the released model: J = 18, 16 bones, D = 64, ResNet-50, 256 x 256 input. Every
width, depth and count is an attribute so that tests can build tiny variants.

Decisions recorded here:
- The ordinal-depth head is a 1x1 conv with bias (256 * 64 + 64 = 16,448 parameters); the released
  model has no such layer.
- The lifter runs in `lifter_dtype` (float32 by default, whatever `dtype` is): its inputs are image
  coordinates up to thousands of pixels and millimetre depths, which bfloat16 would round by several
  units, and its cost is negligible next to the convolutions.
- The lifter input is built under jax.lax.stop_gradient: the lifter's loss never trains the rest.
- BatchNorm of everything but the lifter follows `train`; the lifter's follows `lifter_train`.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cascaded_lift.heatmaps import lifting_input, soft_argmax_3d
from cascaded_lift.models.blocks import conv
from cascaded_lift.models.heads import (BoneBranch, BoneJointBlock, ContextBranch, DepthCentricBlock,
                                        DilatedBlock, VolumetricHead)
from cascaded_lift.models.lifter import Lifter
from cascaded_lift.models.ops import STANDARD_OPS, LayerOps
from cascaded_lift.models.resnet import ResNet

Dtype = Any

# ImageNet statistics on the 0..255 scale (docs/design.md section 1).
IMAGE_MEAN = (123.675, 116.28, 103.53)
IMAGE_STD = (58.395, 57.12, 57.375)


class CascadedLiftNet(nn.Module):
  """The cascaded dimension-lifting network.

  Attributes:
    num_joints, num_bones, depth_bins: J, N_bones, D.
    root_index: the root joint (its lifting-input depth is set to 0; u, v are taken relative to it).
    resnet_depth, resnet_width, resnet_stage_sizes: the backbone (see ResNet).
    resnet_output_stride: C5's stride, 32 (the paper) or 16 (last stage dilated instead of strided:
      twice the C5 resolution for small inputs, e.g. the CPU main job's 96 px crops).
    head_width: width of F_ctx, F_joint, F_depth and the ASPP branches (256); the volumetric head
      works on 2 * head_width channels.
    bone_width: width of the bone branch's features (128).
    num_deconvs: deconvs per upsampling branch (3: stride 32 -> 4); heatmaps are S / output_stride.
    context_bottlenecks, joint_bottlenecks, depth_bottlenecks, volumetric_bottlenecks: block counts
      (2, 2, 1, 3); the bone-joint block has one more bottleneck after the joint heatmaps.
    aspp_dilations: dilations of the ASPP's 3x3 branches.
    lifter_width, lifter_blocks, lifter_layers_per_block, lifter_dropout: the lifter (with dropout > 0,
      training applies need rngs={'dropout': key}).
    ops: the conv / deconv / max-pool implementations (models/ops.py; chosen by cascaded_lift.platform).
    dtype: compute dtype; param_dtype: parameter dtype; lifter_dtype: the lifter's compute dtype.
  """

  num_joints: int = 18
  num_bones: int = 16
  depth_bins: int = 64
  root_index: int = 0
  resnet_depth: int = 50
  resnet_width: int = 64
  resnet_stage_sizes: tuple[int, ...] | None = None
  resnet_output_stride: int = 32
  head_width: int = 256
  bone_width: int = 128
  num_deconvs: int = 3
  context_bottlenecks: int = 2
  joint_bottlenecks: int = 2
  depth_bottlenecks: int = 1
  volumetric_bottlenecks: int = 3
  aspp_dilations: tuple[int, ...] = (4, 8, 12)
  lifter_width: int = 1024
  lifter_blocks: int = 5
  lifter_layers_per_block: int = 3
  lifter_dropout: float = 0.0
  ops: LayerOps = STANDARD_OPS
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  lifter_dtype: Dtype = jnp.float32

  @property
  def output_stride(self) -> int:
    """Input pixels per heatmap pixel: resnet_output_stride / 2 ** num_deconvs (4 for the paper's)."""
    return self.resnet_output_stride // 2 ** self.num_deconvs

  def output_size(self, image_size: int) -> int:
    """Heatmap side H = W for S x S input crops."""
    return image_size // self.output_stride

  @nn.compact
  def __call__(self, images: jnp.ndarray, boxes: jnp.ndarray, *, train: bool,
               lifter_train: bool | None = None) -> dict[str, jnp.ndarray]:
    """Runs the network.

    Args:
      images: (B, S, S, 3) RGB on the 0..255 scale, uint8 or float; S divisible by resnet_output_stride.
      boxes: (B, 4) [x0, y0, w, h] of the crop in the original image, px.
      train: BatchNorm batch statistics (and dropout) for everything but the lifter.
      lifter_train: the same for the lifter; defaults to `train`.
    Returns:
      dict (H = W = S / output_stride, S / 4 for the paper's): 'bone_heatmaps' (B, H, W, N_bones), 'joint_heatmaps'
      (B, H, W, J), 'depth_volume' (B, H, W, D), 'ordinal_logits' (B, H, W, D), 'joint_volumes'
      (B, J, D, H, W) in the compute dtype; 'coords' (B, J, 3) voxel (x, y, z), 'lifter_input' (B, 5 J)
      and 'pose_3d' (B, J, 3) root-relative mm in float32.
    """
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f"CascadedLiftNet: images must be (B, S, S, 3), got {images.shape}")
    if boxes.shape != (images.shape[0], 4):
      raise ValueError(f"CascadedLiftNet: boxes must be ({images.shape[0]}, 4), got {boxes.shape}")
    lifter_train = train if lifter_train is None else lifter_train
    kw = dict(ops=self.ops, dtype=self.dtype, param_dtype=self.param_dtype)

    # Normalise in float32 so that uint8 input never meets low-precision arithmetic.
    x = (images.astype(jnp.float32) - jnp.asarray(IMAGE_MEAN, jnp.float32)) / jnp.asarray(IMAGE_STD, jnp.float32)
    c5 = ResNet(self.resnet_depth, self.resnet_width, self.resnet_stage_sizes, self.resnet_output_stride,
            name="backbone", **kw)(
        x.astype(self.dtype), train=train)

    up = dict(num_deconvs=self.num_deconvs, **kw)
    context = ContextBranch(self.head_width, name="context", **up)(c5, train=train)
    limb, bone_heatmaps = BoneBranch(self.bone_width, num_bones=self.num_bones, name="bone_branch", **up)(
        c5, train=train)
    joint, joint_heatmaps = BoneJointBlock(self.head_width, self.num_joints, self.joint_bottlenecks,
                                           name="bone_joint", **kw)(context, limb, train=train)
    context = DilatedBlock(self.head_width, self.context_bottlenecks, tuple(self.aspp_dilations),
                           name="dilated", **kw)(context, train=train)
    depth, depth_volume = DepthCentricBlock(self.head_width, self.depth_bins, self.depth_bottlenecks,
                                            name="depth_centric", **kw)(context, joint, train=train)
    ordinal_logits = conv(self.ops, self.depth_bins, 1, use_bias=True, name="ordinal_head",
                          dtype=self.dtype, param_dtype=self.param_dtype)(depth)
    volumes = VolumetricHead(self.num_joints, self.depth_bins, self.volumetric_bottlenecks,
                             name="volumetric", **kw)(context, depth, train=train)

    coords = soft_argmax_3d(volumes, layout="BHWJD")
    lift_in = jax.lax.stop_gradient(
        lifting_input(coords, boxes, self.depth_bins, volumes.shape[1:3], self.root_index))
    pose_3d = Lifter(self.num_joints, self.lifter_width, self.lifter_blocks, self.lifter_layers_per_block,
                     self.lifter_dropout, dtype=self.lifter_dtype, param_dtype=self.param_dtype,
                     name="lifter")(lift_in, train=lifter_train)
    return {
        "bone_heatmaps": bone_heatmaps,
        "joint_heatmaps": joint_heatmaps,
        "depth_volume": depth_volume,
        "ordinal_logits": ordinal_logits,
        "joint_volumes": volumes.transpose(0, 3, 4, 1, 2),
        "coords": coords,
        "lifter_input": lift_in,
        "pose_3d": pose_3d,
    }

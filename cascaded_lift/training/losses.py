"""Stage-1 and stage-2 losses (docs/design.md section 5), pure jax.numpy for the jitted train step.

Every term sums the per-element loss over the elements that take part and divides by a count
(max(count, 1), so a batch where nothing takes part gives 0, never NaN). An element is one heatmap pixel
of one channel (L_bone, L_joint), one voxel (L_3D), one (pixel, bin) pair (L_depth), one coordinate
(L_coord, L_pose). The count is either the number of elements (reduce="mean", a masked mean) or the
number of samples that take part (reduce="sample_sum": the per-sample sum of the paper's equations,
averaged over the batch); the dense stage-1 terms take either (config.loss_normalization, docs/design.md
section 5.3), L_coord and L_pose are always means. Masked elements are dropped with jnp.where, so
whatever a masked prediction or target holds changes neither the value nor any gradient. Every term
also respects batch['valid'] (0 for padding). Predictions may be bfloat16; the arithmetic and results
are float32.

Masks (decisions; see cascaded_lift.training.targets for how the targets' masks are made):
- L_joint: per channel, joint visible. L_bone: per bone, both joints visible.
- L_3D: samples with depth. L_depth: labelled pixels of samples with depth.
- L_coord: per coordinate, targets['coord_mask'] (z only for samples with depth).
- L_pose: visible joints of samples with depth.
L_depth is the binary cross-entropy of eq. 4 (with the minus sign) over labelled pixels and all D bins:
their sum per sample ("sample_sum") or their mean, 1/D times the per-pixel mean of the paper's sum.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from cascaded_lift.skeleton import Skeleton

Array = Any

STAGE1_TERMS = ("bone", "joint", "volume_3d", "depth", "coord")
# The paper's ablation (Table 4): which stage-1 terms each variant supervises. The network is the same in
# every variant; the others are switched off by weight alone.
SUPERVISION = {
    "baseline": ("coord",),
    "jh": ("joint", "coord"),
    "jh_bh": ("bone", "joint", "coord"),
    "full": STAGE1_TERMS,
}
REDUCTIONS = ("mean", "sample_sum")
GEODESIC_TARGET_MM = 1077.0
# Joint names on the geodesic path, with stand-ins for joint sets that name them differently
# (MuCo-3DHP calls the neck base "Thorax" and the mid spine "Spine").
_GEODESIC_NAMES = {"Neck": ("Neck", "Thorax"), "Torso": ("Torso", "Spine"), "Pelvis": ("Pelvis",)}


def masked_mean(values: Array, mask: Array) -> jax.Array:
  """sum(values * mask) / max(count, 1) in float32, with mask broadcast to values' shape.

  `mask` must have values' rank (size-1 axes broadcast); count is the number of elements the broadcast
  mask selects. Masked values are replaced by 0 with jnp.where, so they neither change the result nor
  receive gradient.
  """
  total, mask = _masked_total("masked_mean", values, mask)
  return total / jnp.maximum(jnp.sum(mask), 1.0)


def _masked_total(name: str, values: Array, mask: Array) -> tuple[jax.Array, jax.Array]:
  """(sum of values * mask over mask > 0, the mask broadcast to values' shape), float32."""
  values = jnp.asarray(values, jnp.float32)
  mask = jnp.asarray(mask, jnp.float32)
  if mask.ndim != values.ndim:
    raise ValueError(f"{name}: mask rank {mask.shape} must equal values rank {values.shape}")
  mask = jnp.broadcast_to(mask, values.shape)
  return jnp.sum(jnp.where(mask > 0, values * mask, 0.0)), mask


def masked_sample_sum(values: Array, mask: Array) -> jax.Array:
  """sum(values * mask) / max(samples, 1) in float32: the per-sample sum averaged over the samples that take part.

  Axis 0 of `values` is the batch; a sample takes part when its broadcast mask selects any element.
  Masked values are replaced by 0 with jnp.where, as in masked_mean.
  """
  total, mask = _masked_total("masked_sample_sum", values, mask)
  samples = jnp.sum(jnp.any(mask.reshape(mask.shape[0], -1) > 0, axis=1).astype(jnp.float32))
  return total / jnp.maximum(samples, 1.0)


def _reduce(values: Array, mask: Array, reduce: str) -> jax.Array:
  if reduce == "mean":
    return masked_mean(values, mask)
  if reduce == "sample_sum":
    return masked_sample_sum(values, mask)
  raise ValueError(f"losses: reduce must be one of {REDUCTIONS}, got {reduce!r}")


def supervised_weights(weights: Mapping[str, float], supervision: str = "full") -> dict[str, float]:
  """`weights` with every term the `supervision` variant leaves out set to 0 (see SUPERVISION)."""
  if supervision not in SUPERVISION:
    raise ValueError(f"supervision must be one of {sorted(SUPERVISION)}, got {supervision!r}")
  return {k: (float(w) if k in SUPERVISION[supervision] else 0.0) for k, w in weights.items()}


def _valid(valid: Array | None, batch_size: int) -> jax.Array:
  return jnp.ones((batch_size,), jnp.float32) if valid is None else jnp.asarray(valid, jnp.float32)


def _check(name: str, pred: Array, target: Array) -> None:
  if pred.shape != target.shape:
    raise ValueError(f"losses.{name}: prediction {pred.shape} and target {target.shape} differ in shape")


def heatmap_mse(pred: Array, target: Array, mask: Array, valid: Array | None = None,
                reduce: str = "mean") -> jax.Array:
  """Squared error of (B, H, W, C) heatmaps over channels in mask (B, C) of valid (B,) samples, reduced by
  `reduce` ("mean" per element, "sample_sum" per sample; module docstring)."""
  _check("heatmap_mse", pred, target)
  w = jnp.asarray(mask, jnp.float32) * _valid(valid, pred.shape[0])[:, None]
  err = jnp.square(jnp.asarray(pred, jnp.float32) - jnp.asarray(target, jnp.float32))
  return _reduce(err, w[:, None, None, :], reduce)


def bone_loss(pred: Array, target: Array, bone_mask: Array, valid: Array | None = None,
              reduce: str = "mean") -> jax.Array:
  """L_bone: squared error of (B, H, W, NB) bone heatmaps over bones whose two joints are visible."""
  return heatmap_mse(pred, target, bone_mask, valid, reduce)


def joint_loss(pred: Array, target: Array, joint_mask: Array, valid: Array | None = None,
               reduce: str = "mean") -> jax.Array:
  """L_joint: squared error of (B, H, W, J) joint heatmaps over visible joints' channels."""
  return heatmap_mse(pred, target, joint_mask, valid, reduce)


def volume_loss(pred: Array, target: Array, has_depth: Array, valid: Array | None = None,
                reduce: str = "mean") -> jax.Array:
  """L_3D: squared error of the (B, H, W, D) depth-centric volume over samples with depth."""
  _check("volume_loss", pred, target)
  w = jnp.asarray(has_depth, jnp.float32) * _valid(valid, pred.shape[0])
  err = jnp.square(jnp.asarray(pred, jnp.float32) - jnp.asarray(target, jnp.float32))
  return _reduce(err, w[:, None, None, None], reduce)


def ordinal_depth_loss(logits: Array, labels: Array, pixel_mask: Array, has_depth: Array,
                       valid: Array | None = None, reduce: str = "mean") -> jax.Array:
  """L_depth: ordinal regression, binary cross-entropy of each logit l_c against [d(p) > c].

  Args:
    logits: (B, H, W, D) ordinal logits; s(l_c) estimates P(d > c).
    labels: (B, H, W, D) targets in {0, 1} (cascaded_lift.training.targets.ordinal_depth_labels).
    pixel_mask: (B, H, W) labelled pixels; has_depth, valid: (B,).
    reduce: "mean" over labelled (pixel, bin) pairs, or "sample_sum" (their sum per sample with depth).
  Returns:
    float32 reduction of softplus(l) - t l = -[t log s(l) + (1-t) log(1-s(l))].
  """
  _check("ordinal_depth_loss", logits, labels)
  logits = jnp.asarray(logits, jnp.float32)
  t = jnp.asarray(labels, jnp.float32)
  w = (jnp.asarray(pixel_mask, jnp.float32)
       * (jnp.asarray(has_depth, jnp.float32) * _valid(valid, logits.shape[0]))[:, None, None])
  return _reduce(jax.nn.softplus(logits) - t * logits, w[..., None], reduce)


def coord_loss(pred: Array, target: Array, mask: Array, valid: Array | None = None) -> jax.Array:
  """L_coord: masked L1 between (B, J, 3) soft-argmax and target voxel coordinates; mask (B, J, 3)."""
  _check("coord_loss", pred, target)
  w = jnp.asarray(mask, jnp.float32) * _valid(valid, pred.shape[0])[:, None, None]
  return masked_mean(jnp.abs(jnp.asarray(pred, jnp.float32) - jnp.asarray(target, jnp.float32)), w)


def pose_loss(pred: Array, target: Array, joint_mask: Array, valid: Array | None = None) -> jax.Array:
  """L1 in mm between (B, J, 3) poses, averaged over coordinates of joints in joint_mask (B, J)."""
  _check("pose_loss", pred, target)
  w = jnp.asarray(joint_mask, jnp.float32) * _valid(valid, pred.shape[0])[:, None]
  return masked_mean(jnp.abs(jnp.asarray(pred, jnp.float32) - jnp.asarray(target, jnp.float32)), w[..., None])


def _geodesic_indices(skeleton: Skeleton) -> np.ndarray:
  """(2, 5) joint indices of the Neck-Torso-Pelvis-Hip-Knee paths, left row then right row."""
  def find(name: str) -> int:
    for candidate in _GEODESIC_NAMES.get(name, (name,)):
      if candidate in skeleton.joint_names:
        return skeleton.joint_names.index(candidate)
    raise KeyError(f"geodesic_normalize: skeleton {skeleton.name!r} has no joint {name!r} (or stand-in "
                   f"{_GEODESIC_NAMES.get(name, ())}) for the Neck-Torso-Pelvis-Hip-Knee path")
  spine = [find("Neck"), find("Torso"), find("Pelvis")]
  return np.array([spine + [find(f"{s}_Hip"), find(f"{s}_Knee")] for s in ("L", "R")], np.int32)


def geodesic_length(pose: Array, skeleton: Skeleton) -> jax.Array:
  """(...,) mean of the left and right Neck-Torso-Pelvis-Hip-Knee path lengths of (..., J, 3) poses."""
  pose = jnp.asarray(pose, jnp.float32)
  if pose.ndim < 2 or pose.shape[-2:] != (skeleton.num_joints, 3):
    raise ValueError(f"geodesic_length: pose must be (..., {skeleton.num_joints}, 3) for skeleton "
                     f"{skeleton.name!r}, got {pose.shape}")
  path = jnp.take(pose, jnp.asarray(_geodesic_indices(skeleton)), axis=-2)   # (..., 2, 5, 3)
  seg = jnp.linalg.norm(jnp.diff(path, axis=-2), axis=-1)                    # (..., 2, 4)
  return jnp.mean(jnp.sum(seg, axis=-1), axis=-1)


def geodesic_normalize(pose: Array, skeleton: Skeleton, target_mm: float = GEODESIC_TARGET_MM) -> jax.Array:
  """Scales each (..., J, 3) pose by target_mm / g, g its geodesic length (:func:`geodesic_length`).

  A root-relative pose stays root-relative. Poses with g = 0 (e.g. the zeros of 2D-only samples) are
  returned unchanged. Output float32.
  """
  pose = jnp.asarray(pose, jnp.float32)
  g = geodesic_length(pose, skeleton)
  scale = jnp.where(g > 1e-6, target_mm / jnp.where(g > 1e-6, g, 1.0), 1.0)
  return pose * scale[..., None, None]


def stage1_loss(outputs: Mapping[str, Array], targets: Mapping[str, Array], batch: Mapping[str, Array],
                weights: Mapping[str, float], reduce: str = "mean") -> tuple[jax.Array, dict[str, jax.Array]]:
  """Weighted stage-1 loss.

  Args:
    outputs: model outputs 'bone_heatmaps', 'joint_heatmaps', 'depth_volume', 'ordinal_logits', 'coords'.
    targets: cascaded_lift.training.targets.make_stage1_targets(batch, ...).
    batch: for 'has_depth' and 'valid' (B,) (valid optional: all ones when absent).
    weights: exactly the keys bone, joint, volume_3d, depth, coord. A term whose weight is a Python 0
      is skipped (logged as 0), so its output may be absent.
    reduce: the dense terms' (bone, joint, volume_3d, depth) normalisation, "mean" or "sample_sum".
  Returns:
    (total float32 scalar, {term: unweighted float32 value}).
  """
  unknown = set(weights) - set(STAGE1_TERMS)
  missing = set(STAGE1_TERMS) - set(weights)
  if unknown or missing:
    raise KeyError(f"stage1_loss: weights must have exactly {STAGE1_TERMS}; missing {sorted(missing)}, "
                   f"unknown {sorted(unknown)}")
  if reduce not in REDUCTIONS:
    raise ValueError(f"stage1_loss: reduce must be one of {REDUCTIONS}, got {reduce!r}")
  has_depth = jnp.asarray(batch["has_depth"], jnp.float32)
  valid = batch.get("valid")
  fns = {
      "bone": lambda: bone_loss(outputs["bone_heatmaps"], targets["bone_heatmaps"], targets["bone_mask"], valid,
                                reduce),
      "joint": lambda: joint_loss(outputs["joint_heatmaps"], targets["joint_heatmaps"], targets["joint_mask"],
                                  valid, reduce),
      "volume_3d": lambda: volume_loss(outputs["depth_volume"], targets["depth_volume"], has_depth, valid,
                                       reduce),
      "depth": lambda: ordinal_depth_loss(outputs["ordinal_logits"], targets["ordinal_labels"],
                                          targets["ordinal_mask"], has_depth, valid, reduce),
      "coord": lambda: coord_loss(outputs["coords"], targets["coords"], targets["coord_mask"], valid),
  }
  terms, total = {}, jnp.zeros((), jnp.float32)
  for name in STAGE1_TERMS:
    w = weights[name]
    if isinstance(w, (int, float)) and w == 0:
      terms[name] = jnp.zeros((), jnp.float32)
      continue
    terms[name] = fns[name]()
    total = total + jnp.asarray(w, jnp.float32) * terms[name]
  return total, terms


def stage2_loss(outputs: Mapping[str, Array], batch: Mapping[str, Array], skeleton: Skeleton,
                geodesic: bool = True, target_mm: float = GEODESIC_TARGET_MM
                ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """L_pose: L1 in mm between outputs['pose_3d'] and batch['pose_3d'] (B, J, 3), root-relative.

  With `geodesic`, the ground truth is scaled to a geodesic length of target_mm first (the lifter
  learns normalised poses, as in the paper); only the ground truth is scaled. Visible joints of valid
  samples with depth take part. Returns (total, {'pose': total}).
  """
  for key in ("pose_3d", "joints_vis", "has_depth"):
    if key not in batch:
      raise KeyError(f"stage2_loss: batch has no {key!r} (keys: {sorted(batch)})")
  target = jnp.asarray(batch["pose_3d"], jnp.float32)
  if geodesic:
    target = geodesic_normalize(target, skeleton, target_mm)
  mask = jnp.asarray(batch["joints_vis"], jnp.float32) * jnp.asarray(batch["has_depth"], jnp.float32)[:, None]
  loss = pose_loss(outputs["pose_3d"], target, mask, batch.get("valid"))
  return loss, {"pose": loss}

"""Stage-1 training targets, made on the accelerator from joint coordinates (docs/design.md section 4).

The host ships only joint voxel coordinates, visibilities and flags; every heatmap, volume and label is
built here, inside the jitted train step. All functions are pure jax.numpy, jit- and vmap-safe, loop-free
over joints, NHWC like the model, and take any leading batch axes ("..." below; written B in the
interface). Gaussians are evaluated in float32 and cast to `dtype` at the end, so bfloat16 targets are
the rounded float32 ones.

Coordinates are voxel units of the crop (docs/design.md section 1): x, y in output pixels with the centre of
pixel (i, j) at x = j, y = i; z in depth bins, bin d covering [d, d + 1). "Inside" means
0 <= x < W, 0 <= y < H and 0 <= z < D.

Which joints feed which target (decisions, also in docs/design.md section 4):
- joint heatmaps: every visible (annotated) joint. A joint outside the crop keeps its true Gaussian
  (a partial tail or nothing at all), which is correct supervision for "no joint here", so the
  joint-heatmap mask is visibility only.
- bone heatmaps: a bone is drawn and supervised when both of its joints are visible (paper eq. 1).
- depth-centric volume and ordinal labels: only visible joints of samples with depth that lie inside
  the crop and the depth range.
- coord mask: x, y need visibility and a position inside the crop (and, for samples with depth, inside
  the depth range: such a joint is not supervised at all, docs/design.md section 1); z needs depth too.

Ordinal labels: a pixel is labelled when the largest (masked) joint Gaussian there exceeds
`threshold` (default 0.1: within sigma * sqrt(2 ln 10) = 2.15 sigma = 4.3 px of a joint for sigma 2);
its label d(p) is the depth bin of that joint, and the target for logit c is 1 where d(p) > c, so the
D targets read 1...1 0...0 with the first 0 at index d(p).
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from cascaded_lift.skeleton import Skeleton

Array = Any  # jax.Array (or anything jnp.asarray takes)

# make_stage1_targets' config keys; their values live in the configs (configs/default.py `targets`).
CONFIG_KEYS = ("sigma", "bone_sigma_start", "bone_sigma_end", "depth_bins", "ordinal_threshold", "heatmap_size",
               "volume_method")


def bone_sigma(progress: Array, start: float | Array, end: float | Array) -> jax.Array:
  """Annealed bone-heatmap sigma: linear from `start` (progress 0) to `end` (progress >= 1).

  The paper reduces the bone kernel "according to the epoch" without giving a schedule; a linear ramp
  over stage-1 progress is the simplest one that does that. `progress` is clipped to [0, 1] and may be a
  traced scalar (e.g. step / total_steps), so the schedule never recompiles the step.
  Returns a float32 scalar in output px.
  """
  p = jnp.clip(jnp.asarray(progress, jnp.float32), 0.0, 1.0)
  start = jnp.asarray(start, jnp.float32)
  return start + (jnp.asarray(end, jnp.float32) - start) * p


def _grid(size: tuple[int, int]) -> tuple[jax.Array, jax.Array]:
  """Pixel-centre coordinates: ys (H,), xs (W,), float32."""
  h, w = _check_size(size)
  return jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32)


def _check_size(size: tuple[int, int]) -> tuple[int, int]:
  if len(size) != 2 or int(size[0]) <= 0 or int(size[1]) <= 0:
    raise ValueError(f"targets: size must be (H, W) with positive ints, got {size!r}")
  return int(size[0]), int(size[1])


def _check_joints(name: str, xy: Array, vis: Array, dims: int) -> None:
  if xy.ndim < 2 or xy.shape[-1] < dims:
    raise ValueError(f"targets.{name}: coordinates must be (..., J, >={dims}), got {xy.shape}")
  if vis.shape != xy.shape[:-1]:
    raise ValueError(f"targets.{name}: visibility must be {xy.shape[:-1]} to match coordinates {xy.shape}, "
                     f"got {vis.shape}")


def _gaussians(xy: jax.Array, size: tuple[int, int], sigma: Array) -> jax.Array:
  """(..., H, W, J) float32 unnormalised Gaussians exp(-|p - xy_j|^2 / (2 sigma^2)), peak 1.

  Separable: one (..., J, H) and one (..., J, W) factor, multiplied in a single fused broadcast, so no
  intermediate is larger than the output.
  """
  ys, xs = _grid(size)
  xy = xy.astype(jnp.float32)
  inv = 1.0 / (2.0 * jnp.square(jnp.asarray(sigma, jnp.float32)))
  gx = jnp.exp(-jnp.square(xs[:, None] - xy[..., None, :, 0]) * inv)  # (..., W, J)
  gy = jnp.exp(-jnp.square(ys[:, None] - xy[..., None, :, 1]) * inv)  # (..., H, J)
  return gy[..., :, None, :] * gx[..., None, :, :]


def joint_heatmaps(xy: Array, vis: Array, size: tuple[int, int], sigma: Array = 2.0,
                   dtype: Any = jnp.float32) -> jax.Array:
  """Joint heatmaps H_j(p) = v_j exp(-|p - (x_j, y_j)|^2 / (2 sigma^2)).

  Args:
    xy: (..., J, >=2) joint positions, output px (extra columns such as z are ignored).
    vis: (..., J) visibility in {0, 1}; invisible joints get an all-zero channel.
    size: (H, W) of the heatmaps.
    sigma: Gaussian sigma in output px (may be traced).
    dtype: output dtype.
  Returns:
    (..., H, W, J) heatmaps in [0, 1], value 1 at a joint on a pixel centre.
  """
  xy, vis = jnp.asarray(xy), jnp.asarray(vis)
  _check_joints("joint_heatmaps", xy, vis, 2)
  heat = _gaussians(xy[..., :2], size, sigma) * vis.astype(jnp.float32)[..., None, None, :]
  return heat.astype(dtype)


def bone_heatmaps(xy: Array, vis: Array, parents: Array, children: Array, size: tuple[int, int],
                  sigma: Array = 2.0, dtype: Any = jnp.float32) -> tuple[jax.Array, jax.Array]:
  """Bone heatmaps (paper eq. 1): B(p) = exp(-dist(p, segment)^2 / (2 sigma^2)) per bone.

  dist is the Euclidean distance from the pixel centre to the closed segment between the bone's two
  joints (to the joint itself when both coincide).

  Args:
    xy: (..., J, >=2) joint positions, output px.
    vis: (..., J) visibility in {0, 1}.
    parents, children: (NB,) joint indices of each bone (Skeleton.bone_parents / bone_children).
    size: (H, W).
    sigma: Gaussian sigma in output px (may be traced, e.g. from :func:`bone_sigma`).
    dtype: heatmap dtype.
  Returns:
    heatmaps (..., H, W, NB), zero for unsupervised bones; mask (..., NB) float32, 1 where both joints
    are visible.
  """
  xy, vis = jnp.asarray(xy), jnp.asarray(vis)
  _check_joints("bone_heatmaps", xy, vis, 2)
  parents, children = jnp.asarray(parents, jnp.int32), jnp.asarray(children, jnp.int32)
  if parents.shape != children.shape or parents.ndim != 1:
    raise ValueError(f"targets.bone_heatmaps: parents {parents.shape} and children {children.shape} must be "
                     "equal-length 1-D index arrays")
  xy = xy[..., :2].astype(jnp.float32)
  a = jnp.take(xy, parents, axis=-2)[..., None, None, :, :]   # (..., 1, 1, NB, 2)
  ab = jnp.take(xy, children, axis=-2)[..., None, None, :, :] - a
  ys, xs = _grid(size)
  px = xs[None, :, None] - a[..., 0]                             # (..., H|1, W, NB): p - a
  py = ys[:, None, None] - a[..., 1]
  len2 = jnp.square(ab[..., 0]) + jnp.square(ab[..., 1])
  # Projection parameter of p onto the segment, clamped to it; a zero-length bone is a point.
  t = jnp.where(len2 > 0, (px * ab[..., 0] + py * ab[..., 1]) / jnp.where(len2 > 0, len2, 1.0), 0.0)
  t = jnp.clip(t, 0.0, 1.0)
  d2 = jnp.square(px - t * ab[..., 0]) + jnp.square(py - t * ab[..., 1])
  inv = 1.0 / (2.0 * jnp.square(jnp.asarray(sigma, jnp.float32)))
  vis = vis.astype(jnp.float32)
  mask = jnp.take(vis, parents, axis=-1) * jnp.take(vis, children, axis=-1)
  heat = jnp.exp(-d2 * inv) * mask[..., None, None, :]
  return heat.astype(dtype), mask


def _inside(coords: jax.Array, size: tuple[int, int], depth_bins: int | None) -> tuple[jax.Array, jax.Array]:
  """(in_xy, in_z) boolean (..., J): inside the crop, and inside the depth range [0, D)."""
  h, w = size
  x, y = coords[..., 0], coords[..., 1]
  in_xy = (x >= 0) & (x < w) & (y >= 0) & (y < h)
  if depth_bins is None:
    return in_xy, jnp.ones_like(in_xy)
  z = coords[..., 2]
  return in_xy, (z >= 0) & (z < depth_bins)


def depth_joint_mask(coords: Array, vis: Array, has_depth: Array, size: tuple[int, int],
                     depth_bins: int) -> jax.Array:
  """(..., J) float32: the joints that feed the depth-centric volume and the ordinal labels.

  Visible joints of samples with depth, inside the crop and the depth range.
  """
  coords, vis, has_depth = jnp.asarray(coords), jnp.asarray(vis), jnp.asarray(has_depth)
  _check_joints("depth_joint_mask", coords, vis, 3)
  in_xy, in_z = _inside(coords.astype(jnp.float32), _check_size(size), depth_bins)
  keep = in_xy & in_z & (vis > 0) & (has_depth[..., None] > 0)
  return keep.astype(jnp.float32)


def coord_mask(coords: Array, vis: Array, has_depth: Array, size: tuple[int, int],
               depth_bins: int) -> jax.Array:
  """(..., J, 3) float32 mask for the voxel-coordinate (soft-argmax) targets.

  x, y: visible and inside the crop; for samples with depth also inside the depth range (a 3D joint
  outside the 3D box is not supervised at all). z: the same and the sample has depth. A 2D-only
  sample's z is meaningless, so its range is not checked.
  """
  coords, vis, has_depth = jnp.asarray(coords), jnp.asarray(vis), jnp.asarray(has_depth)
  _check_joints("coord_mask", coords, vis, 3)
  in_xy, in_z = _inside(coords.astype(jnp.float32), _check_size(size), depth_bins)
  depth = has_depth[..., None] > 0
  xy_ok = (vis > 0) & in_xy & (in_z | ~depth)
  z_ok = xy_ok & depth
  return jnp.stack([xy_ok, xy_ok, z_ok], axis=-1).astype(jnp.float32)


def _depth_bins_of(z: jax.Array, depth_bins: int) -> jax.Array:
  """Depth bin index clip(floor(z), 0, D-1), int32."""
  return jnp.clip(jnp.floor(z), 0, depth_bins - 1).astype(jnp.int32)


def _volume_from_heat(heat: jax.Array, bins: jax.Array, depth_bins: int, method: str) -> jax.Array:
  """V[..., h, w, d] = max over joints j with bins_j == d of heat[..., h, w, j] (0 where none).

  heat (..., H, W, J) must be zero for masked joints (the max with 0 is then harmless).
  "scatter": a scatter-max of each joint's (H, W) map into its bin of a zero volume (B * J windows);
  "reduce": a fused max over J of one-hot(bin) * heat (touches B * H * W * D * J values but never
  stores them). scatter measured 15x faster on CPU (benchmarks/bench_targets.py).
  """
  lead, (h, w, j) = heat.shape[:-3], heat.shape[-3:]
  if method == "reduce":
    onehot = bins[..., None, :] == jnp.arange(depth_bins, dtype=jnp.int32)[:, None]   # (..., D, J)
    return jnp.max(jnp.where(onehot[..., None, None, :, :], heat[..., None, :], 0), axis=-1)
  if method != "scatter":
    raise ValueError(f"targets: volume method must be 'scatter' or 'reduce', got {method!r}")
  n = int(np.prod(lead, dtype=np.int64))
  heat = heat.reshape(n, h, w, j)
  bins = bins.reshape(n, j)
  rows = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32)[:, None], (n, j))
  vol = jnp.zeros((n, h, w, depth_bins), heat.dtype)
  # Advanced indices around the slices: the update's (n, J) axes come first, then (H, W).
  vol = vol.at[rows, :, :, bins].max(jnp.moveaxis(heat, -1, 1), mode="promise_in_bounds")
  return vol.reshape(*lead, h, w, depth_bins)


def _ordinal_from_heat(heat: jax.Array, bins: jax.Array, depth_bins: int, threshold: Array,
                       dtype: Any) -> tuple[jax.Array, jax.Array]:
  """Ordinal targets (..., H, W, D) and pixel mask (..., H, W) from masked heat (..., H, W, J)."""
  best = jnp.argmax(heat, axis=-1)                                           # (..., H, W)
  peak = jnp.max(heat, axis=-1)
  mask = peak > jnp.asarray(threshold, jnp.float32)
  label = jnp.take_along_axis(bins[..., None, None, :], best[..., None], axis=-1)  # (..., H, W, 1)
  label = jnp.where(mask[..., None], label, 0)
  targets = jnp.arange(depth_bins, dtype=jnp.int32) < label                  # 1 where d(p) > c
  return targets.astype(dtype), mask.astype(jnp.float32)


def depth_centric_volume(coords: Array, vis: Array, has_depth: Array, size: tuple[int, int],
                         depth_bins: int, sigma: Array = 2.0, dtype: Any = jnp.float32,
                         method: str = "scatter") -> jax.Array:
  """Depth-centric volume: V[d] = max over joints in bin d of their joint Gaussian.

  Only visible joints of samples with depth, inside the crop and the depth range, take part
  (:func:`depth_joint_mask`); bin d_j = floor(z_j).

  Args:
    coords: (..., J, 3) voxel coordinates (x, y px; z bins).
    vis: (..., J) visibility; has_depth: (...,) 1 for samples with 3D ground truth.
    size: (H, W); depth_bins: D.
    sigma: joint Gaussian sigma in output px.
    dtype: volume dtype.
    method: "scatter" (default) or "reduce", see :func:`_volume_from_heat`; both give the same values.
  Returns:
    (..., H, W, D) volume in [0, 1]; all zero for samples without depth.
  """
  keep = depth_joint_mask(coords, vis, has_depth, size, depth_bins)
  coords = jnp.asarray(coords, jnp.float32)
  heat = _gaussians(coords[..., :2], _check_size(size), sigma) * keep[..., None, None, :]
  return _volume_from_heat(heat, _depth_bins_of(coords[..., 2], depth_bins), depth_bins, method).astype(dtype)


def ordinal_depth_labels(coords: Array, vis: Array, has_depth: Array, size: tuple[int, int], depth_bins: int,
                         sigma: Array = 2.0, threshold: Array = 0.1,
                         dtype: Any = jnp.float32) -> tuple[jax.Array, jax.Array]:
  """Ordinal depth targets (paper eq. 4-5) and the mask of labelled pixels.

  A pixel whose largest joint Gaussian (over the joints of :func:`depth_joint_mask`) exceeds
  `threshold` is labelled with that joint's depth bin d(p); the target of logit c is [d(p) > c].

  Returns:
    labels (..., H, W, D) in {0, 1} of `dtype` (all zero on unlabelled pixels); mask (..., H, W) float32.
  """
  keep = depth_joint_mask(coords, vis, has_depth, size, depth_bins)
  coords = jnp.asarray(coords, jnp.float32)
  heat = _gaussians(coords[..., :2], _check_size(size), sigma) * keep[..., None, None, :]
  return _ordinal_from_heat(heat, _depth_bins_of(coords[..., 2], depth_bins), depth_bins, threshold, dtype)


def _cfg(config: Any, key: str) -> Any:
  """config[key] for a Mapping or ConfigDict; KeyError naming the key when it is missing."""
  value = None
  if config is not None:
    value = config.get(key, None) if hasattr(config, "get") else getattr(config, key, None)
  if value is None:
    raise KeyError(f"make_stage1_targets: config has no {key!r} (needs {', '.join(CONFIG_KEYS)}; the "
                   f"training configs set them in config.targets and config.data)")
  return value


def _heatmap_size(config: Any) -> tuple[int, int]:
  size = _cfg(config, "heatmap_size")
  return _check_size((size, size) if np.ndim(size) == 0 else tuple(size))


def make_stage1_targets(batch: Mapping[str, Any], skeleton: Skeleton, config: Any = None, *,
                        progress: Array | None = None, dtype: Any = jnp.float32) -> dict[str, jax.Array]:
  """All stage-1 targets of a batch (the batch dict of docs/design.md section 4), on the device.

  Config keys (Mapping or ConfigDict, all required; :data:`CONFIG_KEYS`): sigma, depth_bins,
  ordinal_threshold, heatmap_size (int or (H, W)), volume_method, and the bone sigma: `bone_sigma` (a
  number or traced scalar) when present, else bone_sigma(progress, bone_sigma_start, bone_sigma_end)
  when `progress` is given, else bone_sigma_end.

  Args:
    batch: needs 'joints_vox' (B, J, 3), 'joints_vis' (B, J), 'has_depth' (B,).
    skeleton: the model's joint set (J joints; its bones are the bone channels).
    config: see above.
    progress: stage-1 training progress in [0, 1] for the bone-sigma schedule (may be traced).
    dtype: dtype of the heatmaps, volume and ordinal labels (masks and coordinates stay float32).
  Returns:
    dict with 'bone_heatmaps' (B, H, W, NB), 'bone_mask' (B, NB), 'joint_heatmaps' (B, H, W, J),
    'joint_mask' (B, J), 'depth_volume' (B, H, W, D), 'ordinal_labels' (B, H, W, D), 'ordinal_mask'
    (B, H, W), 'coords' (B, J, 3) float32 voxel targets, 'coord_mask' (B, J, 3), 'has_depth' (B,),
    'bone_sigma' () float32.
  """
  for key in ("joints_vox", "joints_vis", "has_depth"):
    if key not in batch:
      raise KeyError(f"make_stage1_targets: batch has no {key!r} (keys: {sorted(batch)})")
  coords = jnp.asarray(batch["joints_vox"], jnp.float32)
  vis = jnp.asarray(batch["joints_vis"], jnp.float32)
  has_depth = jnp.asarray(batch["has_depth"], jnp.float32)
  if coords.ndim != 3 or coords.shape[1:] != (skeleton.num_joints, 3):
    raise ValueError(f"make_stage1_targets: batch['joints_vox'] must be (B, {skeleton.num_joints}, 3) for "
                     f"skeleton {skeleton.name!r}, got {coords.shape}")
  if vis.shape != coords.shape[:2] or has_depth.shape != coords.shape[:1]:
    raise ValueError(f"make_stage1_targets: batch['joints_vis'] {vis.shape} / batch['has_depth'] "
                     f"{has_depth.shape} do not match batch['joints_vox'] {coords.shape}")
  size = _heatmap_size(config)
  depth_bins = int(_cfg(config, "depth_bins"))
  sigma = _cfg(config, "sigma")
  b_sigma = config.get("bone_sigma", None) if hasattr(config, "get") else getattr(config, "bone_sigma", None)
  if b_sigma is None:
    end = _cfg(config, "bone_sigma_end")
    b_sigma = end if progress is None else bone_sigma(progress, _cfg(config, "bone_sigma_start"), end)
  b_sigma = jnp.asarray(b_sigma, jnp.float32)

  bones, bone_mask = bone_heatmaps(coords, vis, skeleton.bone_parents, skeleton.bone_children, size,
                                   b_sigma, dtype)
  joints = joint_heatmaps(coords, vis, size, sigma, dtype)
  # One masked Gaussian stack feeds both depth targets.
  keep = depth_joint_mask(coords, vis, has_depth, size, depth_bins)
  heat = _gaussians(coords[..., :2], size, sigma) * keep[..., None, None, :]
  bins = _depth_bins_of(coords[..., 2], depth_bins)
  volume = _volume_from_heat(heat, bins, depth_bins, str(_cfg(config, "volume_method"))).astype(dtype)
  labels, ord_mask = _ordinal_from_heat(heat, bins, depth_bins, _cfg(config, "ordinal_threshold"), dtype)
  return {
      "bone_heatmaps": bones, "bone_mask": bone_mask,
      "joint_heatmaps": joints, "joint_mask": vis,
      "depth_volume": volume,
      "ordinal_labels": labels, "ordinal_mask": ord_mask,
      "coords": coords, "coord_mask": coord_mask(coords, vis, has_depth, size, depth_bins),
      "has_depth": has_depth,
      "bone_sigma": b_sigma,
  }

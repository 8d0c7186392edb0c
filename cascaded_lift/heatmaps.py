"""Integral regression (soft-argmax), the 2.5D lifting input and the flip test.

Conventions (docs/design.md sections 1 and 3): voxel coordinates are 0-based indices, x and y in output
pixels (pixel-index coordinates: the centre of output pixel (i, j) is x = j, y = i), z in depth bins,
z = (z_rel_mm / 1000 + 1) / 2 * D. Volumes are (B, J, D, H, W) with axis order (depth, row, column).

The softmaxes run in float32 whatever the input dtype: a bfloat16 exp over 64^3 voxels loses most of
its mass to rounding, and the expectation of indices up to 63 needs more than 8 mantissa bits.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp

from cascaded_lift.skeleton import Skeleton

Array = Any


# Axis positions of (x, y, z) in each accepted volume layout: x runs over W, y over H, z over D.
_LAYOUT_AXES = {"BJDHW": (4, 3, 2), "BHWJD": (2, 1, 4)}


def _soft_argmax(logits: Array, axes: tuple[int, ...]) -> jax.Array:
  """Expected index along each of `axes` under one softmax over all of them jointly.

  Fused form: exp(logits - max) is summed into each marginal and divided by the total once, so the
  normalised probability tensor is never materialised and no axis needs to be moved (the per-joint
  volumes stay in the layout the 1x1 convolution produced them in).

  Returns:
    (..., len(axes)) float32 (float64 for float64 input): the remaining axes in their order, then one coordinate per entry of axes.
  """
  x = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))  # float32 at least
  # The max only guards exp against overflow; it cancels in the ratio, so no gradient flows through it.
  shifted = jnp.exp(x - jax.lax.stop_gradient(jnp.max(x, axis=axes, keepdims=True)))
  total = jnp.sum(shifted, axis=axes)
  coords = []
  for a in axes:
    idx_shape = [1] * x.ndim
    idx_shape[a] = x.shape[a]
    idx = jnp.arange(x.shape[a], dtype=x.dtype).reshape(idx_shape)
    coords.append(jnp.sum(shifted * idx, axis=axes) / total)
  return jnp.stack(coords, axis=-1)


def soft_argmax_3d(volumes: Array, layout: str = "BJDHW") -> jax.Array:
  """Soft-argmax over each joint's whole volume.

  Args:
    volumes: logits, any float dtype: (B, J, D, H, W) for layout "BJDHW" (the model's public
      'joint_volumes'), or (B, H, W, J, D) for "BHWJD" (the volumetric head's channels, joint-major,
      as the 1x1 convolution writes them; the model uses this one and avoids a transpose).
    layout: "BJDHW" or "BHWJD".
  Returns:
    (B, J, 3) float32 expected (x, y, z) voxel indices: x over W, y over H, z over D.
  """
  if layout not in _LAYOUT_AXES:
    raise ValueError(f"soft_argmax_3d: layout must be one of {sorted(_LAYOUT_AXES)}, got {layout!r}")
  if volumes.ndim != 5:
    raise ValueError(f"soft_argmax_3d: expected volumes ({', '.join(layout)}), got shape {volumes.shape}")
  return _soft_argmax(volumes, _LAYOUT_AXES[layout])


def soft_argmax_2d(maps: Array) -> jax.Array:
  """Soft-argmax over each joint's map.

  Args:
    maps: (B, J, H, W) logits, any float dtype.
  Returns:
    (B, J, 2) float32 expected (x, y) pixel indices.
  """
  if maps.ndim != 4:
    raise ValueError(f"soft_argmax_2d: expected maps (B, J, H, W), got shape {maps.shape}")
  return _soft_argmax(maps, (3, 2))


def lifting_input(coords: Array, boxes: Array, depth_bins: int, output_size: int | tuple[int, int],
                  root: int = 0) -> jax.Array:
  """The lifter's 2.5D input (docs/design.md section 3 item 7), as the released model builds it.

  With the box [x0, y0, w, h]: u = x / W * w + x0, v = y / H * h + y0 (original image pixels),
  z_mm = (z / D * 2 - 1) * 1000 with the root joint's z_mm set to 0 (the other joints' z_mm are not
  made root-relative: the root's target depth is D / 2, i.e. 0 mm, by construction).

  Args:
    coords: (B, J, 3) voxel coordinates (x, y, z).
    boxes: (B, 4) person boxes [x0, y0, w, h] in px of the original image.
    depth_bins: D.
    output_size: H = W, or (H, W), of the heatmaps the coordinates index.
    root: root joint index.
  Returns:
    (B, 5 J) float32, joint-major: [u, v, u - u_root, v - v_root, z_mm] per joint.
  """
  h_out, w_out = (output_size, output_size) if isinstance(output_size, int) else output_size
  coords = jnp.asarray(coords, jnp.float32)
  boxes = jnp.asarray(boxes, jnp.float32)
  u = coords[..., 0] / w_out * boxes[:, None, 2] + boxes[:, None, 0]
  v = coords[..., 1] / h_out * boxes[:, None, 3] + boxes[:, None, 1]
  z = (coords[..., 2] / depth_bins * 2.0 - 1.0) * 1000.0
  z = z.at[:, root].set(0.0)
  du = u - u[:, root:root + 1]
  dv = v - v[:, root:root + 1]
  return jnp.stack([u, v, du, dv, z], axis=-1).reshape(coords.shape[0], -1)


def flip_test(apply_fn: Callable[[Array, Array], Mapping[str, Array]], images: Array, boxes: Array,
              skeleton: Skeleton, *, coord_flip_width: float | None = None) -> dict[str, jax.Array]:
  """Averages a model's predictions on a crop and on its horizontal mirror (docs/design.md section 3).

  The mirrored crop `images[:, :, ::-1]` runs with the same box. Its 3D pose is mirrored back by
  negating x, its voxel coordinates by x -> coord_flip_width - x; then left and right joints are
  swapped and the two predictions averaged.

  The default coord_flip_width is (S - 1) * W / S (S the crop width, W the heatmap width): voxel x is
  crop x times W / S (what the lifting formula u = x / W * w + x0 implies), and the crop mirror maps
  crop x to S - 1 - x. Pass W - 1 instead if your targets put voxel x at output-pixel centres.

  Args:
    apply_fn: (images, boxes) -> dict with 'coords' (B, J, 3) voxel units and 'pose_3d' (B, J, 3) mm,
      e.g. functools.partial(model.apply, variables, train=False).
    images: (B, S, S, 3) crops.
    boxes: (B, 4) [x0, y0, w, h].
    skeleton: gives the left/right permutation.
    coord_flip_width: see above.
  Returns:
    {'coords': (B, J, 3), 'pose_3d': (B, J, 3)} float32 averages.
  """
  out = apply_fn(images, boxes)
  fout = apply_fn(images[:, :, ::-1], boxes)
  perm = jnp.asarray(skeleton.flip_permutation)
  if coord_flip_width is None:
    s = images.shape[2]
    w = out["joint_heatmaps"].shape[2] if "joint_heatmaps" in out else s // 4
    coord_flip_width = (s - 1) * w / s
  coords = out["coords"].astype(jnp.float32)
  pose = out["pose_3d"].astype(jnp.float32)
  fc = fout["coords"].astype(jnp.float32)[:, perm]
  fc = fc.at[..., 0].set(coord_flip_width - fc[..., 0])
  fp = fout["pose_3d"].astype(jnp.float32)[:, perm]
  fp = fp.at[..., 0].multiply(-1.0)
  return {"coords": (coords + fc) / 2.0, "pose_3d": (pose + fp) / 2.0}

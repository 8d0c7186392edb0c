"""Camera geometry, person boxes and the crop affine transform.

Conventions (docs/design.md section 1): millimetres for 3D, pixels for images, camera frame x right, y down,
z forward; X_cam = R X_world + t with R world-to-camera. Every function accepts NumPy or jax.numpy
arrays (jit-able) with any leading batch axes, and returns the same kind it was given.

Pixel coordinates are pixel-index coordinates: the centre of pixel (i, j) is at x = j, y = i, which is
what cv2.warpAffine uses, so a point transformed by :func:`crop_transform` lands on the pixel the
warped image shows it at.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cascaded_lift._backend import array_namespace, is_jax_array

Array = Any


def world_to_camera(points: Array, R: Array, t: Array) -> Array:
  """X_cam = R X_world + t.

  Args:
    points: (..., N, 3) world points in mm.
    R: (..., 3, 3) world-to-camera rotation.
    t: (..., 3) translation in mm.
  Returns:
    (..., N, 3) camera-frame points in mm.
  """
  xp = array_namespace(points, R, t)
  return xp.einsum("...ij,...nj->...ni", R, points) + t[..., None, :]


def camera_to_world(points: Array, R: Array, t: Array) -> Array:
  """Inverse of :func:`world_to_camera`: X_world = R^T (X_cam - t)."""
  xp = array_namespace(points, R, t)
  return xp.einsum("...ji,...nj->...ni", R, points - t[..., None, :])


def camera_center_to_translation(R: Array, center: Array) -> Array:
  """t = -R C for files that store the camera centre C (X_cam = R (X_world - C))."""
  xp = array_namespace(R, center)
  return -xp.einsum("...ij,...j->...i", R, center)


def check_intrinsics(f: Array, c: Array, name: str) -> None:
  """ValueError naming `name` when concrete (NumPy) intrinsics are not finite, or a focal length is not
  positive (a negative one mirrors the image, zero divides by it). Traced (jit) values are not checked."""
  if is_jax_array(f) or is_jax_array(c):
    return
  f, c = np.asarray(f, np.float64), np.asarray(c, np.float64)
  if f.shape[-1:] != (2,) or c.shape[-1:] != (2,):
    raise ValueError(f"{name}: f and c must be (..., 2) pixel values, got shapes {f.shape} and {c.shape}")
  if not (np.all(np.isfinite(f)) and np.all(np.isfinite(c))):
    raise ValueError(f"{name}: focal length and principal point must be finite, got f {f.tolist()}, c {c.tolist()}")
  if np.any(f <= 0):
    raise ValueError(f"{name}: focal lengths must be positive pixels, got f {f.tolist()}")


def camera_to_pixel(points: Array, f: Array, c: Array, k: Array | None = None,
                    p: Array | None = None) -> Array:
  """Projects camera-frame points to pixels, optionally with Human3.6M's lens distortion.

  With x = X/Z, y = Y/Z, r2 = x^2 + y^2: radial = 1 + k1 r2 + k2 r2^2 + k3 r2^3, tan = p1 y + p2 x,
  x_d = x (radial + tan) + p2 r2, y_d = y (radial + tan) + p1 r2, and (u, v) = f * (x_d, y_d) + c.
  This is the model the Human3.6M release uses for its 2D annotations.

  Args:
    points: (..., N, 3) camera-frame points (mm); Z must be positive.
    f: (..., 2) focal lengths (fx, fy) in px.
    c: (..., 2) principal point (cx, cy) in px.
    k: optional (..., 3) radial coefficients.
    p: optional (..., 2) tangential coefficients.
  Returns:
    (..., N, 2) pixel coordinates.
  """
  check_intrinsics(f, c, "camera_to_pixel")
  xp = array_namespace(points, f, c, *(a for a in (k, p) if a is not None))
  xy = points[..., :2] / points[..., 2:3]
  if k is not None or p is not None:
    r2 = xp.sum(xy * xy, axis=-1, keepdims=True)
    factor = 1.0
    if k is not None:
      k = k[..., None, :]
      factor = 1.0 + k[..., 0:1] * r2 + k[..., 1:2] * r2 ** 2 + k[..., 2:3] * r2 ** 3
    if p is not None:
      p = p[..., None, :]
      tan = p[..., 0:1] * xy[..., 1:2] + p[..., 1:2] * xy[..., 0:1]
      # The tangential offset adds p2 r2 to x and p1 r2 to y (note the swapped order).
      xy = xy * (factor + tan) + r2 * p[..., ::-1]
    else:
      xy = xy * factor
  return xy * f[..., None, :] + c[..., None, :]


def pixel_to_camera(uvz: Array, f: Array, c: Array) -> Array:
  """Back-projects (u, v, Z) with Z in mm to camera-frame (X, Y, Z); no distortion.

  Args:
    uvz: (..., N, 3) pixel coordinates and depth in mm.
    f, c: (..., 2) focal length and principal point in px.
  """
  check_intrinsics(f, c, "pixel_to_camera")
  xp = array_namespace(uvz, f, c)
  z = uvz[..., 2:3]
  xy = (uvz[..., :2] - c[..., None, :]) / f[..., None, :] * z
  return xp.concatenate([xy, z], axis=-1)


def process_bbox(bbox: Array, width: Array, height: Array, aspect_ratio: float = 1.0,
                 scale: float = 1.25) -> Array:
  """Clips a person box to the image, widens it to `aspect_ratio` (w / h) and enlarges it `scale`x.

  Args:
    bbox: (..., 4) boxes [x0, y0, w, h] in px.
    width, height: image size in px (scalars or broadcastable to the batch shape).
  Returns:
    (..., 4) boxes [x0, y0, w, h] with w / h == aspect_ratio, same centre as the clipped box.
  Raises:
    ValueError: for NumPy input whose clipped box is empty (it lies outside the image or has no area).
  """
  xp = array_namespace(bbox, width, height)
  # Intersect the box's pixel range [x0, x0 + w - 1] with the image's [0, width - 1].
  x0 = xp.maximum(bbox[..., 0], 0.0)
  y0 = xp.maximum(bbox[..., 1], 0.0)
  x1 = xp.minimum(width - 1.0, bbox[..., 0] + xp.maximum(bbox[..., 2] - 1.0, 0.0))
  y1 = xp.minimum(height - 1.0, bbox[..., 1] + xp.maximum(bbox[..., 3] - 1.0, 0.0))
  w, h = x1 - x0, y1 - y0
  if xp is np and np.any((w <= 0) | (h <= 0)):
    bad = np.asarray(bbox)[(w <= 0) | (h <= 0)]
    raise ValueError(f"process_bbox: box {bad.tolist()} is empty after clipping to the "
                     f"{width}x{height} image")
  cx, cy = x0 + w / 2.0, y0 + h / 2.0
  wider = w > aspect_ratio * h
  h = xp.where(wider, w / aspect_ratio, h)
  w = xp.where(wider, w, h * aspect_ratio)
  w, h = w * scale, h * scale
  return xp.stack([cx - w / 2.0, cy - h / 2.0, w, h], axis=-1)


def crop_transform(bbox: Array, out_size: tuple[int, int], scale: Array = 1.0, rot: Array = 0.0,
                   flip: Array = False, inverse: bool = False) -> Array:
  """The 2x3 affine matrix that maps image pixels into an (out_w, out_h) crop of `bbox`.

  The box centre goes to the crop centre (out_w / 2, out_h / 2); the box, enlarged `scale` times,
  fills the crop; the crop content is rotated by `rot` degrees (positive: counter-clockwise on screen
  for the person, i.e. the sampling window turns clockwise); `flip` mirrors the crop horizontally
  (x -> out_w - 1 - x, the same as `crop[:, ::-1]`).

  Args:
    bbox: (..., 4) [x0, y0, w, h] px, usually from :func:`process_bbox`.
    out_size: (out_w, out_h) crop size in px.
    scale, rot, flip: scalars or (...,) augmentation parameters.
    inverse: return the crop-to-image matrix instead.
  Returns:
    (..., 2, 3) affine matrices for cv2.warpAffine / :func:`apply_affine`.
  """
  xp = array_namespace(bbox, scale, rot, flip)
  out_w, out_h = out_size
  bbox = xp.asarray(bbox, dtype=xp.result_type(bbox, np.float32))
  scale = xp.asarray(scale, dtype=bbox.dtype)
  rot = xp.asarray(rot, dtype=bbox.dtype) * (np.pi / 180.0)
  cx = bbox[..., 0] + bbox[..., 2] / 2.0
  cy = bbox[..., 1] + bbox[..., 3] / 2.0
  sx = out_w / (bbox[..., 2] * scale)
  sy = out_h / (bbox[..., 3] * scale)
  cos, sin = xp.cos(rot), xp.sin(rot)
  # image -> crop: out = S R(-rot) (p - centre) + out_centre, mirrored about the crop's x axis if flip.
  mirror = xp.where(xp.asarray(flip), -1.0, 1.0).astype(bbox.dtype)
  a00, a01 = sx * cos, sx * sin
  a10, a11 = -sy * sin, sy * cos
  a00, a01 = a00 * mirror, a01 * mirror
  ox = xp.where(xp.asarray(flip), out_w - 1.0 - out_w / 2.0, out_w / 2.0)
  oy = out_h / 2.0
  b0 = ox - (a00 * cx + a01 * cy)
  b1 = oy - (a10 * cx + a11 * cy)
  row0 = xp.stack(xp.broadcast_arrays(a00, a01, b0), axis=-1)
  row1 = xp.stack(xp.broadcast_arrays(a10, a11, b1), axis=-1)
  mat = xp.stack([row0, row1], axis=-2)
  return invert_affine(mat) if inverse else mat


def invert_affine(mat: Array) -> Array:
  """Inverse of (..., 2, 3) affine matrices."""
  xp = array_namespace(mat)
  a, b, tx = mat[..., 0, 0], mat[..., 0, 1], mat[..., 0, 2]
  c, d, ty = mat[..., 1, 0], mat[..., 1, 1], mat[..., 1, 2]
  det = a * d - b * c
  ia, ib, ic, id_ = d / det, -b / det, -c / det, a / det
  itx = -(ia * tx + ib * ty)
  ity = -(ic * tx + id_ * ty)
  return xp.stack([xp.stack([ia, ib, itx], axis=-1), xp.stack([ic, id_, ity], axis=-1)], axis=-2)


def apply_affine(points: Array, mat: Array) -> Array:
  """Applies (..., 2, 3) affine matrices to (..., N, 2) points."""
  xp = array_namespace(points, mat)
  return xp.einsum("...ij,...nj->...ni", mat[..., :2], points) + mat[..., None, :, 2]

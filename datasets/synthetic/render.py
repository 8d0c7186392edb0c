"""Camera sampling, person placement and OpenCV/NumPy rendering of the synthetic dataset.

The person is drawn as shaded capsules (sphere-swept bones: limbs, neck, trunk flanks and spine, a
sphere for the head and a small yellow sphere for the nose) through a per-pixel depth buffer, so
whichever surface is nearer the camera shows (correct occlusion, including self-occlusion). Each
pixel is shaded from the capsule's surface bulge (a tube look) and made darker the farther it is
behind the root joint. Left limbs are blue/cyan, right limbs red/orange, the trunk green, so left and
right are always distinguishable. Backgrounds are random colour gradients with stripes, checkers,
noise blobs and clutter shapes (cv2 drawing).

Image arrays are (H, W, 3) uint8 RGB; points are pixel-index coordinates (x, y).
"""

from __future__ import annotations

import cv2
import numpy as np

from cascaded_lift import geometry
from cascaded_lift.datasets.synthetic import kinematics

J = kinematics.J

# Tube radius in mm (before the body's girth factor) and base colour (RGB) of every drawn bone.
_LEFT_ARM, _LEFT_LEG = (40, 90, 235), (30, 190, 220)
_RIGHT_ARM, _RIGHT_LEG = (235, 55, 40), (240, 150, 30)
_TRUNK = (60, 190, 80)
_LIMBS: tuple[tuple[str, str, float, tuple[int, int, int]], ...] = (
    ("Pelvis", "Torso", 105.0, _TRUNK), ("Torso", "Neck", 115.0, _TRUNK),
    ("Neck", "Nose", 45.0, (200, 170, 140)),
    ("Neck", "L_Shoulder", 55.0, _LEFT_ARM), ("L_Shoulder", "L_Elbow", 50.0, _LEFT_ARM),
    ("L_Elbow", "L_Wrist", 40.0, tuple(int(c * 0.7) for c in _LEFT_ARM)),
    ("Neck", "R_Shoulder", 55.0, _RIGHT_ARM), ("R_Shoulder", "R_Elbow", 50.0, _RIGHT_ARM),
    ("R_Elbow", "R_Wrist", 40.0, tuple(int(c * 0.7) for c in _RIGHT_ARM)),
    ("Pelvis", "L_Hip", 85.0, _LEFT_LEG), ("L_Hip", "L_Knee", 75.0, _LEFT_LEG),
    ("L_Knee", "L_Ankle", 55.0, tuple(int(c * 0.7) for c in _LEFT_LEG)),
    ("Pelvis", "R_Hip", 85.0, _RIGHT_LEG), ("R_Hip", "R_Knee", 75.0, _RIGHT_LEG),
    ("R_Knee", "R_Ankle", 55.0, tuple(int(c * 0.7) for c in _RIGHT_LEG)),
)
_HEAD_RADIUS = 105.0
_MARGIN_MM = 130.0  # how far drawn pixels reach beyond a joint (largest tube radius)


def sample_intrinsics(rng: np.random.Generator, width: int, height: int,
                      focal_range: tuple[float, float] = (0.9, 1.6)) -> tuple[np.ndarray, np.ndarray]:
  """Focal (fx, fy) and principal point (cx, cy) in px: f = focal_range x width (default 0.9..1.6),
  near-square pixels, principal point within 3 % of the image centre."""
  f = rng.uniform(*focal_range) * width
  focal = np.array([f, f * rng.uniform(0.99, 1.01)])
  principal = np.array([(width - 1) / 2, (height - 1) / 2]) + rng.normal(0, 0.015, 2) * (width, height)
  return focal, principal


def body_to_camera_rotation(rng: np.random.Generator) -> np.ndarray:
  """Any yaw about the body's up axis; camera looking down by -10..30 degrees; roll +-6 degrees.

  The body frame (x left, y up, z facing) maps to the camera frame (x right, y down, z forward) by
  diag(1, -1, -1) for a person facing the camera.
  """
  yaw = rng.uniform(0, 360)
  pitch = rng.uniform(-10, 30)
  roll = rng.uniform(-6, 6)
  flip = np.diag([1.0, -1.0, -1.0])
  return kinematics.rot("z", roll) @ kinematics.rot("x", pitch) @ flip @ kinematics.rot("y", yaw)


def place_person(joints_body: np.ndarray, r_cam: np.ndarray, focal: np.ndarray, principal: np.ndarray,
                 width: int, height: int, rng: np.random.Generator,
                 depth_range: tuple[float, float] = (3500.0, 7000.0)) -> np.ndarray:
  """Camera-frame joints (mm): root depth in depth_range (default 3.5..7 m; pushed back if the person
  would not fit), then shifted sideways so the drawn person lies inside the image at a random position."""
  rotated = joints_body @ r_cam.T
  depth = rng.uniform(*depth_range)
  for _ in range(20):
    cam = rotated + np.array([0.0, 0.0, depth])
    uv = geometry.camera_to_pixel(cam, focal, principal)
    pad = _MARGIN_MM * focal / cam[:, 2:3].min()
    lo, hi = (uv - pad).min(0), (uv + pad).max(0)
    if np.all(hi - lo < 0.95 * np.array([width, height])):
      break
    depth *= 1.15
  # Pixel shift that puts the box [lo, hi] at a random place inside the image.
  target_lo = rng.uniform(0, 1, 2) * (np.array([width, height]) - (hi - lo)).clip(0)
  shift_px = target_lo - lo
  shift_mm = shift_px / focal * depth
  return rotated + np.array([shift_mm[0], shift_mm[1], depth])


def render_background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
  """A random textured background (H, W, 3) uint8."""
  grid = rng.integers(2, 7, 2)
  base = cv2.resize(rng.uniform(0, 255, (grid[0], grid[1], 3)).astype(np.float32), (width, height),
                    interpolation=cv2.INTER_CUBIC)
  kind = rng.integers(4)
  if kind == 0:  # stripes
    theta, period = rng.uniform(0, np.pi), rng.uniform(4, 40) * max(width, height) / 256
    xs = np.arange(width, dtype=np.float32)[None, :] * np.cos(theta)
    ys = np.arange(height, dtype=np.float32)[:, None] * np.sin(theta)
    wave = np.sin((xs + ys) * (2 * np.pi / period))
    base += wave[..., None] * rng.uniform(-60, 60, 3).astype(np.float32)
  elif kind == 1:  # checkerboard
    cell = int(rng.integers(6, 48) * max(width, height) / 256) + 1
    ys, xs = np.ogrid[:height, :width]
    checker = ((xs // cell + ys // cell) % 2).astype(np.float32)
    base += checker[..., None] * rng.uniform(-70, 70, 3).astype(np.float32)
  elif kind == 2:  # smooth noise blobs
    small = rng.uniform(-80, 80, (max(2, height // 16), max(2, width // 16), 3)).astype(np.float32)
    base += cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)
  image = np.clip(base, 0, 255).astype(np.uint8)
  n_shapes = int(rng.integers(3, 25)) if kind == 3 else int(rng.integers(0, 8))
  scale = max(width, height)
  for _ in range(n_shapes):
    color = tuple(int(c) for c in rng.integers(0, 256, 3))
    p = (rng.uniform(0, 1, 2) * (width, height)).astype(int)
    size = (rng.uniform(0.02, 0.25, 2) * scale).astype(int) + 1
    shape = rng.integers(3)
    if shape == 0:
      cv2.rectangle(image, tuple(p), tuple(p + size), color, -1)
    elif shape == 1:
      cv2.ellipse(image, tuple(p), tuple(size // 2), float(rng.uniform(0, 180)), 0, 360, color, -1)
    else:
      q = (rng.uniform(0, 1, 2) * (width, height)).astype(int)
      cv2.line(image, tuple(p), tuple(q), color, int(rng.integers(1, max(2, scale // 40))))
  return image


def _capsule(image: np.ndarray, zbuf: np.ndarray, a: np.ndarray, b: np.ndarray, radius_mm: float,
             color: np.ndarray, focal: np.ndarray, principal: np.ndarray, root_z: float) -> None:
  """Z-buffered, shaded, anti-aliased capsule (sphere-swept segment a-b, camera mm) into float32 RGB.

  Per pixel: the closest axis point (parameter t), the capsule's front-surface depth
  z(t) - R sqrt(1 - (d / r)^2), Lambert-like shading from that bulge and brightness from depth.
  """
  h_img, w_img = zbuf.shape
  pa, pb = geometry.camera_to_pixel(np.stack([a, b]), focal, principal)
  ra, rb = radius_mm * focal[0] / a[2], radius_mm * focal[0] / b[2]
  r_max = max(ra, rb) + 1.0
  x0, y0 = np.floor(np.minimum(pa, pb) - r_max).astype(int)
  x1, y1 = np.ceil(np.maximum(pa, pb) + r_max).astype(int) + 1
  x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w_img), min(y1, h_img)
  if x0 >= x1 or y0 >= y1:
    return
  xs = np.arange(x0, x1, dtype=np.float32)[None, :] - np.float32(pa[0])
  ys = np.arange(y0, y1, dtype=np.float32)[:, None] - np.float32(pa[1])
  d = (pb - pa).astype(np.float32)
  l2 = float(d @ d)
  t = np.clip((xs * d[0] + ys * d[1]) / l2, 0.0, 1.0) if l2 > 1e-6 else np.zeros_like(xs * ys)
  dist = np.sqrt((xs - t * d[0]) ** 2 + (ys - t * d[1]) ** 2)
  r = ra + t * (rb - ra)
  cover = np.clip(r - dist + 0.5, 0.0, 1.0)
  bulge = np.sqrt(np.clip(1.0 - (dist / r) ** 2, 0.0, 1.0))
  z = a[2] + t * (b[2] - a[2]) - radius_mm * bulge
  zroi = zbuf[y0:y1, x0:x1]
  hit = (cover > 0) & (z < zroi)
  if not hit.any():
    return
  depth_k = np.clip(1.0 - 0.35 * (z[hit] - root_z) / 700.0, 0.45, 1.3)
  shade = (depth_k * (0.45 + 0.6 * bulge[hit]))[:, None] * color[None, :].astype(np.float32)
  alpha = cover[hit][:, None]
  roi = image[y0:y1, x0:x1]
  roi[hit] = alpha * np.minimum(shade, 255.0) + (1.0 - alpha) * roi[hit]
  zroi[hit & (cover >= 0.5)] = z[hit & (cover >= 0.5)]


def render_person(image: np.ndarray, joints_cam: np.ndarray, focal: np.ndarray, principal: np.ndarray,
                  girth: float, rng: np.random.Generator) -> np.ndarray:
  """Draws the person (18 camera-frame joints, mm) onto `image`; returns the new uint8 image.

  Every body part is a capsule drawn through a depth buffer, so occlusion is per pixel; the trunk is
  the spine capsules plus hip-to-shoulder capsules, the head a sphere, the nose a small yellow sphere
  in front of the face (visible only when the face turns towards the camera).
  """
  root_z = float(joints_cam[kinematics.SKEL.root, 2])
  jitter = rng.uniform(-20, 20, 3)
  canvas = image.astype(np.float32)
  zbuf = np.full(image.shape[:2], np.inf, np.float32)
  jc = joints_cam

  def cap(a, b, radius, base):
    color = np.clip(np.asarray(base, np.float64) + jitter, 0, 255)
    _capsule(canvas, zbuf, a, b, radius * girth, color, focal, principal, root_z)

  for a_name, b_name, radius, base in _LIMBS:
    cap(jc[J[a_name]], jc[J[b_name]], radius, base)
  for side in ("L", "R"):  # flanks of the trunk
    cap(jc[J[f"{side}_Hip"]], jc[J[f"{side}_Shoulder"]], 75.0, _TRUNK)
  cap(jc[J["L_Hip"]], jc[J["R_Hip"]], 80.0, _TRUNK)
  cap(jc[J["L_Shoulder"]], jc[J["R_Shoulder"]], 60.0, _TRUNK)
  centre = (jc[J["Nose"]] + jc[J["Head"]]) / 2
  cap(centre, centre, _HEAD_RADIUS, (225, 185, 150))
  nose = jc[J["Nose"]] + 0.6 * (jc[J["Nose"]] - centre)  # on the face surface, in front of the nose joint
  cap(nose, nose, 26.0, (250, 230, 40))
  return np.clip(canvas, 0, 255).astype(np.uint8)


def finish(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """Global photometric variation: brightness/contrast, mild blur, sensor noise."""
  img = image.astype(np.float32)
  img = (img - 128.0) * rng.uniform(0.8, 1.2) + 128.0 + rng.uniform(-20, 20)
  if rng.uniform() < 0.3:
    img = cv2.GaussianBlur(img, (3, 3), 0)
  sigma = rng.uniform(0, 5)
  if sigma > 0.5:
    img += rng.standard_normal(img.shape[:2], dtype=np.float32)[..., None] * sigma
  return np.clip(img, 0, 255).astype(np.uint8)

"""Training augmentation (docs/design.md section 6): parameters, photometric changes, synthetic occlusion.

Geometric augmentation (scale, in-plane rotation, horizontal flip) is not applied here: its
parameters go into geometry.crop_transform so that the crop needs exactly one cv2.warpAffine, and
cascaded_lift.data.transforms moves the joints with the same matrix. This module samples the
parameters and applies what acts on the finished crop: per-channel colour scaling and a noise
rectangle inside the person box.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import numpy as np


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
  """Augmentation ranges (see cascaded_lift.data.config for the field meanings)."""
  scale: float = 0.25
  rotation: float = 30.0
  rotation_prob: float = 0.6
  flip_prob: float = 0.5
  color: float = 0.2
  occlusion_prob: float = 0.5
  occlusion_area: float = 0.7
  occlusion_min_aspect: float = 0.3

  @classmethod
  def from_config(cls, cfg: Mapping[str, Any] | None) -> "AugmentConfig":
    if cfg is None:
      return cls()
    known = {f.name for f in dataclasses.fields(cls)}
    values = dict(cfg.items())
    unknown = set(values) - known
    if unknown:
      raise KeyError(f"unknown augmentation fields {sorted(unknown)}; known: {sorted(known)}")
    return cls(**{k: float(v) for k, v in values.items()})


NO_AUGMENTATION = AugmentConfig(scale=0.0, rotation=0.0, rotation_prob=0.0, flip_prob=0.0, color=0.0,
                                occlusion_prob=0.0)


@dataclasses.dataclass(frozen=True)
class AugmentParams:
  """One example's augmentation.

  Attributes:
    scale: the processed box is enlarged `scale` times before cropping (> 1 zooms out).
    rot: in-plane rotation in degrees (positive: the person turns counter-clockwise on screen).
    flip: mirror horizontally and swap left/right joints.
    color: (3,) per-channel RGB factors.
    occlusion: (x0, y0, w, h) integer crop-pixel rectangle to fill with noise, or None.
  """
  scale: float = 1.0
  rot: float = 0.0
  flip: bool = False
  color: tuple[float, float, float] | None = None
  occlusion: tuple[int, int, int, int] | None = None


IDENTITY = AugmentParams()


def sample_params(rng: np.random.Generator, cfg: AugmentConfig, crop_size: int) -> AugmentParams:
  """Draws one example's augmentation from `rng` (the same draws in the same order every time)."""
  u = rng.uniform(size=8)  # fixed number of draws: params stay aligned whatever is enabled
  scale = 1.0 + cfg.scale * (2.0 * u[0] - 1.0)
  rot = cfg.rotation * (2.0 * u[1] - 1.0) if u[2] < cfg.rotation_prob else 0.0
  flip = bool(u[3] < cfg.flip_prob)
  color = None
  if cfg.color > 0:
    color = tuple(float(c) for c in rng.uniform(1.0 - cfg.color, 1.0 + cfg.color, 3))
  occlusion = None
  if u[4] < cfg.occlusion_prob:
    # The box fills the central (crop / scale) square of the crop (before rotation).
    side = min(float(crop_size), crop_size / scale)
    lo = (crop_size - side) / 2.0
    area = u[5] * cfg.occlusion_area * side * side
    log_aspect = np.log(cfg.occlusion_min_aspect) * (2.0 * u[6] - 1.0)
    w = int(min(side, np.sqrt(area * np.exp(log_aspect))))
    h = int(min(side, np.sqrt(area / np.exp(log_aspect))))
    if w >= 1 and h >= 1:
      x0 = int(lo + rng.uniform() * (side - w))
      y0 = int(lo + u[7] * (side - h))
      occlusion = (x0, y0, w, h)
  return AugmentParams(scale=float(scale), rot=float(rot), flip=flip, color=color, occlusion=occlusion)


def apply_color(image: np.ndarray, color: tuple[float, float, float] | None) -> np.ndarray:
  """Scales the channels of an (H, W, 3) uint8 RGB image, rounding and clipping to [0, 255]."""
  if color is None:
    return image
  out = image.astype(np.float32) * np.asarray(color, np.float32)
  return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def apply_occlusion(image: np.ndarray, occlusion: tuple[int, int, int, int] | None,
                    rng: np.random.Generator) -> np.ndarray:
  """Fills the rectangle with uniform noise (in place; returns the image)."""
  if occlusion is None:
    return image
  x0, y0, w, h = occlusion
  image[y0:y0 + h, x0:x0 + w] = rng.integers(0, 256, (h, w, image.shape[2]), dtype=np.uint8)
  return image

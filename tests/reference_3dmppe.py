"""An independent NumPy/cv2 reference of 3DMPPE's box processing and evaluation crop, for the tests.

Written from the published formulas of the 3DMPPE PoseNet/RootNet releases (Moon et al., ICCV 2019),
not from this package:

- process_bbox: intersect the box with the image (x1 = max(0, x), x2 = min(W - 1, x1 + max(0, w - 1)),
  the same for y), widen the shorter side to the crop aspect (square here), scale by 1.25 about the
  centre. RootNet runs it before writing bbox_root_*_output.json, so those boxes are processed once.
- the crop: the affine map that takes the box centre to the crop centre (S / 2, S / 2), the point half a
  box height below the centre to (S / 2, S) and half a box width to the right to (S, S / 2), from three
  point pairs (cv2.getAffineTransform, float32 as the release computes it), then one bilinear
  cv2.warpAffine of the full-resolution image (black border).
"""

import cv2
import numpy as np


def process_bbox(box, width: float, height: float, scale: float = 1.25) -> np.ndarray:
  """(4,) float64 [x0, y0, w, h]: the 3DMPPE processing of a person box, once."""
  x, y, w, h = (float(v) for v in box)
  x1, y1 = max(0.0, x), max(0.0, y)
  x2, y2 = min(width - 1.0, x1 + max(0.0, w - 1.0)), min(height - 1.0, y1 + max(0.0, h - 1.0))
  w, h = x2 - x1, y2 - y1
  cx, cy = x1 + w / 2.0, y1 + h / 2.0
  side = max(w, h)  # aspect ratio 1: the shorter side grows to the longer
  side *= scale
  return np.array([cx - side / 2.0, cy - side / 2.0, side, side])


def crop(image: np.ndarray, box, size: int) -> np.ndarray:
  """(size, size, C) crop of a processed box from a full-resolution (H, W, C) image."""
  cx, cy = box[0] + box[2] / 2.0, box[1] + box[3] / 2.0
  src = np.float32([[cx, cy], [cx, cy + box[3] / 2.0], [cx + box[2] / 2.0, cy]])
  dst = np.float32([[size / 2.0, size / 2.0], [size / 2.0, size], [size, size / 2.0]])
  mat = cv2.getAffineTransform(src, dst)
  return cv2.warpAffine(image, mat, (size, size), flags=cv2.INTER_LINEAR)


def grey_difference(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
  """(mean, max) absolute difference in grey levels (0..255) of two uint8 images."""
  d = np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))
  return float(d.mean()), float(d.max())

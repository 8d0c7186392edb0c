"""Pictures: 2D skeletons drawn on images (OpenCV) and 3D poses / error bars plotted with matplotlib.

Left joints/bones are drawn blue, right ones red, the rest green, in every picture.
"""

from __future__ import annotations

import pathlib
from typing import Sequence

import cv2
import numpy as np

from cascaded_lift.skeleton import Skeleton

_LEFT, _RIGHT, _MID = (255, 80, 40), (40, 60, 255), (60, 200, 60)  # BGR


def _side_color(skeleton: Skeleton, a: int, b: int) -> tuple[int, int, int]:
  names = skeleton.joint_names[a] + skeleton.joint_names[b]
  if "L_" in names:
    return _LEFT
  if "R_" in names:
    return _RIGHT
  return _MID


def draw_skeleton(image_bgr: np.ndarray, joints_2d: np.ndarray, skeleton: Skeleton,
                  vis: np.ndarray | None = None, thickness: int = 2) -> np.ndarray:
  """Returns a copy of a (H, W, 3) BGR uint8 image with (J, 2) pixel joints and their bones drawn."""
  out = image_bgr.copy()
  vis = np.ones(len(joints_2d)) if vis is None else vis
  pts = np.round(joints_2d).astype(int)
  for a, b in skeleton.bones:
    if vis[a] > 0 and vis[b] > 0:
      cv2.line(out, tuple(pts[a]), tuple(pts[b]), _side_color(skeleton, a, b), thickness, cv2.LINE_AA)
  for j, p in enumerate(pts):
    if vis[j] > 0:
      cv2.circle(out, tuple(p), thickness + 1, (255, 255, 255), -1, cv2.LINE_AA)
  return out


def plot_pose_3d(ax, pose_mm: np.ndarray, skeleton: Skeleton, style: str = "-", alpha: float = 1.0,
                 label: str | None = None) -> None:
  """Draws a (J, 3) camera-frame pose on a matplotlib 3D axis, camera y (down) shown as up-negative."""
  colors = {_LEFT: "tab:blue", _RIGHT: "tab:red", _MID: "tab:green"}
  for i, (a, b) in enumerate(skeleton.bones):
    c = colors[_side_color(skeleton, a, b)]
    xs, ys, zs = pose_mm[[a, b], 0], pose_mm[[a, b], 2], -pose_mm[[a, b], 1]
    ax.plot(xs, ys, zs, style, color=c, alpha=alpha, label=label if i == 0 else None)


def set_equal_3d(ax, poses: Sequence[np.ndarray]) -> None:
  """Equal scale on the three axes, fitted to every pose given."""
  pts = np.concatenate([p.reshape(-1, 3) for p in poses])
  pts = np.stack([pts[:, 0], pts[:, 2], -pts[:, 1]], 1)
  centre = (pts.max(0) + pts.min(0)) / 2
  half = max((pts.max(0) - pts.min(0)).max() / 2, 1.0)
  ax.set_xlim(centre[0] - half, centre[0] + half)
  ax.set_ylim(centre[1] - half, centre[1] + half)
  ax.set_zlim(centre[2] - half, centre[2] + half)
  ax.set_xlabel("x (mm)")
  ax.set_ylabel("z (mm)")
  ax.set_zlabel("-y (mm)")


def save_examples(path: str | pathlib.Path, crops_rgb: np.ndarray, joints_2d: np.ndarray,
                  pred_3d: np.ndarray, gt_3d: np.ndarray | None, skeleton: Skeleton) -> None:
  """A PNG with one row per example: the crop with its predicted 2D skeleton, and 3D pred vs GT."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  n = len(crops_rgb)
  fig = plt.figure(figsize=(8, 4 * n))
  # Small crops are enlarged before drawing so that the skeleton stays legible.
  zoom = max(1, 256 // crops_rgb.shape[1])
  for i in range(n):
    crop = cv2.resize(np.ascontiguousarray(crops_rgb[i][..., ::-1]), None, fx=zoom, fy=zoom,
                      interpolation=cv2.INTER_LINEAR)
    img = draw_skeleton(crop, (joints_2d[i] + 0.5) * zoom - 0.5, skeleton)[..., ::-1]
    ax = fig.add_subplot(n, 2, 2 * i + 1)
    ax.imshow(img)
    ax.set_axis_off()
    ax.set_title("input crop, predicted 2D")
    ax3 = fig.add_subplot(n, 2, 2 * i + 2, projection="3d")
    plot_pose_3d(ax3, pred_3d[i], skeleton, "-", label="prediction")
    poses = [pred_3d[i]]
    if gt_3d is not None:
      plot_pose_3d(ax3, gt_3d[i], skeleton, "--", alpha=0.6, label="ground truth")
      poses.append(gt_3d[i])
    set_equal_3d(ax3, poses)
    ax3.legend(loc="upper right", fontsize=7)
    ax3.set_title("3D (mm, root-relative)")
  fig.tight_layout()
  fig.savefig(path, dpi=80)
  plt.close(fig)


def save_bar_chart(path: str | pathlib.Path, values: dict[str, float], ylabel: str, title: str) -> None:
  """A bar chart PNG of named values (per-action or per-joint errors)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(values) + 2), 4))
  ax.bar(list(values), list(values.values()), color="tab:blue")
  ax.set_ylabel(ylabel)
  ax.set_title(title)
  plt.setp(ax.get_xticklabels(), rotation=45, ha="right")
  fig.tight_layout()
  fig.savefig(path, dpi=80)
  plt.close(fig)

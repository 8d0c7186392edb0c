"""Writes dummy_data/: a tiny MuCo-3DHP manual_dir in the 3DMPPE layout (run once; output is committed).

  python -m cascaded_lift.datasets.muco_3dhp.make_dummy_data

Two 96x96 composites (f = 90 px, c = 48 px) with hand-placed people (roots in camera mm) that exercise
the selection rule (see select_people):

  augmented_set/1/img_000000.jpg  annotations[0] C root (300, 50, 4000): 304 mm (X/Y) from A -> dropped
                                  annotations[1] A root (0, 0, 3000): closest -> kept
                                  annotations[2] B root (1400, 100, 6000): >= 1100 mm from both -> kept
  unaugmented_set/2/img_000001.jpg annotations[3] D root (0, 0, 2500): closest -> kept
                                  annotations[4] E root (600, 0, 6000): 600 mm in X/Y from D (kept by
                                  "camera_xy"), but 250 mm at D's depth in the image ("pixel_at_depth"
                                  drops it)
"""

from __future__ import annotations

import json
import pathlib

import cv2
import numpy as np

from cascaded_lift import geometry
from cascaded_lift import skeleton
from cascaded_lift.datasets import pose_builder

OUT = pathlib.Path(__file__).resolve().parent / "dummy_data"

# A standing person facing the camera, camera axes (y down), mm relative to the Pelvis; MuCo order.
BODY = np.array([
    [0, -720, 0], [0, -480, 0], [-170, -470, 0], [-220, -220, 0], [-240, 20, -40], [170, -470, 0],
    [220, -220, 0], [240, 20, -40], [-120, 0, 0], [-130, 420, 20], [-140, 830, 0], [120, 0, 0],
    [130, 420, 20], [140, 830, 0], [0, 0, 0], [0, -240, 0], [0, -600, -30], [-245, 100, -50],
    [245, 100, -50], [-140, 860, -120], [140, 860, -120]], float)


def person(root: np.ndarray, seed: int) -> np.ndarray:
  """(21, 3) camera-frame joints: BODY turned by a random yaw about the vertical axis, at `root`."""
  a = np.deg2rad(np.random.default_rng(seed).uniform(-50, 50))
  rot = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
  return BODY @ rot.T + np.asarray(root, float)


def keypoint_box(uv: np.ndarray) -> list[float]:
  """The joints' bounding box enlarged 1.2x about its centre, [x, y, w, h]."""
  lo, hi = uv.min(0), uv.max(0)
  centre, size = (lo + hi) / 2, (hi - lo) * 1.2
  return [round(float(v), 4) for v in (*(centre - size / 2), *size)]


def draw(size: tuple[int, int], people_uv: list[np.ndarray], seed: int,
         skel: skeleton.Skeleton = skeleton.MUCO) -> np.ndarray:
  """An RGB frame (w, h = size) with the given people's skeletons drawn far-to-near on noise."""
  rng = np.random.default_rng(seed)
  img = rng.integers(60, 110, size=(size[1], size[0], 3)).astype(np.uint8)
  colours = [(230, 200, 60), (80, 200, 230), (230, 90, 160)]
  for k, uv in enumerate(people_uv):
    for a, b in skel.bones:
      p, q = (tuple(int(round(v)) for v in uv[i]) for i in (a, b))
      cv2.line(img, p, q, colours[k % len(colours)], 1, cv2.LINE_AA)
  return img


def main() -> None:
  f, c = np.array([90.0, 90.0]), np.array([48.0, 48.0])
  layout = [("augmented_set/1/img_000000.jpg", [(300, 50, 4000), (0, 0, 3000), (1400, 100, 6000)]),
            ("unaugmented_set/2/img_000001.jpg", [(0, 0, 2500), (600, 0, 6000)])]
  images, annotations = [], []
  for image_id, (file_name, roots) in enumerate(layout):
    images.append({"id": image_id, "file_name": file_name, "width": 96, "height": 96,
                   "f": f.tolist(), "c": c.tolist()})
    drawn = []
    for root in roots:
      cam = person(root, len(annotations))
      uv = geometry.camera_to_pixel(cam, f, c)
      annotations.append({"id": len(annotations), "image_id": image_id, "bbox": keypoint_box(uv),
                          "keypoints_cam": cam.round(3).tolist(), "keypoints_img": uv.round(3).tolist()})
      drawn.append((root[2], uv))
    drawn.sort(key=lambda d: -d[0])  # far people first, near ones drawn over them
    path = OUT / file_name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pose_builder.encode_jpeg(draw((96, 96), [uv for _, uv in drawn], image_id), 85))
  (OUT / "MuCo-3DHP.json").write_text(json.dumps({"images": images, "annotations": annotations}))


if __name__ == "__main__":
  main()

"""Writes datasets/mpii/dummy_data: two tiny manual_dirs, one per annotation form (for the tests).

  python -m cascaded_lift.datasets.mpii.make_dummy_data   # rewrites dummy_data/ in place

  dummy_data/3dmppe/annotations/train.json            COCO-style (3DMPPE form), 0-based
  dummy_data/3dmppe/images/*.jpg
  dummy_data/hrnet/annotations/{train,valid}.json     HRNet/MMPose list form, 1-based
  dummy_data/hrnet/images/*.jpg

Small generated frames with stick figures at the (0-based) joints. The records include fully
labelled people, unlabelled joints, a person with no labelled joint (skipped) and, in the HRNet
form, a labelled joint just outside the frame (stored as unlabelled).
"""

from __future__ import annotations

import json
import pathlib

import cv2
import numpy as np

from cascaded_lift import skeleton

OUT = pathlib.Path(__file__).resolve().parent / "dummy_data"

# A standing person in box-relative coordinates (x, y in [0, 1]), MPII order: R_Ankle, R_Knee, R_Hip,
# L_Hip, L_Knee, L_Ankle, Pelvis, Thorax, Neck, Head, R_Wrist, R_Elbow, R_Shoulder, L_Shoulder,
# L_Elbow, L_Wrist.
_TEMPLATE = np.array([
    [0.35, 0.96], [0.36, 0.76], [0.38, 0.55], [0.62, 0.55], [0.64, 0.76], [0.65, 0.96],
    [0.50, 0.55], [0.50, 0.22], [0.50, 0.15], [0.50, 0.02],
    [0.18, 0.56], [0.22, 0.40], [0.32, 0.22], [0.68, 0.22], [0.78, 0.40], [0.82, 0.56]])

_FRAMES = {"000000001.jpg": (80, 60), "000000002.jpg": (60, 80), "000000003.jpg": (72, 54)}  # (w, h)


def _joints(box: tuple[float, float, float, float], vis: list[int]) -> np.ndarray:
  """(16, 2) 0-based joints (one decimal, like MPII's fitted head points) inside box x0, y0, w, h."""
  x0, y0, w, h = box
  joints = np.round(np.array([x0, y0]) + _TEMPLATE * np.array([w, h]), 1)
  joints[np.asarray(vis) == 0] = -1.0  # HRNet's placeholder for unlabelled joints (before any shift)
  return joints


def _frame(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
  w, h = size
  base = rng.integers(60, 160, size=3)
  return np.clip(base + rng.integers(-20, 20, size=(h, w, 3)), 0, 255).astype(np.uint8)


def _draw(image: np.ndarray, joints: np.ndarray, vis: list[int]) -> None:
  for a, b in skeleton.MPII.bones:
    if vis[a] and vis[b]:
      cv2.line(image, tuple(int(round(c)) for c in joints[a]), tuple(int(round(c)) for c in joints[b]),
               (200, 80, 40), 2)


def _write_images(folder: pathlib.Path, frames: dict[str, np.ndarray]) -> None:
  folder.mkdir(parents=True, exist_ok=True)
  for name, img in frames.items():
    cv2.imwrite(str(folder / name), img, [cv2.IMWRITE_JPEG_QUALITY, 85])


def _dump(path: pathlib.Path, data: object) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(data) + "\n")


def make_3dmppe(rng: np.random.Generator) -> None:
  root = OUT / "3dmppe"
  all_v = [1] * 16
  people = [  # (file, box, vis)
      ("000000001.jpg", (6.0, 4.0, 30.0, 50.0), all_v),
      ("000000001.jpg", (44.5, 8.0, 28.0, 48.0), [0, 0, 1, 1, 1, 0] + [1] * 10),
      ("000000002.jpg", (10.0, 10.0, 20.0, 30.0), [0] * 16),  # no labelled joint: skipped
      ("000000002.jpg", (8.0, 12.0, 40.0, 62.0), all_v),
  ]
  frames = {name: _frame(rng, size) for name, size in list(_FRAMES.items())[:2]}
  ids = {name: k + 1 for k, name in enumerate(frames)}
  images = [{"id": ids[n], "file_name": n, "width": _FRAMES[n][0], "height": _FRAMES[n][1]} for n in frames]
  anns = []
  for k, (name, box, vis) in enumerate(people):
    joints = _joints(box, vis)
    _draw(frames[name], joints, vis)
    kps = [v for j, f in zip(joints, vis) for v in ([float(j[0]), float(j[1]), 1] if f else [0, 0, 0])]
    anns.append({"id": k + 1, "image_id": ids[name], "category_id": 1, "iscrowd": 0, "bbox": list(box),
                 "keypoints": kps, "num_keypoints": int(sum(vis))})
  _dump(root / "annotations" / "train.json", {"images": images, "annotations": anns,
                                              "categories": [{"id": 1, "name": "person"}]})
  _write_images(root / "images", frames)


def make_hrnet(rng: np.random.Generator) -> None:
  root = OUT / "hrnet"
  frames = {name: _frame(rng, size) for name, size in _FRAMES.items()}
  all_v = [1] * 16
  splits = {  # file -> [(image, box, vis, scale)]
      "train.json": [("000000001.jpg", (8.0, 5.0, 30.0, 50.0), all_v),
                     ("000000001.jpg", (40.0, 6.0, 30.0, 52.0), [0] * 16),  # skipped
                     ("000000002.jpg", (6.0, 8.0, 44.0, 66.0), [0, 1, 1, 1, 1, 0] + [1] * 10)],
      "valid.json": [("000000003.jpg", (20.0, 3.0, 30.0, 48.0), all_v)],
  }
  for file_name, people in splits.items():
    records = []
    for image, box, vis in people:
      joints = _joints(box, vis)
      _draw(frames[image], joints, vis)
      if file_name == "valid.json":
        joints[9] = [joints[9][0], -1.5]  # head top labelled just above the frame: stored unlabelled
      one_based = np.where(np.asarray(vis)[:, None] > 0, joints + 1.0, -1.0)
      x0, y0, w, h = box
      # MPII-style centre/scale: scale = box height / 200, centre 15 * scale px above the box centre.
      scale = round(h / 200.0, 6)
      center = [x0 + w / 2 + 1.0, round(y0 + h / 2 - 15 * scale + 1.0, 4)]
      records.append({"joints_vis": vis, "joints": one_based.round(4).tolist(), "image": image,
                      "scale": scale, "center": center})
    _dump(root / "annotations" / file_name, records)
  _write_images(root / "images", frames)


def main() -> None:
  rng = np.random.default_rng(0)
  make_3dmppe(rng)
  make_hrnet(rng)


if __name__ == "__main__":
  main()

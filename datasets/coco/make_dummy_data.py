"""Writes datasets/coco/dummy_data: a tiny manual_dir in the official COCO layout (for the tests).

  python -m cascaded_lift.datasets.coco.make_dummy_data   # rewrites dummy_data/ in place

Three small generated frames (one greyscale, as some COCO frames are) with stick figures drawn at
their keypoints, and person_keypoints_{train,val}2017.json holding: fully labelled people, occluded
(v = 1) and unlabelled (v = 0) keypoints, a person missing one hip (no Pelvis), a crowd annotation
and a person without keypoints (both skipped), and a person with a single keypoint.
"""

from __future__ import annotations

import json
import pathlib

import cv2
import numpy as np

from cascaded_lift import skeleton

OUT = pathlib.Path(__file__).resolve().parent / "dummy_data"

# A standing person in box-relative coordinates (x, y in [0, 1]), COCO's 17-keypoint order.
_TEMPLATE = np.array([
    [0.50, 0.08], [0.54, 0.05], [0.46, 0.05], [0.60, 0.07], [0.40, 0.07],  # nose, eyes, ears
    [0.68, 0.22], [0.32, 0.22], [0.78, 0.40], [0.22, 0.40], [0.82, 0.56], [0.18, 0.56],  # arms
    [0.62, 0.55], [0.38, 0.55], [0.64, 0.76], [0.36, 0.76], [0.65, 0.96], [0.35, 0.96],  # legs
])


def _person(box: tuple[float, float, float, float], v: list[int]) -> list[int]:
  """Flat COCO keypoints [x, y, v] * 17 (integers, as in the official files) inside box x0, y0, w, h."""
  x0, y0, w, h = box
  kps = []
  for (u, t), vis in zip(_TEMPLATE, v):
    kps += [int(round(x0 + u * w)), int(round(y0 + t * h)), vis] if vis else [0, 0, 0]
  return kps


def _draw(image: np.ndarray, kps: list[int]) -> None:
  k = np.asarray(kps, np.float32).reshape(17, 3)
  vis = k[:, 2] > 0
  joints = np.zeros((19, 2), np.float32)
  joints[:17] = k[:, :2]
  joints[17] = (joints[5] + joints[6]) / 2
  joints[18] = (joints[11] + joints[12]) / 2
  vis = np.concatenate([vis, [vis[5] and vis[6], vis[11] and vis[12]]])
  for a, b in skeleton.COCO.bones:
    if vis[a] and vis[b]:
      cv2.line(image, tuple(int(c) for c in joints[a]), tuple(int(c) for c in joints[b]), (40, 200, 90), 2)


def _frame(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
  base = rng.integers(60, 160, size=3)
  noise = rng.integers(-20, 20, size=(height, width, 3))
  return np.clip(base + noise, 0, 255).astype(np.uint8)


def main() -> None:
  rng = np.random.default_rng(0)
  all_v = [2] * 17
  frames = {  # image id -> (split part, width, height, greyscale)
      1: ("train2017", 64, 48, False),
      2: ("train2017", 40, 56, True),
      3: ("val2017", 48, 48, False),
  }
  people = {  # annotation id -> (image id, box, v flags, iscrowd)
      101: (1, (4.0, 3.0, 26.5, 40.0), [2, 2, 2, 1, 2, 2, 2, 2, 2, 1, 2, 2, 2, 2, 2, 2, 2], 0),
      102: (1, (34.2, 5.0, 25.0, 38.0), [0] * 17, 1),  # crowd: skipped
      103: (1, (50.0, 30.0, 8.0, 12.0), [0] * 17, 0),  # no keypoints: skipped
      104: (2, (5.0, 6.0, 30.0, 46.0), [2, 0, 0, 2, 2, 2, 1, 2, 2, 0, 2, 0, 2, 2, 2, 1, 2], 0),
      105: (3, (10.0, 2.0, 28.0, 44.0), all_v, 0),
      106: (3, (30.0, 20.0, 15.0, 25.0), [2] + [0] * 16, 0),
  }
  files = {part: {"info": {"description": "cascaded_lift dummy COCO data"}, "licenses": [],
                  "categories": [{"id": 1, "name": "person", "supercategory": "person"}],
                  "images": [], "annotations": []} for part in ("train2017", "val2017")}
  images = {}
  for image_id, (part, w, h, grey) in frames.items():
    name = f"{image_id:012d}.jpg"
    files[part]["images"].append({"id": image_id, "file_name": name, "width": w, "height": h})
    images[image_id] = _frame(rng, w, h)
  for ann_id, (image_id, box, v, crowd) in people.items():
    kps = _person(box, v) if not crowd else [0] * 51
    part = frames[image_id][0]
    files[part]["annotations"].append({
        "id": ann_id, "image_id": image_id, "category_id": 1, "iscrowd": crowd, "bbox": list(box),
        "area": box[2] * box[3], "num_keypoints": int(sum(x > 0 for x in kps[2::3])), "keypoints": kps})
    _draw(images[image_id], kps)
  (OUT / "annotations").mkdir(parents=True, exist_ok=True)
  for part, data in files.items():
    (OUT / part).mkdir(exist_ok=True)
    (OUT / "annotations" / f"person_keypoints_{part}.json").write_text(json.dumps(data, indent=1) + "\n")
  for image_id, (part, _, _, grey) in frames.items():
    img = cv2.cvtColor(images[image_id], cv2.COLOR_BGR2GRAY) if grey else images[image_id]
    cv2.imwrite(str(OUT / part / f"{image_id:012d}.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 85])


if __name__ == "__main__":
  main()

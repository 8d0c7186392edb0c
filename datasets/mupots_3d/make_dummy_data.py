"""Writes dummy_data/: a tiny MuPoTS-3D manual_dir in the 3DMPPE layout (run once; output is committed).

  python -m cascaded_lift.datasets.mupots_3d.make_dummy_data

Three frames, scaled-down like the real ones (TS1-5 are square 2048x2048, TS6-20 1920x1080):
  MultiPersonTestSet/TS1/img_000000.jpg  64x64, two people, the second with is_valid 0; 2 detections
  MultiPersonTestSet/TS7/img_000003.jpg  96x54, three people; 1 detection
  MultiPersonTestSet/TS7/img_000004.jpg  96x54, no annotated person; no detection
Annotations carry the 17 MuPoTS joints (keypoints_cam mm, keypoints_img px = their projection).
"""

from __future__ import annotations

import json
import pathlib

import numpy as np

from cascaded_lift import geometry
from cascaded_lift.datasets import pose_builder
from cascaded_lift.datasets.muco_3dhp import make_dummy_data as muco_dummy

OUT = pathlib.Path(__file__).resolve().parent / "dummy_data"


def main() -> None:
  layout = [  # file name, (w, h), intrinsic [fx, fy, cx, cy], [(root, is_valid)], detections kept
      ("TS1/img_000000.jpg", (64, 64), [60.0, 60.0, 32.0, 32.0],
       [((-400, 0, 3500), 1), ((500, 100, 4200), 0)], 2),
      ("TS7/img_000003.jpg", (96, 54), [80.0, 80.0, 48.0, 27.0],
       [((-900, 0, 4500), 1), ((0, 50, 4000), 1), ((900, 0, 5000), 1)], 1),
      ("TS7/img_000004.jpg", (96, 54), [80.0, 80.0, 48.0, 27.0], [], 0),
  ]
  images, annotations, detections = [], [], []
  for image_id, (file_name, (w, h), intrinsic, people, n_det) in enumerate(layout):
    images.append({"id": image_id, "file_name": file_name, "width": w, "height": h, "intrinsic": intrinsic})
    f, c = np.array(intrinsic[:2]), np.array(intrinsic[2:])
    drawn = []
    for k, (root, valid) in enumerate(people):
      cam = muco_dummy.person(root, 100 + len(annotations))[:17]
      uv = geometry.camera_to_pixel(cam, f, c)
      bbox = muco_dummy.keypoint_box(uv)
      annotations.append({"id": len(annotations), "image_id": image_id, "bbox": bbox,
                          "keypoints_cam": cam.round(3).tolist(), "keypoints_img": uv.round(3).tolist(),
                          "is_valid": valid})
      if k < n_det:  # a "detection": the box squared and enlarged, the root off by a few cm
        side = max(bbox[2:]) * 1.25
        cx, cy = bbox[0] + bbox[2] / 2, bbox[1] + bbox[3] / 2
        detections.append({"image_id": image_id, "bbox": [cx - side / 2, cy - side / 2, side, side],
                           "root_cam": (cam[14] + [20.0, -10.0, 60.0 * (k + 1)]).round(3).tolist(),
                           "score": 0.9 - 0.1 * k})
      # For drawing only: the 4 unannotated joints sit on their parents (wrists, ankles).
      drawn.append((root[2], np.concatenate([uv, uv[[4, 7, 10, 13]]])))
    drawn.sort(key=lambda d: -d[0])
    path = OUT / "MultiPersonTestSet" / file_name
    path.parent.mkdir(parents=True, exist_ok=True)
    img = muco_dummy.draw((w, h), [uv for _, uv in drawn], 10 + image_id)
    path.write_bytes(pose_builder.encode_jpeg(img, 85))
  (OUT / "MuPoTS-3D.json").write_text(json.dumps({"images": images, "annotations": annotations}))
  (OUT / "bbox_root").mkdir(parents=True, exist_ok=True)
  (OUT / "bbox_root" / "bbox_root_mupots_output.json").write_text(json.dumps(detections))


if __name__ == "__main__":
  main()

"""Writes dummy_data/: a tiny Human3.6M manual_dir in the 3DMPPE layout (run once; output is committed).

  python -m cascaded_lift.datasets.human36m.make_dummy_data

Frames are 100x100 (a real frame scaled by 1/10: focal and principal point too), cameras orbit the
world z axis like the four Human3.6M cameras (rotation of a real calibration, t in the current
"R X + t" convention), poses are a hand-written standing pose with per-frame yaw and arm swing, and the
images show the projected skeleton on noise. Contents (chosen to exercise every rule):

  S1  act 2 subact 1 cam 1: frames 0, 3, 5; frame 3 has no image file (a "missing image" under
      every-frame sampling, not sampled otherwise); frame 5's keypoints_vis has L_Shoulder false.
  S9  act 5 subact 1 cam 2: frame 0 (test in protocol 1, train in protocol 2).
  S11 act 2 subact 2 cam 1 frame 0: the known corrupt sequence (no image; always skipped);
      act 3 subact 1 cam 1: frame 64.
  S5, S6, S7, S8: camera files only, no frames.
  bbox_root/bbox_root_human36m_output.json: detections for the S9 and S11 test frames.
"""

from __future__ import annotations

import json
import pathlib

import cv2
import numpy as np

from cascaded_lift import geometry
from cascaded_lift import skeleton
from cascaded_lift.datasets import pose_builder
from cascaded_lift.datasets.human36m import h36m_source as src

OUT = pathlib.Path(__file__).resolve().parent / "dummy_data"
SIZE = 100

# A standing person in Human3.6M world axes (z up), mm, 17 source joints.
_POSE = np.array([
    [0, 0, 920], [-130, 0, 910], [-140, 20, 480], [-150, 0, 60], [130, 0, 910], [140, 20, 480],
    [150, 0, 60], [0, 10, 1150], [0, 10, 1400], [0, -80, 1500], [0, 0, 1600], [170, 10, 1380],
    [220, 10, 1120], [240, -40, 880], [-170, 10, 1380], [-220, 10, 1120], [-240, -40, 880]], float)
# A real Human3.6M calibration (subject 1, camera 1) with focal length and principal point / 10.
_R0 = np.array([[-0.9153617321513369, 0.40180836633680234, 0.02574754463350265],
                [0.051548117060134555, 0.1803735689384521, -0.9822464900705729],
                [-0.399319034032262, -0.8977836111057917, -0.185819527201491]])
_T0 = np.array([-346.0507814002807, 546.9807793144, 5474.481087434061])
_F = np.array([114.504940458804, 114.378109572365])
_C = np.array([51.2541504956548, 51.54514869776])


def _rot_z(deg: float) -> np.ndarray:
  a = np.deg2rad(deg)
  return np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])


def cameras() -> dict[str, dict[str, list]]:
  """Four cameras 90 degrees apart around the world z axis (same distance and intrinsics)."""
  return {str(k): {"R": (_R0 @ _rot_z(90.0 * (k - 1))).tolist(), "t": _T0.tolist(), "f": _F.tolist(),
                   "c": _C.tolist()} for k in (1, 2, 3, 4)}


def pose(seed: int) -> np.ndarray:
  """(17, 3) world joints: the template turned by a random yaw, arms swung, shifted on the floor."""
  rng = np.random.default_rng(seed)
  joints = _POSE.copy()
  swing = rng.uniform(-250, 250)
  joints[[12, 13], 1] += [swing / 2, swing]
  joints[[15, 16], 1] -= [swing / 2, swing]
  joints = (joints - joints[0]) @ _rot_z(rng.uniform(-60, 60)).T + joints[0]
  return joints + np.array([rng.uniform(-300, 300), rng.uniform(-300, 300), 0.0])


def draw(joints_img: np.ndarray, seed: int) -> np.ndarray:
  """A 100x100 RGB frame: noise background and the 18-joint skeleton."""
  rng = np.random.default_rng(seed)
  img = rng.integers(60, 110, size=(SIZE, SIZE, 3)).astype(np.uint8)
  for a, b in skeleton.H36M.bones:
    p, q = (tuple(int(round(v)) for v in joints_img[i]) for i in (a, b))
    cv2.line(img, p, q, (230, 200, 60), 2, cv2.LINE_AA)
  return img


def main() -> None:
  cams = cameras()
  frames = {  # subject -> [(image_id, action, subaction, cam, frame, has_image, vis_false_joint)]
      1: [(1, 2, 1, 1, 0, True, None), (2, 2, 1, 1, 3, False, None), (3, 2, 1, 1, 5, True, 11)],
      5: [], 6: [], 7: [], 8: [],
      9: [(100, 5, 1, 2, 0, True, None)],
      11: [(200, 2, 2, 1, 0, False, None), (201, 3, 1, 1, 64, True, None)],
  }
  detections = []
  (OUT / "annotations").mkdir(parents=True, exist_ok=True)
  for subject, rows in frames.items():
    images, annotations, joints = [], [], {}
    for image_id, action, subaction, cam, frame, has_image, vis_false in rows:
      seq = src.sequence_name(subject, action, subaction, cam)
      file_name = f"{seq}/{seq}_{frame + 1:06d}.jpg"
      world = pose(image_id)
      joints.setdefault(str(action), {}).setdefault(str(subaction), {})[str(frame)] = world.round(4).tolist()
      c = cams[str(cam)]
      cam_mm = geometry.world_to_camera(world, np.array(c["R"]), np.array(c["t"]))
      uv = geometry.camera_to_pixel(cam_mm, np.array(c["f"]), np.array(c["c"]))
      lo, hi = uv.min(0), uv.max(0)
      centre, size = (lo + hi) / 2, (hi - lo) * 1.2
      bbox = [*(centre - size / 2), *size]
      vis = [True] * 17
      if vis_false is not None:
        vis[vis_false] = False
      images.append({"id": image_id, "file_name": file_name, "width": SIZE, "height": SIZE,
                     "subject": subject, "action_name": src.ACTION_NAMES[action], "action_idx": action,
                     "subaction_idx": subaction, "cam_idx": cam, "frame_idx": frame})
      annotations.append({"id": image_id, "image_id": image_id, "bbox": [round(v, 4) for v in bbox],
                          "keypoints_vis": vis})
      if has_image:
        path = OUT / "images" / file_name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(pose_builder.encode_jpeg(draw(src.add_thorax(uv), image_id), quality=85))
      if subject in (9, 11) and has_image:
        side = max(size) * 1.25
        detections.append({"image_id": image_id, "bbox": [*(centre - side / 2).round(3).tolist(), side, side],
                           "root_cam": (cam_mm[0] + [12.0, -8.0, 35.0]).round(3).tolist()})
    for name, obj in ((src.data_file(subject), {"images": images, "annotations": annotations}),
                      (src.camera_file(subject), cams), (src.joint_file(subject), joints)):
      (OUT / "annotations" / name).write_text(json.dumps(obj))
  (OUT / "bbox_root").mkdir(exist_ok=True)
  (OUT / src.DETECTIONS_FILE).write_text(json.dumps(detections))


if __name__ == "__main__":
  main()

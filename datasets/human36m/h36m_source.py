"""Human3.6M in the 3DMPPE release layout: file names, annotation parsing, cameras and their convention.

Pure NumPy (no TFDS), so it can be tested and reused on its own. Layout (see README.md):

  images/s_SS_act_AA_subact_BB_ca_CC/s_SS_act_AA_subact_BB_ca_CC_FFFFFF.jpg   (FFFFFF = frame_idx + 1)
  annotations/Human36M_subject{S}_data.json      COCO-style images[] / annotations[]
  annotations/Human36M_subject{S}_camera.json    {"1".."4": {"R": 3x3, "t": 3 mm, "f": 2 px, "c": 2 px}}
  annotations/Human36M_subject{S}_joint_3d.json  {action: {subaction: {frame: 17 x 3 world mm}}}
  bbox_root/bbox_root_human36m_output.json       [{image_id, bbox, root_cam}] (optional)

Camera convention. Current files store t with X_cam = R X_world + t ("R X + t"); older copies store
the camera centre C in the same field, X_cam = R (X_world - C) ("R (X - t)"). Both are plausible
rotations/vectors, so the convention is detected per subject and camera (:func:`detect_convention`):
the joints of a sample of that camera's frames are projected with each reading, and the one that puts
more of them inside the annotated boxes (the boxes are the 2D keypoint box enlarged 1.2x) wins.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import numpy as np

from cascaded_lift import geometry
from cascaded_lift import skeleton
from cascaded_lift.datasets import manual_io

RecordError = manual_io.RecordError
# Field errors read "<file>: annotations[i]: missing 'bbox'" (no dataset prefix, as the other errors here).
FIELDS = manual_io.Fields(compact=True)

SUBJECTS = (1, 5, 6, 7, 8, 9, 11)
ACTION_NAMES = {
    2: "Directions", 3: "Discussion", 4: "Eating", 5: "Greeting", 6: "Phoning", 7: "Posing",
    8: "Purchases", 9: "Sitting", 10: "SittingDown", 11: "Smoking", 12: "Photo", 13: "Waiting",
    14: "Walking", 15: "WalkDog", 16: "WalkTogether"}
NUM_SOURCE_JOINTS = 17  # the files' joints = skeleton.H36M minus Thorax
DETECTIONS_FILE = "bbox_root/bbox_root_human36m_output.json"

CONVENTION_TRANSLATION = "R X + t"  # X_cam = R X_world + t
CONVENTION_CENTER = "R (X - t)"     # X_cam = R (X_world - t): t holds the camera centre
CONVENTIONS = (CONVENTION_TRANSLATION, CONVENTION_CENTER)


def data_file(subject: int) -> str:
  return f"Human36M_subject{subject}_data.json"


def camera_file(subject: int) -> str:
  return f"Human36M_subject{subject}_camera.json"


def joint_file(subject: int) -> str:
  return f"Human36M_subject{subject}_joint_3d.json"


def annotation_files(subject: int) -> list[str]:
  """The three per-subject files, relative to manual_dir."""
  return [f"annotations/{n}" for n in (data_file(subject), camera_file(subject), joint_file(subject))]


def sequence_name(subject: int, action: int, subaction: int, cam: int) -> str:
  """The image folder of one video, e.g. s_11_act_02_subact_02_ca_01."""
  return f"s_{subject:02d}_act_{action:02d}_subact_{subaction:02d}_ca_{cam:02d}"


@dataclasses.dataclass(frozen=True)
class Camera:
  """One camera as stored: R (3, 3) world-to-camera, t (3,) mm (meaning depends on the convention),
  f (2,) and c (2,) px."""
  R: np.ndarray
  t: np.ndarray
  f: np.ndarray
  c: np.ndarray

  def translation(self, convention: str) -> np.ndarray:
    """The t of X_cam = R X_world + t under `convention`."""
    if convention == CONVENTION_TRANSLATION:
      return self.t
    if convention == CONVENTION_CENTER:
      return geometry.camera_center_to_translation(self.R, self.t)
    raise ValueError(f"unknown camera convention {convention!r}; known: {CONVENTIONS}")


def parse_cameras(data: Any, fname: str) -> dict[int, Camera]:
  """{cam_idx: Camera} from a _camera.json object; RecordError naming the file and camera."""
  if not isinstance(data, dict) or not data:
    raise RecordError(f"{fname}: expected a JSON object {{\"1\": {{R, t, f, c}}, ...}}")
  cams = {}
  for key, value in data.items():
    where = f"{fname}: camera {key!r}"
    try:
      idx = int(key)
    except ValueError:
      raise RecordError(f"{where}: camera keys must be integers (\"1\"..\"4\")") from None
    R = FIELDS.array(where, value, "R", (3, 3))
    if abs(np.linalg.det(R) - 1.0) > 1e-3:
      raise RecordError(f"{where}: 'R' is not a rotation (det {np.linalg.det(R):.4f})")
    cams[idx] = Camera(R=R, t=FIELDS.array(where, value, "t", (3,)), f=FIELDS.array(where, value, "f", (2,)),
                       c=FIELDS.array(where, value, "c", (2,)))
  return cams


@dataclasses.dataclass
class Frame:
  """One annotated frame (one person) of a subject's _data.json.

  Attributes:
    where: "Human36M_subjectS_data.json: annotations[i]" (for messages).
    index: i, the position in annotations[].
    key: unique record key within a split.
    image_id, file_name (relative to images/), subject, action (action_idx 2..16), subaction, cam,
    frame (frame_idx, 0-based).
    bbox: (4,) [x, y, w, h] px. vis: (17,) keypoints_vis, or None when the file has none.
  """
  where: str
  index: int
  key: str
  image_id: int
  file_name: str
  subject: int
  action: int
  subaction: int
  cam: int
  frame: int
  bbox: np.ndarray
  vis: np.ndarray | None

  @property
  def sequence(self) -> str:
    return sequence_name(self.subject, self.action, self.subaction, self.cam)


def parse_frames(data: Any, fname: str, subject: int, every: int = 1) -> list[Frame]:
  """The annotated frames of a _data.json whose frame_idx is a multiple of `every`, in file order.

  Raises RecordError naming the file and the annotation index for a missing or malformed field, an
  annotation whose image is absent, or an image of another subject.
  """
  frames = []
  for img in manual_io.coco_table(FIELDS, fname, data, sizes=False):
    if not img.annotations:
      continue
    where_img = f"{fname}: images[{img.index}]"
    frame_idx = FIELDS.integer(where_img, img.record, "frame_idx")
    if frame_idx % every:
      continue
    subj = FIELDS.integer(where_img, img.record, "subject")
    if subj != subject:
      raise RecordError(f"{where_img}: subject {subj} in the file of subject {subject}")
    ids = [FIELDS.integer(where_img, img.record, k) for k in ("action_idx", "subaction_idx", "cam_idx")]
    for i_ann, ann in img.annotations:
      where = f"{fname}: annotations[{i_ann}]"
      bbox = FIELDS.array(where, ann, "bbox", (4,))
      vis = None
      if "keypoints_vis" in ann:
        vis = FIELDS.array(where, ann, "keypoints_vis", (NUM_SOURCE_JOINTS,))
      frames.append(Frame(where=where, index=i_ann, key=f"s{subject}_a{i_ann}", image_id=img.id,
                          file_name=img.file_name, subject=subject, action=ids[0], subaction=ids[1],
                          cam=ids[2], frame=frame_idx, bbox=bbox, vis=vis))
  # The COCO table groups annotations by image; restore the annotations' file order.
  frames.sort(key=lambda fr: fr.index)
  return frames


def world_joints(joints: Any, frame: Frame, fname: str) -> np.ndarray:
  """(17, 3) world joints (mm) of `frame` from the parsed _joint_3d.json; RecordError if absent."""
  try:
    value = joints[str(frame.action)][str(frame.subaction)][str(frame.frame)]
  except (KeyError, TypeError):
    raise RecordError(f"{fname}: no joints for action {frame.action} subaction {frame.subaction} "
                      f"frame {frame.frame} (needed by {frame.where})") from None
  where = f"{fname}: [{frame.action}][{frame.subaction}][{frame.frame}]"
  return FIELDS.array(where, {"joints": value}, "joints", (NUM_SOURCE_JOINTS, 3))


def add_thorax(joints: np.ndarray) -> np.ndarray:
  """(..., 17, C) -> (..., 18, C): appends Thorax = midpoint of the shoulders (skeleton.H36M order)."""
  ls, rs = skeleton.H36M.index("L_Shoulder"), skeleton.H36M.index("R_Shoulder")
  thorax = (joints[..., ls, :] + joints[..., rs, :]) / 2.0
  return np.concatenate([joints, thorax[..., None, :]], axis=-2)


def add_thorax_vis(vis: np.ndarray) -> np.ndarray:
  """(..., 17) -> (..., 18): Thorax is visible when both shoulders are."""
  ls, rs = skeleton.H36M.index("L_Shoulder"), skeleton.H36M.index("R_Shoulder")
  return np.concatenate([vis, (vis[..., ls] * vis[..., rs])[..., None]], axis=-1)


def fraction_in_boxes(world: np.ndarray, boxes: np.ndarray, R: np.ndarray, t: np.ndarray,
                      f: np.ndarray, c: np.ndarray, margin: float = 0.05) -> float:
  """Fraction of joints that project (in front of the camera) inside their frame's box.

  Args:
    world: (N, J, 3) world joints mm. boxes: (N, 4) [x, y, w, h] px.
    R, t, f, c: one camera (X_cam = R X + t).
    margin: boxes are widened by this fraction of their larger side plus 2 px on every side
      (annotated boxes come from distorted 2D keypoints; the projection here is undistorted).
  """
  cam = geometry.world_to_camera(world, R, t)
  front = cam[..., 2] > 1.0
  uv = geometry.camera_to_pixel(np.where(front[..., None], cam, 1.0), f, c)
  pad = margin * boxes[:, 2:].max(-1, keepdims=True) + 2.0
  lo = boxes[:, None, :2] - pad[:, None]
  hi = boxes[:, None, :2] + boxes[:, None, 2:] + pad[:, None]
  inside = front & np.all((uv >= lo) & (uv <= hi), axis=-1)
  return float(inside.mean()) if inside.size else 0.0


def detect_convention(world: np.ndarray, boxes: np.ndarray, camera: Camera, where: str,
                      min_fraction: float = 0.5) -> tuple[str, dict[str, float]]:
  """Which convention a camera's t follows, from frames whose joints and boxes are known.

  Args:
    world: (N, 17, 3) world joints mm of N frames of this camera. boxes: (N, 4) their boxes.
    camera: the stored camera. where: file and camera, for messages.
    min_fraction: the winner must put at least this fraction of joints inside the boxes.
  Returns:
    (convention, {convention: fraction of joints inside the boxes}).
  Raises:
    RecordError when neither reading puts enough joints inside the boxes (camera file and data
    file from different releases or subjects).
  """
  scores = {conv: fraction_in_boxes(world, boxes, camera.R, camera.translation(conv), camera.f, camera.c)
            for conv in CONVENTIONS}
  # Ties (t == -R t, or both readings agree) go to the current convention.
  best = CONVENTION_TRANSLATION if scores[CONVENTION_TRANSLATION] >= scores[CONVENTION_CENTER] else CONVENTION_CENTER
  if scores[best] < min_fraction:
    raise RecordError(
        f"{where}: cannot tell the camera convention: projected joints fall inside the annotated boxes "
        f"for only {100 * scores[CONVENTION_TRANSLATION]:.0f}% (X_cam = R X + t) / "
        f"{100 * scores[CONVENTION_CENTER]:.0f}% (X_cam = R (X - t)) of the joints over {len(world)} "
        "frames; are the camera, joint and data files from the same release and subject?")
  return best, scores


def load_detections(data: Any, fname: str) -> dict[int, tuple[np.ndarray, np.ndarray]]:
  """{image_id: (bbox (4,), root_cam (3,))} from a bbox_root output list; RecordError per entry."""
  if not isinstance(data, list):
    raise RecordError(f"{fname}: expected a JSON list of {{image_id, bbox, root_cam}}")
  out = {}
  for i, entry in enumerate(data):
    where = f"{fname}: [{i}]"
    image_id = FIELDS.integer(where, entry, "image_id")
    bbox = FIELDS.array(where, entry, "bbox", (4,))
    root = FIELDS.array(where, entry, "root_cam", (3,))
    out[image_id] = (bbox, root)
  return out


def sample_evenly(items: Sequence[Any], n: int) -> list[Any]:
  """At most n items spread evenly over `items` (first and last included)."""
  if len(items) <= n:
    return list(items)
  return [items[i] for i in np.linspace(0, len(items) - 1, n).round().astype(int)]


def frames_by_camera(frames: Sequence[Frame]) -> Mapping[int, list[Frame]]:
  out: dict[int, list[Frame]] = {}
  for fr in frames:
    out.setdefault(fr.cam, []).append(fr)
  return out

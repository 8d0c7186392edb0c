"""The stored feature schema shared by every pose dataset (what a TFDS builder writes, what the pipeline reads).

This module holds only names, shapes, dtypes and units, with no TFDS import, so the pipeline and the
builders (datasets/pose_builder.py turns these specs into ``tfds.features``) agree on one definition.

Single-person example (one person crop per record; Human3.6M, MPII, COCO, MuCo-3DHP, synthetic):

  =============  ===========  =======  ============================================================
  field          shape        dtype    meaning
  =============  ===========  =======  ============================================================
  image          (H, W, 3)    bytes    the whole frame, stored as encoded JPEG (RGB when decoded)
  bbox           (4,)         float32  PERSON box [x0, y0, w, h] in px (as annotated, unprocessed)
  joints_img     (J, 2)       float32  joint pixel coordinates (x, y), pixel-index convention
  joints_cam     (J, 3)       float32  camera-frame joints in mm; zeros when the dataset has no depth
  joints_vis     (J,)         float32  1 = annotated (and visible where the dataset says so), else 0
  has_depth      ()           float32  1 when joints_cam is valid (3D datasets), else 0
  focal          (2,)         float32  (fx, fy) px; zeros when unknown
  principal      (2,)         float32  (cx, cy) px; zeros when unknown
  image_id       ()           int64    dataset-wide image id; -1 when the dataset has none
  subject        ()           int32    subject (Human3.6M: 1..11; MuPoTS: sequence 1..20); -1 if none
  action         ()           int32    action index (Human3.6M: 2..16); -1 if none
  frame          ()           int32    frame index within its video; -1 if none
  =============  ===========  =======  ============================================================

Optional detection fields (builders with ``HAS_DETECTIONS``; e.g. 3DMPPE's bbox_root files):

  det_bbox       (4,)         float32  detected CROP box [x0, y0, w, h] px (zeros when has_det = 0)
  det_root_cam   (3,)         float32  detected/estimated root position in the camera frame, mm
  has_det        ()           float32  1 when a detection exists for this record

Box kinds (:data:`BOX_KIND_OF_FIELD`; docs/design.md section 1). A PERSON box is a tight box around one
person: before cropping it goes through geometry.process_bbox once (clipped to the image, widened to
the crop's 1:1 aspect, enlarged data.bbox_scale = 1.25x). A CROP box is the crop window itself and is
used as it is. ``bbox`` always holds person boxes. ``det_bbox`` holds crop boxes: 3DMPPE's
bbox_root_*_output.json boxes were already squared and enlarged 1.25x by the detector stage (RootNet
runs process_bbox before writing them), and the authors crop them unchanged. Processing one again
would square and enlarge it twice (1.56x the person's box). Builders store these files' boxes as they
are. Code that crops a stored box asks :func:`box_kind` for its kind and never guesses.

Multi-person variant (MuPoTS-3D test frames; one record per image, P people, P may vary):
image, focal, principal, image_id, subject, action, frame, has_depth as above, and per person
(leading axis P): bbox (P, 4), joints_img (P, J, 2), joints_cam (P, J, 3), joints_vis (P, J), plus
is_valid (P,) float32 (MuPoTS's per-person validity flag). Optional detections there are per image
with their own leading axis N: det_bbox (N, 4), det_root_cam (N, 3), and has_det () as above.

Joints are stored in the dataset's own joint order (its Skeleton, recorded in the dataset metadata
under ``skeleton``); the pipeline maps them onto the model's joint set by name.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

# A shape is a tuple of ints and symbols: "J" joints, "P" people, "N" detections (variable).
Spec = tuple[tuple[int | str, ...], type]

IMAGE = "image"
IMAGE_FORMAT = "jpeg"

SINGLE_PERSON: Mapping[str, Spec] = {
    "bbox": ((4,), np.float32),
    "joints_img": (("J", 2), np.float32),
    "joints_cam": (("J", 3), np.float32),
    "joints_vis": (("J",), np.float32),
    "has_depth": ((), np.float32),
    "focal": ((2,), np.float32),
    "principal": ((2,), np.float32),
    "image_id": ((), np.int64),
    "subject": ((), np.int32),
    "action": ((), np.int32),
    "frame": ((), np.int32),
}

DETECTION: Mapping[str, Spec] = {
    "det_bbox": ((4,), np.float32),
    "det_root_cam": ((3,), np.float32),
    "has_det": ((), np.float32),
}

MULTI_PERSON: Mapping[str, Spec] = {
    "bbox": (("P", 4), np.float32),
    "joints_img": (("P", "J", 2), np.float32),
    "joints_cam": (("P", "J", 3), np.float32),
    "joints_vis": (("P", "J"), np.float32),
    "is_valid": (("P",), np.float32),
    "has_depth": ((), np.float32),
    "focal": ((2,), np.float32),
    "principal": ((2,), np.float32),
    "image_id": ((), np.int64),
    "subject": ((), np.int32),
    "action": ((), np.int32),
    "frame": ((), np.int32),
}

MULTI_PERSON_DETECTION: Mapping[str, Spec] = {
    "det_bbox": (("N", 4), np.float32),
    "det_root_cam": (("N", 3), np.float32),
    "has_det": ((), np.float32),
}

# Box kinds: a PERSON box is processed once (clip, square to the crop aspect, enlarge 1.25x) before
# cropping; a CROP box is the crop window itself, used as is.
BOX_PERSON = "person"
BOX_CROP = "crop"
BOX_KINDS = (BOX_PERSON, BOX_CROP)
# The kind of every stored box field (single- and multi-person records alike).
BOX_KIND_OF_FIELD: Mapping[str, str] = {"bbox": BOX_PERSON, "det_bbox": BOX_CROP}

ID_FIELDS = ("image_id", "subject", "action", "frame")
MISSING_ID = -1

# Metadata keys every pose builder writes into its DatasetInfo metadata (metadata.json).
META_SKELETON = "skeleton"
META_JOINT_NAMES = "joint_names"
META_MULTI_PERSON = "multi_person"


def box_kind(field: str) -> str:
  """The kind ("person" or "crop") of the stored box field `field`; KeyError for a field that holds none."""
  try:
    return BOX_KIND_OF_FIELD[field]
  except KeyError:
    raise KeyError(f"field {field!r} is not a box field of the schema; box fields: "
                   f"{sorted(BOX_KIND_OF_FIELD)}") from None


def check_box_kind(kind: str, what: str = "box_kind") -> str:
  """`kind` when it is one of BOX_KINDS; ValueError naming `what` otherwise."""
  if kind not in BOX_KINDS:
    raise ValueError(f"{what} must be one of {BOX_KINDS}, got {kind!r}")
  return kind


def resolve_shape(shape: tuple[int | str, ...], num_joints: int) -> tuple[int | None, ...]:
  """Replaces "J" with `num_joints` and the variable axes "P"/"N" with None."""
  return tuple(num_joints if s == "J" else (None if isinstance(s, str) else s) for s in shape)


def feature_specs(num_joints: int, multi_person: bool = False,
                  detections: bool = False) -> dict[str, tuple[tuple[int | None, ...], type]]:
  """{field: (shape with None for variable axes, numpy dtype)} for every non-image field."""
  base = MULTI_PERSON if multi_person else SINGLE_PERSON
  specs = dict(base)
  if detections:
    specs.update(MULTI_PERSON_DETECTION if multi_person else DETECTION)
  return {k: (resolve_shape(s, num_joints), d) for k, (s, d) in specs.items()}

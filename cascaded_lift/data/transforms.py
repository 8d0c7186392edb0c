"""Per-example preprocessing: decode, box, one-warp crop, joint mapping, voxel targets.

An input record follows the shared schema (cascaded_lift/data/schema.py) with the image as JPEG
bytes; the output is one example of the batch dict of docs/design.md section 4:

  image (S, S, 3) uint8 RGB crop, bbox (4,) [x0, y0, w, h] px (the processed box times the
  augmentation scale), joints_vox (J, 3) (x, y in output px = crop px * output_size / S, z =
  (z_rel / (range / 2) + 1) / 2 * D, so the root sits at exactly D / 2), joints_vis (J,),
  has_depth (), pose_3d (J, 3) root-relative camera-frame mm (rotated about the camera z axis with
  the crop and mirrored in x with the flip), valid () = 1.
  Evaluation examples add joints_cam, joints_img (unaugmented, model joint order), focal,
  principal, image_id, subject, action, frame.

Boxes (docs/design.md section 1; data/schema.py): the record's `bbox` is a PERSON box, processed once by
geometry.process_bbox (clip, square, enlarge bbox_scale times); a detected `det_bbox` (use_det_bbox,
records with has_det = 1) is a CROP box from a bbox_root file, already squared and enlarged, and is
cropped as it is, as the authors' code does. :func:`crop_box_of` turns either kind into the crop window.

Reduced JPEG decoding (CropConfig.jpeg_reduce) is a training-speed option: the pipeline's evaluation
examples always warp the full-resolution image (pipeline.create_eval_iterator turns it off).

Joints are mapped from the dataset's skeleton onto the model's by name; joints the dataset lacks are
invisible (and zero). With a flip, the crop is mirrored by the affine matrix and the joint labels
are swapped, so index L_Wrist always holds the wrist on the person's (new) left.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import cv2
import numpy as np

from cascaded_lift import geometry
from cascaded_lift import skeleton as skeleton_lib
from cascaded_lift.data import augment
from cascaded_lift.data import schema

# EXIF orientation is ignored: annotations refer to the stored pixel grid (as PIL and the
# datasets' own tools read it), and jpeg_size() reads that grid's size from the header.
_REDUCED = {r: flag | cv2.IMREAD_IGNORE_ORIENTATION for r, flag in (
    (1, cv2.IMREAD_COLOR), (2, cv2.IMREAD_REDUCED_COLOR_2), (4, cv2.IMREAD_REDUCED_COLOR_4),
    (8, cv2.IMREAD_REDUCED_COLOR_8))}
_REQUIRED = ("image", "bbox", "joints_img", "joints_vis")
EVAL_ID_FIELDS = (("image_id", np.int64), ("subject", np.int32), ("action", np.int32), ("frame", np.int32))


@dataclasses.dataclass(frozen=True)
class CropConfig:
  """Crop and target geometry (see cascaded_lift.data.config)."""
  image_size: int = 256
  output_size: int = 64
  depth_bins: int = 64
  depth_range_mm: float = 2000.0
  bbox_scale: float = 1.25
  jpeg_reduce: bool = True  # training speed only; evaluation examples turn it off


def crop_box_of(box: Any, kind: str, width: float, height: float, bbox_scale: float = 1.25) -> np.ndarray:
  """The crop window [x0, y0, w, h] px (float64) of a box of `kind` in a width x height image.

  A "person" box is processed once (geometry.process_bbox: clipped to the image, squared to the crop's
  1:1 aspect, enlarged `bbox_scale` times). A "crop" box (e.g. a bbox_root file's detection, already
  squared and enlarged) is returned as it is; it may reach past the image border (the crop shows black
  there), but must have an area and overlap the image.

  Raises:
    ValueError for a non-finite box, no area, or a box that does not overlap the image.
  """
  box = np.asarray(box, np.float64)
  if box.shape != (4,) or not np.all(np.isfinite(box)):
    raise ValueError(f"box {box.tolist()} is not a finite [x0, y0, w, h]")
  kind = schema.check_box_kind(kind)
  if kind == schema.BOX_PERSON:
    return geometry.process_bbox(box, float(width), float(height), scale=bbox_scale)
  if box[2] <= 0 or box[3] <= 0:
    raise ValueError(f"crop box {box.tolist()} has no area")
  if box[0] >= width or box[1] >= height or box[0] + box[2] <= 0 or box[1] + box[3] <= 0:
    raise ValueError(f"crop box {box.tolist()} lies outside the {width:g}x{height:g} image")
  return box.copy()


def describe(record: dict[str, Any]) -> str:
  """'synthetic/small[train] record 12 (image_id 12)' for error messages."""
  text = f"{record.get('_source', 'dataset')} record {record.get('_index', '?')}"
  if "image_id" in record and int(record["image_id"]) >= 0:
    text += f" (image_id {int(record['image_id'])})"
  return text


def jpeg_size(data: bytes) -> tuple[int, int] | None:
  """(width, height) from a JPEG's SOF header without decoding; None if not found."""
  n, i = len(data), 2
  if n < 4 or data[0] != 0xFF or data[1] != 0xD8:
    return None
  while i + 4 <= n:
    if data[i] != 0xFF:
      return None
    marker = data[i + 1]
    if marker == 0xFF:  # fill byte
      i += 1
      continue
    if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
      i += 2
      continue
    length = (data[i + 2] << 8) | data[i + 3]
    if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
      if i + 9 > n:
        return None
      h = (data[i + 5] << 8) | data[i + 6]
      w = (data[i + 7] << 8) | data[i + 8]
      return (w, h) if w > 0 and h > 0 else None
    i += 2 + length
  return None


def decode_image(data: Any, what: str, reduce: int = 1) -> np.ndarray:
  """Decodes JPEG bytes to (H, W, 3) uint8 BGR, at 1/`reduce` resolution (1, 2, 4 or 8).

  Raises ValueError naming `what` (the record) when the bytes are not a decodable image.
  """
  if not isinstance(data, (bytes, bytearray, np.ndarray)) or len(data) == 0:
    raise ValueError(f"{what}: field 'image' is empty or not encoded bytes ({type(data).__name__})")
  buf = np.frombuffer(data, np.uint8) if not isinstance(data, np.ndarray) else data
  image = cv2.imdecode(buf, _REDUCED[reduce])
  if image is None or image.ndim != 3 or image.size == 0:
    raise ValueError(f"{what}: image bytes ({len(buf)} bytes) could not be decoded")
  return image


def _reduce_factor(box_side: float, crop_size: int, enabled: bool) -> int:
  """Largest of 1, 2, 4, 8 not above the crop's shrink factor (so the reduced image is never enlarged)."""
  if not enabled:
    return 1
  shrink = box_side / crop_size
  r = 1
  while r < 8 and 2 * r <= shrink:
    r *= 2
  return r


def _array(record: dict[str, Any], key: str, shape: tuple[int, ...], what: str) -> np.ndarray:
  arr = np.asarray(record[key], np.float32)
  if arr.shape != shape:
    raise ValueError(f"{what}: field {key!r} has shape {arr.shape}, expected {shape}")
  return arr


def crop_image(image: np.ndarray, crop_box: Any, size: int, params: augment.AugmentParams = augment.IDENTITY,
               reduce: int = 1) -> np.ndarray:
  """The (size, size, C) crop of a processed box: one bilinear cv2.warpAffine with a black border.

  The one crop of the library: the pipeline's (prepare) and the Predictor's.

  Args:
    image: (H, W, C) uint8, at 1/`reduce` of the full resolution (a reduced JPEG decode).
    crop_box: the crop window [x0, y0, w, h] in full-resolution px (:func:`crop_box_of`).
    size: the crop side S in px.
    params: augmentation (scale, rotation, flip) folded into the same warp.
    reduce: 1, 2, 4 or 8.
  """
  mat = geometry.crop_transform(np.asarray(crop_box, np.float64), (size, size), scale=params.scale,
                                rot=params.rot, flip=params.flip)
  if reduce > 1:
    # Reduced pixel x' averages full-resolution pixels r x' .. r x' + r - 1: centre r x' + (r - 1) / 2.
    off = (reduce - 1) / 2.0
    mat = mat @ np.array([[reduce, 0.0, off], [0.0, reduce, off], [0.0, 0.0, 1.0]])
  return cv2.warpAffine(image, mat, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)


def prepare(record: dict[str, Any], src: skeleton_lib.Skeleton, dst: skeleton_lib.Skeleton,
            crop: CropConfig, params: augment.AugmentParams = augment.IDENTITY,
            rng: np.random.Generator | None = None, eval_fields: bool = False,
            use_det_bbox: bool = False) -> dict[str, np.ndarray]:
  """Turns one stored record into one batch example (see the module docstring).

  Args:
    record: a single-person record of the shared schema, image as JPEG bytes.
    src, dst: the dataset's and the model's skeletons.
    crop: crop/target geometry.
    params: augmentation (augment.IDENTITY for evaluation).
    rng: generator for the occlusion noise (needed when params.occlusion is set).
    eval_fields: add the unaugmented ground truth, intrinsics and ids.
    use_det_bbox: crop the detected box when the record has one (has_det = 1): a crop box, used as
      it is; records without one fall back to their person box `bbox`, processed once.
  Raises:
    KeyError / ValueError naming the record for missing fields, undecodable images and boxes that
    lie outside the image.
  """
  what = describe(record)
  for key in _REQUIRED:
    if key not in record or record[key] is None:
      raise KeyError(f"{what}: field {key!r} is missing")
  js = src.num_joints
  joints_img = _array(record, "joints_img", (js, 2), what)
  vis = (_array(record, "joints_vis", (js,), what) > 0).astype(np.float32)  # {0, 1} whatever the store
  has_depth = float(record.get("has_depth", 0.0))
  joints_cam = _array(record, "joints_cam", (js, 3), what) if "joints_cam" in record else np.zeros((js, 3), np.float32)
  if has_depth and "joints_cam" not in record:
    raise KeyError(f"{what}: has_depth = 1 but field 'joints_cam' is missing")
  field = "det_bbox" if use_det_bbox and float(record.get("has_det", 0)) else "bbox"
  box = np.asarray(record[field], np.float64)
  if box.shape != (4,) or not np.all(np.isfinite(box)):
    raise ValueError(f"{what}: field {field!r} = {box.tolist()} is not a finite [x0, y0, w, h]")

  size = jpeg_size(record["image"]) if isinstance(record["image"], (bytes, bytearray)) else None
  image = None
  if size is None:  # not a baseline/progressive JPEG header we can parse: decode fully
    image = decode_image(record["image"], what)
    size = (image.shape[1], image.shape[0])
  width, height = size
  try:
    box = crop_box_of(box, schema.box_kind(field), width, height, crop.bbox_scale)
  except ValueError as e:
    raise ValueError(f"{what}: field {field!r} ({schema.box_kind(field)} box): {e}") from None

  s = crop.image_size
  reduce = 1
  if image is None:
    reduce = _reduce_factor(box[2] * params.scale, s, crop.jpeg_reduce)
    image = decode_image(record["image"], what, reduce)
  out = cv2.cvtColor(crop_image(image, box, s, params, reduce), cv2.COLOR_BGR2RGB)
  out = augment.apply_color(out, params.color)
  if params.occlusion is not None:
    if rng is None:
      raise ValueError("prepare: occlusion needs an rng")
    out = augment.apply_occlusion(out, params.occlusion, rng)

  # Joints: dataset order -> model order, then into the crop (same matrix as the image).
  j_img, j_vis = skeleton_lib.map_joints(joints_img, vis, src, dst)
  j_cam, _ = skeleton_lib.map_joints(joints_cam, vis, src, dst)
  root = dst.root
  if has_depth and dst.joint_names[root] not in src.joint_names:
    raise ValueError(f"{what}: dataset skeleton {src.name!r} lacks the root joint {dst.joint_names[root]!r}")
  full = geometry.crop_transform(box, (s, s), scale=params.scale, rot=params.rot, flip=params.flip)
  j_crop = geometry.apply_affine(j_img.astype(np.float64), full)
  rel = (j_cam - j_cam[root]).astype(np.float64) if has_depth else np.zeros((dst.num_joints, 3))
  theta = np.deg2rad(params.rot)
  c, sn = np.cos(theta), np.sin(theta)
  pose = rel.copy()
  pose[:, 0], pose[:, 1] = c * rel[:, 0] + sn * rel[:, 1], -sn * rel[:, 0] + c * rel[:, 1]
  vis_out = j_vis.astype(np.float32)
  if params.flip:
    j_crop = skeleton_lib.flip_joints(j_crop, dst)
    vis_out = skeleton_lib.flip_vis(vis_out, dst)
    pose = skeleton_lib.flip_joints(pose, dst)
    pose[:, 0] = -pose[:, 0]
    rel = skeleton_lib.flip_joints(rel, dst)
  half = crop.depth_range_mm / 2.0
  z_vox = (rel[:, 2] / half + 1.0) / 2.0 * crop.depth_bins
  joints_vox = np.concatenate([j_crop * (crop.output_size / s), z_vox[:, None]], axis=1)
  cx, cy = box[0] + box[2] / 2.0, box[1] + box[3] / 2.0
  side_w, side_h = box[2] * params.scale, box[3] * params.scale
  example = {
      "image": out,
      "bbox": np.array([cx - side_w / 2.0, cy - side_h / 2.0, side_w, side_h], np.float32),
      "joints_vox": joints_vox.astype(np.float32),
      "joints_vis": vis_out,
      "has_depth": np.float32(has_depth),
      "pose_3d": (pose if has_depth else np.zeros_like(pose)).astype(np.float32),
      "valid": np.float32(1.0),
  }
  if eval_fields:
    example["joints_cam"] = j_cam.astype(np.float32)
    example["joints_img"] = j_img.astype(np.float32)
    example["focal"] = np.asarray(record.get("focal", np.zeros(2)), np.float32).reshape(2)
    example["principal"] = np.asarray(record.get("principal", np.zeros(2)), np.float32).reshape(2)
    for key, dtype in EVAL_ID_FIELDS:
      example[key] = dtype(int(record.get(key, -1)))
  return example

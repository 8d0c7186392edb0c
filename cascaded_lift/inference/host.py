"""Inference on users' images, the host side: crops, 2D joints in image pixels, camera space, results.

Shared by the live Predictor (inference/predictor.py) and the exported one (inference/exported.py);
imports no Flax and no model code.

Top-down and multi-person. Boxes are PERSON boxes by default (a user's detector boxes, annotations):
each is processed once as the evaluation pipeline does (geometry.process_bbox: clip, square, enlarge
1.25x). With box_kind="crop" they are CROP boxes, crop windows already squared and enlarged (3DMPPE's
bbox_root detections, the MuPoTS driver's stored detections), used as they are. Either way
data.transforms.crop_box_of makes the window and data.transforms.crop_image, the pipeline's own crop,
cuts it (one bilinear cv2.warpAffine from the full-resolution image, black border). The people of an
image run as one batch, padded to a bucket size (1, 2, 4, 8, ..., up to `max_batch`; larger groups run
in chunks) so that the network is compiled once per bucket, not once per head count; the padding rows
are dropped.

2D joints: soft-argmax voxel x, y (output px, W = S / output_stride) -> crop px x * S / W -> image px
through geometry.crop_transform(crop_box, inverse=True) (the same mapping as the lifter's u, v input).

Camera space (only when the focal length is known; principal point defaults to the image centre):
the root's pixel (u, v) from the 2D root joint and its depth Z - given per person (`root_depth`), or
else from the distance prior Z = sqrt(A_real * fx * fy / A_box) with A_real = 2000 mm x 2000 mm and
A_box = w * h of the processed (squared, enlarged) crop box, as 3DMPPE's RootNet defines it -
back-projected with geometry.pixel_to_camera. Two ways to place the other joints (`camera_pose`):
  "lifted" (default): root + the network's root-relative 3D pose (keeps the lifted 3D shape; only the
    root projects exactly onto the 2D root).
  "backprojected": every joint's own 2D position at depth Z_root + its lifted relative depth (projects
    exactly onto all predicted 2D joints; x, y then come from the heatmaps, not the lifter).
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
from typing import Any

import cv2
import numpy as np

from cascaded_lift import geometry
from cascaded_lift import skeleton as skeleton_lib
from cascaded_lift.data import schema
from cascaded_lift.data import transforms

Array = Any
A_REAL_MM2 = 2000.0 * 2000.0   # the distance prior's real-world box area (RootNet): 2 m x 2 m
CAMERA_POSES = ("lifted", "backprojected")


# ----------------------------------------------------------------------------------------------------
# Host-side geometry (NumPy, float64).


def read_image(path: str | pathlib.Path) -> np.ndarray:
  """(H, W, 3) uint8 RGB from an image file; EXIF orientation is ignored, as in the data pipeline.

  Raises FileNotFoundError / ValueError naming the file when it is missing or cannot be decoded.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"image {str(path)!r} does not exist or is not a file")
  data = path.read_bytes()
  return cv2.cvtColor(transforms.decode_image(data, f"image {str(path)!r}"), cv2.COLOR_BGR2RGB)


def check_image(image: Array, what: str = "image") -> np.ndarray:
  """The image as a (H, W, 3) uint8 array; ValueError naming `what` otherwise."""
  image = np.asarray(image)
  if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] < 1 or image.shape[1] < 1:
    raise ValueError(f"{what}: expected an (H, W, 3) RGB image, got shape {image.shape}")
  if image.dtype != np.uint8:
    raise ValueError(f"{what}: expected uint8 pixels (0..255), got {image.dtype}")
  return image


def check_boxes(boxes: Array, width: int, height: int, what: str = "image",
                bbox_scale: float = 1.25, box_kind: str = schema.BOX_PERSON) -> tuple[np.ndarray, np.ndarray]:
  """Validates (P, 4) [x0, y0, w, h] px boxes and returns (boxes, crop boxes), float64.

  box_kind "person" (default): the crop boxes come from geometry.process_bbox (clipped, squared,
  enlarged `bbox_scale` times), once. "crop": the boxes are crop windows already (e.g. bbox_root
  detections) and are the crop boxes as they are.

  Raises ValueError for no boxes, a malformed array, non-finite values, a non-positive size, or a box
  that does not overlap the width x height image; the message names the box index and its values.
  """
  schema.check_box_kind(box_kind, f"{what}: box_kind")
  boxes = np.asarray(boxes, dtype=np.float64)
  if boxes.size == 0:
    raise ValueError(f"{what}: no person boxes given (need at least one [x0, y0, w, h])")
  if boxes.ndim == 1:
    boxes = boxes[None]
  if boxes.ndim != 2 or boxes.shape[1] != 4:
    raise ValueError(f"{what}: person boxes must be (P, 4) [x0, y0, w, h], got shape {boxes.shape}")
  crop_boxes = np.empty_like(boxes)
  for i, box in enumerate(boxes):
    if not np.all(np.isfinite(box)) or box[2] <= 0 or box[3] <= 0:
      raise ValueError(f"{what}: box {i} {box.tolist()} is not a finite [x0, y0, w, h] with w, h > 0")
    try:
      crop_boxes[i] = transforms.crop_box_of(box, box_kind, width, height, bbox_scale)
    except ValueError:
      raise ValueError(f"{what}: {box_kind} box {i} {box.tolist()} lies outside the {width}x{height} "
                       "image") from None
  return boxes, crop_boxes


def crop_people(image: np.ndarray, crop_boxes: np.ndarray, image_size: int) -> np.ndarray:
  """(P, S, S, 3) uint8 crops of processed boxes by the pipeline's crop (data.transforms.crop_image)."""
  s = int(image_size)
  crops = np.empty((len(crop_boxes), s, s, 3), np.uint8)
  for i, box in enumerate(crop_boxes):
    crops[i] = transforms.crop_image(image, box, s)
  return crops


def coords_to_image(coords: Array, crop_boxes: Array, image_size: int, output_size: int) -> np.ndarray:
  """Voxel (x, y) in output px of (P, J, >=2) coords -> (P, J, 2) float64 image px."""
  coords = np.asarray(coords, np.float64)[..., :2] * (image_size / output_size)
  inv = geometry.crop_transform(np.asarray(crop_boxes, np.float64), (image_size, image_size), inverse=True)
  return geometry.apply_affine(coords, inv)


def distance_prior_depth(crop_boxes: Array, focal: Array) -> np.ndarray:
  """(P,) root depth in mm, Z = sqrt(A_real * fx * fy / (w * h)) of the processed boxes."""
  crop_boxes = np.asarray(crop_boxes, np.float64)
  focal = np.asarray(focal, np.float64)
  return np.sqrt(A_REAL_MM2 * focal[0] * focal[1] / (crop_boxes[:, 2] * crop_boxes[:, 3]))


def to_camera(joints_2d: Array, pose_3d: Array, root: int, focal: Array, principal: Array, root_depth: Array,
              camera_pose: str = "lifted") -> tuple[np.ndarray, np.ndarray]:
  """Camera-frame poses from 2D joints, root-relative 3D and root depths (see the module docstring).

  Args:
    joints_2d: (P, J, 2) image px.  pose_3d: (P, J, 3) root-relative mm.  root: root joint index.
    focal, principal: (2,) px.  root_depth: (P,) mm.  camera_pose: "lifted" or "backprojected".
  Returns:
    (pose_3d_cam (P, J, 3), root_cam (P, 3)) float64 mm.
  """
  if camera_pose not in CAMERA_POSES:
    raise ValueError(f"camera_pose must be one of {CAMERA_POSES}, got {camera_pose!r}")
  joints_2d = np.asarray(joints_2d, np.float64)
  rel = np.asarray(pose_3d, np.float64)
  rel = rel - rel[:, root:root + 1]
  f, c = np.asarray(focal, np.float64), np.asarray(principal, np.float64)
  z = np.asarray(root_depth, np.float64).reshape(-1)
  root_uvz = np.concatenate([joints_2d[:, root], z[:, None]], axis=-1)[:, None]
  root_cam = geometry.pixel_to_camera(root_uvz, f, c)[:, 0]
  if camera_pose == "lifted":
    return rel + root_cam[:, None], root_cam
  uvz = np.concatenate([joints_2d, (z[:, None] + rel[..., 2])[..., None]], axis=-1)
  return geometry.pixel_to_camera(uvz, f, c), root_cam


def _pair(value: Any, name: str) -> np.ndarray:
  arr = np.asarray(value, np.float64).reshape(-1)
  if arr.size == 1:
    arr = np.repeat(arr, 2)
  if arr.shape != (2,) or not np.all(np.isfinite(arr)):
    raise ValueError(f"{name} must be a finite number or a pair (x, y), got {value!r}")
  return arr


# ----------------------------------------------------------------------------------------------------
# Results.


@dataclasses.dataclass
class PersonPose:
  """One person's prediction.

  Attributes:
    box: (4,) the box given [x0, y0, w, h] px.  crop_box: (4,) the crop window the crop shows (the
    processed person box, or the given crop box).
    joints_2d: (J, 2) image px.  pose_3d: (J, 3) root-relative mm (camera axes; root exactly 0).
    pose_3d_cam: (J, 3) camera-frame mm, or None without intrinsics.  root_cam: (3,) mm or None.
    root_depth: root Z in mm or None.  root_depth_source: "given", "distance_prior" or None.
    camera_pose: how pose_3d_cam was placed ("lifted" / "backprojected"), None without intrinsics.
  """
  box: np.ndarray
  crop_box: np.ndarray
  joints_2d: np.ndarray
  pose_3d: np.ndarray
  pose_3d_cam: np.ndarray | None = None
  root_cam: np.ndarray | None = None
  root_depth: float | None = None
  root_depth_source: str | None = None
  camera_pose: str | None = None

  def to_json(self, digits: int = 3) -> dict[str, Any]:
    """JSON-ready dict (lists, rounded)."""
    def arr(x):
      return None if x is None else np.round(np.asarray(x, np.float64), digits).tolist()
    return {"box": arr(self.box), "crop_box": arr(self.crop_box), "joints_2d_px": arr(self.joints_2d),
            "pose_3d_mm": arr(self.pose_3d), "pose_3d_cam_mm": arr(self.pose_3d_cam),
            "root_cam_mm": arr(self.root_cam),
            "root_depth_mm": None if self.root_depth is None else round(float(self.root_depth), digits),
            "root_depth_source": self.root_depth_source, "camera_pose": self.camera_pose}


def bucket_size(n: int, max_batch: int) -> int:
  """Smallest power of two >= n, capped at max_batch."""
  return min(1 << max(0, math.ceil(math.log2(max(n, 1)))), max_batch)


class BasePredictor:
  """predict() on top of a batched network call `_run(crops, boxes) -> (coords, pose_3d)`.

  Subclasses set skeleton, image_size, output_size, max_batch, flip_test and implement _run.
  """

  skeleton: skeleton_lib.Skeleton
  image_size: int
  output_size: int
  max_batch: int = 32
  flip_test: bool = True
  bbox_scale: float = 1.25

  def _run(self, crops: np.ndarray, boxes: np.ndarray, flip_test: bool) -> tuple[np.ndarray, np.ndarray]:
    raise NotImplementedError

  def run_batched(self, crops: np.ndarray, boxes: np.ndarray, flip_test: bool) -> tuple[np.ndarray, np.ndarray]:
    """The network on (P, S, S, 3) crops and (P, 4) boxes in bucket-sized, padded chunks.

    Returns (coords (P, J, 3) voxel units, pose_3d (P, J, 3) mm) as float32 NumPy arrays.
    """
    coords, poses = [], []
    for start in range(0, len(crops), self.max_batch):
      c, b = crops[start:start + self.max_batch], boxes[start:start + self.max_batch]
      n, size = len(c), bucket_size(len(c), self.max_batch)
      if size > n:  # pad with copies of the first person (a valid box); the rows are dropped below
        c = np.concatenate([c, np.repeat(c[:1], size - n, axis=0)])
        b = np.concatenate([b, np.repeat(b[:1], size - n, axis=0)])
      co, po = self._run(c, b.astype(np.float32), flip_test)
      coords.append(np.asarray(co)[:n])
      poses.append(np.asarray(po)[:n])
    return np.concatenate(coords), np.concatenate(poses)

  def predict(self, image: Array, boxes: Array, *, focal: Array | None = None, principal: Array | None = None,
              root_depth: Array | None = None, flip_test: bool | None = None,
              camera_pose: str = "lifted", box_kind: str = schema.BOX_PERSON) -> list[PersonPose]:
    """3D poses of the people in `boxes`.

    Args:
      image: (H, W, 3) uint8 RGB array, or a path to an image file.
      boxes: (P, 4) [x0, y0, w, h] px boxes (P >= 1), of `box_kind`.
      focal: (fx, fy) px (or one number); enables camera-space output.
      principal: (cx, cy) px; default the image centre ((W - 1) / 2, (H - 1) / 2).
      root_depth: root Z in mm, one number or (P,); NaN entries fall back to the distance prior.
      flip_test: average with the mirrored crop; None = the predictor's default.
      camera_pose: "lifted" or "backprojected" (module docstring).
      box_kind: "person" (default): tight person boxes, processed once (clip, square, enlarge
        bbox_scale times). "crop": crop windows already squared and enlarged (e.g. 3DMPPE's bbox_root
        detections), cropped as they are.
    Returns:
      One PersonPose per box, in order.
    """
    what = "image"
    if isinstance(image, (str, pathlib.Path)):
      what = f"image {str(image)!r}"
      image = read_image(image)
    image = check_image(image, what)
    height, width = image.shape[:2]
    boxes, crop_boxes = check_boxes(boxes, width, height, what, self.bbox_scale, box_kind)
    if camera_pose not in CAMERA_POSES:
      raise ValueError(f"camera_pose must be one of {CAMERA_POSES}, got {camera_pose!r}")
    if focal is None and (principal is not None or root_depth is not None):
      raise ValueError("principal/root_depth need the focal length (focal=(fx, fy)) for camera-space output")
    if focal is not None:  # checked before the network runs
      f = _pair(focal, "focal")
      if np.any(f <= 0):  # a negative focal length mirrors the camera frame; zero divides by it
        raise ValueError(f"focal must be positive pixels (fx, fy), got {focal!r}")
      c = np.array([(width - 1) / 2.0, (height - 1) / 2.0]) if principal is None else _pair(principal, "principal")
      given = np.full(len(boxes), np.nan) if root_depth is None else np.asarray(root_depth, np.float64).reshape(-1)
      if given.size == 1:
        given = np.repeat(given, len(boxes))
      if given.shape != (len(boxes),) or np.any(given <= 0) or np.any(np.isinf(given)):
        raise ValueError(f"root_depth must be one positive number or {len(boxes)} of them (NaN: use the prior), "
                         f"got {root_depth!r}")
    flip = self.flip_test if flip_test is None else bool(flip_test)
    crops = crop_people(image, crop_boxes, self.image_size)
    coords, pose = self.run_batched(crops, crop_boxes, flip)
    joints_2d = coords_to_image(coords, crop_boxes, self.image_size, self.output_size)
    root = self.skeleton.root
    rel = pose.astype(np.float64) - pose[:, root:root + 1].astype(np.float64)
    people = [PersonPose(box=boxes[i], crop_box=crop_boxes[i], joints_2d=joints_2d[i], pose_3d=rel[i])
              for i in range(len(boxes))]
    if focal is None:
      return people
    use_given = np.isfinite(given)
    z = np.where(use_given, given, distance_prior_depth(crop_boxes, f))
    cam, root_cam = to_camera(joints_2d, rel, root, f, c, z, camera_pose)
    for i, p in enumerate(people):
      p.pose_3d_cam, p.root_cam, p.root_depth = cam[i], root_cam[i], float(z[i])
      p.root_depth_source = "given" if use_given[i] else "distance_prior"
      p.camera_pose = camera_pose
    return people

"""Inference on users' images: person crops -> 2D joints in image pixels, root-relative and camera-space 3D.

  predictor = Predictor.from_checkpoint(config, workdir)        # or Predictor(config, variables)
  people = predictor.predict(image_rgb, [[x0, y0, w, h], ...], focal=(fx, fy), principal=(cx, cy))
  people[0].joints_2d   # (J, 2) px in the image
  people[0].pose_3d     # (J, 3) mm, root-relative (camera axes)
  people[0].pose_3d_cam # (J, 3) mm, camera frame (only with focal), root depth from root_depth_source

Top-down and multi-person: every box is cropped as the evaluation pipeline does (geometry.process_bbox:
clip, square, enlarge 1.25x; geometry.crop_transform; one cv2.warpAffine, bilinear, black border) and
the people of an image run as one batch. The batch is padded to a bucket size (1, 2, 4, 8, ..., up to
`max_batch`; larger groups run in chunks) so that the network is compiled once per bucket, not once
per head count; the padding rows are dropped from the results.

The crop repeats the evaluation crop of cascaded_lift.data.transforms.prepare on a decoded image
(transforms.prepare works on stored records only and does not expose its crop); tests check that both
give the same pixels. The pipeline may decode large JPEGs at 1/2..1/8 resolution before warping
(config data.jpeg_reduce); an already decoded image is always warped at full resolution here.

2D joints: soft-argmax voxel x, y (output px, W = S / 4) -> crop px x * S / W -> image px through
geometry.crop_transform(crop_box, inverse=True) (the same mapping as the lifter's u, v input).

Camera space (only when the focal length is known; principal point defaults to the image centre):
the root's pixel (u, v) from the 2D root joint and its depth Z - given per person (`root_depth`), or
else from the distance prior Z = sqrt(A_real * fx * fy / A_box) with A_real = 2000 mm x 2000 mm and
A_box = w * h of the processed (squared, enlarged) crop box, as 3DMPPE's RootNet defines it -
back-projected with geometry.pixel_to_camera. Two ways to place the other joints (`camera_pose`):
  "lifted" (default): root + the network's root-relative 3D pose (keeps the lifted 3D shape; only the
    root projects exactly onto the 2D root).
  "backprojected": every joint's own 2D position at depth Z_root + its lifted relative depth (projects
    exactly onto all predicted 2D joints; x, y then come from the heatmaps, not the lifter).

This module imports no Flax and no model code at import time (the model is built lazily in
:class:`Predictor`), so the exported-model loader of cascaded_lift.export can reuse the host-side steps.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import pathlib
from typing import Any, Callable, Sequence

import cv2
import jax
import jax.numpy as jnp
import numpy as np

from cascaded_lift import geometry
from cascaded_lift import heatmaps
from cascaded_lift import skeleton as skeleton_lib
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
                bbox_scale: float = 1.25) -> tuple[np.ndarray, np.ndarray]:
  """Validates (P, 4) [x0, y0, w, h] person boxes and returns (boxes, processed crop boxes), float64.

  The crop boxes come from geometry.process_bbox (clipped, squared, enlarged `bbox_scale` times).

  Raises ValueError for no boxes, a malformed array, non-finite values, a non-positive size, or a box
  that does not overlap the width x height image; the message names the box index and its values.
  """
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
      crop_boxes[i] = geometry.process_bbox(box, float(width), float(height), scale=bbox_scale)
    except ValueError:
      raise ValueError(f"{what}: box {i} {box.tolist()} lies outside the {width}x{height} image") from None
  return boxes, crop_boxes


def crop_people(image: np.ndarray, crop_boxes: np.ndarray, image_size: int) -> np.ndarray:
  """(P, S, S, 3) uint8 crops of processed boxes, warped like the evaluation pipeline's crop."""
  s = int(image_size)
  crops = np.empty((len(crop_boxes), s, s, 3), np.uint8)
  for i, box in enumerate(crop_boxes):
    mat = geometry.crop_transform(box, (s, s))
    crops[i] = cv2.warpAffine(image, mat, (s, s), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
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
    box: (4,) the box given [x0, y0, w, h] px.  crop_box: (4,) the processed box the crop shows.
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
              camera_pose: str = "lifted") -> list[PersonPose]:
    """3D poses of the people in `boxes`.

    Args:
      image: (H, W, 3) uint8 RGB array, or a path to an image file.
      boxes: (P, 4) [x0, y0, w, h] px person boxes (P >= 1).
      focal: (fx, fy) px (or one number); enables camera-space output.
      principal: (cx, cy) px; default the image centre ((W - 1) / 2, (H - 1) / 2).
      root_depth: root Z in mm, one number or (P,); NaN entries fall back to the distance prior.
      flip_test: average with the mirrored crop; None = the predictor's default.
      camera_pose: "lifted" or "backprojected" (module docstring).
    Returns:
      One PersonPose per box, in order.
    """
    what = "image"
    if isinstance(image, (str, pathlib.Path)):
      what = f"image {str(image)!r}"
      image = read_image(image)
    image = check_image(image, what)
    height, width = image.shape[:2]
    boxes, crop_boxes = check_boxes(boxes, width, height, what, self.bbox_scale)
    if camera_pose not in CAMERA_POSES:
      raise ValueError(f"camera_pose must be one of {CAMERA_POSES}, got {camera_pose!r}")
    if focal is None and (principal is not None or root_depth is not None):
      raise ValueError("principal/root_depth need the focal length (focal=(fx, fy)) for camera-space output")
    if focal is not None:  # checked before the network runs
      f = _pair(focal, "focal")
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


# ----------------------------------------------------------------------------------------------------
# The live model.


def forward_fn(model: Any, skeleton: skeleton_lib.Skeleton, flip_test: bool) -> Callable[..., tuple[Array, Array]]:
  """(variables, crops (B, S, S, 3), boxes (B, 4)) -> (coords (B, J, 3), pose_3d (B, J, 3)) float32.

  The evaluation forward pass (BatchNorm in inference mode), with heatmaps.flip_test when asked.
  """
  def forward(variables, crops, boxes):
    apply_fn = functools.partial(model.apply, variables, train=False)
    out = heatmaps.flip_test(apply_fn, crops, boxes, skeleton) if flip_test else apply_fn(crops, boxes)
    return out["coords"].astype(jnp.float32), out["pose_3d"].astype(jnp.float32)
  return forward


@functools.lru_cache(maxsize=16)
def _jitted_forward(model: Any, skeleton: skeleton_lib.Skeleton, flip_test: bool) -> Callable[..., Any]:
  # Shared by every Predictor with an equal model (Flax modules compare by their attributes), so a
  # second predictor of the same config reuses the compiled buckets.
  return jax.jit(forward_fn(model, skeleton, flip_test))


def _path_str(path: Sequence[Any]) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def variables_template(config: Any) -> Any:
  """ShapeDtypeStructs of {'params', 'batch_stats'} for the model of `config` (no compilation)."""
  from cascaded_lift.training.builders import build_model, input_shapes  # pylint: disable=g-import-not-at-top
  model = build_model(config)
  images, boxes = input_shapes(config)
  shapes = jax.eval_shape(lambda k: model.init(k, jnp.zeros(images.shape, images.dtype),
                                               jnp.ones(boxes.shape, boxes.dtype), train=False), jax.random.key(0))
  return {"params": shapes["params"], "batch_stats": shapes.get("batch_stats", {})}


def check_variables(config: Any, variables: Any, what: str = "checkpoint") -> None:
  """Raises ValueError naming the first parameter whose presence or shape differs from the model of config."""
  def shapes(tree):  # parameters first, then the BatchNorm statistics
    tree = dict(tree)
    first = ("params", "batch_stats")
    order = [k for k in first if k in tree] + sorted(k for k in tree if k not in first)
    return {f"{k}/{_path_str(p)}": tuple(np.shape(x)) for k in order
            for p, x in jax.tree_util.tree_flatten_with_path(tree[k])[0]}

  expected, got = shapes(variables_template(config)), shapes(variables)
  hint = f"(config: skeleton={config.skeleton!r}, depth_bins={config.data.depth_bins}, model={dict(config.model)})"
  for path, shape in expected.items():
    if path not in got:
      raise ValueError(f"{what} does not match the config: parameter {path!r} {shape} is missing {hint}")
    if got[path] != shape:
      raise ValueError(f"{what} does not match the config: parameter {path!r} has shape {got[path]} but the model "
                       f"built from the config expects {shape} {hint}")
  extra = [p for p in got if p not in expected]
  if extra:
    raise ValueError(f"{what} does not match the config: unexpected parameter {extra[0]!r} {got[extra[0]]} {hint}")


def random_variables(config: Any, seed: int = 0) -> dict[str, Any]:
  """Random weights for smoke tests, filled from the shape template on the host (no init compilation).

  Kernels He-normal, biases and BatchNorm means 0, BatchNorm scales and variances 1. This is not the
  training initialisation (training.builders.init_variables), which compiles the init graph.
  """
  rng = np.random.default_rng(seed)

  def fill(path, s):
    name = _path_str(path).rsplit("/", 1)[-1]
    if name == "kernel":
      return np.asarray(rng.normal(0.0, np.sqrt(2.0 / np.prod(s.shape[:-1])), s.shape), s.dtype)
    return np.full(s.shape, 1.0 if name in ("scale", "var") else 0.0, s.dtype)

  return jax.tree_util.tree_map_with_path(fill, variables_template(config))


class Predictor(BasePredictor):
  """CascadedLiftNet of a config with given variables; see :meth:`BasePredictor.predict`.

  Args:
    config: the training config (model, skeleton, data.image_size / depth_bins / bbox_scale).
    variables: {'params', 'batch_stats'} (e.g. from evaluation.restore_variables).
    flip_test: predict()'s default (None: config.eval.flip_test, else True).
    max_batch: people per network call; more run in chunks.
    check: compare the variables' shapes with the model's first (names the first mismatch).
  """

  def __init__(self, config: Any, variables: Any, *, flip_test: bool | None = None, max_batch: int = 32,
               check: bool = True):
    from cascaded_lift.data import pipeline  # pylint: disable=g-import-not-at-top
    from cascaded_lift.training.builders import build_model  # pylint: disable=g-import-not-at-top
    if check:
      check_variables(config, variables, "variables")
    self.config = config
    self.model = build_model(config)
    self.skeleton = skeleton_lib.get_skeleton(config.skeleton)
    crop = pipeline.crop_config(config.data)  # the evaluation pipeline's crop size and box enlargement
    self.image_size = int(crop.image_size)
    self.output_size = self.model.output_size(self.image_size)
    self.bbox_scale = float(crop.bbox_scale)
    if flip_test is None:
      flip_test = bool(config.get("eval", {}).get("flip_test", True))
    self.flip_test = flip_test
    if max_batch < 1:
      raise ValueError(f"Predictor: max_batch must be >= 1, got {max_batch}")
    self.max_batch = int(max_batch)
    self.variables = jax.device_put({"params": variables["params"], "batch_stats": variables.get("batch_stats", {})})

  @classmethod
  def from_checkpoint(cls, config: Any, workdir: str | pathlib.Path, step: int | None = None,
                      **kwargs: Any) -> "Predictor":
    """Restores the latest (or `step`) orbax checkpoint of a training workdir; checks it against config."""
    from cascaded_lift.evaluation import restore_variables  # pylint: disable=g-import-not-at-top
    variables = restore_variables(workdir, step)
    check_variables(config, variables, f"checkpoint in {str(workdir)!r}")
    return cls(config, variables, check=False, **kwargs)

  @classmethod
  def random_init(cls, config: Any, seed: int = 0, **kwargs: Any) -> "Predictor":
    """Random weights (see :func:`random_variables`): a smoke test of the whole path."""
    return cls(config, random_variables(config, seed), check=False, **kwargs)

  def _run(self, crops: np.ndarray, boxes: np.ndarray, flip_test: bool) -> tuple[np.ndarray, np.ndarray]:
    fn = _jitted_forward(self.model, self.skeleton, flip_test)
    return jax.device_get(fn(self.variables, crops, boxes))

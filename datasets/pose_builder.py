"""Base class and helpers for every pose-dataset TFDS builder (synthetic and real).

Writing a builder (the API below is stable; real builders for Human3.6M, MPII, COCO, MuCo-3DHP and
MuPoTS-3D build on it):

  datasets/<name>/                       TFDS layout, one folder per dataset
    __init__.py                          may stay empty
    <name>_dataset_builder.py            defines ``class Builder(PoseDatasetBuilder)``; TFDS infers
                                         the dataset name <name> from the module name
    README.md                            description, citation (BibTeX) and manual-download steps
    dummy_data/                          a tiny manual_dir in the real layout, used by the tests

  ```python
  from cascaded_lift import skeleton
  from cascaded_lift.datasets import pose_builder

  class Builder(pose_builder.PoseDatasetBuilder):
    VERSION = tfds.core.Version("1.0.0")
    SKELETON = skeleton.H36M             # joints are stored in this set's order
    HAS_DETECTIONS = True                # adds det_bbox / det_root_cam / has_det
    MANUAL_DOWNLOAD_INSTRUCTIONS = "..."  # what to unpack into manual_dir
    CITATION = "@inproceedings{...}"
    HOMEPAGE = "http://..."

    def _split_generators(self, dl_manager):
      root = dl_manager.manual_dir
      return {"train": self._generate_examples(root, [1, 5, 6, 7, 8]), ...}

    def _generate_examples(self, root, subjects):
      skips = self.skip_counter("train")   # counts land in self.skipped["train"]
      for ...:
        yield key, self.make_example(key, image=jpeg_bytes, bbox=..., joints_img=..., joints_vis=...,
                                     joints_cam=..., focal=..., principal=..., image_id=..., ...)
      skips.log()
  ```

``_info`` is provided: features come from :func:`pose_features` (the schema of
cascaded_lift/data/schema.py, documented there field by field: `image` encoded JPEG, `bbox`
[x, y, w, h] px, `joints_img` (J, 2) px, `joints_cam` (J, 3) mm (zeros when absent), `joints_vis`
(J,), `has_depth`, `focal` (2,), `principal` (2,), ids `image_id`, `subject`, `action`, `frame`
(-1 where the dataset lacks them); multi-person builders (``MULTI_PERSON = True``) get a leading
person axis and `is_valid`). The skeleton name and joint names go into the dataset metadata
(metadata.json: {"skeleton": "h36m", "joint_names": [...], "multi_person": false}) and into the
description, which is how the pipeline maps joints by name without importing the builder.

Images must be yielded as encoded JPEG bytes (TFDS cannot encode arrays without TensorFlow): read
the file's bytes when it already is a JPEG, or use :func:`encode_jpeg`. Files are array_record only.
:meth:`PoseDatasetBuilder.make_example` validates every field and raises :class:`RecordError` naming
the record and field; records a dataset is known to hold broken copies of are skipped with a
:class:`SkipCounter` (counted and logged; :meth:`PoseDatasetBuilder.skip_counter` keeps the counts in
``builder.skipped[split]``) instead. Reading the manual_dir (required files, JSON fields, COCO-style
tables, JPEG frames) is datasets/manual_io.py's job.

Builders are NOT put in TFDS's global registry (names such as "coco" clash with TFDS's own
catalogue); look them up with cascaded_lift.datasets.get_builder_class(name) / get_builder(...),
and build them with datasets/build.py (``cascaded-lift-build NAME --manual_dir ... --data_dir ...``).
"""

from __future__ import annotations

import collections
import inspect
import logging
from typing import Any, ClassVar, Mapping

import cv2
from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from cascaded_lift import skeleton as skeleton_lib
from cascaded_lift.data import schema

log = logging.getLogger(__name__)


class RecordError(ValueError):
  """A malformed source record; the message names the dataset, the record and the field."""


def pose_features(num_joints: int, multi_person: bool = False,
                  detections: bool = False) -> tfds.features.FeaturesDict:
  """The tfds.features.FeaturesDict of the shared schema (see cascaded_lift/data/schema.py)."""
  feats: dict[str, Any] = {
      schema.IMAGE: tfds.features.Image(shape=(None, None, 3), encoding_format=schema.IMAGE_FORMAT,
                                        doc="RGB frame, encoded JPEG")}
  for key, (shape, dtype) in schema.feature_specs(num_joints, multi_person, detections).items():
    feats[key] = tfds.features.Tensor(shape=shape, dtype=dtype)
  return tfds.features.FeaturesDict(feats)


def encode_jpeg(image: np.ndarray, quality: int = 95) -> bytes:
  """Encodes an (H, W, 3) uint8 RGB image as JPEG bytes with OpenCV."""
  image = np.asarray(image)
  if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(f"encode_jpeg: expected (H, W, 3) uint8 RGB, got {image.shape} {image.dtype}")
  ok, buf = cv2.imencode(".jpg", image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
  if not ok:
    raise ValueError(f"encode_jpeg: OpenCV failed to encode a {image.shape} image")
  return buf.tobytes()


def is_jpeg(data: bytes) -> bool:
  """True when `data` starts with the JPEG SOI marker (cheap check before storing file bytes)."""
  return len(data) > 3 and data[:3] == b"\xff\xd8\xff"


class SkipCounter:
  """Counts records skipped for a known reason and logs one summary line per reason.

  ``skips.skip("unreadable image", "s_11_.../000123.jpg")`` logs the first few records per reason at
  WARNING level; :meth:`log` (call it at the end of a split) logs the totals.
  """

  def __init__(self, dataset: str, split: str = "", max_logged: int = 5):
    self.dataset = dataset
    self.split = split
    self.max_logged = max_logged
    self.counts: collections.Counter[str] = collections.Counter()

  def skip(self, reason: str, record: str) -> None:
    self.counts[reason] += 1
    if self.counts[reason] <= self.max_logged:
      log.warning("%s%s: skipping %s (%s)", self.dataset, f"[{self.split}]" if self.split else "",
                  record, reason)

  @property
  def total(self) -> int:
    return sum(self.counts.values())

  def log(self) -> None:
    where = f"{self.dataset}{f'[{self.split}]' if self.split else ''}"
    if not self.counts:
      log.info("%s: no records skipped", where)
    for reason, n in sorted(self.counts.items()):
      log.warning("%s: skipped %d records: %s", where, n, reason)


class PoseDatasetBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Base of all pose builders: schema, metadata and per-record validation.

  Class attributes a subclass sets:
    SKELETON: the Skeleton whose joint order the records use (required; a builder whose configs
      differ in joint set overrides the `skeleton` property instead).
    MULTI_PERSON: records hold all people of an image (MuPoTS-3D test frames). Default False.
    HAS_DETECTIONS: add the optional detection fields. Default False.
    VERSION, RELEASE_NOTES, BUILDER_CONFIGS, MANUAL_DOWNLOAD_INSTRUCTIONS: as in any TFDS builder.
    DESCRIPTION, CITATION, HOMEPAGE: used when the builder folder has no README.md.
    DISABLE_SHUFFLING: keep records in generation order (default True: evaluation output follows
      the source's order, and the pipeline shuffles anyway).
  """

  SKELETON: ClassVar[skeleton_lib.Skeleton]
  MULTI_PERSON: ClassVar[bool] = False
  HAS_DETECTIONS: ClassVar[bool] = False
  DESCRIPTION: ClassVar[str] = ""
  CITATION: ClassVar[str] = ""
  HOMEPAGE: ClassVar[str] = ""
  DISABLE_SHUFFLING: ClassVar[bool] = True

  def __init_subclass__(cls, **kwargs):
    # Never register in TFDS's global catalogue: our names may clash with TFDS's own datasets.
    kwargs["skip_registration"] = True
    super().__init_subclass__(**kwargs)
    # TFDS guesses the builder folder (README.md, checksums) from the module name, which misses
    # here because datasets/ installs under another name (setup.py's package_dir); use the file.
    cls.pkg_dir_path = epath.Path(inspect.getfile(cls)).parent

  def __init__(self, *args: Any, **kwargs: Any):
    super().__init__(*args, **kwargs)
    # {split: Counter(reason -> records skipped)}, filled while generating (read by tests and logs).
    self.skipped: dict[str, collections.Counter[str]] = {}

  def skip_counter(self, split: str) -> SkipCounter:
    """A SkipCounter for `split` whose counts are kept in self.skipped[split]."""
    skips = SkipCounter(self.name, split)
    self.skipped[split] = skips.counts
    return skips

  @property
  def skeleton(self) -> skeleton_lib.Skeleton:
    """The joint set of this builder's records: SKELETON unless a config chooses another."""
    return self.SKELETON

  def _info(self) -> tfds.core.DatasetInfo:
    skel = self.skeleton
    meta = self.get_metadata()  # README.md / CITATIONS.bib of the builder's folder when present.
    description = (meta.description or self.DESCRIPTION or self.name).rstrip()
    description += f"\n\nskeleton: {skel.name} ({skel.num_joints} joints: {', '.join(skel.joint_names)})"
    return tfds.core.DatasetInfo(
        builder=self,
        description=description,
        features=pose_features(skel.num_joints, self.MULTI_PERSON, self.HAS_DETECTIONS),
        homepage=self.HOMEPAGE or None,
        citation=meta.citation or self.CITATION or None,
        disable_shuffling=self.DISABLE_SHUFFLING,
        metadata=tfds.core.MetadataDict({
            schema.META_SKELETON: skel.name,
            schema.META_JOINT_NAMES: list(skel.joint_names),
            schema.META_MULTI_PERSON: bool(self.MULTI_PERSON),
        }),
    )

  # ----------------------------------------------------------------------------------------------
  # Record construction with validation.

  def make_example(self, record: str, *, image: bytes, bbox: Any, joints_img: Any, joints_vis: Any,
                   joints_cam: Any = None, focal: Any = None, principal: Any = None,
                   image_id: int = schema.MISSING_ID, subject: int = schema.MISSING_ID,
                   action: int = schema.MISSING_ID, frame: int = schema.MISSING_ID,
                   det_bbox: Any = None, det_root_cam: Any = None) -> dict[str, Any]:
    """One single-person record in the shared schema, validated.

    Args:
      record: a human-readable record name (file name, annotation id) used in error messages.
      image: encoded JPEG bytes of the whole frame.
      bbox: [x0, y0, w, h] px; w, h > 0 and finite.
      joints_img: (J, 2) px in SKELETON order. joints_vis: (J,) in {0, 1}.
      joints_cam: (J, 3) camera-frame mm, or None (2D datasets: stored as zeros, has_depth = 0).
      focal, principal: (2,) px, or None when unknown (stored as zeros).
      image_id, subject, action, frame: ids; -1 where the dataset has none.
      det_bbox, det_root_cam: detections (only with HAS_DETECTIONS); None = no detection.
    Raises:
      RecordError naming the record and field for a missing/malformed value.
    """
    if self.MULTI_PERSON:
      raise TypeError(f"{self.name}: multi-person builders use make_multi_person_example")
    j = self.skeleton.num_joints
    ex = {
        "image": self._check_image(record, image),
        "bbox": self._array(record, "bbox", bbox, (4,)),
        "joints_img": self._array(record, "joints_img", joints_img, (j, 2)),
        "joints_vis": self._array(record, "joints_vis", joints_vis, (j,)),
        "joints_cam": (np.zeros((j, 3), np.float32) if joints_cam is None
                       else self._array(record, "joints_cam", joints_cam, (j, 3))),
        "has_depth": np.float32(joints_cam is not None),
        "focal": np.zeros(2, np.float32) if focal is None else self._array(record, "focal", focal, (2,)),
        "principal": (np.zeros(2, np.float32) if principal is None
                      else self._array(record, "principal", principal, (2,))),
    }
    self._check_box(record, "bbox", ex["bbox"])
    if ex["has_depth"] and np.any(ex["joints_cam"][:, 2] <= 0):
      raise RecordError(f"{self.name}: record {record}: joints_cam has non-positive depth (z <= 0 mm)")
    ex.update(self._ids(record, image_id, subject, action, frame))
    if self.HAS_DETECTIONS:
      has_det = det_bbox is not None
      ex["has_det"] = np.float32(has_det)
      ex["det_bbox"] = self._array(record, "det_bbox", det_bbox, (4,)) if has_det else np.zeros(4, np.float32)
      ex["det_root_cam"] = (self._array(record, "det_root_cam", det_root_cam, (3,)) if has_det
                            else np.zeros(3, np.float32))
    elif det_bbox is not None or det_root_cam is not None:
      raise TypeError(f"{self.name}: detections given but HAS_DETECTIONS is False")
    return ex

  def make_multi_person_example(self, record: str, *, image: bytes, bbox: Any, joints_img: Any,
                                joints_vis: Any, joints_cam: Any = None, is_valid: Any = None,
                                focal: Any = None, principal: Any = None,
                                image_id: int = schema.MISSING_ID, subject: int = schema.MISSING_ID,
                                action: int = schema.MISSING_ID, frame: int = schema.MISSING_ID,
                                det_bbox: Any = None, det_root_cam: Any = None) -> dict[str, Any]:
    """One multi-person record: bbox (P, 4), joints_img (P, J, 2), joints_vis (P, J),
    joints_cam (P, J, 3) or None, is_valid (P,) (None = all valid); detections (N, 4) / (N, 3)."""
    if not self.MULTI_PERSON:
      raise TypeError(f"{self.name}: single-person builders use make_example")
    j = self.skeleton.num_joints
    bbox = self._array(record, "bbox", bbox, (None, 4))
    p = bbox.shape[0]
    ex = {
        "image": self._check_image(record, image),
        "bbox": bbox,
        "joints_img": self._array(record, "joints_img", joints_img, (p, j, 2)),
        "joints_vis": self._array(record, "joints_vis", joints_vis, (p, j)),
        "joints_cam": (np.zeros((p, j, 3), np.float32) if joints_cam is None
                       else self._array(record, "joints_cam", joints_cam, (p, j, 3))),
        "is_valid": np.ones(p, np.float32) if is_valid is None else self._array(record, "is_valid", is_valid, (p,)),
        "has_depth": np.float32(joints_cam is not None),
        "focal": np.zeros(2, np.float32) if focal is None else self._array(record, "focal", focal, (2,)),
        "principal": (np.zeros(2, np.float32) if principal is None
                      else self._array(record, "principal", principal, (2,))),
    }
    for i in range(p):
      self._check_box(f"{record} person {i}", "bbox", bbox[i])
    ex.update(self._ids(record, image_id, subject, action, frame))
    if self.HAS_DETECTIONS:
      has_det = det_bbox is not None
      ex["has_det"] = np.float32(has_det)
      ex["det_bbox"] = (self._array(record, "det_bbox", det_bbox, (None, 4)) if has_det
                        else np.zeros((0, 4), np.float32))
      n = ex["det_bbox"].shape[0]
      ex["det_root_cam"] = (self._array(record, "det_root_cam", det_root_cam, (n, 3)) if has_det
                            else np.zeros((0, 3), np.float32))
    return ex

  # ----------------------------------------------------------------------------------------------

  def _check_image(self, record: str, image: Any) -> bytes:
    if image is None:
      raise RecordError(f"{self.name}: record {record}: field 'image' is missing")
    if not isinstance(image, (bytes, bytearray)):
      raise RecordError(f"{self.name}: record {record}: field 'image' must be encoded JPEG bytes "
                        f"(got {type(image).__name__}); use pose_builder.encode_jpeg for arrays")
    if not is_jpeg(bytes(image)):
      raise RecordError(f"{self.name}: record {record}: field 'image' is not a JPEG file")
    return bytes(image)

  def _array(self, record: str, field: str, value: Any, shape: tuple[int | None, ...]) -> np.ndarray:
    if value is None:
      raise RecordError(f"{self.name}: record {record}: field {field!r} is missing")
    try:
      arr = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError) as e:
      raise RecordError(f"{self.name}: record {record}: field {field!r} is not numeric: {e}") from None
    if arr.ndim != len(shape) or any(s is not None and s != a for s, a in zip(shape, arr.shape)):
      raise RecordError(f"{self.name}: record {record}: field {field!r} has shape {arr.shape}, "
                        f"expected {tuple('*' if s is None else s for s in shape)}")
    if not np.all(np.isfinite(arr)):
      raise RecordError(f"{self.name}: record {record}: field {field!r} holds NaN or inf")
    return arr

  def _check_box(self, record: str, field: str, box: np.ndarray) -> None:
    if box[2] <= 0 or box[3] <= 0:
      raise RecordError(f"{self.name}: record {record}: field {field!r} = {box.tolist()} has no area")

  def _ids(self, record: str, image_id: Any, subject: Any, action: Any, frame: Any) -> dict[str, Any]:
    out = {}
    for name, value, dtype in (("image_id", image_id, np.int64), ("subject", subject, np.int32),
                               ("action", action, np.int32), ("frame", frame, np.int32)):
      try:
        out[name] = dtype(int(value))
      except (TypeError, ValueError):
        raise RecordError(f"{self.name}: record {record}: id {name!r} = {value!r} is not an integer") from None
    return out


def check_crop_boxes(dataset: str, boxes: Any, fname: str, tolerance: float = 0.01) -> int:
  """Logs one warning when boxes stored as det_bbox (CROP boxes, data/schema.py) do not look like crop boxes.

  bbox_root files hold boxes that RootNet squared (the crop's 1:1 aspect) and enlarged; a file of tight
  detector boxes would be cropped unprocessed, too small and stretched. Such boxes are stored as they
  are (the file is the user's to fix); the warning names the file and the count.

  Args:
    boxes: (N, 4) [x0, y0, w, h] px.  tolerance: allowed |w - h| / max(w, h).
  Returns:
    the number of boxes that are not square within `tolerance`.
  """
  boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
  if not len(boxes):
    return 0
  side = np.maximum(np.maximum(boxes[:, 2], boxes[:, 3]), 1e-9)
  bad = int(np.sum(np.abs(boxes[:, 2] - boxes[:, 3]) / side > tolerance))
  if bad:
    log.warning("%s: %s: %d of %d detected boxes are not square; they are stored as crop boxes (already "
                "squared and enlarged, as RootNet writes them) and will be cropped as they are, so tight "
                "detector boxes would give wrong crops", dataset, fname, bad, len(boxes))
  return bad


def skeleton_from_metadata(metadata: Mapping[str, Any], dataset: str = "") -> skeleton_lib.Skeleton:
  """The Skeleton recorded in a built dataset's metadata (KeyError naming the dataset if absent)."""
  if not metadata or schema.META_SKELETON not in metadata:
    raise KeyError(f"dataset {dataset!r} records no {schema.META_SKELETON!r} in its metadata; "
                   "was it built by a cascaded_lift PoseDatasetBuilder?")
  return skeleton_lib.get_skeleton(metadata[schema.META_SKELETON])

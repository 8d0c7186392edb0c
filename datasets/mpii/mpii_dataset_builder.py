"""MPII Human Pose as a 2D pose dataset (manual download), from either common annotation form.

One record per annotated person: the whole frame (JPEG), a person box and 16 joints in skeleton.MPII
order. 2D only: joints_cam is zero and has_depth 0. Two JSON forms are detected per file by content:

- 3DMPPE form (a JSON object, COCO-style): images[] {id, file_name (relative to images/), width,
  height}, annotations[] {image_id, bbox [x, y, w, h], keypoints 16 x [x, y, v]}. Coordinates and box
  are stored as they are (0-based, as the 3DMPPE loader uses them); joints_vis = (v > 0);
  image_id = images[].id.
- HRNet/MMPose form (a JSON list): {image, joints 16 x [x, y], joints_vis (16,), center [x, y],
  scale}. The values come from MPII's MATLAB files and are 1-based (HRNet's and MMPose's loaders
  subtract 1 from the centre, HRNet's also from the joints), so 1 is subtracted from both
  (MpiiConfig.hrnet_one_based). The person box is the square of side 200 * scale px centred at
  (cx - 1, cy - 1 + 15 * scale): MPII's scale is the person height / 200 px and its centre sits
  above the body centre, so HRNet and MMPose move the centre down by 15 * scale px; the box is stored
  before HRNet's 1.25x enlargement, which the pipeline applies itself (geometry.process_bbox). A
  record without a centre (center[0] == -1) gets the labelled joints' box enlarged 1.2x instead.
  image_id = the number in the file name (MPII names are 9-digit numbers), -1 if it is not numeric.

Skipped with a count per reason (build log and ``builder.skipped[split]``): people without any
labelled joint, and boxes that are empty once clipped to the frame. Labelled joints outside the frame
are marked unlabelled and counted in ``builder.hidden_joints[split]``.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any, Iterator, NamedTuple

import numpy as np
import tensorflow_datasets as tfds

from cascaded_lift import skeleton
from cascaded_lift.data import schema
from cascaded_lift.datasets import pose_builder
from cascaded_lift.datasets import manual_io

NUM_JOINTS = 16
HRNET_FORM = "hrnet"
COCO_FORM = "3dmppe"


@dataclasses.dataclass(eq=False)
class MpiiConfig(tfds.core.BuilderConfig):
  """Where the MPII files are and how to read the HRNet form.

  Attributes:
    train_files, validation_files: candidate annotation file names under annotation_dir, first
      present wins; either form may sit in any of them (detected by content).
    require_validation: fail when no validation file exists (default: build 'train' alone, as the
      3DMPPE release ships only train.json).
    annotation_dir, image_dir: folders under manual_dir.
    hrnet_one_based: subtract 1 from HRNet-form joints and centres (MATLAB 1-based pixel indices).
    hrnet_center_shift: px per unit scale that the HRNet-form centre moves down (HRNet/MMPose: 15).
  """
  train_files: tuple[str, ...] = ("train.json", "mpii_train.json")
  validation_files: tuple[str, ...] = ("valid.json", "mpii_val.json")
  require_validation: bool = False
  annotation_dir: str = "annotations"
  image_dir: str = "images"
  hrnet_one_based: bool = True
  hrnet_center_shift: float = 15.0


class Person(NamedTuple):
  """One parsed annotation: where (file: index), image file, id, size if known, box and joints."""
  where: str
  key: int
  image: str
  image_id: int
  size: tuple[int, int] | None  # (height, width) from the annotation file, None if it has none
  bbox: np.ndarray  # (4,) [x0, y0, w, h] px
  joints: np.ndarray  # (16, 2) px, 0-based pixel-index coordinates
  vis: np.ndarray  # (16,) in {0, 1}


def hrnet_box(center: np.ndarray, scale: float, shift: float) -> np.ndarray:
  """[x0, y0, w, h]: the square of side 200 * scale centred at center + (0, shift * scale)."""
  side = 200.0 * scale
  cx, cy = center[0], center[1] + shift * scale
  return np.array([cx - side / 2, cy - side / 2, side, side], np.float32)


def joint_box(joints: np.ndarray, vis: np.ndarray, enlarge: float = 1.2) -> np.ndarray:
  """The labelled joints' bounding box enlarged `enlarge`x about its centre, [x0, y0, w, h]."""
  pts = joints[vis > 0]
  lo, hi = pts.min(0), pts.max(0)
  centre, size = (lo + hi) / 2, (hi - lo) * enlarge + 1.0
  return np.concatenate([centre - size / 2, size]).astype(np.float32)


class Builder(pose_builder.PoseDatasetBuilder):
  """MPII Human Pose (16 joints, 2D), from the 3DMPPE or HRNet/MMPose JSON annotations."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  SKELETON = skeleton.MPII
  BUILDER_CONFIG_CLASS = MpiiConfig
  BUILDER_CONFIGS = [MpiiConfig(name="default", description="train (+ validation when present).")]
  DEFAULT_CONFIG_NAME = "default"
  DESCRIPTION = "MPII Human Pose: 16 joints, 2D only, one record per annotated person."
  HOMEPAGE = "http://human-pose.mpi-inf.mpg.de/"
  CITATION = """@inproceedings{andriluka14cvpr,
  title     = {2D Human Pose Estimation: New Benchmark and State of the Art Analysis},
  author    = {Andriluka, Mykhaylo and Pishchulin, Leonid and Gehler, Peter and Schiele, Bernt},
  booktitle = {IEEE Conference on Computer Vision and Pattern Recognition (CVPR)},
  year      = {2014}
}"""
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
Images: download "Images (12.9 GB)" mpii_human_pose_v1.tar.gz from
http://human-pose.mpi-inf.mpg.de/#download and extract it so that the frames are
  <manual_dir>/images/000001163.jpg ...
Annotations, in either form (the MATLAB .mat file is not read):
  3DMPPE form: <manual_dir>/annotations/train.json (COCO-style; the MPII annotation file linked
    from the 3DMPPE_POSENET_RELEASE README, stored there as data/MPII/annotations/train.json), or
  HRNet/MMPose form: <manual_dir>/annotations/train.json and valid.json (HRNet's annot/ folder), or
    mpii_train.json and mpii_val.json (MMPose's annotations/ folder).
A validation file is optional; other file names: pass MpiiConfig(train_files=(...), ...) as config.
Then: cascaded-lift-build mpii --manual_dir <manual_dir> --data_dir ~/tensorflow_datasets
"""

  def __init__(self, **kwargs: Any):
    super().__init__(**kwargs)
    # Filled while generating, per split (like self.skipped): joints hidden for lying off the frame.
    self.hidden_joints: dict[str, int] = {}
    self.fields = manual_io.Fields(self.name)
    self.forms: dict[str, str] = {}  # split -> detected annotation form

  def _required(self) -> list[tuple[str | None, tuple[str, ...]]]:
    """(split or None for the image folder, alternatives) for every required input."""
    cfg = self.builder_config
    req = [("train", tuple(f"{cfg.annotation_dir}/{n}" for n in cfg.train_files))]
    if cfg.require_validation:
      req.append(("validation", tuple(f"{cfg.annotation_dir}/{n}" for n in cfg.validation_files)))
    return req + [(None, (f"{cfg.image_dir}/",))]

  def source_paths(self, root: pathlib.Path) -> dict[str, pathlib.Path]:
    """{split: annotation file} found under manual_dir; FileNotFoundError listing what is missing."""
    cfg = self.builder_config
    found = {}
    for split, names in (("train", cfg.train_files), ("validation", cfg.validation_files)):
      present = [n for n in names if (root / cfg.annotation_dir / n).is_file()]
      if present:
        found[split] = root / cfg.annotation_dir / present[0]
    missing = [" or ".join(alternatives) for split, alternatives in self._required()
               if (split is None and not (root / cfg.image_dir).is_dir())
               or (split is not None and split not in found)]
    if missing:
      raise manual_io.missing_files_error(self.name, root, missing, self.MANUAL_DOWNLOAD_INSTRUCTIONS)
    return found

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    root = manual_io.manual_root(self.name, dl_manager, [" or ".join(a) for _, a in self._required()],
                                 self.MANUAL_DOWNLOAD_INSTRUCTIONS)
    return {split: self._generate_examples(root, split, path)
            for split, path in self.source_paths(root).items()}

  def _generate_examples(self, root: pathlib.Path, split: str,
                         ann_path: pathlib.Path) -> Iterator[tuple[int, dict[str, Any]]]:
    cfg = self.builder_config
    skips = self.skip_counter(split)
    self.hidden_joints[split] = 0
    data = manual_io.load_json(self.name, ann_path)
    if isinstance(data, list):
      form, people = HRNET_FORM, self._hrnet_people(ann_path.name, data)
    elif isinstance(data, dict) and "images" in data and "annotations" in data:
      form, people = COCO_FORM, self._coco_people(ann_path.name, data)
    else:
      raise self.fields.error(ann_path.name, "neither annotation form: expected a JSON list (HRNet/MMPose "
                              "form) or an object with 'images' and 'annotations' (3DMPPE form)")
    self.forms[split] = form
    pose_builder.log.info("%s[%s]: %s is in the %s form", self.name, split, ann_path.name, form)

    # Parse everything first: a malformed record or a missing image stops the build before writing.
    kept = []
    for p in people:
      if not np.any(p.vis > 0):
        skips.skip("no labelled joint", p.where)
      else:
        kept.append(p)
    image_dir = root / cfg.image_dir
    manual_io.require_images(self.name, image_dir, {p.image for p in kept},
                             source=f"{cfg.annotation_dir}/{ann_path.name}")

    frames = manual_io.FrameCache(self.name, image_dir)
    written = 0
    for p in kept:
      jpeg, height, width = frames.get(p.image, p.where)
      if p.size is not None and p.size != (height, width):
        raise self.fields.error(p.where, f"{p.image} is {width}x{height} px, the file says "
                                         f"{p.size[1]}x{p.size[0]}")
      if not manual_io.box_covers_pixels(p.bbox, width, height):
        skips.skip("box empty once clipped to the frame", p.where)
        continue
      vis, n_hidden = manual_io.hide_off_frame(p.joints, p.vis, width, height)
      self.hidden_joints[split] += n_hidden
      yield p.key, self.make_example(p.where, image=jpeg, bbox=p.bbox, joints_img=p.joints,
                                     joints_vis=vis, image_id=p.image_id)
      written += 1
    manual_io.require_records(self.name, split, f"{cfg.annotation_dir}/{ann_path.name}", written,
                              skips.counts)
    skips.log()
    if self.hidden_joints[split]:
      pose_builder.log.warning("%s[%s]: %d labelled joints outside the frame marked unlabelled",
                               self.name, split, self.hidden_joints[split])

  # ----------------------------------------------------------------------------------------------
  # The two annotation forms.

  def _hrnet_people(self, file_name: str, data: list[Any]) -> list[Person]:
    cfg = self.builder_config
    offset = 1.0 if cfg.hrnet_one_based else 0.0
    fields = self.fields
    people = []
    for i, rec in enumerate(data):
      where = f"{file_name}[{i}]"
      image = fields.string(where, rec, "image")
      joints = fields.array(where, rec, "joints", (NUM_JOINTS, 2)) - offset
      vis = fields.array(where, rec, "joints_vis", (NUM_JOINTS,))
      if not np.all(np.isin(vis, (0, 1))):
        raise fields.error(where, f"'joints_vis' {vis.astype(int).tolist()} must be 0 or 1")
      center = fields.array(where, rec, "center", (2,))
      scale = fields.number(where, rec, "scale", positive=True)
      if center[0] == -1:  # HRNet's marker for "no centre annotated"
        bbox = joint_box(joints, vis) if np.any(vis > 0) else np.array([0, 0, 1, 1], np.float32)
      else:
        bbox = hrnet_box(center - offset, scale, cfg.hrnet_center_shift)
      stem = pathlib.PurePosixPath(image).stem
      image_id = int(stem) if stem.isdigit() else schema.MISSING_ID
      people.append(Person(where, i, image, image_id, None, bbox, joints.astype(np.float32),
                           vis.astype(np.float32)))
    return people

  def _coco_people(self, file_name: str, data: dict[str, Any]) -> list[Person]:
    fields = self.fields
    people = []
    for img in manual_io.coco_table(fields, file_name, data):
      for i, ann in img.annotations:
        where = f"{file_name}: annotations[{i}]"
        kps = fields.array(where, ann, "keypoints", (NUM_JOINTS * 3,)).reshape(NUM_JOINTS, 3)
        bbox = fields.array(where, ann, "bbox", (4,))
        if not np.all(kps[:, 2] >= 0):
          raise fields.error(where, f"keypoint visibility flags {kps[:, 2].tolist()} must be >= 0")
        people.append(Person(where, i, img.file_name, img.id, (img.height, img.width),
                             bbox.astype(np.float32), kps[:, :2].astype(np.float32),
                             (kps[:, 2] > 0).astype(np.float32)))
    return people

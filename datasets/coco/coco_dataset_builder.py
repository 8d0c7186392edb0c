"""COCO 2017 person keypoints as a 2D pose dataset (manual download, official file layout).

One record per annotated person: the whole frame (JPEG), the annotated box and 19 joints in
skeleton.COCO order, i.e. COCO's 17 keypoints followed by Thorax (shoulder midpoint) and Pelvis (hip
midpoint), each derived joint visible only when both of its joints are labelled. COCO's visibility
v (0 unlabelled, 1 labelled but occluded, 2 visible) becomes joints_vis = (v > 0). 2D only: joints_cam
is zero and has_depth 0; image_id is COCO's image id.

Skipped, with a count per reason in the build log and in ``builder.skipped[split]``: crowd
annotations (iscrowd = 1), people with no labelled keypoint, non-person categories, and boxes that are
empty once clipped to the frame. Labelled joints outside the frame (none in the official files) are
marked unlabelled and counted in ``builder.hidden_joints[split]``.

Configs: '2017' (train2017 -> split 'train', val2017 -> split 'validation'; default) and 'val2017'
(validation only, e.g. to try the pipeline on the 1 GB val download).
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any, Iterator

import numpy as np
import tensorflow_datasets as tfds

from cascaded_lift import skeleton
from cascaded_lift.datasets import pose_builder
from cascaded_lift.datasets import manual_io

NUM_COCO_KEYPOINTS = 17
_SPLIT_PARTS = {"train": "train", "validation": "val"}  # split name -> COCO's file-name part

# Indices in COCO's 17-keypoint order.
_L_SHOULDER, _R_SHOULDER, _L_HIP, _R_HIP = 5, 6, 11, 12


def coco_add_thorax_pelvis(keypoints: np.ndarray, vis: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Appends Thorax (shoulder midpoint) and Pelvis (hip midpoint) to COCO's 17 keypoints.

  Args:
    keypoints: (..., 17, 2) px in COCO order. vis: (..., 17) in {0, 1}.
  Returns:
    (keypoints (..., 19, 2), vis (..., 19)) in skeleton.COCO order. A derived joint is visible only
    when both of its parents are; otherwise its coordinates are zero (like COCO's unlabelled ones).
  """
  keypoints = np.asarray(keypoints, np.float32)
  vis = np.asarray(vis, np.float32)
  derived_xy, derived_vis = [], []
  for a, b in ((_L_SHOULDER, _R_SHOULDER), (_L_HIP, _R_HIP)):
    both = vis[..., a] * vis[..., b]
    mid = (keypoints[..., a, :] + keypoints[..., b, :]) / 2
    derived_xy.append(np.where(both[..., None] > 0, mid, 0.0))
    derived_vis.append(both)
  out_xy = np.concatenate([keypoints, np.stack(derived_xy, axis=-2)], axis=-2).astype(np.float32)
  out_vis = np.concatenate([vis, np.stack(derived_vis, axis=-1)], axis=-1).astype(np.float32)
  return out_xy, out_vis


@dataclasses.dataclass(eq=False)
class CocoConfig(tfds.core.BuilderConfig):
  """Which COCO release and splits to build.

  Attributes:
    year: release year in the file names ("2017": person_keypoints_train2017.json, val2017/).
    splits: the TFDS splits to build, from "train" and "validation".
  """
  year: str = "2017"
  splits: tuple[str, ...] = ("train", "validation")


class Builder(pose_builder.PoseDatasetBuilder):
  """COCO person keypoints (17 + Thorax + Pelvis), one record per person, from the official files."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  SKELETON = skeleton.COCO
  BUILDER_CONFIG_CLASS = CocoConfig
  BUILDER_CONFIGS = [
      CocoConfig(name="2017", description="train2017 (split 'train') and val2017 (split 'validation')."),
      CocoConfig(name="val2017", description="val2017 only (split 'validation').",
                 splits=("validation",)),
  ]
  DEFAULT_CONFIG_NAME = "2017"
  DESCRIPTION = "COCO 2017 person keypoints: 17 keypoints + Thorax and Pelvis, 2D only."
  HOMEPAGE = "https://cocodataset.org/#keypoints-2017"
  CITATION = """@inproceedings{lin2014microsoft,
  title     = {Microsoft {COCO}: Common Objects in Context},
  author    = {Lin, Tsung-Yi and Maire, Michael and Belongie, Serge and Hays, James and Perona, Pietro
               and Ramanan, Deva and Doll{\\'a}r, Piotr and Zitnick, C. Lawrence},
  booktitle = {European Conference on Computer Vision (ECCV)},
  pages     = {740--755},
  year      = {2014}
}"""
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
Download from https://cocodataset.org/#download (no registration):
  2017 Train images [118K/18GB]  http://images.cocodataset.org/zips/train2017.zip
  2017 Val images [5K/1GB]       http://images.cocodataset.org/zips/val2017.zip
  2017 Train/Val annotations     http://images.cocodataset.org/annotations/annotations_trainval2017.zip
and unzip all three into manual_dir, giving:
  <manual_dir>/annotations/person_keypoints_train2017.json
  <manual_dir>/annotations/person_keypoints_val2017.json
  <manual_dir>/train2017/000000000009.jpg ...
  <manual_dir>/val2017/000000000139.jpg ...
(The 'val2017' config needs only the val2017/ images and person_keypoints_val2017.json.)
Then: cascaded-lift-build coco --manual_dir <manual_dir> --data_dir ~/tensorflow_datasets
"""

  def __init__(self, **kwargs: Any):
    super().__init__(**kwargs)
    # Filled while generating, per split (like self.skipped): joints hidden for lying off the frame.
    self.hidden_joints: dict[str, int] = {}
    self.fields = manual_io.Fields(self.name)

  def source_paths(self) -> dict[str, tuple[str, str]]:
    """{split: (annotation file, image folder)}, relative to manual_dir, for this config."""
    cfg = self.builder_config
    out = {}
    for split in cfg.splits:
      if split not in _SPLIT_PARTS:
        raise ValueError(f"{self.name}: config {cfg.name!r}: unknown split {split!r}; "
                         f"choose from {sorted(_SPLIT_PARTS)}")
      part = f"{_SPLIT_PARTS[split]}{cfg.year}"
      out[split] = (f"annotations/person_keypoints_{part}.json", part)
    return out

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    paths = self.source_paths()
    required = [a for a, _ in paths.values()] + [d + "/" for _, d in paths.values()]
    root = manual_io.manual_root(self.name, dl_manager, required, self.MANUAL_DOWNLOAD_INSTRUCTIONS)
    manual_io.require_paths(self.name, root, required, self.MANUAL_DOWNLOAD_INSTRUCTIONS)
    return {split: self._generate_examples(root, split, ann, img)
            for split, (ann, img) in paths.items()}

  def _generate_examples(self, root: pathlib.Path, split: str, ann_file: str,
                         image_dir: str) -> Iterator[tuple[int, dict[str, Any]]]:
    file_name = pathlib.Path(ann_file).name
    images = manual_io.coco_table(self.fields, file_name, manual_io.load_json(self.name, root / ann_file))
    skips = self.skip_counter(split)
    self.hidden_joints[split] = 0

    # Parse and filter every person first, so a missing image or malformed record stops the build
    # before anything is written, and the missing images are listed together.
    people = []
    for img in images:
      for ann_index, ann in img.annotations:
        where = f"{file_name}: annotations[{ann_index}]"
        person = self._parse_person(where, ann, img, skips)
        if person is not None:
          people.append((img, ann_index, where, person))
    manual_io.require_images(self.name, root / image_dir, {img.file_name for img, *_ in people},
                             source=ann_file)
    manual_io.require_records(self.name, split, ann_file, len(people), skips.counts)
    frames = manual_io.FrameCache(self.name, root / image_dir)
    for img, ann_index, where, (bbox, joints, vis) in people:
      jpeg, height, width = frames.get(img.file_name, where)
      if (height, width) != (img.height, img.width):
        raise self.fields.error(f"{file_name}: images[{img.index}]", f"{img.file_name} is {width}x{height} "
                                f"px, the file says {img.width}x{img.height}")
      vis, n_hidden = manual_io.hide_off_frame(joints, vis, width, height)
      self.hidden_joints[split] += n_hidden
      yield ann_index, self.make_example(where, image=jpeg, bbox=bbox, joints_img=joints,
                                         joints_vis=vis, image_id=img.id)
    skips.log()
    if self.hidden_joints[split]:
      pose_builder.log.warning("%s[%s]: %d labelled joints outside the frame marked unlabelled",
                               self.name, split, self.hidden_joints[split])

  def _parse_person(self, where: str, ann: dict[str, Any], img: manual_io.CocoImage,
                    skips: pose_builder.SkipCounter) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(bbox (4,), joints (19, 2), vis (19,)) of one annotation, or None when it is skipped."""
    fields = self.fields
    if "category_id" in ann and fields.integer(where, ann, "category_id") != 1:
      skips.skip("not a person (category_id != 1)", where)
      return None
    # Crowd regions are skipped before their fields are checked: they carry no usable keypoints.
    if "iscrowd" in ann and fields.integer(where, ann, "iscrowd"):
      skips.skip("crowd annotation (iscrowd = 1)", where)
      return None
    keypoints = fields.array(where, ann, "keypoints", (NUM_COCO_KEYPOINTS * 3,))
    keypoints = keypoints.reshape(NUM_COCO_KEYPOINTS, 3)
    bbox = fields.array(where, ann, "bbox", (4,))
    v = keypoints[:, 2]
    if not np.all(np.isin(v, (0, 1, 2))):
      raise fields.error(where, f"keypoint visibility flags {v.astype(int).tolist()} must be 0, 1 or 2")
    if not np.any(v > 0):
      skips.skip("no labelled keypoint", where)
      return None
    if not manual_io.box_covers_pixels(bbox, img.width, img.height):
      skips.skip("box empty once clipped to the frame", where)
      return None
    joints, vis = coco_add_thorax_pelvis(keypoints[:, :2], (v > 0).astype(np.float32))
    return bbox.astype(np.float32), joints, vis

"""MuPoTS-3D (3DMPPE release: MuPoTS-3D.json + MultiPersonTestSet) as a manual-download TFDS builder.

One record per frame with ALL its annotated people (pose_builder's multi-person schema, MULTI_PERSON,
SKELETON = skeleton.MUCO, 21 joints, a "test" split only):
  bbox (P, 4)           the annotations' boxes.
  joints_cam (P, 21, 3) keypoints_cam (mm, camera frame). MuPoTS-3D annotates the first 17 MuCo joints;
  joints_img (P, 21, 2) the last 4 (R_Hand, L_Hand, R_Toe, L_Toe) are stored as zeros with
  joints_vis (P, 21)    joints_vis 0, so every dataset of the MuCo family shares one joint layout and the
                        pipeline's name-based mapping needs no special case (21-joint annotations are
                        taken as they are).
  is_valid (P,)         the annotation's is_valid (the evaluation counts only valid people).
  focal, principal      the image's intrinsic [fx, fy, cx, cy].
  subject, frame        the sequence number (TS1..TS20 -> 1..20) and the frame number of the file
                        name ("TS3/img_000120.jpg" -> 3, 120); image_id = the file's image id.
  det_bbox (N, 4), det_root_cam (N, 3), has_det
                        the image's entries of bbox_root_mupots_output.json when that file is present
                        (has_det = 1 and N may be 0), else has_det = 0. The boxes are stored as the
                        file holds them: CROP boxes (RootNet squared and enlarged them 1.25x), which
                        the MuPoTS driver crops as they are (data/schema.py); bbox holds PERSON boxes.
Frames without any annotation are kept (P = 0) so that detection-based evaluation sees every frame.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import pathlib
import re
from typing import Any, Iterator

import numpy as np
import tensorflow_datasets as tfds

from cascaded_lift import skeleton
from cascaded_lift.datasets import pose_builder
from cascaded_lift.datasets import manual_io

log = logging.getLogger(__name__)

ANNOTATION_FILE = "MuPoTS-3D.json"
IMAGE_DIR = "MultiPersonTestSet"
DETECTION_FILES = ("bbox_root/bbox_root_mupots_output.json", "bbox_root_mupots_output.json")
NUM_JOINTS = 21
NUM_ANNOTATED = 17
FIELDS = manual_io.Fields(compact=True)  # "MuPoTS-3D.json: annotations[3]: missing 'is_valid'"
_FILE_RE = re.compile(r"(?:^|/)TS(\d+)/img_(\d+)\.[A-Za-z]+$")

_INSTRUCTIONS = """\
MuPoTS-3D cannot be downloaded by code. Get MultiPersonTestSet.zip from
http://gvv.mpi-inf.mpg.de/projects/SingleShotMultiPerson (licence there) and MuPoTS-3D.json (and, for
detection-based evaluation, bbox_root_mupots_output.json) from the 3DMPPE release
(https://github.com/mks0601/3DMPPE_POSENET_RELEASE, "MuPoTS" data link). Arrange manual_dir as:
  <manual_dir>/MuPoTS-3D.json
  <manual_dir>/MultiPersonTestSet/TS1/img_000000.jpg ... TS20/...
  <manual_dir>/bbox_root/bbox_root_mupots_output.json   (optional; also accepted next to MuPoTS-3D.json)"""


def parse_file_name(file_name: str, where: str) -> tuple[int, int]:
  """(sequence 1..20, frame) from "TS3/img_000120.jpg"; RecordError naming `where` otherwise."""
  m = _FILE_RE.search(file_name)
  if m is None:
    raise pose_builder.RecordError(f"{where}: file_name {file_name!r} is not of the form TS<n>/img_<frame>.jpg")
  return int(m.group(1)), int(m.group(2))


def pad_joints(values: np.ndarray, where: str, key: str) -> np.ndarray:
  """(17 or 21, C) -> (21, C), zeros for the joints MuPoTS-3D does not annotate."""
  if values.shape[0] == NUM_JOINTS:
    return values
  if values.shape[0] != NUM_ANNOTATED:
    raise pose_builder.RecordError(f"{where}: field {key!r} has {values.shape[0]} joints, expected "
                                   f"{NUM_ANNOTATED} (or {NUM_JOINTS})")
  return np.concatenate([values, np.zeros((NUM_JOINTS - NUM_ANNOTATED, values.shape[1]))], axis=0)


def load_detections(data: Any, fname: str, image_ids: set[int]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
  """{image_id: (det_bbox (N, 4), det_root_cam (N, 3))} in file order; RecordError per entry."""
  if not isinstance(data, list):
    raise pose_builder.RecordError(f"{fname}: expected a JSON list of {{image_id, bbox, root_cam}}")
  boxes: dict[int, list] = collections.defaultdict(list)
  roots: dict[int, list] = collections.defaultdict(list)
  for i, entry in enumerate(data):
    where = f"{fname}: [{i}]"
    image_id = FIELDS.integer(where, entry, "image_id")
    if image_id not in image_ids:
      raise pose_builder.RecordError(f"{where}: image_id {image_id} is not in {ANNOTATION_FILE}")
    boxes[image_id].append(FIELDS.array(where, entry, "bbox", (4,)))
    roots[image_id].append(FIELDS.array(where, entry, "root_cam", (3,)))
  return {k: (np.stack(boxes[k]), np.stack(roots[k])) for k in boxes}


@dataclasses.dataclass(eq=False)
class MuPoTSConfig(tfds.core.BuilderConfig):
  """Build options: use_detections (read the bbox_root file when present), num_threads (image
  reading), decode_images (also decode every JPEG at 1/8 scale to check it)."""
  use_detections: bool = True
  num_threads: int = 8
  decode_images: bool = False


class Builder(pose_builder.PoseDatasetBuilder):
  """MuPoTS-3D test frames, all annotated people of a frame per record."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  SKELETON = skeleton.MUCO
  MULTI_PERSON = True
  HAS_DETECTIONS = True
  MANUAL_DOWNLOAD_INSTRUCTIONS = _INSTRUCTIONS
  BUILDER_CONFIG_CLASS = MuPoTSConfig
  BUILDER_CONFIGS = [MuPoTSConfig(name="default", description="All 20 sequences, ground truth and "
                                  "(when present) RootNet detections.")]
  DEFAULT_CONFIG_NAME = "default"
  HOMEPAGE = "http://gvv.mpi-inf.mpg.de/projects/SingleShotMultiPerson/"
  CITATION = """\
@inproceedings{mehta2018single,
  author    = {Mehta, Dushyant and Sotnychenko, Oleksandr and Mueller, Franziska and Xu, Weipeng and
               Sridhar, Srinath and Pons-Moll, Gerard and Theobalt, Christian},
  title     = {Single-Shot Multi-Person 3D Pose Estimation From Monocular RGB},
  booktitle = {3DV}, year = {2018}
}
@inproceedings{moon2019camera,
  author    = {Moon, Gyeongsik and Chang, Ju Yong and Lee, Kyoung Mu},
  title     = {Camera Distance-aware Top-down Approach for 3D Multi-person Pose Estimation from a Single RGB Image},
  booktitle = {ICCV}, year = {2019}
}"""

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    required = [ANNOTATION_FILE, IMAGE_DIR + "/"]
    root = manual_io.manual_root(self.name, dl_manager, required, _INSTRUCTIONS)
    manual_io.require_paths(self.name, root, required, _INSTRUCTIONS)
    return {"test": self._generate_examples(root)}

  def _parse(self, root: pathlib.Path) -> list[dict[str, Any]]:
    """Per image (images[] order): ids, intrinsics, file name and the stacked people arrays."""
    table = manual_io.coco_table(FIELDS, ANNOTATION_FILE,
                                 manual_io.load_json(self.name, root / ANNOTATION_FILE), sizes=False)
    frames = []
    for img in table:
      where_img = f"{ANNOTATION_FILE}: images[{img.index}]"
      image_id, file_name = img.id, img.file_name
      seq, frame = parse_file_name(file_name, where_img)
      intrinsic = FIELDS.array(where_img, img.record, "intrinsic", (4,))
      people = collections.defaultdict(list)
      for i_ann, ann in img.annotations:
        where = f"{ANNOTATION_FILE}: annotations[{i_ann}]"
        people["bbox"].append(FIELDS.array(where, ann, "bbox", (4,)))
        cam = FIELDS.array(where, ann, "keypoints_cam", (None, 3))
        uv = FIELDS.array(where, ann, "keypoints_img", (cam.shape[0], 2))
        vis = (FIELDS.array(where, ann, "keypoints_vis", (cam.shape[0],)) > 0
               if "keypoints_vis" in ann else np.ones(cam.shape[0]))
        people["joints_cam"].append(pad_joints(cam, where, "keypoints_cam"))
        people["joints_img"].append(pad_joints(uv, where, "keypoints_img"))
        people["joints_vis"].append(pad_joints(vis[:, None].astype(np.float64), where, "keypoints_vis")[:, 0])
        # 0/1 in the 3DMPPE file; some converters write JSON booleans.
        people["is_valid"].append(float(bool(FIELDS.get(where, ann, "is_valid", (int, float, bool)))))
      shapes = {"bbox": (4,), "joints_cam": (NUM_JOINTS, 3), "joints_img": (NUM_JOINTS, 2),
                "joints_vis": (NUM_JOINTS,), "is_valid": ()}
      arrays = {k: np.stack(people[k]) if people[k] else np.zeros((0, *s)) for k, s in shapes.items()}
      frames.append({"record": f"{where_img} ({file_name})", "key": f"i{img.index}", "image_id": image_id,
                     "file_name": file_name, "subject": seq, "frame": frame,
                     "focal": intrinsic[:2], "principal": intrinsic[2:], **arrays})
    return frames

  def _generate_examples(self, root: pathlib.Path) -> Iterator[tuple[str, dict[str, Any]]]:
    cfg = self.builder_config
    skips = self.skip_counter("test")
    frames = self._parse(root)
    detections = None
    det_path = next((root / p for p in DETECTION_FILES if (root / p).exists()), None)
    if cfg.use_detections and det_path is not None:
      detections = load_detections(manual_io.load_json(self.name, det_path), det_path.name,
                                   {fr["image_id"] for fr in frames})
      pose_builder.check_crop_boxes(self.name, [b for d in detections.values() for b in d[0]], det_path.name)
      log.info("%s: detections for %d images from %s", self.name, len(detections), det_path)
    empty = (np.zeros((0, 4)), np.zeros((0, 3)))
    for fr, data, reason in manual_io.iter_jpegs(frames, lambda fr: root / IMAGE_DIR / fr["file_name"],
                                                 cfg.num_threads, cfg.decode_images):
      if data is None:
        skips.skip(reason, fr["file_name"])
        continue
      det = None if detections is None else detections.get(fr["image_id"], empty)
      yield fr["key"], self.make_multi_person_example(
          fr["record"], image=data, bbox=fr["bbox"], joints_img=fr["joints_img"],
          joints_vis=fr["joints_vis"], joints_cam=fr["joints_cam"], is_valid=fr["is_valid"],
          focal=fr["focal"], principal=fr["principal"], image_id=fr["image_id"],
          subject=fr["subject"], frame=fr["frame"],
          det_bbox=None if det is None else det[0], det_root_cam=None if det is None else det[1])
    skips.log()

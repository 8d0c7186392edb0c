"""MuCo-3DHP (3DMPPE release: MuCo-3DHP.json + composites) as a manual-download TFDS builder.

One record per selected person (pose_builder's single-person schema, SKELETON = skeleton.MUCO, 21
joints): joints_cam = keypoints_cam (mm, camera frame), joints_img = keypoints_img (px, as annotated),
joints_vis = 1, bbox = the annotation's bbox, focal / principal = the image's f / c, image_id = the
image's id (subject, action, frame = -1: composites have none). Only a "train" split.

Person selection (:func:`select_people`, applied per image, as the 3DMPPE training code does): the
person closest to the camera (smallest root depth Z; the first such on ties), plus every other person
whose root (Pelvis) is at least ``min_distance_mm`` (500) from the root of EVERY other annotated person
of the image, both in the image plane and in 3D. "In the image plane" is configurable:

- ``camera_xy`` (default; the 3DMPPE reference): the distance between the roots' camera-frame (X, Y),
  i.e. their offset parallel to the image plane with depth ignored. Since the 3D distance is never
  smaller, the 3D condition adds nothing under this reading.
- ``pixel_at_depth``: the roots' 2D pixel distance converted to mm at the NEARER root's depth:
  min(Z_i, Z_j) * |(X_i/Z_i, Y_i/Z_i) - (X_j/Z_j, Y_j/Z_j)| (per axis pixel offset / focal * Z, so the
  focal length cancels). Here the 3D condition matters: for people off the optical axis at different
  depths the image-plane distance can exceed the 3D one (roots (3000, 0, 2000) and (2800, 0, 2300):
  565 mm in the image plane, 361 mm in 3D -> the farther one is dropped).
"""

from __future__ import annotations

import dataclasses
import logging
import pathlib
from typing import Any, Iterator

import numpy as np
import tensorflow_datasets as tfds

from cascaded_lift import skeleton
from cascaded_lift.datasets import pose_builder
from cascaded_lift.datasets import manual_io

log = logging.getLogger(__name__)

ANNOTATION_FILE = "MuCo-3DHP.json"
NUM_JOINTS = 21
PLANE_DISTANCES = ("camera_xy", "pixel_at_depth")
FIELDS = manual_io.Fields(compact=True)  # "MuCo-3DHP.json: annotations[2]: missing 'bbox'"

_INSTRUCTIONS = """\
MuCo-3DHP cannot be downloaded by code. Get the composited images and MuCo-3DHP.json of the 3DMPPE
release (https://github.com/mks0601/3DMPPE_POSENET_RELEASE, "MuCo" data link; the composites are
generated from MPI-INF-3DHP, http://gvv.mpi-inf.mpg.de/projects/SingleShotMultiPerson, whose licence
applies). Unpack into manual_dir so that it holds:
  <manual_dir>/MuCo-3DHP.json
  <manual_dir>/augmented_set/...jpg       (paths as in MuCo-3DHP.json's images[].file_name)
  <manual_dir>/unaugmented_set/...jpg"""


def select_people(roots_cam: np.ndarray, min_distance: float = 500.0, plane: str = "camera_xy") -> list[int]:
  """Indices (ascending) of the people a MuCo-3DHP image contributes to training.

  Args:
    roots_cam: (P, 3) root joints in the camera frame, mm (Z > 0).
    min_distance: mm; a non-closest person is kept only if its root is at least this far from every
      other person's root both in the image plane and in 3D.
    plane: how "in the image plane" is measured: "camera_xy" or "pixel_at_depth" (module docstring).
  Returns:
    The closest person (smallest Z) and every other person far enough from all others.
  """
  roots = np.asarray(roots_cam, dtype=np.float64).reshape(-1, 3)
  if plane not in PLANE_DISTANCES:
    raise ValueError(f"unknown plane distance {plane!r}; known: {PLANE_DISTANCES}")
  p = len(roots)
  if p == 0:
    return []
  diff = roots[:, None, :] - roots[None, :, :]
  dist_3d = np.linalg.norm(diff, axis=-1)
  if plane == "camera_xy":
    dist_plane = np.linalg.norm(diff[..., :2], axis=-1)
  else:
    ray = roots[:, :2] / roots[:, 2:3]  # normalised image coordinates (pixel offset / focal)
    near = np.minimum(roots[:, None, 2], roots[None, :, 2])
    dist_plane = np.linalg.norm(ray[:, None] - ray[None, :], axis=-1) * near
  far = (dist_plane >= min_distance) & (dist_3d >= min_distance)
  np.fill_diagonal(far, True)
  closest = int(np.argmin(roots[:, 2]))
  return sorted({closest} | {i for i in range(p) if far[i].all()})


@dataclasses.dataclass(eq=False)
class MuCoConfig(tfds.core.BuilderConfig):
  """Selection rule and build options.

  Attributes:
    min_distance_mm: root separation required of every person but the closest.
    plane_distance: "camera_xy" or "pixel_at_depth" (see the module docstring).
    num_threads: image-reading threads. decode_images: also decode each JPEG (1/8 scale) to check it.
  """
  min_distance_mm: float = 500.0
  plane_distance: str = "camera_xy"
  num_threads: int = 8
  decode_images: bool = False


class Builder(pose_builder.PoseDatasetBuilder):
  """MuCo-3DHP multi-person composites, one record per selected person."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  SKELETON = skeleton.MUCO
  MANUAL_DOWNLOAD_INSTRUCTIONS = _INSTRUCTIONS
  BUILDER_CONFIG_CLASS = MuCoConfig
  BUILDER_CONFIGS = [
      MuCoConfig(name="default", description="Closest person + people >= 500 mm from all others "
                 "(camera-frame X/Y and 3D root distance; the 3DMPPE rule)."),
      MuCoConfig(name="pixel_at_depth", description="As default, but the image-plane distance is the "
                 "roots' pixel distance converted to mm at the nearer root's depth.",
                 plane_distance="pixel_at_depth"),
  ]
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
    cfg = self.builder_config
    if cfg.plane_distance not in PLANE_DISTANCES:
      raise ValueError(f"{self.name}/{cfg.name}: plane_distance {cfg.plane_distance!r} not in {PLANE_DISTANCES}")
    root = manual_io.manual_root(self.name, dl_manager, [ANNOTATION_FILE], _INSTRUCTIONS)
    manual_io.require_paths(self.name, root, [ANNOTATION_FILE], _INSTRUCTIONS)
    return {"train": self._generate_examples(root)}

  def _parse(self, root: pathlib.Path) -> list[tuple[dict, list[tuple[str, dict]]]]:
    """[(image fields, [(record name, person fields) for selected people])] in images[] order."""
    cfg = self.builder_config
    table = manual_io.coco_table(FIELDS, ANNOTATION_FILE,
                                 manual_io.load_json(self.name, root / ANNOTATION_FILE), sizes=False)
    out = []
    n_people = 0
    for img in table:
      if not img.annotations:
        continue
      where_img = f"{ANNOTATION_FILE}: images[{img.index}]"
      image = {"id": img.id, "file_name": img.file_name,
               "f": FIELDS.array(where_img, img.record, "f", (2,)),
               "c": FIELDS.array(where_img, img.record, "c", (2,))}
      people = []
      for i_ann, ann in img.annotations:
        where = f"{ANNOTATION_FILE}: annotations[{i_ann}]"
        people.append((f"{where} ({image['file_name']})", {
            "key": f"a{i_ann}",
            "bbox": FIELDS.array(where, ann, "bbox", (4,)),
            "joints_cam": FIELDS.array(where, ann, "keypoints_cam", (NUM_JOINTS, 3)),
            "joints_img": FIELDS.array(where, ann, "keypoints_img", (NUM_JOINTS, 2)),
        }))
      roots = np.stack([p["joints_cam"][self.SKELETON.root] for _, p in people])
      if np.any(roots[:, 2] <= 0):
        bad = people[int(np.argmin(roots[:, 2]))][0]
        raise pose_builder.RecordError(f"{bad}: root depth {roots[:, 2].min():.1f} mm is not positive")
      keep = select_people(roots, cfg.min_distance_mm, cfg.plane_distance)
      n_people += len(people)
      out.append((image, [people[k] for k in keep]))
    n_kept = sum(len(p) for _, p in out)
    log.info("%s: %d images, %d people, %d selected (%s, %.0f mm)", self.name, len(out), n_people,
             n_kept, cfg.plane_distance, cfg.min_distance_mm)
    return out

  def _generate_examples(self, root: pathlib.Path) -> Iterator[tuple[str, dict[str, Any]]]:
    cfg = self.builder_config
    skips = self.skip_counter("train")
    vis = np.ones(NUM_JOINTS, np.float32)
    for (image, people), data, reason in manual_io.iter_jpegs(
        self._parse(root), lambda item: root / item[0]["file_name"], cfg.num_threads, cfg.decode_images):
      if data is None:
        for _ in people:
          skips.skip(reason, image["file_name"])
        continue
      for record, p in people:
        yield p["key"], self.make_example(
            record, image=data, bbox=p["bbox"], joints_img=p["joints_img"], joints_vis=vis,
            joints_cam=p["joints_cam"], focal=image["f"], principal=image["c"], image_id=image["id"])
    skips.log()

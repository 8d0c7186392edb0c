"""The built-in synthetic pose dataset: procedurally posed and rendered people, nothing to download.

Each example: a kinematic Human3.6M-skeleton body (bone lengths around a mean adult, one body per
"subject"), joint angles within anatomical limits, any yaw, a random camera (distance 3.5-7 m, focal
0.9-1.6 x width, near-centred principal point, looking down 10..30 degrees or up to 10), rendered
with OpenCV as shaded limbs on a textured background (see render.py). Same features as Human3.6M
(pose_builder's single-person schema, SKELETON = H36M, has_depth = 1, every joint annotated), so
the whole pipeline runs on it; the stored joints_img are the exact pinhole projections of joints_cam
through the stored focal/principal (no lens distortion).

Deterministic: example i of a split depends only on (config.seed, split, i) and its subject's body
on (config.seed, subject). Train and test use disjoint subjects (train 1..num_train_subjects, test
after them), like Human3.6M's protocols. `action` is the pose family (kinematics.POSE_FAMILIES).

Configs: 'small' (64x64 px, 48 train / 16 test; tests), 'default' (256x256, 20000 / 2000), 'hd'
(1000x1000 like Human3.6M frames, 2000 / 200; benchmarks), 'small_2d' (like 'small', but stored as
a 2D-only dataset on the MPII joint set, to exercise 3D/2D mixing and joint mapping by name). A
custom SyntheticConfig instance can be passed as `config=` to the builder.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import sys
from typing import Any, Iterator

import numpy as np
import tensorflow_datasets as tfds

from cascaded_lift import geometry
from cascaded_lift import skeleton
from cascaded_lift.datasets import pose_builder
from cascaded_lift.datasets.synthetic import kinematics
from cascaded_lift.datasets.synthetic import render

_SPLIT_CODES = {"train": 0, "test": 1}
_TEST_ID_OFFSET = 10_000_000  # test image ids follow train ids so ids are unique over splits
# Splits at least this large are rendered by a pool of processes, one per available core (rendering,
# about 2.5 ms a 128 px frame, is most of a build); smaller ones in-process, where a pool's start-up
# (a fresh interpreter per worker) would cost more than it saves.
PARALLEL_MIN_EXAMPLES = 2000
BUILD_WORKERS: int | None = None  # None: one per core available to this process (at most 8)


@dataclasses.dataclass(eq=False)
class SyntheticConfig(tfds.core.BuilderConfig):
  """Size and seed of a synthetic dataset build.

  Attributes:
    width, height: frame size in px.
    num_train, num_test: examples per split.
    num_train_subjects, num_test_subjects: distinct bodies per split (disjoint between splits).
    seed: master seed; the whole dataset is a function of it.
    jpeg_quality: OpenCV JPEG quality of the stored frames.
    skeleton: joint set of the stored labels ("h36m", or "mpii" to imitate a 2D dataset: the
      Human3.6M joints mapped by name, joints MPII lacks dropped).
    with_depth: store joints_cam (has_depth = 1); False imitates a 2D-only dataset.
    focal_range: focal length range, in multiples of the image width.
    depth_range_mm: range of the root's distance from the camera, mm.
  """
  width: int = 256
  height: int = 256
  num_train: int = 20000
  num_test: int = 2000
  num_train_subjects: int = 8
  num_test_subjects: int = 2
  seed: int = 0
  jpeg_quality: int = 90
  skeleton: str = "h36m"
  with_depth: bool = True
  focal_range: tuple[float, float] = (0.9, 1.6)
  depth_range_mm: tuple[float, float] = (3500.0, 7000.0)


def generate_example(config: SyntheticConfig, split: str, index: int,
                     bodies: dict[int, kinematics.Body] | None = None) -> dict[str, Any]:
  """One example as plain arrays (image (H, W, 3) uint8 RGB, not yet encoded) plus its ids.

  Args:
    config: the dataset config (size, seed, subject counts).
    split: "train" or "test".
    index: example index within the split.
    bodies: optional cache {subject: Body}; filled as a side effect.
  Returns:
    dict with image, bbox (4,), joints_img (18, 2), joints_cam (18, 3), focal (2,), principal (2,),
    image_id, subject, action, frame.
  """
  code = _SPLIT_CODES[split]
  rng = np.random.default_rng([config.seed, code, index])
  n_subj = config.num_train_subjects if code == 0 else config.num_test_subjects
  subject = int(rng.integers(n_subj)) + 1 + (0 if code == 0 else config.num_train_subjects)
  if bodies is not None and subject in bodies:
    body = bodies[subject]
  else:
    body = kinematics.sample_body(np.random.default_rng([config.seed, 1000 + subject]))
    if bodies is not None:
      bodies[subject] = body
  family, angles = kinematics.sample_angles(rng)
  joints_body = kinematics.forward_kinematics(body, angles)
  w, h = config.width, config.height
  focal, principal = render.sample_intrinsics(rng, w, h, tuple(config.focal_range))
  r_cam = render.body_to_camera_rotation(rng)
  joints_cam = render.place_person(joints_body, r_cam, focal, principal, w, h, rng,
                                   tuple(config.depth_range_mm))
  joints_img = geometry.camera_to_pixel(joints_cam, focal, principal)
  image = render.render_background(rng, w, h)
  image = render.render_person(image, joints_cam, focal, principal, body.girth, rng)
  image = render.finish(image, rng)
  # Annotated box: the joints' bounding box enlarged 1.2x about its centre (as Human3.6M's).
  lo, hi = joints_img.min(0), joints_img.max(0)
  centre, size = (lo + hi) / 2, (hi - lo) * 1.2 + 1.0
  bbox = np.concatenate([centre - size / 2, size])
  return {
      "image": image, "bbox": bbox, "joints_img": joints_img, "joints_cam": joints_cam,
      "focal": focal, "principal": principal,
      "image_id": index + code * _TEST_ID_OFFSET, "subject": subject, "action": family, "frame": index,
  }


class Builder(pose_builder.PoseDatasetBuilder):
  """Synthetic people on the Human3.6M skeleton; builds in seconds, no download."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  SKELETON = skeleton.H36M
  BUILDER_CONFIG_CLASS = SyntheticConfig
  BUILDER_CONFIGS = [
      SyntheticConfig(name="small", description="64x64 frames, 48 train / 16 test (tests).",
                      width=64, height=64, num_train=48, num_test=16, num_train_subjects=4,
                      num_test_subjects=2),
      SyntheticConfig(name="default", description="256x256 frames, 20000 train / 2000 test."),
      SyntheticConfig(name="studio", description="128x128 frames, 12000 train / 500 test, one camera "
                      "focal length and subjects 4.5-5.5 m away, like a capture studio (the CPU main job, "
                      "configs/synthetic.py).", width=128, height=128, num_train=12000, num_test=500,
                      focal_range=(1.2, 1.2), depth_range_mm=(4500.0, 5500.0)),
      SyntheticConfig(name="hd", description="1000x1000 frames (Human3.6M size), 2000 train / 200 test.",
                      width=1000, height=1000, num_train=2000, num_test=200),
      SyntheticConfig(name="small_2d", description="Like 'small' but 2D-only MPII-style labels (tests "
                      "of 3D/2D mixing).", width=64, height=64, num_train=32, num_test=8,
                      num_train_subjects=4, num_test_subjects=2, seed=1, skeleton="mpii", with_depth=False),
  ]
  DEFAULT_CONFIG_NAME = "default"
  DESCRIPTION = "Procedurally posed and rendered people on the Human3.6M skeleton."

  @property
  def skeleton(self) -> skeleton.Skeleton:
    return skeleton.get_skeleton(self.builder_config.skeleton)

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # nothing to download
    cfg = self.builder_config
    return {"train": self._generate_examples("train", cfg.num_train),
            "test": self._generate_examples("test", cfg.num_test)}

  def _generate_examples(self, split: str, num: int) -> Iterator[tuple[int, dict[str, Any]]]:
    cfg = self.builder_config
    workers = BUILD_WORKERS or min(
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1, 8)
    if num < PARALLEL_MIN_EXAMPLES or workers < 2 or not _spawn_can_start():
      _init_worker(cfg)
      rendered = map(_render_record, ((split, i) for i in range(num)))
      yield from self._examples(split, rendered)
      return
    # "spawn": the builder often runs inside a process where JAX has started threads, and fork would
    # copy those locks mid-use. Examples depend only on (seed, split, index), so any worker count
    # gives the same dataset; imap keeps the order.
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(workers, initializer=_init_worker, initargs=(cfg,)) as pool:
      yield from self._examples(split, pool.imap(_render_record, ((split, i) for i in range(num)), chunksize=64))

  def _examples(self, split: str, rendered: Iterator[dict[str, Any]]) -> Iterator[tuple[int, dict[str, Any]]]:
    cfg = self.builder_config
    for i, ex in enumerate(rendered):
      yield i, self.make_example(
          f"{split}[{i}]", image=ex["image"], bbox=ex["bbox"], joints_img=ex["joints_img"],
          joints_vis=ex["joints_vis"], joints_cam=ex["joints_cam"] if cfg.with_depth else None,
          focal=ex["focal"] if cfg.with_depth else None, principal=ex["principal"] if cfg.with_depth else None,
          image_id=ex["image_id"], subject=ex["subject"], action=ex["action"], frame=ex["frame"])


def _spawn_can_start() -> bool:
  """Whether spawned workers can re-create this process's __main__: they re-import it from its file,
  so a script read from stdin (`python - < script`) would make every worker die at start and the pool
  replace them forever. Interactive sessions and `python -c` have no main file, which spawn skips."""
  main_file = getattr(sys.modules.get("__main__"), "__file__", None)
  return main_file is None or os.path.isfile(main_file)


# Per-process state of the renderer: the config, the stored joint set and a cache of bodies.
_WORKER: dict[str, Any] = {}


def _init_worker(config: SyntheticConfig) -> None:
  _WORKER.update(config=config, skeleton=skeleton.get_skeleton(config.skeleton), bodies={})


def _render_record(job: tuple[str, int]) -> dict[str, Any]:
  """Example `index` of `split` with its image JPEG-encoded and its joints mapped to the stored set."""
  split, index = job
  cfg, dst = _WORKER["config"], _WORKER["skeleton"]
  ex = generate_example(cfg, split, index, _WORKER["bodies"])
  vis = np.ones(kinematics.SKEL.num_joints, np.float32)
  ex["joints_img"], ex["joints_vis"] = skeleton.map_joints(ex["joints_img"], vis, kinematics.SKEL, dst)
  ex["joints_cam"], _ = skeleton.map_joints(ex["joints_cam"], vis, kinematics.SKEL, dst)
  ex["image"] = pose_builder.encode_jpeg(ex["image"], cfg.jpeg_quality)
  return ex

"""Human3.6M (3DMPPE release layout) as a manual-download TFDS builder; see README.md.

Records (pose_builder's single-person schema, SKELETON = skeleton.H36M, 18 joints):
  joints_cam  world joints through the subject's camera (X_cam = R X_world + t, the stored t read in
              the convention detected for that subject and camera), plus Thorax = shoulder midpoint.
  joints_img  the pinhole projection of joints_cam through the camera's (f, c), without lens
              distortion (as 3DMPPE; the released 2D annotations include distortion, which moves
              joints by up to ~2-3 px near the image border).
  joints_vis  the annotation's keypoints_vis when present, else all 1 (Thorax: both shoulders).
  bbox        the annotation's bbox (2D keypoint box enlarged 1.2x), unprocessed.
  ids         image_id (the data file's), subject, action = action_idx (2..16), frame = frame_idx.
  det_*       optional detected box and root position from bbox_root/bbox_root_human36m_output.json
              matched by image_id (has_det = 0 where the file has no entry or is absent). det_bbox is
              stored as the file holds it: a CROP box (RootNet squared it and enlarged it 1.25x), which
              the pipeline crops as it is (data/schema.py); bbox stays the unprocessed PERSON box.

Configs: ``protocol1`` (train S1, S5, S6, S7, S8 / test S9, S11) and ``protocol2`` (train S1, S5, S6,
S7, S8, S9 / test S11); train every 5th frame, test every 64th (frame_idx % n == 0). Subjects and
sampling are config fields: pass ``Human36MConfig(name=..., train_subjects=..., ...)`` as config.

Skipped with a count (SkipCounter, logged per split): frames of the known corrupt sequence
s_11_act_02_subact_02_ca_01 (config.skip_sequences), and frames whose image file is missing, empty,
not a JPEG or truncated (and, with config.decode_images, undecodable).

Speed: annotation files are loaded one subject at a time (a subject's files take ~1-2 GB of RAM while
loaded); image bytes are read by a thread pool (config.num_threads) in file order and stored as they
are (no re-encoding). TFDS writes one split at a time and cannot resume a split; see README.md for
measured costs.
"""

from __future__ import annotations

import dataclasses
import logging
import pathlib
from typing import Any, Iterator

import numpy as np
import tensorflow_datasets as tfds

from cascaded_lift import geometry
from cascaded_lift import skeleton
from cascaded_lift.datasets import pose_builder
from cascaded_lift.datasets import manual_io
from cascaded_lift.datasets.human36m import h36m_source as src

log = logging.getLogger(__name__)

_INSTRUCTIONS = """\
Human3.6M cannot be downloaded by code. Register at http://vision.imar.ro/human3.6m and get the
3DMPPE release of the frames and annotations (https://github.com/mks0601/3DMPPE_POSENET_RELEASE,
"Human3.6M" data links: images of subjects 1, 5, 6, 7, 8, 9, 11 and the annotations archive).
Unpack into manual_dir so that it holds:
  <manual_dir>/images/s_01_act_02_subact_01_ca_01/s_01_act_02_subact_01_ca_01_000001.jpg ...
  <manual_dir>/annotations/Human36M_subject{1,5,6,7,8,9,11}_data.json
  <manual_dir>/annotations/Human36M_subject{1,5,6,7,8,9,11}_camera.json
  <manual_dir>/annotations/Human36M_subject{1,5,6,7,8,9,11}_joint_3d.json
  <manual_dir>/bbox_root/bbox_root_human36m_output.json   (optional: detected boxes and root depths)
Only the subjects of the chosen config are required."""


@dataclasses.dataclass(eq=False)
class Human36MConfig(tfds.core.BuilderConfig):
  """Subjects, frame sampling and build options.

  Attributes:
    train_subjects, test_subjects: subject numbers per split; an empty tuple drops the split.
    train_every, test_every: keep frames with frame_idx % every == 0 (frame_idx 0-based).
    skip_sequences: image folders known to be corrupt; their frames are skipped with a count.
    use_detections: read bbox_root/bbox_root_human36m_output.json when present.
    num_threads: image-reading threads (1 = read in the generator's thread).
    decode_images: also decode every JPEG (at 1/8 scale) to catch corrupt data; slower.
  """
  train_subjects: tuple[int, ...] = (1, 5, 6, 7, 8)
  test_subjects: tuple[int, ...] = (9, 11)
  train_every: int = 5
  test_every: int = 64
  skip_sequences: tuple[str, ...] = ("s_11_act_02_subact_02_ca_01",)
  use_detections: bool = True
  num_threads: int = 8
  decode_images: bool = False


class Builder(pose_builder.PoseDatasetBuilder):
  """Human3.6M frames with 3D joints in the camera frame (3DMPPE release layout)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  SKELETON = skeleton.H36M
  HAS_DETECTIONS = True
  MANUAL_DOWNLOAD_INSTRUCTIONS = _INSTRUCTIONS
  BUILDER_CONFIG_CLASS = Human36MConfig
  BUILDER_CONFIGS = [
      Human36MConfig(name="protocol1", description="Protocol 1: train S1, S5, S6, S7, S8 (every 5th "
                     "frame) / test S9, S11 (every 64th frame); MPJPE."),
      Human36MConfig(name="protocol2", description="Protocol 2: train S1, S5, S6, S7, S8, S9 (every 5th "
                     "frame) / test S11 (every 64th frame); PA-MPJPE.",
                     train_subjects=(1, 5, 6, 7, 8, 9), test_subjects=(11,)),
  ]
  DEFAULT_CONFIG_NAME = "protocol1"
  HOMEPAGE = "http://vision.imar.ro/human3.6m"
  CITATION = """\
@article{h36m_pami,
  author  = {Ionescu, Catalin and Papava, Dragos and Olaru, Vlad and Sminchisescu, Cristian},
  title   = {Human3.6M: Large Scale Datasets and Predictive Methods for 3D Human Sensing in Natural Environments},
  journal = {IEEE Transactions on Pattern Analysis and Machine Intelligence},
  volume  = {36}, number = {7}, pages = {1325--1339}, year = {2014}
}
@inproceedings{moon2019camera,
  author    = {Moon, Gyeongsik and Chang, Ju Yong and Lee, Kyoung Mu},
  title     = {Camera Distance-aware Top-down Approach for 3D Multi-person Pose Estimation from a Single RGB Image},
  booktitle = {ICCV}, year = {2019}
}"""

  def __init__(self, *args: Any, **kwargs: Any):
    super().__init__(*args, **kwargs)
    # Filled while generating (inspected by tests and logged): {(subject, cam): convention}.
    self.camera_conventions: dict[tuple[int, int], str] = {}

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    cfg = self.builder_config
    plan = {"train": (tuple(cfg.train_subjects), cfg.train_every),
            "test": (tuple(cfg.test_subjects), cfg.test_every)}
    plan = {k: v for k, v in plan.items() if v[0]}
    if not plan:
      raise ValueError(f"{self.name}/{cfg.name}: no subjects in any split")
    for split, (_, every) in plan.items():
      if int(every) < 1:
        raise ValueError(f"{self.name}/{cfg.name}: {split}_every must be >= 1, got {every}")
    subjects = sorted({s for subj, _ in plan.values() for s in subj})
    required = [f for s in subjects for f in src.annotation_files(s)] + ["images/"]
    root = manual_io.manual_root(self.name, dl_manager, required, _INSTRUCTIONS)
    manual_io.require_paths(self.name, root, required, _INSTRUCTIONS)
    detections: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    det_path = root / src.DETECTIONS_FILE
    if cfg.use_detections and det_path.exists():
      detections = src.load_detections(manual_io.load_json(self.name, det_path), det_path.name)
      pose_builder.check_crop_boxes(self.name, [d[0] for d in detections.values()], det_path.name)
      log.info("%s: %d detections from %s", self.name, len(detections), det_path)
    else:
      log.info("%s: no detections (%s %s)", self.name, det_path,
               "absent" if cfg.use_detections else "not used: use_detections=False")
    return {split: self._generate_examples(root, split, subj, int(every), detections)
            for split, (subj, every) in plan.items()}

  def _generate_examples(self, root: pathlib.Path, split: str, subjects: tuple[int, ...], every: int,
                         detections: dict[int, tuple[np.ndarray, np.ndarray]]
                         ) -> Iterator[tuple[str, dict[str, Any]]]:
    cfg = self.builder_config
    skips = self.skip_counter(split)
    skip_sequences = set(cfg.skip_sequences)
    n_written = n_det = 0
    for subject in subjects:
      frames, cams, joints = self._load_subject(root, subject, every)
      kept = []
      for fr in frames:
        if fr.sequence in skip_sequences:
          skips.skip("known corrupt sequence", fr.file_name)
        else:
          kept.append(fr)
      translations = self._camera_translations(subject, kept, cams, joints)
      jf = src.joint_file(subject)
      read = manual_io.iter_jpegs(kept, lambda fr: root / "images" / fr.file_name, cfg.num_threads,
                                  cfg.decode_images)
      for fr, data, reason in read:
        if data is None:
          skips.skip(reason, fr.file_name)
          continue
        cam = cams[fr.cam]
        joints_cam = geometry.world_to_camera(src.add_thorax(src.world_joints(joints, fr, jf)),
                                              cam.R, translations[fr.cam])
        if np.any(joints_cam[:, 2] <= 0):
          raise pose_builder.RecordError(
              f"{fr.where} ({fr.file_name}): joints lie behind camera {fr.cam} of "
              f"{src.camera_file(subject)} (z <= 0 mm)")
        vis = np.ones(src.NUM_SOURCE_JOINTS) if fr.vis is None else (fr.vis > 0).astype(np.float64)
        det = detections.get(fr.image_id)
        n_det += det is not None
        n_written += 1
        yield fr.key, self.make_example(
            f"{fr.where} ({fr.file_name})", image=data, bbox=fr.bbox,
            joints_img=geometry.camera_to_pixel(joints_cam, cam.f, cam.c),
            joints_vis=src.add_thorax_vis(vis), joints_cam=joints_cam, focal=cam.f, principal=cam.c,
            image_id=fr.image_id, subject=subject, action=fr.action, frame=fr.frame,
            det_bbox=None if det is None else det[0], det_root_cam=None if det is None else det[1])
      del frames, joints  # a subject's annotations take a lot of memory; free before the next
    log.info("%s[%s]: %d records from subjects %s (every %d frames), %d with detections",
             self.name, split, n_written, list(subjects), every, n_det)
    skips.log()

  def _load_subject(self, root: pathlib.Path, subject: int, every: int):
    """(frames sampled every `every`, {cam: Camera}, parsed _joint_3d.json) of one subject."""
    ann = root / "annotations"
    frames = src.parse_frames(manual_io.load_json(self.name, ann / src.data_file(subject)),
                              src.data_file(subject), subject, every)
    cams = src.parse_cameras(manual_io.load_json(self.name, ann / src.camera_file(subject)),
                             src.camera_file(subject))
    for fr in frames:
      if fr.cam not in cams:
        raise pose_builder.RecordError(f"{fr.where}: cam_idx {fr.cam} is not in {src.camera_file(subject)} "
                                       f"(cameras {sorted(cams)})")
    joints = manual_io.load_json(self.name, ann / src.joint_file(subject))
    if not isinstance(joints, dict):
      raise pose_builder.RecordError(f"{src.joint_file(subject)}: expected a JSON object "
                                     "{action: {subaction: {frame: 17 x 3}}}")
    log.info("%s: subject %d: %d frames (every %d)", self.name, subject, len(frames), every)
    return frames, cams, joints

  def _camera_translations(self, subject: int, frames: list[src.Frame], cams: dict[int, src.Camera],
                           joints: Any, sample: int = 32) -> dict[int, np.ndarray]:
    """{cam: t of X_cam = R X + t}, detecting each used camera's convention from its frames."""
    out = {}
    cf, jf = src.camera_file(subject), src.joint_file(subject)
    for cam_idx, cam_frames in sorted(src.frames_by_camera(frames).items()):
      picked = src.sample_evenly(cam_frames, sample)
      world = np.stack([src.world_joints(joints, fr, jf) for fr in picked])
      boxes = np.stack([fr.bbox for fr in picked])
      conv, scores = src.detect_convention(world, boxes, cams[cam_idx], f"{cf}: camera {cam_idx}")
      self.camera_conventions[(subject, cam_idx)] = conv
      other = next(c for c in src.CONVENTIONS if c != conv)
      log.info("%s: %s camera %d: convention X_cam = %s (%.0f%% of projected joints inside the "
               "annotated boxes over %d frames; %.0f%% with X_cam = %s)", self.name, cf, cam_idx, conv,
               100 * scores[conv], len(picked), 100 * scores[other], other)
      out[cam_idx] = cams[cam_idx].translation(conv)
    return out

"""The real Human3.6M fixture frames (../shared/fixtures/h36m_3dmppe) built as a small human36m dataset,
with or without a bbox_root file that holds what RootNet's holds: the ground-truth box processed once
(3DMPPE's process_bbox) and a root position offset from the annotated one by ROOT_OFFSET_MM."""

import json
import pathlib
import shutil

import numpy as np
import pytest

import reference_3dmppe as ref
from cascaded_lift.datasets import build as build_lib
from cascaded_lift.datasets.human36m import human36m_dataset_builder as h36m

# As tests/conftest.py's FIXTURES: a shared/fixtures folder beside the checkout.
FIXTURES = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "fixtures"
SUBJECTS = (1, 5, 7, 8)
CONFIG_NAME = "fixture"
ROOT_OFFSET_MM = np.array([40.0, -30.0, 120.0])  # |offset| = 130 mm


def detections(fixture: pathlib.Path) -> list[dict]:
  """bbox_root entries for every fixture frame: {image_id, bbox (processed once), root_cam, score}."""
  out = []
  for s in SUBJECTS:
    ann_dir = fixture / "annotations"
    data = json.loads((ann_dir / f"Human36M_subject{s}_data.json").read_text())
    cams = json.loads((ann_dir / f"Human36M_subject{s}_camera.json").read_text())
    joints = json.loads((ann_dir / f"Human36M_subject{s}_joint_3d.json").read_text())
    for ann in data["annotations"]:
      img = next(im for im in data["images"] if im["id"] == ann["image_id"])
      world = np.array(joints[str(img["action_idx"])][str(img["subaction_idx"])][str(img["frame_idx"])][0])
      cam = cams[str(img["cam_idx"])]
      root = np.array(cam["R"]) @ world + np.array(cam["t"])  # Pelvis, X_cam = R X + t
      box = ref.process_bbox(ann["bbox"], img["width"], img["height"])
      out.append({"image_id": img["id"], "bbox": box.tolist(), "root_cam": (root + ROOT_OFFSET_MM).tolist(),
                  "score": 1.0})
  return out


def build(tmp: pathlib.Path, with_detections: bool) -> str:
  """Builds the fixture frames (train and test splits: all four) into tmp/tfds; returns the data_dir.

  Skips the test when the fixtures are absent. The manual_dir gets copies of the annotation files and a
  link to the images (never a copy of them).
  """
  if not FIXTURES.is_dir():
    pytest.skip(f"real dataset samples not found at {FIXTURES}")
  fixture = FIXTURES / "h36m_3dmppe"
  manual = tmp / "manual"
  (manual / "annotations").mkdir(parents=True)
  (manual / "images").symlink_to(fixture / "images")
  for s in SUBJECTS:
    for kind in ("data", "camera", "joint_3d"):
      shutil.copy(fixture / f"annotations/Human36M_subject{s}_{kind}.json", manual / "annotations")
  if with_detections:
    (manual / "bbox_root").mkdir()
    (manual / "bbox_root/bbox_root_human36m_output.json").write_text(json.dumps(detections(fixture)))
  config = h36m.Human36MConfig(name=CONFIG_NAME, train_subjects=SUBJECTS, test_subjects=SUBJECTS, train_every=1,
                               test_every=1, num_threads=1)
  data_dir = tmp / "tfds"
  build_lib.build("human36m", config=config, manual_dir=manual, data_dir=data_dir, progress=False)
  return str(data_dir)


def spec(data_dir: str, split: str = "test", **fields) -> dict:
  """A dataset spec {name, split, config, data_dir} for the built fixture set, plus `fields`."""
  return {"name": "human36m", "split": split, "config": CONFIG_NAME, "data_dir": data_dir, **fields}


@pytest.fixture(scope="module")
def with_dets(tmp_path_factory) -> str:
  """A data_dir with the fixture frames built with a bbox_root file (the tests import this fixture)."""
  return build(tmp_path_factory.mktemp("h36m_det"), with_detections=True)


@pytest.fixture(scope="module")
def without_dets(tmp_path_factory) -> str:
  """A data_dir with the fixture frames built without detections."""
  return build(tmp_path_factory.mktemp("h36m_gt"), with_detections=False)

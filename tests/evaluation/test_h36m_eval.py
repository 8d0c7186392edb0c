"""The Human3.6M evaluator (configs/h36m.py) on the real fixture frames built with and without a bbox_root
file: which boxes it used is written to metrics.json, and with detections both settings are kept."""

import json
import logging
import pathlib

import pytest

import h36m_fixture
from h36m_fixture import with_dets, without_dets  # noqa: F401  (pytest fixtures)
from cascaded_lift.evaluation import evaluate as evaluate_lib
from cascaded_lift.evaluation import h36m
from cascaded_lift.inference import predictor as inference
from cascaded_lift.inference.cli import load_config

REPO = pathlib.Path(__file__).resolve().parents[2]
TINY = ["model.resnet_depth=18", "model.resnet_width=8", "model.head_width=16", "model.bone_width=8",
        "model.lifter_width=32", "model.lifter_blocks=1", "model.lifter_layers_per_block=2",
        "model.context_bottlenecks=1", "model.joint_bottlenecks=1", "model.depth_bottlenecks=1",
        "model.volumetric_bottlenecks=1", "data.image_size=64", "data.output_size=16", "data.depth_bins=8",
        "data.worker_count=0", "data.read_threads=0", "eval.batch_size=4", "eval.num_plot_examples=2"]


def _config(data_dir, *extra):
  sets = TINY + [f"{s}.{k}={v}" for s in ("data.train_3d", "data.eval")
                 for k, v in (("config", h36m_fixture.CONFIG_NAME), ("data_dir", data_dir))]
  return load_config(str(REPO / "configs" / "h36m.py"), [f"--config.{s}" for s in sets + list(extra)])


@pytest.fixture(scope="module")
def variables(with_dets):
  return inference.random_variables(_config(with_dets), seed=0)


def test_detected_boxes_are_the_default_and_ground_truth_boxes_are_kept(with_dets, variables, tmp_path):
  config = _config(with_dets)
  assert config.data.eval.boxes == "auto" and evaluate_lib.evaluator_for("human36m") is h36m.evaluate_workdir
  results = h36m.evaluate_workdir(config, tmp_path, variables=variables)
  on_disk = json.loads((tmp_path / "eval" / "metrics.json").read_text())
  assert on_disk == json.loads(json.dumps(results))
  boxes = on_disk["boxes"]
  assert {k: boxes[k] for k in ("used", "requested", "box_kind", "records", "detected", "gt_fallback")} == {
      "used": "detected", "requested": "auto", "box_kind": "crop", "records": 4, "detected": 4, "gt_fallback": 0}
  # The detected roots are the annotated ones moved by ROOT_OFFSET_MM (130 mm); stored as float32.
  assert boxes["root_depth"] == "detection" and boxes["root_error_mm"] == pytest.approx(130.0, abs=0.01)
  gt = on_disk["gt_boxes"]
  assert gt == json.loads((tmp_path / "eval" / "gt_boxes" / "metrics.json").read_text())
  for name in ("predictions.json", "h36m_tables.md", "per_joint_mpjpe.png"):
    assert (tmp_path / "eval" / name).is_file() and (tmp_path / "eval" / "gt_boxes" / name).is_file()
  assert not [p for p in (tmp_path / "eval").iterdir() if p.name.startswith(".gt_boxes-")]  # scratch removed
  # These detections are the ground-truth boxes processed once (what RootNet writes): the same crops
  # up to the float32 rounding of the stored box (a few bilinear samples 1 grey level apart), so the
  # same errors to 1e-4 (relative).
  for key in ("mpjpe", "pa_mpjpe", "num_samples", "mean_pose_mpjpe"):
    assert on_disk[key] == pytest.approx(gt[key], rel=1e-4), key
  assert "mean_pose_mpjpe" in on_disk and "per_action" in on_disk and "gt_boxes" not in gt


def test_without_detections_ground_truth_boxes_and_a_warning(without_dets, variables, tmp_path, caplog):
  config = _config(without_dets)
  with caplog.at_level(logging.WARNING):
    results = h36m.evaluate_workdir(config, tmp_path, variables=variables)
  assert "built without detections" in caplog.text
  on_disk = json.loads((tmp_path / "eval" / "metrics.json").read_text())
  assert on_disk["boxes"] == {"used": "gt", "requested": "auto", "box_kind": "person", "records": 4,
                              "detected": 0, "gt_fallback": 4, "root_depth": None, "root_error_mm": None}
  assert "gt_boxes" not in on_disk and not (tmp_path / "eval" / "gt_boxes").exists()
  assert on_disk["mpjpe"] == pytest.approx(results["mpjpe"])
  with pytest.raises(ValueError, match="stores no detections"):
    h36m.evaluate_workdir(_config(without_dets, "data.eval.boxes=detected"), tmp_path / "b", variables=variables)


def test_ground_truth_boxes_on_request(with_dets, variables, tmp_path):
  results = h36m.evaluate_workdir(_config(with_dets, "data.eval.boxes=gt"), tmp_path, variables=variables)
  assert results["boxes"]["used"] == "gt" and results["boxes"]["requested"] == "gt" and "gt_boxes" not in results

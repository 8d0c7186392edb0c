"""Metric writers, drawing helpers and the stored feature schema."""

import json

import numpy as np

from cascaded_lift import skeleton as sk
from cascaded_lift.inference import plots as viz
from cascaded_lift.data import schema
from cascaded_lift.training import writers


def test_metric_writer_writes_jsonl_and_tensorboard_events(tmp_path):
  w = writers.MetricWriter(tmp_path)
  w.write_scalars(3, {"loss": 1.5, "loss/bone": 0.25})
  w.write_scalars(4, {"loss": float("nan")})
  w.close()
  lines = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert lines[0]["step"] == 3 and lines[0]["loss"] == 1.5 and lines[0]["loss/bone"] == 0.25
  assert lines[1]["loss"] == "nan"  # JSON has no NaN: written as a string, not dropped
  events = list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
  assert len(events) == 1 and events[0].stat().st_size > 50
  # The scalar tag is in the event file (TFRecord framing around Summary protos).
  assert b"train/loss/bone" in events[0].read_bytes()


def test_disabled_writer_writes_nothing(tmp_path):
  w = writers.MetricWriter(tmp_path / "w", enabled=False)
  w.write_scalars(1, {"loss": 1.0})
  w.close()
  assert not (tmp_path / "w").exists()


def test_draw_skeleton_marks_joints_and_colours_sides():
  img = np.zeros((64, 64, 3), np.uint8)
  joints = np.stack([np.linspace(10, 50, 18), np.full(18, 32.0)], 1)
  joints[sk.H36M.index("L_Wrist")] = (10, 10)
  joints[sk.H36M.index("L_Elbow")] = (30, 10)
  out = viz.draw_skeleton(img, joints, sk.H36M)
  assert img.sum() == 0  # the input is not modified
  for x, y in np.round(joints).astype(int):
    assert np.all(out[y, x] == 255)  # white joint dots
  # The left forearm (L_Elbow-L_Wrist) is drawn in the left colour (BGR blue-ish), between the dots.
  b, g, r = out[10, 20].astype(int)
  assert b > r and b > 100


def test_schema_resolves_joint_and_person_axes():
  specs = schema.feature_specs(18)
  assert specs["joints_cam"][0] == (18, 3) and specs["joints_vis"][0] == (18,)
  multi = schema.feature_specs(21, multi_person=True)
  assert multi["joints_img"][0] == (None, 21, 2) and "is_valid" in multi
  det = schema.feature_specs(18, detections=True)
  assert det["det_bbox"][0] == (4,) and det["has_det"][1] == np.float32

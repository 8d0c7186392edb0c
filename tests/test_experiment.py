"""experiment.train_and_evaluate in-process: both stages of the tiny config, then the registered evaluator."""

import json

import pytest

from cascaded_lift import experiment
from cascaded_lift.configs import tiny


@pytest.mark.slow
def test_train_then_evaluate_writes_metrics(tmp_path):
  config = tiny.get_config()
  config.data.train_3d.data_dir = config.data.eval.data_dir = str(tmp_path / "data")
  config.stage1.num_steps, config.stage2.num_steps = 2, 1
  results = experiment.train_and_evaluate(config, tmp_path / "run")
  written = json.loads((tmp_path / "run" / "eval" / "metrics.json").read_text())
  assert results["mpjpe"] == pytest.approx(written["mpjpe"]) and results["mpjpe"] > 0
  assert results["num_samples"] == written["num_samples"] > 0
  config.eval.enabled = False  # training only: nothing evaluated, nothing returned
  assert experiment.train_and_evaluate(config, tmp_path / "run2") == {}
  assert not (tmp_path / "run2" / "eval").exists()

"""Evaluates the latest checkpoint of a workdir and writes <workdir>/eval/ (metrics.json, tables, plots).

  python eval.py --config configs/synthetic.py --workdir /tmp/cascaded_lift_synthetic
  python eval.py --config configs/h36m.py:protocol=2 --workdir ~/runs/h36m_p2 --step 12345
"""

import pathlib

from absl import app, flags, logging
from ml_collections import config_flags

from cascaded_lift import errors
from cascaded_lift.evaluation.evaluate import evaluate
from cascaded_lift.training.writers import quiet_library_logs

_CONFIG = config_flags.DEFINE_config_file("config", None, "Configuration file the run was trained with.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir holding checkpoints/.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  logging.set_verbosity(logging.INFO)
  quiet_library_logs()
  results = errors.run_reporting_user_errors(
      "eval.py", lambda: evaluate(_CONFIG.value, _WORKDIR.value, step=_STEP.value))
  for key, value in results.items():
    if not isinstance(value, dict):
      print(f"{key}: {value}")
  for table in ("mupots_metrics.md", "h36m_tables.md"):
    path = pathlib.Path(_WORKDIR.value) / "eval" / table
    if path.exists():
      print(path.read_text())


if __name__ == "__main__":
  app.run(main, flags_parser=errors.flags_parser("eval.py"))

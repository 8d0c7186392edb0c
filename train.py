"""Trains CascadedLiftNet (both stages) and evaluates it.

  python train.py --config configs/synthetic.py --workdir /tmp/cascaded_lift_synthetic
  python train.py --config configs/h36m.py:protocol=1 --workdir ~/runs/h36m_p1

Re-running with the same --workdir resumes from its latest checkpoint.
"""

from absl import app, flags, logging
from ml_collections import config_flags

from cascaded_lift import errors
from cascaded_lift.experiment import train_and_evaluate
from cascaded_lift.training.loop import NonFiniteLossError
from cascaded_lift.training.writers import quiet_library_logs

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training configuration file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and evaluation output.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  logging.set_verbosity(logging.INFO)
  quiet_library_logs()
  try:
    results = errors.run_reporting_user_errors("train.py", lambda: train_and_evaluate(_CONFIG.value, _WORKDIR.value))
  except NonFiniteLossError as e:
    logging.error("%s", e)
    raise SystemExit(1) from None
  for key, value in results.items():
    if not isinstance(value, dict):
      print(f"{key}: {value}")


if __name__ == "__main__":
  app.run(main, flags_parser=errors.flags_parser("train.py"))

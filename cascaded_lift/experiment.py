"""train_and_evaluate(config, workdir): both training stages, then evaluation of the result.

The one place where training and evaluation meet; train.py calls it. Re-running with the same
workdir resumes training from its latest checkpoint (training/loop.py).
"""

from __future__ import annotations

import pathlib
from typing import Any

from cascaded_lift.evaluation import evaluate as evaluate_lib
from cascaded_lift.training import loop


def train_and_evaluate(config: Any, workdir: str | pathlib.Path) -> dict[str, Any]:
  """Trains (training.loop.train), then evaluates the final variables into workdir/eval/.

  Returns the evaluation metrics (empty dict when config.eval.enabled is False, or on processes other
  than 0).
  """
  variables = loop.train(config, workdir)
  if not config.eval.enabled:
    return {}
  return evaluate_lib.evaluate(config, workdir, variables=variables)

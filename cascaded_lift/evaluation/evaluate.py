"""evaluate(config, workdir): runs the evaluator registered for the eval dataset's name.

    from cascaded_lift.evaluation.evaluate import evaluate
    metrics = evaluate(config, workdir)          # the latest checkpoint; writes workdir/eval/

EVALUATORS maps a dataset name (config.data.eval.name) to its evaluator: "human36m" runs evaluation.h36m
(the paper's detected boxes when the dataset has them, and the ground-truth boxes beside them),
"mupots_3d" the MuPoTS-3D driver; other names use the single-person evaluator (the synthetic set). Each evaluator has the
signature (config, workdir, *, variables, step, split) -> metrics dict. Register another with
`register("name")`.
"""

from __future__ import annotations

import pathlib
from typing import Any, Callable

import jax

from cascaded_lift.evaluation import h36m, mupots, single_person
from cascaded_lift.training import parallel
from cascaded_lift.training import workdir as workdir_lib

Evaluator = Callable[..., dict[str, Any]]
EVALUATORS: dict[str, Evaluator] = {"human36m": h36m.evaluate_workdir, "mupots_3d": mupots.evaluate_workdir}
DEFAULT_EVALUATOR: Evaluator = single_person.evaluate_workdir


def register(name: str) -> Callable[[Evaluator], Evaluator]:
  """Decorator: makes `fn` the evaluator of eval datasets called `name`."""
  def add(fn: Evaluator) -> Evaluator:
    EVALUATORS[name] = fn
    return fn
  return add


def evaluator_for(name: str) -> Evaluator:
  """The evaluator of eval dataset `name` (the single-person one when none is registered)."""
  return EVALUATORS.get(name, DEFAULT_EVALUATOR)


def evaluate(config: Any, workdir: str | pathlib.Path, variables: dict[str, Any] | None = None,
             step: int | None = None, split: str | None = None) -> dict[str, Any]:
  """Evaluates `variables` (or the latest / `step` checkpoint of workdir) and writes workdir/eval/*.

  Runs on process 0 over its first local device (the eval sets are small next to training); other
  processes return an empty dict.
  """
  if jax.process_index() != 0:
    return {}
  if variables is not None:
    variables = parallel.to_host(variables)
  else:  # the workdir's checkpoints: the config must mean what the run that wrote them meant
    workdir_lib.check_meaning(config, workdir, "evaluate")
  return evaluator_for(config.data.eval.name)(config, workdir, variables=variables, step=step, split=split)

"""The live Predictor: a config's network with given or restored variables, on users' images.

  predictor = Predictor.from_checkpoint(config, workdir)        # or Predictor(config, variables)
  people = predictor.predict(image_rgb, [[x0, y0, w, h], ...], focal=(fx, fy), principal=(cx, cy))
  people[0].joints_2d   # (J, 2) px in the image
  people[0].pose_3d     # (J, 3) mm, root-relative (camera axes)
  people[0].pose_3d_cam # (J, 3) mm, camera frame (only with focal), root depth from root_depth_source

The boxes are person boxes (processed once: clipped, squared, enlarged), or with box_kind="crop" crop
windows used as they are (e.g. 3DMPPE's bbox_root detections, already squared and enlarged):
  people = predictor.predict(image_rgb, det_boxes, box_kind="crop")
Crops, 2D joints and camera space are inference/host.py's. The network's forward pass is models.build.make_predict_step, the one
evaluation also runs, and the model comes from cascaded_lift.platform.build_model.
"""

from __future__ import annotations

import functools
import pathlib
from typing import Any, Callable, Sequence

import jax
import numpy as np

from cascaded_lift import platform
from cascaded_lift import skeleton as skeleton_lib
from cascaded_lift.data import pipeline
from cascaded_lift.inference import host
from cascaded_lift.models.build import make_predict_step, variables_template
from cascaded_lift.training.checkpoints import restore_variables
from cascaded_lift.training.workdir import check_meaning

@functools.lru_cache(maxsize=16)
def _jitted_forward(model: Any, skeleton: skeleton_lib.Skeleton, flip_test: bool) -> Callable[..., Any]:
  # Shared by every Predictor with an equal model (Flax modules compare by their attributes), so a
  # second predictor of the same config reuses the compiled buckets.
  step = make_predict_step(model, skeleton, flip_test)
  return jax.jit(lambda variables, crops, boxes: tuple(step(variables, crops, boxes)[k] for k in ("coords", "pose_3d")))


def path_str(path: Sequence[Any]) -> str:
  """'params/backbone/conv1/kernel' for a jax tree path."""
  return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def check_variables(config: Any, variables: Any, what: str = "checkpoint") -> None:
  """Raises ValueError naming the first parameter whose presence or shape differs from the model of config."""
  def shapes(tree):  # parameters first, then the BatchNorm statistics
    tree = dict(tree)
    first = ("params", "batch_stats")
    order = [k for k in first if k in tree] + sorted(k for k in tree if k not in first)
    return {f"{k}/{path_str(p)}": tuple(np.shape(x)) for k in order
            for p, x in jax.tree_util.tree_flatten_with_path(tree[k])[0]}

  expected, got = shapes(variables_template(config)), shapes(variables)
  hint = f"(config: skeleton={config.skeleton!r}, depth_bins={config.data.depth_bins}, model={dict(config.model)})"
  for path, shape in expected.items():
    if path not in got:
      raise ValueError(f"{what} does not match the config: parameter {path!r} {shape} is missing {hint}")
    if got[path] != shape:
      raise ValueError(f"{what} does not match the config: parameter {path!r} has shape {got[path]} but the model "
                       f"built from the config expects {shape} {hint}")
  extra = [p for p in got if p not in expected]
  if extra:
    raise ValueError(f"{what} does not match the config: unexpected parameter {extra[0]!r} {got[extra[0]]} {hint}")


def random_variables(config: Any, seed: int = 0) -> dict[str, Any]:
  """Random weights for smoke tests, filled from the shape template on the host (no init compilation).

  Kernels He-normal, biases and BatchNorm means 0, BatchNorm scales and variances 1. This is not the
  training initialisation (training.builders.init_variables), which compiles the init graph.
  """
  rng = np.random.default_rng(seed)

  def fill(path, s):
    name = path_str(path).rsplit("/", 1)[-1]
    if name == "kernel":
      return np.asarray(rng.normal(0.0, np.sqrt(2.0 / np.prod(s.shape[:-1])), s.shape), s.dtype)
    return np.full(s.shape, 1.0 if name in ("scale", "var") else 0.0, s.dtype)

  return jax.tree_util.tree_map_with_path(fill, variables_template(config))


class Predictor(host.BasePredictor):
  """CascadedLiftNet of a config with given variables; see :meth:`host.BasePredictor.predict`.

  Args:
    config: the training config (model, skeleton, data.image_size / depth_bins / bbox_scale).
    variables: {'params', 'batch_stats'} (e.g. from training.checkpoints.restore_variables).
    flip_test: predict()'s default (None: config.eval.flip_test, else True).
    max_batch: people per network call; more run in chunks.
    check: compare the variables' shapes with the model's first (names the first mismatch).
  """

  def __init__(self, config: Any, variables: Any, *, flip_test: bool | None = None, max_batch: int = 32,
               check: bool = True):
    if check:
      check_variables(config, variables, "variables")
    self.config = config
    self.model = platform.build_model(config)
    self.skeleton = skeleton_lib.get_skeleton(config.skeleton)
    crop = pipeline.crop_config(config.data)  # the evaluation pipeline's crop size and box enlargement
    self.image_size = int(crop.image_size)
    self.output_size = self.model.output_size(self.image_size)
    self.bbox_scale = float(crop.bbox_scale)
    if flip_test is None:
      flip_test = bool(config.get("eval", {}).get("flip_test", True))
    self.flip_test = flip_test
    if max_batch < 1:
      raise ValueError(f"Predictor: max_batch must be >= 1, got {max_batch}")
    self.max_batch = int(max_batch)
    self.variables = jax.device_put({"params": variables["params"], "batch_stats": variables.get("batch_stats", {})})

  @classmethod
  def from_checkpoint(cls, config: Any, workdir: str | pathlib.Path, step: int | None = None,
                      **kwargs: Any) -> "Predictor":
    """Restores the latest (or `step`) orbax checkpoint of a training workdir; checks it against config."""
    check_meaning(config, workdir, f"checkpoint in {str(workdir)!r}")  # crop and heatmap geometry, network
    variables = restore_variables(workdir, step)
    check_variables(config, variables, f"checkpoint in {str(workdir)!r}")
    return cls(config, variables, check=False, **kwargs)

  @classmethod
  def random_init(cls, config: Any, seed: int = 0, **kwargs: Any) -> "Predictor":
    """Random weights (see :func:`random_variables`): a smoke test of the whole path."""
    return cls(config, random_variables(config, seed), check=False, **kwargs)

  def _run(self, crops: np.ndarray, boxes: np.ndarray, flip_test: bool) -> tuple[np.ndarray, np.ndarray]:
    fn = _jitted_forward(self.model, self.skeleton, flip_test)
    return jax.device_get(fn(self.variables, crops, boxes))

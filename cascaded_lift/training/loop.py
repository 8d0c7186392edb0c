"""train: the two-stage training loop with checkpoints, resumption and logging.

Stage 1 trains the crop model (everything but the lifter) with the stage-1 losses; stage 2 trains the
lifter on 3D data with the rest frozen (parameters and BatchNorm statistics). Each stage has its own
Adam optimizer with step decay. Checkpoints (orbax, async, atomic) are written every
`checkpoint_every_steps`, at the end of each stage and on SIGTERM; a run restarted with the same workdir
resumes at the same stage, step, optimizer state and data-iterator position. Losses are fetched from
the device only at logging and checkpoint steps (no host sync per step), and a non-finite loss stops the
run before anything after the last good checkpoint is saved.
"""

from __future__ import annotations

import contextlib
import pathlib
import signal
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from cascaded_lift import platform
from cascaded_lift.errors import CheckpointError, ConfigError
from cascaded_lift import skeleton as skeleton_lib
from cascaded_lift.data import pipeline as data_pipeline
from cascaded_lift.models.build import check_heatmap_size
from cascaded_lift.training import init_checkpoint, optim, parallel, released
from cascaded_lift.training.builders import backbone_weights_path, init_variables, load_pretrained
from cascaded_lift.training import workdir as workdir_lib
from cascaded_lift.training.checkpoints import ON_DAMAGED, Checkpointer
from cascaded_lift.training.step import TrainState, make_train_step, make_trunk_gradient_fn
from cascaded_lift.training.writers import MetricWriter, ProgressBar


class NonFiniteLossError(RuntimeError):
  """Raised when a training loss becomes NaN or infinite."""


class _SigtermFlag:
  """Turns SIGTERM into a flag the loop checks between steps (so it can save before exiting)."""

  def __init__(self):
    self.raised = False
    self._previous = None

  def __enter__(self):
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not the main thread: no handler, the loop still works
      self._previous = None
    return self

  def _handle(self, signum, frame):  # pylint: disable=unused-argument
    logging.warning("SIGTERM received: saving a checkpoint and stopping")
    self.raised = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def stage_data_config(config: Any, stage: int) -> Any:
  """The data section for `stage`: stage 2 uses 3D data only, and may override augmentation.

  Each stage has its own pipeline seed so that stage 2 does not replay stage 1's order.
  """
  data = config.data.copy_and_resolve_references()
  with data.unlocked():
    data.seed = int(config.data.seed) + 1000 * (stage - 1)
    if stage == 2:
      data.train_2d = None
    for key, value in dict(config[f"stage{stage}"].get("augment", None) or {}).items():
      data.augment[key] = value
  return data


def stage_schedule(config: Any) -> list[tuple[int, Any, Any, int, int]]:
  """[(stage, stage_cfg, data_cfg, steps_per_epoch, num_steps)] for the enabled stages, in order.

  One epoch is one pass over the 3D set's share of the batches (half of each batch when a 2D set is
  mixed in); stage_cfg.num_steps > 0 overrides num_epochs.
  """
  out = []
  for stage, scfg in ((1, config.stage1), (2, config.stage2)):
    if not scfg.enabled:
      continue
    data = stage_data_config(config, stage)
    steps_per_epoch = data_pipeline.steps_per_epoch(data, scfg.batch_size)
    num_steps = scfg.get("num_steps") or int(round(scfg.num_epochs * steps_per_epoch))
    out.append((stage, scfg, data, steps_per_epoch, num_steps))
  return out


def _fetch_and_check(pending: list[tuple[int, dict[str, jax.Array]]]) -> list[tuple[int, dict[str, float]]]:
  """Brings pending per-step metrics to the host and stops on the first non-finite loss."""
  fetched = parallel.to_host(pending)
  for step, metrics in fetched:
    bad = {k: float(v) for k, v in metrics.items() if not np.isfinite(v)}
    if bad:
      raise NonFiniteLossError(
          f"non-finite values at step {step}: {bad}; stopping. The last good checkpoint is kept; lower the "
          "learning rate or check the input data before resuming.")
  return [(s, {k: float(v) for k, v in m.items()}) for s, m in fetched]


def train(config: Any, workdir: str | pathlib.Path) -> dict[str, Any]:
  """Runs both stages from scratch or from the latest checkpoint in `workdir`.

  Process 0 holds the workdir's lock for the whole run (training/workdir.py: a second trainer is refused)
  and keeps the run's config in workdir/config.json; a resume with a config that changes what the
  checkpoints mean, or the training itself without config.resume.allow_changes, is refused.
  Returns the final {'params', 'batch_stats'} (replicated over the mesh).
  """
  # Before anything is created or compiled: "" or an ImageNet name not yet fetched stops here with the
  # command to run, instead of after the data build (or silently as a random start); so does a missing
  # config.init.checkpoint on a fresh run.
  init_checkpoint.check_start(config, workdir)
  workdir = workdir_lib.check_output_dir(workdir, "--workdir")
  with contextlib.ExitStack() as stack:
    # Before anything starts the JAX backend's threads: malloc options act on arenas created later.
    platform.configure_host(config)
    parallel.maybe_initialize_distributed()
    if jax.process_index() == 0:
      stack.enter_context(workdir_lib.WorkdirLock(workdir))
    return _train(config, workdir)


def _open_checkpoints(config: Any, workdir: pathlib.Path) -> tuple[Checkpointer, dict[str, Any] | None]:
  """The checkpointer and the latest checkpoint's stage bookkeeping (None for a fresh run).

  A latest checkpoint that cannot be read stops the run (CheckpointError naming it) unless
  config.checkpoint.on_damaged = "previous": then it is moved aside (nothing deleted) and the run resumes
  from the one before. Not the default, because the earlier state repeats work silently and a damaged
  checkpoint usually means a storage problem the user should see.
  """
  on_damaged = config.checkpoint.get("on_damaged", "error")
  if on_damaged not in ON_DAMAGED:
    raise ConfigError(f"config.checkpoint.on_damaged must be one of {ON_DAMAGED}, got {on_damaged!r}")
  checkpointer = Checkpointer(workdir, max_to_keep=config.checkpoint.max_to_keep,
                              async_save=config.checkpoint.async_save)
  while checkpointer.latest_step() is not None:
    step = checkpointer.latest_step()
    try:
      return checkpointer, checkpointer.restore_meta()
    except CheckpointError:
      if on_damaged != "previous":
        raise
      checkpointer.set_aside(step)
  return checkpointer, None


def _train(config: Any, workdir: pathlib.Path) -> dict[str, Any]:
  mesh = parallel.create_mesh()
  is_chief = jax.process_index() == 0
  skeleton = skeleton_lib.get_skeleton(config.skeleton)
  model = platform.build_model(config)
  check_heatmap_size(config, model)
  checkpointer, resume_meta = _open_checkpoints(config, workdir)
  released.check_not_imported(resume_meta, workdir)  # before config.json there is rewritten
  if is_chief:
    workdir_lib.check_resume(config, workdir, resuming=resume_meta is not None)
  writer = MetricWriter(workdir, enabled=is_chief)
  replicated = parallel.replicated_sharding(mesh)
  rng = jax.random.key(config.seed)
  variables = init_variables(model, config, rng, replicated)
  if config.init.get("checkpoint"):  # fine-tuning; a resumed run restores its own checkpoint instead
    if not resume_meta:
      variables = init_checkpoint.load(variables, config, replicated)
  else:
    variables = load_pretrained(variables, backbone_weights_path(config), replicated)

  if resume_meta:
    logging.info("resuming from %s at stage %d, step %d", checkpointer.directory, resume_meta["stage"],
                 resume_meta["global_step"])
  stages = stage_schedule(config)
  global_step = 0
  with _SigtermFlag() as sigterm:
    for stage, scfg, data_cfg, steps_per_epoch, num_steps in stages:
      start_global = global_step
      global_step += num_steps
      if resume_meta and resume_meta["stage"] > stage:
        continue  # finished before the restart; the later stage's checkpoint holds its result
      tx, schedule = optim.make_optimizer(scfg, variables["params"], steps_per_epoch)
      state = jax.jit(lambda v: TrainState(step=jnp.asarray(start_global, jnp.int32), params=v["params"],
                                           batch_stats=v["batch_stats"], opt_state=tx.init(v["params"])),
                      out_shardings=replicated)(variables)
      iterator = data_pipeline.create_train_iterator(
          data_cfg, batch_size=parallel.local_batch_size(scfg.batch_size), shard_index=jax.process_index(),
          shard_count=jax.process_count())
      stage_step = 0
      if resume_meta and resume_meta["stage"] == stage:
        state, data_state, _ = checkpointer.restore(state)
        if data_state is not None:
          iterator.set_state(data_state)
        stage_step = resume_meta["stage_step"]
      resume_meta = None
      variables = _run_stage(config, model, skeleton, mesh, checkpointer, writer, sigterm, tx, schedule,
                             state, iterator, stage, stage_step, num_steps, scfg, is_chief)
  checkpointer.close()
  writer.close()
  return variables


def _run_stage(config, model, skeleton, mesh, checkpointer, writer, sigterm, tx, schedule, state, iterator,
               stage, stage_step, num_steps, scfg, is_chief) -> dict[str, Any]:
  """Runs one stage from `stage_step` to `num_steps`; returns the final variables."""
  replicated = parallel.replicated_sharding(mesh)
  stage_start = int(parallel.to_host(state.step)) - stage_step  # global step at which this stage began
  step_fn = make_train_step(model, tx, config, skeleton, stage, stage_start, num_steps, schedule)
  train_step = jax.jit(step_fn, in_shardings=(replicated, parallel.batch_sharding(mesh)),
                       out_shardings=(replicated, replicated), donate_argnums=0)
  trunk_cfg = config.get("trunk_gradients", None)
  trunk_gradients = None
  if stage == 1 and trunk_cfg is not None and trunk_cfg.enabled:
    # At logging steps only: one extra forward and a K-term backward pass (cost: docs/design.md 5.3).
    trunk_gradients = jax.jit(make_trunk_gradient_fn(model, config, skeleton, stage_start, num_steps,
                                                     trunk_cfg.pattern),
                              in_shardings=(replicated, parallel.batch_sharding(mesh)), out_shardings=replicated)
  ckpt_every = config.checkpoint.every_steps
  log_every = config.log_every_steps
  bar = ProgressBar(num_steps, f"stage {stage}", enabled=is_chief and config.get("progress_bar", True))
  pending: list[tuple[int, dict[str, jax.Array]]] = []
  images_seen, t0 = 0, time.perf_counter()
  while stage_step < num_steps:
    batch = parallel.shard_batch(next(iterator), mesh)
    shares = None
    if trunk_gradients is not None and ((stage_step + 1) % log_every == 0 or stage_step + 1 == num_steps):
      shares = trunk_gradients(state, batch)  # the state and batch this step's update sees
    state, metrics = train_step(state, batch)
    if shares is not None:
      metrics = {**metrics, **shares}
    stage_step += 1
    images_seen += scfg.batch_size
    pending.append((stage_step, metrics))
    last = stage_step == num_steps
    do_ckpt = last or stage_step % ckpt_every == 0 or sigterm.raised
    if do_ckpt or stage_step % log_every == 0:
      fetched = _fetch_and_check(pending)
      pending = []
      dt = time.perf_counter() - t0
      ips = images_seen / max(dt, 1e-9)
      step_now, m = fetched[-1]
      global_now = int(parallel.to_host(state.step))
      writer.write_scalars(global_now, {**m, "images_per_s": ips, "stage": stage})
      bar.update(step_now, m["loss"], ips)
      if is_chief:
        terms = " ".join(f"{k.split('/')[-1]} {v:.4g}" for k, v in m.items() if k.startswith("loss/"))
        logging.info("stage %d step %d/%d (global %d): loss %.4f [%s] lr %.3g, %.1f img/s", stage, step_now,
                     num_steps, global_now, m["loss"], terms, m.get("learning_rate", float("nan")), ips)
      images_seen, t0 = 0, time.perf_counter()
    if do_ckpt:
      meta = {"stage": stage, "stage_step": stage_step, "global_step": int(parallel.to_host(state.step))}
      checkpointer.save(meta["global_step"], state, iterator.get_state(), meta)
      if sigterm.raised:
        checkpointer.wait()
        writer.flush()
        logging.warning("stopped by SIGTERM at stage %d step %d; checkpoint saved", stage, stage_step)
        raise SystemExit(143)
  bar.close()
  checkpointer.wait()
  return {"params": state.params, "batch_stats": state.batch_stats}

"""Cost of logging the stage-1 terms' trunk gradients (config.trunk_gradients), next to a train step.

Builds a config's model (default configs/synthetic.py, the main job), a random batch of its size, and
times the jitted stage-1 train step and the jitted trunk-gradient function (training/step.py,
make_trunk_gradient_fn: one forward pass and a backward pass per active term), and counts both
programs' FLOPs with XLA's cost analysis on the standard layers (a count the machine's load cannot
disturb). The overhead of leaving the logging on is t_trunk / (log_every_steps * t_step), since it runs
at logging steps only.

Prints a table, then one line starting with "JSON ". Usage:
  python benchmarks/bench_trunk_gradients.py [--config configs/synthetic.py] [--repeats 10]
"""

from __future__ import annotations

import argparse
import importlib.util
import pathlib
import statistics
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import common  # pylint: disable=wrong-import-position

from cascaded_lift import platform  # pylint: disable=wrong-import-position
from cascaded_lift import skeleton as sk  # pylint: disable=wrong-import-position
from cascaded_lift.training.builders import init_variables  # pylint: disable=wrong-import-position
from cascaded_lift.training.step import (TrainState, make_train_step,  # pylint: disable=wrong-import-position
                                         make_trunk_gradient_fn)

ROOT = pathlib.Path(__file__).resolve().parents[1]


def load_config(path: str):
  spec = importlib.util.spec_from_file_location("bench_config", ROOT / path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def median_ms(fn, *args, repeats: int) -> tuple[float, float]:
  """(first call incl. compile, median of `repeats` calls) in ms."""
  call = lambda: jax.block_until_ready(fn(*args))
  first = common.time_call(call) * 1e3
  return first, statistics.median(common.time_call(call) * 1e3 for _ in range(repeats))


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--config", default="configs/synthetic.py")
  p.add_argument("--repeats", type=int, default=10)
  args = p.parse_args()
  config = load_config(args.config)
  platform.configure_host(config)
  skeleton = sk.get_skeleton(config.skeleton)
  model = platform.build_model(config)
  variables = init_variables(model, config, jax.random.key(0))
  b, s, hm, d = config.stage1.batch_size, config.data.image_size, config.data.output_size, config.data.depth_bins
  rng = np.random.default_rng(0)
  j = skeleton.num_joints
  batch = {"image": rng.uniform(0, 255, (b, s, s, 3)).astype(np.float32),
           "bbox": np.tile(np.array([[0, 0, s, s]], np.float32), (b, 1)),
           "joints_vox": np.stack([rng.uniform(0, hm - 1, (b, j)), rng.uniform(0, hm - 1, (b, j)),
                                   rng.uniform(0, d - 1, (b, j))], -1).astype(np.float32),
           "joints_vis": np.ones((b, j), np.float32), "has_depth": np.ones((b,), np.float32),
           "valid": np.ones((b,), np.float32)}
  tx = optax.adam(1e-3)
  state = TrainState(step=jnp.asarray(0, jnp.int32), params=variables["params"],
                     batch_stats=variables["batch_stats"], opt_state=tx.init(variables["params"]))
  step = jax.jit(make_train_step(model, tx, config, skeleton, 1, 0, 1000))
  trunk = jax.jit(make_trunk_gradient_fn(model, config, skeleton, 0, 1000, config.trunk_gradients.pattern))
  step_first, step_ms = median_ms(step, state, batch, repeats=args.repeats)
  trunk_first, trunk_ms = median_ms(trunk, state, batch, repeats=args.repeats)
  overhead = trunk_ms / (config.log_every_steps * step_ms)
  # FLOPs on the standard layers: XLA cannot count inside the CPU plug-in's custom calls.
  standard = config.copy_and_resolve_references()
  standard.platform_ops = "standard"
  std_model = platform.build_model(standard)
  step_flops = common.xla_flops(make_train_step(std_model, tx, standard, skeleton, 1, 0, 1000), state, batch)
  trunk_flops = common.xla_flops(make_trunk_gradient_fn(std_model, standard, skeleton, 0, 1000,
                                                        standard.trunk_gradients.pattern), state, batch)
  print(common.table(["function", "first call ms", "median ms", "GFLOP (XLA)"],
                     [["train step", f"{step_first:.0f}", f"{step_ms:.1f}", f"{step_flops / 1e9:.2f}"],
                      ["trunk gradients", f"{trunk_first:.0f}", f"{trunk_ms:.1f}", f"{trunk_flops / 1e9:.2f}"]]))
  print(f"trunk gradients = {trunk_ms / step_ms:.2f} train steps by time, {trunk_flops / step_flops:.2f} by FLOPs; "
        f"every {config.log_every_steps} steps: {100 * overhead:.1f} % of stage 1")
  common.print_json({"benchmark": "bench_trunk_gradients", "config": args.config, "batch": b, "image_size": s,
                     "log_every_steps": config.log_every_steps, "train_step_ms": step_ms,
                     "trunk_gradients_ms": trunk_ms, "overhead_fraction": overhead,
                     "train_step_flops": step_flops, "trunk_gradients_flops": trunk_flops,
                     "machine": common.machine_info()})


if __name__ == "__main__":
  main()

"""Where the JAX training step's time goes, by kind of XLA operation (convolutions, matrix products,
layout copies, the rest), from a profiler trace of the compiled step.

  python benchmarks/bench_ops.py                      # full model, batch 8, 256 x 256, float32
  python benchmarks/bench_ops.py --model tiny --size 64 --batch 2

The step is bench_model.py's (same loss, Adam, donated state), the network built from the layers of
--platform-ops / --cpu-conv / --conv-grad / --deconv (benchmarks/common.py layer_ops). Each op the trace
records is matched to its instruction in the compiled HLO and classed by what it computes: 'convolution' (a convolution,
alone or fused: XLA:CPU's YNNPACK/Eigen kernels, forward and both gradients), 'matmul' (a dot: the 1x1
convolutions and the lifter), 'layout copy' (copies, transposes and fusions that write a transposed
result, with whatever elementwise work XLA fused into them: e.g. the activations and BatchNorm
gradients it transposes for a kernel gradient), 'elementwise/reduce' (every other fusion:
BatchNorm, ReLU, softmax, Adam, the losses). The table gives milliseconds per step (trace durations
summed over ops, averaged over the traced steps) and each class's share; ops run on both cores at
once, so the sum can differ from the step's wall time. Weights are random (their values do not
change the work).
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import pathlib
import re
import sys
import tempfile
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import common  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position
from bench_model import inputs, make_train_step, model_config  # noqa: E402  pylint: disable=g-import-not-at-top

from cascaded_lift.models import CascadedLiftNet  # noqa: E402

CLASSES = ("convolution", "matmul", "layout copy", "elementwise/reduce")
_INSTR = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = \S+ ([\w\-]+)\(")
_COMP = re.compile(r"^%?([\w.\-]+) .*\{\s*$")


def hlo_classes(hlo: str) -> dict[str, str]:
  """{instruction name: class} for every instruction of the compiled module's text."""
  opcodes: dict[str, set[str]] = collections.defaultdict(set)  # computation -> opcodes inside it
  instrs: list[tuple[str, str, str, list[str]]] = []           # (name, opcode, custom-call target, called)
  comp = ""
  for line in hlo.splitlines():
    m = _COMP.match(line)
    if m and "=" not in line.split("{")[0]:
      comp = m.group(1)
      continue
    m = _INSTR.match(line)
    if m:
      called = re.findall(r"(?:calls|to_apply)=%?([\w.\-]+)", line)
      opcodes[comp].add(m.group(2))
      target = re.search(r'custom_call_target="([^"]+)"', line)
      instrs.append((m.group(1), m.group(2), target.group(1) if target else "", called))

  def contents(op: str, called: list[str]) -> set[str]:
    inside = {op}
    for c in called:
      inside |= opcodes.get(c, set())
    return inside

  out = {}
  for name, op, target, called in instrs:
    inside = contents(op, called)
    # A custom call is classed by its name or target (the oneDNN convolutions: *_conv_*).
    if "convolution" in inside or "custom-call" in inside and "conv" in name + target:
      out[name] = "convolution"
    elif "dot" in inside:
      out[name] = "matmul"
    elif op in ("copy", "transpose") or "transpose" in inside or (
        op == "fusion" and inside <= {"fusion", "copy", "bitcast", "parameter", "reshape"}):
      out[name] = "layout copy"
    else:
      out[name] = "elementwise/reduce"
  return out


def build_step(model: CascadedLiftNet, batch: int, size: int):
  """(compiled train step, its state, images, boxes) with random weights."""
  images, boxes = (jnp.asarray(x) for x in inputs(batch, size))
  shapes = jax.eval_shape(lambda k: model.init(k, images[:1], boxes[:1], train=False), jax.random.key(0))
  rng = np.random.default_rng(0)
  variables = jax.tree_util.tree_map(
      lambda s: jnp.asarray(rng.normal(0, 0.02, s.shape).astype(s.dtype)), shapes)
  tx = optax.adam(1e-3)
  train_step = make_train_step(model, tx)
  state = (variables["params"], variables["batch_stats"], tx.init(variables["params"]))
  compiled = jax.jit(train_step, donate_argnums=(0,)).lower(state, images, boxes).compile()
  return compiled, state, images, boxes


def trace_op_times(run, steps: int) -> tuple[dict[str, float], float]:
  """Runs `run` `steps` times under the profiler; ({op name: us per step}, wall s per step)."""
  with tempfile.TemporaryDirectory() as tmp:
    jax.profiler.start_trace(tmp)
    t0 = time.perf_counter()
    for _ in range(steps):
      run()
    wall = (time.perf_counter() - t0) / steps
    jax.profiler.stop_trace()
    trace = sorted(glob.glob(f"{tmp}/**/*.trace.json.gz", recursive=True))[-1]
    with gzip.open(trace) as f:
      events = json.load(f)["traceEvents"]
  per_op: dict[str, float] = collections.Counter()
  for e in events:
    if e.get("ph") == "X" and "dur" in e:
      per_op[e["name"]] += e["dur"] / steps
  return per_op, wall


def main(argv=None) -> dict[str, Any]:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
  common.add_model_args(parser, dtype=False)
  parser.add_argument("--steps", type=int, default=2, help="traced steps (after one untraced warmup)")
  parser.add_argument("--top", type=int, default=12, help="also list the N slowest single ops")
  args = parser.parse_args(argv)
  common.configure_host(args)
  ops = common.layer_ops(args)
  model = CascadedLiftNet(**model_config(args.model), ops=ops)
  t0 = time.perf_counter()
  compiled, state, images, boxes = build_step(model, args.batch, args.size)
  compile_s = time.perf_counter() - t0
  classes = hlo_classes(compiled.as_text())
  holder = [state]

  def run():
    holder[0], loss = compiled(holder[0], images, boxes)
    jax.block_until_ready((holder[0], loss))

  run()  # warmup
  per_op, wall = trace_op_times(run, args.steps)
  by_class = {c: 0.0 for c in CLASSES}
  for name, us in per_op.items():
    if name in classes:
      by_class[classes[name]] += us / 1e3
  total = sum(by_class.values())
  rows = [(c, round(ms, 1), f"{100 * ms / total:.0f} %") for c, ms in by_class.items()]
  print(f"{args.model} model, batch {args.batch}, {args.size} x {args.size}, float32: training step "
        f"{wall:.3f} s wall (traced), ops sum {total / 1e3:.3f} s")
  print(common.table(("class", "ms/step", "share"), rows))
  slow = sorted(((us, n) for n, us in per_op.items() if n in classes), reverse=True)[:args.top]
  print(common.table(("op", "class", "ms/step"), [(n[:40], classes[n], round(us / 1e3, 1)) for us, n in slow]))
  record = {"benchmark": "ops", "machine": common.machine_info(), "model": args.model, "batch": args.batch,
            "size": args.size, "deconv": args.deconv, "conv_grad": args.conv_grad, **common.ops_report(args, ops),
            "compile_s": compile_s, "step_wall_s": wall, "ms_per_step_by_class": by_class,
            "slowest_ops_ms": {n: us / 1e3 for us, n in slow}}
  common.print_json(record)
  return record


if __name__ == "__main__":
  main()

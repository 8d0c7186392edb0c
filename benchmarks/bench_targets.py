"""Cost of the on-device training targets and losses per batch, next to the model's forward pass.

Times each target function, make_stage1_targets, the stage-1/2 losses, and "targets + stage-1 loss +
its gradient w.r.t. the model outputs" (what the train step adds to the model's own work), all jitted,
at full size (batch 64, J = 18, 64 x 64 heatmaps, D = 64) on the default JAX backend (CPU here), and the
forward pass of cascaded_lift.models.CascadedLiftNet (ResNet-50, 256 x 256 crops, BatchNorm in train
mode; its layers as config.platform_ops = --platform-ops picks them, cascaded_lift/platform.py: by
default the CPU forms on a CPU backend with config.cpu's defaults) when the model package is importable.
The goal is targets + loss under 5 % of a training step; a step is at least one forward pass, so the
ratio to the forward pass is an upper bound of that share.

Prints a table, then one line starting with "JSON " holding everything (machine, versions, timings in
ms). Usage:
  python benchmarks/bench_targets.py [--batch 64] [--repeats 5] [--model-batch 64] [--no-model]
                                     [--dtype float32|bfloat16] [--platform-ops auto|standard|cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np

from cascaded_lift.training import losses as ls
from cascaded_lift import skeleton as sk
from cascaded_lift.training import targets as tg

J, NB, S, D = 18, 16, 64, 64
WEIGHTS = {"bone": 1.0, "joint": 1.0, "volume_3d": 1.0, "depth": 0.1, "coord": 0.1}
# make_stage1_targets' config (every key of targets.CONFIG_KEYS; configs/default.py's values).
TARGETS_CONFIG = {"heatmap_size": S, "depth_bins": D, "sigma": 2.0, "bone_sigma_start": 4.0, "bone_sigma_end": 2.0,
                  "ordinal_threshold": 0.1, "volume_method": "scatter"}


def _time(fn, *args, repeats: int) -> dict[str, float]:
  """Compile time and median / min run time (ms) of a jitted fn."""
  t0 = time.perf_counter()
  jax.block_until_ready(fn(*args))
  compile_ms = (time.perf_counter() - t0) * 1e3
  runs = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    runs.append((time.perf_counter() - t0) * 1e3)
  return {"first_call_ms": compile_ms, "median_ms": statistics.median(runs), "min_ms": min(runs),
          "repeats": repeats}


def _batch(b: int, seed: int = 0) -> dict[str, np.ndarray]:
  """A realistic batch: joints spread over the crop, half of the samples 2D-only, a few misses."""
  rng = np.random.default_rng(seed)
  coords = np.stack([rng.uniform(4, S - 4, (b, J)), rng.uniform(4, S - 4, (b, J)),
                     rng.normal(D / 2, 6, (b, J))], -1).astype(np.float32)
  coords[:, 0, 2] = D / 2
  return {"joints_vox": coords, "joints_vis": (rng.uniform(size=(b, J)) > 0.1).astype(np.float32),
          "has_depth": (np.arange(b) % 2 == 0).astype(np.float32), "valid": np.ones(b, np.float32),
          "pose_3d": rng.normal(0, 300, (b, J, 3)).astype(np.float32)}


def _outputs(b: int, dtype, seed: int = 1) -> dict[str, jax.Array]:
  rng = np.random.default_rng(seed)
  u = lambda *shape: jnp.asarray(rng.uniform(0, 1, shape), dtype)
  return {"bone_heatmaps": u(b, S, S, NB), "joint_heatmaps": u(b, S, S, J), "depth_volume": u(b, S, S, D),
          "ordinal_logits": u(b, S, S, D), "coords": jnp.asarray(rng.uniform(0, S, (b, J, 3)), jnp.float32),
          "pose_3d": jnp.asarray(rng.normal(0, 300, (b, J, 3)), jnp.float32)}


def bench_targets(b: int, dtype, repeats: int) -> dict[str, dict[str, float]]:
  batch = jax.device_put(_batch(b))
  outputs = _outputs(b, dtype)
  c, v, h = batch["joints_vox"], batch["joints_vis"], batch["has_depth"]
  cfg = TARGETS_CONFIG
  size, par, chi = (S, S), sk.H36M.bone_parents, sk.H36M.bone_children
  progress = jnp.float32(0.3)
  fns = {
      "joint_heatmaps": (jax.jit(lambda c, v: tg.joint_heatmaps(c, v, size, 2.0, dtype)), (c, v)),
      "bone_heatmaps": (jax.jit(lambda c, v: tg.bone_heatmaps(c, v, par, chi, size, 3.0, dtype)), (c, v)),
      "depth_centric_volume (scatter)": (jax.jit(lambda c, v, h: tg.depth_centric_volume(
          c, v, h, size, D, dtype=dtype, method="scatter")), (c, v, h)),
      "depth_centric_volume (reduce)": (jax.jit(lambda c, v, h: tg.depth_centric_volume(
          c, v, h, size, D, dtype=dtype, method="reduce")), (c, v, h)),
      "ordinal_depth_labels": (jax.jit(lambda c, v, h: tg.ordinal_depth_labels(c, v, h, size, D, dtype=dtype)),
                               (c, v, h)),
      "coord_mask": (jax.jit(lambda c, v, h: tg.coord_mask(c, v, h, size, D)), (c, v, h)),
      "make_stage1_targets": (jax.jit(lambda bt, p: tg.make_stage1_targets(bt, sk.H36M, cfg, progress=p,
                                                                          dtype=dtype)), (batch, progress)),
  }
  # Targets for the loss-only row from a separate jit, so the timed one's first call still compiles.
  targets = jax.jit(lambda bt, p: tg.make_stage1_targets(bt, sk.H36M, cfg, progress=p, dtype=dtype))(batch, progress)

  def with_grad(o, bt, p):
    def loss(o):
      t = tg.make_stage1_targets(bt, sk.H36M, cfg, progress=p, dtype=dtype)
      return ls.stage1_loss(o, t, bt, WEIGHTS)[0]
    return jax.value_and_grad(loss)(o)

  fns["stage1_loss (targets given)"] = (jax.jit(lambda o, t, bt: ls.stage1_loss(o, t, bt, WEIGHTS)),
                                        (outputs, targets, batch))
  fns["targets + stage1_loss + grad"] = (jax.jit(with_grad), (outputs, batch, progress))
  fns["stage2_loss (geodesic)"] = (jax.jit(lambda o, bt: ls.stage2_loss(o, bt, sk.H36M)), (outputs, batch))
  results = {}
  for name, (fn, args) in fns.items():
    results[name] = _time(fn, *args, repeats=repeats)
    print(f"  timed {name}: {results[name]['median_ms']:.1f} ms", file=sys.stderr, flush=True)
  return results


def bench_model(b: int, dtype, repeats: int, platform_ops: str = "auto") -> dict[str, float] | None:
  """Forward pass of the full model in train mode (batch statistics), or None without the model."""
  try:
    from cascaded_lift import platform as platform_policy  # pylint: disable=g-import-not-at-top
    from cascaded_lift.models import CascadedLiftNet  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    print(f"  model not importable ({e}); skipping the forward pass", file=sys.stderr)
    return None
  ops = platform_policy.layer_ops({"platform_ops": platform_ops})
  model = CascadedLiftNet(dtype=dtype, ops=ops)
  rng = np.random.default_rng(2)
  images = jnp.asarray(rng.integers(0, 256, (b, 4 * S, 4 * S, 3), dtype=np.uint8))
  boxes = jnp.asarray(np.tile([[100.0, 80.0, 400.0, 400.0]], (b, 1)), jnp.float32)
  variables = jax.jit(lambda k: model.init(k, images[:1], boxes[:1], train=False))(jax.random.key(0))
  forward = jax.jit(lambda var, im, bx: model.apply(var, im, bx, train=True, mutable=["batch_stats"]))
  out = _time(forward, variables, images, boxes, repeats=repeats)
  out["batch"] = b
  out["layer_ops"] = ops.name
  print(f"  timed model forward: {out['median_ms']:.1f} ms", file=sys.stderr, flush=True)
  return out


def machine() -> dict[str, object]:
  dev = jax.devices()[0]
  info = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
          "cpu_count": os.cpu_count(), "python": platform.python_version(), "jax": jax.__version__,
          "jaxlib": jaxlib.__version__, "numpy": np.__version__,
          "backend": jax.default_backend(), "device": getattr(dev, "device_kind", str(dev)),
          "loadavg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}
  try:
    import flax  # pylint: disable=g-import-not-at-top
    info["flax"] = flax.__version__
  except ImportError:
    pass
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      names = [ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")]
    info["cpu_model"] = names[0] if names else None
  except OSError:
    pass
  return info


def main(argv: list[str] | None = None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--model-batch", type=int, default=None, help="batch of the model forward (default --batch)")
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--model-repeats", type=int, default=2)
  p.add_argument("--no-model", action="store_true")
  p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
  p.add_argument("--platform-ops", choices=["auto", "standard", "cpu"], default="auto",
                 help="the model's layers (config.platform_ops, cascaded_lift/platform.py)")
  args = p.parse_args(argv)
  dtype = jnp.dtype(args.dtype)
  info = machine()
  print(f"machine: {info}", file=sys.stderr)
  results = bench_targets(args.batch, dtype, args.repeats)
  model = None if args.no_model else bench_model(args.model_batch or args.batch, dtype, args.model_repeats,
                                                 args.platform_ops)
  per_batch_fwd = None
  if model is not None:
    per_batch_fwd = model["median_ms"] * args.batch / model["batch"]  # scaled when the model batch differs

  print(f"\nTargets and losses, batch {args.batch}, J={J}, {S}x{S}, D={D}, {args.dtype}, "
        f"backend {info['backend']} ({info.get('cpu_model') or info['processor']}, {info['cpu_count']} cpus), "
        f"jax {info['jax']}")
  header = f"{'function':<34} {'median ms':>10} {'min ms':>9} {'1st call ms':>12} {'% of fwd':>9}"
  print(header)
  print("-" * len(header))
  for name, r in results.items():
    share = f"{100 * r['median_ms'] / per_batch_fwd:8.2f}%" if per_batch_fwd else "      n/a"
    print(f"{name:<34} {r['median_ms']:>10.1f} {r['min_ms']:>9.1f} {r['first_call_ms']:>12.0f} {share}")
  if model is not None:
    scaled = "" if model["batch"] == args.batch else f" (measured at batch {model['batch']}, scaled)"
    print(f"{'model forward (train mode)':<34} {per_batch_fwd:>10.1f} {'':>9} {model['first_call_ms']:>12.0f}"
          f"{scaled}")
  else:
    print("model forward: not measured (cascaded_lift.models unavailable or --no-model)")
  summary = {"benchmark": "bench_targets", "batch": args.batch, "joints": J, "size": S, "depth_bins": D,
             "dtype": args.dtype, "targets_config": TARGETS_CONFIG, "platform_ops": args.platform_ops,
             "machine": info, "results_ms": results, "model_forward": model,
             "model_forward_ms_per_batch": per_batch_fwd,
             "targets_loss_grad_share_of_forward": (results["targets + stage1_loss + grad"]["median_ms"]
                                                    / per_batch_fwd if per_batch_fwd else None)}
  print("JSON " + json.dumps(summary, sort_keys=True))


if __name__ == "__main__":
  main()

"""GPU/TPU benchmark of the full model: JAX (float32, bfloat16) against PyTorch, and MFU. One JSON line out.

  bash benchmarks/accelerator.sh                      # the full model, batch 64, 256 px (under 8 minutes)
  python benchmarks/accelerator.py --model tiny --batch 2 --size 64 --steps 2   # a CPU smoke run

It needs jax, flax, optax and numpy, and torch for the PyTorch side; of this repository it imports only
cascaded_lift.models (the network) and cascaded_lift.cpu.layers (for the four-phase deconvolution it
compares), so it runs from a checkout on a machine where nothing else of the package is installed.

What it measures (each timing the median of --steps calls after --warmup, each call blocked on):
- jax.<dtype>.train / .infer: images/s of a training step (forward with BatchNorm batch statistics, the
  loss below, gradients, one Adam update, donated state) and of the inference forward pass, built from
  the standard Flax layers (models.STANDARD_OPS, what cascaded_lift.platform uses on GPU and TPU), in
  float32 and in bfloat16 (parameters float32, compute bfloat16).
- flops_per_step: XLA's cost analysis of the compiled program; mfu = flops_per_step / step_s / peak,
  the peak looked up from the device name (PEAK_TFLOPS: dense bfloat16 tensor-core peak for bfloat16;
  for float32 the TF32 tensor-core peak on GPUs, XLA's default precision for float32 convolutions on
  Ampere and later, and the bfloat16 peak on TPUs, whose default float32 precision uses bfloat16
  passes). None where the device is unknown (e.g. CPU).
- torch.float32 / torch.bf16_autocast: the same two modes for tests/torch_spec_model.py's SpecNet (the
  layer spec the parity tests check against), channels_last, float32 and torch.autocast(bfloat16).
- deconv: the float32 training step with the native transposed convolution (nn.ConvTranspose, the
  standard layers) against the four-phase form (cpu.layers.CpuDeconv "four_phase" on XLA's kernels).
The loss: the mean square of every heatmap/volume output plus the mean absolute coords and pose (the
same for both frameworks; the real stage-1 targets are made on the device and cost little next to the
network). Parts that would run past --budget-s are skipped and listed under "skipped".
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib.util
import json
import pathlib
import statistics
import sys
import time
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from cascaded_lift.cpu.layers import CpuDeconv
from cascaded_lift.models import STANDARD_OPS, CascadedLiftNet, LayerOps

REPO = pathlib.Path(__file__).resolve().parents[1]
MAP_KEYS = ("bone_heatmaps", "joint_heatmaps", "depth_volume", "ordinal_logits", "joint_volumes")
# A narrow, shallow variant for CPU smoke runs: the same code paths, seconds to compile.
TINY = dict(resnet_depth=18, resnet_width=8, resnet_stage_sizes=(1, 1, 1, 1), head_width=16, bone_width=8,
            lifter_width=32, lifter_blocks=1, depth_bins=8, context_bottlenecks=1, joint_bottlenecks=1,
            depth_bottlenecks=1, volumetric_bottlenecks=1)
# Dense peak TFLOP/s per chip: (bfloat16, float32 as run by default). Matched by substring of the device
# kind, first match wins (so "H100 PCIe" before "H100").
PEAK_TFLOPS: tuple[tuple[str, float, float], ...] = (
    ("H200", 989.0, 494.0), ("GH200", 989.0, 494.0), ("H100 PCIe", 756.0, 378.0), ("H100", 989.0, 494.0),
    ("A100", 312.0, 156.0), ("L40S", 362.0, 183.0), ("L4", 121.0, 60.0), ("A10G", 70.0, 35.0),
    ("V100", 125.0, 15.7), ("TPU v6", 918.0, 918.0), ("TPU v5p", 459.0, 459.0), ("TPU v5 lite", 197.0, 197.0),
    ("TPU v5e", 197.0, 197.0), ("TPU v4", 275.0, 275.0))
FOUR_PHASE_OPS = LayerOps(conv=nn.Conv, deconv=functools.partial(CpuDeconv, formulation="four_phase", kernels="xla",
                                                                 kernel_grad="xla"),
                          max_pool=nn.max_pool, name="standard+four_phase")


def peak_tflops(device_kind: str, dtype: str) -> float | None:
  """The device's dense peak in TFLOP/s for `dtype` ("bfloat16" or "float32"), None when unknown."""
  for name, bf16, f32 in PEAK_TFLOPS:
    if name.lower() in device_kind.lower():
      return bf16 if dtype == "bfloat16" else f32
  return None


def timed(fn: Callable[[], Any], steps: int, warmup: int) -> float:
  """Median seconds of `fn()` (which blocks on its result) over `steps` calls after `warmup`."""
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def bench_loss(out: dict[str, Any]) -> jax.Array:
  """The benchmark's loss, in float32 (module docstring)."""
  loss = sum(jnp.mean(jnp.square(out[k].astype(jnp.float32))) for k in MAP_KEYS)
  return loss + jnp.mean(jnp.abs(out["coords"])) + jnp.mean(jnp.abs(out["pose_3d"]))


def make_train_step(model: CascadedLiftNet, tx: optax.GradientTransformation) -> Callable[..., Any]:
  """The benchmarked step (un-jitted): ((params, batch_stats, opt_state), images, boxes) -> (new state,
  loss), with BatchNorm batch statistics, bench_loss and one optimizer update. bench_model.py uses it too."""

  def loss_fn(params, stats, im, bx):
    out, updates = model.apply({"params": params, "batch_stats": stats}, im, bx, train=True, mutable=["batch_stats"])
    return bench_loss(out), updates["batch_stats"]

  def train_step(state, im, bx):
    params, stats, opt_state = state
    (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, stats, im, bx)
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), stats, opt_state), loss

  return train_step


def _flops(compiled: Any) -> float | None:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  return float(cost["flops"]) if cost and "flops" in cost else None


def init_variables(cfg: dict[str, Any], size: int) -> dict[str, Any]:
  """The model's float32 {'params', 'batch_stats'}: the same for every dtype and LayerOps (one compile)."""
  model = CascadedLiftNet(**cfg)
  images, boxes = jnp.zeros((1, size, size, 3), jnp.uint8), jnp.ones((1, 4), jnp.float32)
  key = jax.random.key(0)
  lowered = jax.jit(lambda k: model.init(k, images, boxes, train=False)).lower(key)
  # On CPU (the script's own test) without LLVM's optimisations: XLA:CPU spends most of a minute optimising
  # the threefry random bits of a program that runs once (cascaded_lift/platform.py, init_compiler_options).
  options = {"xla_backend_optimization_level": 0} if jax.default_backend() == "cpu" else {}
  return lowered.compile(compiler_options=options)(key)


def jax_modes(cfg: dict[str, Any], variables: dict[str, Any], ops: LayerOps, dtype: str, batch: int, size: int,
              modes: list[str], steps: int, warmup: int) -> dict[str, dict[str, Any]]:
  """{mode: {images_per_s, step_s, flops_per_step, compile_s}} for 'train' and/or 'infer'."""
  model = CascadedLiftNet(**cfg, ops=ops, dtype=jnp.dtype(dtype))
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.integers(0, 256, (batch, size, size, 3)), jnp.uint8)
  boxes = jnp.asarray(np.tile([[10.0, 20.0, 200.0, 200.0]], (batch, 1)), jnp.float32)
  tx = optax.adam(1e-4)
  out: dict[str, dict[str, Any]] = {}
  if "train" in modes:
    step = make_train_step(model, tx)
    # Copies: the step donates its state, and the inference mode still needs the variables.
    state = jax.tree.map(jnp.copy, (variables["params"], variables["batch_stats"], tx.init(variables["params"])))
    t0 = time.perf_counter()
    compiled = jax.jit(step, donate_argnums=0).lower(state, images, boxes).compile()
    compile_s = time.perf_counter() - t0
    holder = [state]

    def run():
      holder[0], loss = compiled(holder[0], images, boxes)
      loss.block_until_ready()

    out["train"] = _result(timed(run, steps, warmup), batch, _flops(compiled), compile_s)
  if "infer" in modes:
    fwd = lambda v, im, bx: model.apply(v, im, bx, train=False)["pose_3d"]  # noqa: E731  (XLA keeps what feeds it)
    t0 = time.perf_counter()
    compiled = jax.jit(fwd).lower(variables, images, boxes).compile()
    compile_s = time.perf_counter() - t0
    out["infer"] = _result(timed(lambda: compiled(variables, images, boxes).block_until_ready(), steps, warmup),
                           batch, _flops(compiled), compile_s)
  return out


def _result(step_s: float, batch: int, flops: float | None, compile_s: float | None) -> dict[str, Any]:
  return {"images_per_s": batch / step_s, "step_s": step_s, "flops_per_step": flops,
          "compile_s": None if compile_s is None else round(compile_s, 2)}


def torch_modes(cfg: dict[str, Any], autocast: bool, batch: int, size: int, modes: list[str], steps: int,
                warmup: int) -> dict[str, dict[str, Any]]:
  """The same modes for the PyTorch SpecNet, channels_last, float32 or autocast bfloat16."""
  import torch  # pylint: disable=g-import-not-at-top  (optional: the JAX half runs without it)
  spec_path = REPO / "tests" / "torch_spec_model.py"
  spec = importlib.util.spec_from_file_location("torch_spec_model", spec_path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  device = "cuda" if torch.cuda.is_available() else "cpu"
  torch.set_default_device(device)  # SpecNet makes its constant tensors with the factory functions
  fields = {f.name: f.default for f in dataclasses.fields(CascadedLiftNet)}
  net_cfg = {k: cfg.get(k, fields[k]) for k in (
      "num_joints", "num_bones", "depth_bins", "root_index", "resnet_depth", "resnet_width", "resnet_stage_sizes",
      "head_width", "bone_width", "num_deconvs", "context_bottlenecks", "joint_bottlenecks", "depth_bottlenecks",
      "volumetric_bottlenecks", "aspp_dilations", "lifter_width", "lifter_blocks", "lifter_layers_per_block")}
  net = module.SpecNet(**net_cfg).to(device=device, memory_format=torch.channels_last)
  images = torch.randint(0, 256, (batch, 3, size, size), device=device).float().contiguous(
      memory_format=torch.channels_last)
  boxes = torch.tensor([[10.0, 20.0, 200.0, 200.0]] * batch, device=device)

  def loss_of(o):
    loss = sum(o[k].float().square().mean() for k in MAP_KEYS)
    return loss + o["coords"].float().abs().mean() + o["pose_3d"].float().abs().mean()

  def sync():
    if device == "cuda":
      torch.cuda.synchronize()

  out: dict[str, dict[str, Any]] = {}
  if "train" in modes:
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    net.train()

    def run_train():
      opt.zero_grad(set_to_none=True)
      with (torch.autocast(device, dtype=torch.bfloat16) if autocast else _null()):
        loss = loss_of(net(images, boxes))
      loss.backward()
      opt.step()
      sync()

    out["train"] = _result(timed(run_train, steps, warmup), batch, None, None)
  if "infer" in modes:
    net.eval()

    def run_infer():
      with torch.no_grad(), (torch.autocast(device, dtype=torch.bfloat16) if autocast else _null()):
        net(images, boxes)
      sync()

    out["infer"] = _result(timed(run_infer, steps, warmup), batch, None, None)
  torch.set_default_device("cpu")
  return out


class _null:  # pylint: disable=invalid-name
  """A context that does nothing (float32: no autocast)."""

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    return False


def main(argv: list[str] | None = None) -> dict[str, Any]:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--model", choices=("full", "tiny"), default="full")
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--size", type=int, default=256)
  p.add_argument("--steps", type=int, default=10)
  p.add_argument("--warmup", type=int, default=2)
  p.add_argument("--modes", default="train,infer")
  p.add_argument("--dtypes", default="float32,bfloat16")
  p.add_argument("--no-torch", action="store_true")
  p.add_argument("--no-deconv", action="store_true", help="skip the standard vs four-phase comparison")
  p.add_argument("--budget-s", type=float, default=420.0, help="skip parts that would start after this")
  args = p.parse_args(argv)
  start = time.perf_counter()
  cfg = dict(TINY) if args.model == "tiny" else {}
  modes = [m for m in args.modes.split(",") if m]
  dtypes = [d for d in args.dtypes.split(",") if d]
  device = jax.devices()[0]
  kind = getattr(device, "device_kind", str(device))
  result: dict[str, Any] = {
      "benchmark": "accelerator", "device": kind, "platform": device.platform, "device_count": jax.device_count(),
      "jax": jax.__version__, "model": args.model, "batch": args.batch, "size": args.size, "steps": args.steps,
      "warmup": args.warmup, "peak_tflops": {d: peak_tflops(kind, d) for d in dtypes},
      "jax_results": {}, "torch_results": {}, "deconv": {}, "skipped": []}

  def within_budget(part: str) -> bool:
    if time.perf_counter() - start > args.budget_s:
      result["skipped"].append(part)
      return False
    return True

  variables = init_variables(cfg, args.size)
  for dtype in dtypes:
    if within_budget(f"jax.{dtype}"):
      res = jax_modes(cfg, variables, STANDARD_OPS, dtype, args.batch, args.size, modes, args.steps, args.warmup)
      peak = result["peak_tflops"][dtype]
      for r in res.values():
        r["mfu"] = (r["flops_per_step"] / r["step_s"] / (peak * 1e12)
                    if peak and r["flops_per_step"] else None)
      result["jax_results"][dtype] = res
  if not args.no_deconv and "float32" in dtypes:
    for name, ops in (("standard", STANDARD_OPS), ("four_phase", FOUR_PHASE_OPS)):
      if name == "standard" and "train" in result["jax_results"].get("float32", {}):
        result["deconv"][name] = result["jax_results"]["float32"]["train"]
      elif within_budget(f"deconv.{name}"):
        result["deconv"][name] = jax_modes(cfg, variables, ops, "float32", args.batch, args.size, ["train"],
                                           args.steps, args.warmup)["train"]
  if not args.no_torch:
    try:
      import torch  # pylint: disable=g-import-not-at-top,unused-import  # noqa: F401
      result["torch"] = torch.__version__
      for name, autocast in (("float32", False), ("bf16_autocast", True)):
        if within_budget(f"torch.{name}"):
          result["torch_results"][name] = torch_modes(cfg, autocast, args.batch, args.size, modes, args.steps,
                                                      args.warmup)
    except ImportError:
      result["skipped"].append("torch (not installed)")
  for dtype, torch_name in (("float32", "float32"), ("bfloat16", "bf16_autocast")):
    for mode in modes:
      j = result["jax_results"].get(dtype, {}).get(mode)
      t = result["torch_results"].get(torch_name, {}).get(mode)
      if j and t:
        result.setdefault("jax_over_torch", {})[f"{dtype}.{mode}"] = j["images_per_s"] / t["images_per_s"]
  result["wall_s"] = round(time.perf_counter() - start, 1)
  print(json.dumps(result))
  return result


if __name__ == "__main__":
  main(sys.argv[1:])

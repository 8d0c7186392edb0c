"""Training-step, inference and flip-test evaluation throughput of CascadedLiftNet against PyTorch.

The PyTorch contender is tests/torch_spec_model.py (SpecNet: the layer spec the parity tests use),
built with the same configuration and the same weights (converted with cascaded_lift.weights.convert), fed the
same batch, image size, thread count and precision. PyTorch runs eagerly at its fastest memory format
on this machine: with --torch-format auto (default) both contiguous NCHW and channels_last take turns
in the timing and the faster one (by median) is the baseline; both are in the JSON line.

Modes (--modes, comma-separated):
  train  forward (BatchNorm batch statistics) + backward + Adam(lr 1e-3) update, on the loss
         L = sum over {bone_heatmaps, joint_heatmaps, depth_volume, ordinal_logits, joint_volumes} of
         mean(x^2) + mean|coords| + mean|pose_3d| (every output against zeros, the same in both).
         JAX: one jitted step, state donated. PyTorch: zero_grad, forward, backward, Adam (fused when
         available). PyTorch's lifter input is not detached (ours is: docs/design.md section 3), so its backward also
         runs through the lifter's first layer into the soft-argmax - a negligible extra for PyTorch.
  infer  forward with running statistics, all outputs returned (torch.inference_mode()).
  flip   flip-test evaluation: forward on the batch and on its mirror, averaged (heatmaps.flip_test).
Each mode interleaves JAX and PyTorch calls (A B A B ...), --warmup rounds then --repeats timed
rounds, and reports medians; throughput = batch / median seconds.

Processes: by default each PyTorch memory format runs in a worker process of its own
(common.WorkerProcess), one format after the other, and its calls alternate with JAX's calls in this
process; JAX's timings pool over both passes. Users run one framework per process, and two of them
in one process share one glibc heap, where each one's freed blocks make the other fault fresh pages
(measured: JAX's step 4.2 s alone, 4.8-6.6 s right after PyTorch's in one process; BENCHMARKS.md).
--in-process interleaves everything in this process (the old way); --isolate runs one process per
contender, one after the other, with no interleaving.

Layers: --platform-ops picks the network's layer implementations as config.platform_ops does
(cascaded_lift/platform.py): by default the CPU forms (cascaded_lift/cpu/layers.py: oneDNN's kernels,
--deconv's formulation, the tap-wise max-pool gradient) on a CPU backend, the standard Flax layers
elsewhere; --cpu-conv, --conv-grad and --deconv set the CPU forms (config.cpu).

FLOPs per image: XLA's cost analysis of the compiled JAX programs (jax.jit(f).lower(...).compile()
.cost_analysis()['flops'], divided by the batch; for this the programs are built again from the same
model with XLA's own convolutions (common.flops_ops), since the oneDNN custom calls are opaque to it),
next to an analytic count of the convolutions, transposed convolutions and dense layers
(2 x multiply-adds, from forward hooks on the PyTorch model).

Usage (prints a table, then one line starting with "JSON "):
  python benchmarks/bench_model.py                       # full model, 256 px, batch 8, float32
  python benchmarks/bench_model.py --model tiny --size 64 --batch 2 --repeats 2   # seconds
  python benchmarks/bench_model.py --dtype bfloat16 --modes infer
Options: --model tiny|full --batch N --size S --dtype float32|bfloat16 --modes train,infer,flip
  --warmup N --repeats N --threads N --platform-ops auto|standard|cpu --cpu-conv auto|onednn|xla
  --conv-grad auto|taps|xla --deconv auto|adjoint_conv|four_phase|depth_to_space|conv_transpose
  --host-malloc retain|default
  --torch-format auto|contiguous|channels_last --no-torch --torch-compile --in-process --isolate -v
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import functools
import importlib.util
import pathlib
import sys
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import common  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position
from accelerator import MAP_KEYS, make_train_step  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position

from cascaded_lift.weights import convert  # noqa: E402
from cascaded_lift import heatmaps  # noqa: E402
from cascaded_lift import skeleton as sk  # noqa: E402
from cascaded_lift.models import CascadedLiftNet  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
# A narrow variant for quick runs (the test suite's TINY): ResNet-50 blocks, one per stage, width 8.
TINY = dict(num_joints=18, num_bones=16, depth_bins=8, resnet_depth=50, resnet_width=8,
            resnet_stage_sizes=(1, 1, 1, 1), head_width=32, bone_width=16, lifter_width=64, lifter_blocks=2)
_SPEC_KEYS = ("num_joints", "num_bones", "depth_bins", "root_index", "resnet_depth", "resnet_width",
              "resnet_stage_sizes", "head_width", "bone_width", "num_deconvs", "context_bottlenecks",
              "joint_bottlenecks", "depth_bottlenecks", "volumetric_bottlenecks", "aspp_dilations", "lifter_width",
              "lifter_blocks", "lifter_layers_per_block")


def model_config(name: str) -> dict[str, Any]:
  """CascadedLiftNet keyword arguments of the 'full' (released, the defaults) or 'tiny' model."""
  defaults = {f.name: f.default for f in dataclasses.fields(CascadedLiftNet) if f.name in _SPEC_KEYS}
  if name == "full":
    return defaults
  if name == "tiny":
    return {**defaults, **TINY}
  raise ValueError(f"--model must be tiny or full, got {name!r}")


def load_spec_module():
  """tests/torch_spec_model.py, imported by path (the tests folder is no package)."""
  path = REPO / "tests" / "torch_spec_model.py"
  spec = importlib.util.spec_from_file_location("torch_spec_model", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def inputs(batch: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Random images (B, S, S, 3) float32 on the 0..255 scale and boxes (B, 4) [x0, y0, w, h]."""
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, (batch, size, size, 3)).astype(np.float32)
  boxes = np.stack([rng.uniform(0, 100, batch), rng.uniform(0, 100, batch), rng.uniform(150, 300, batch),
                    rng.uniform(150, 300, batch)], -1).astype(np.float32)
  return images, boxes


def build_torch(cfg: dict[str, Any], seed: int = 0):
  """The PyTorch SpecNet with the spec's random weights (its randomize_)."""
  spec = load_spec_module()
  net = spec.SpecNet(**cfg)
  spec.randomize_(net, seed=seed)
  return net


def jax_variables(model: CascadedLiftNet, net, size: int) -> dict[str, Any]:
  """The torch net's weights as CascadedLiftNet variables (no model.init: it compiles slowly)."""
  template = jax.eval_shape(lambda k: model.init(k, jnp.zeros((1, size, size, 3)), jnp.ones((1, 4)), train=False),
                            jax.random.key(0))
  state = {k: v.detach().numpy() for k, v in net.state_dict().items()}
  variables, report = convert.import_torch_state_dict(state, template)
  if report["kept"]:
    raise RuntimeError(f"weights not converted for {report['kept']}")
  return jax.tree_util.tree_map(jnp.asarray, {"params": variables["params"],
                                              "batch_stats": variables["batch_stats"]})


def torch_bench_loss(out: dict[str, Any]) -> Any:
  """accelerator.bench_loss for torch tensors (float32)."""
  loss = sum(out[k].float().square().mean() for k in MAP_KEYS)
  return loss + out["coords"].float().abs().mean() + out["pose_3d"].float().abs().mean()


def make_forward(model: CascadedLiftNet):
  """The inference mode: (variables, images, boxes) -> all outputs, BatchNorm with running statistics."""

  def forward(v, im, bx):
    return model.apply(v, im, bx, train=False)

  return forward


def make_flip(model: CascadedLiftNet):
  """The flip mode: heatmaps.flip_test of make_forward(model) (un-jitted)."""
  forward = make_forward(model)

  def flip(v, im, bx):
    return heatmaps.flip_test(functools.partial(forward, v), im, bx, sk.H36M)

  return flip


def jax_programs(model: CascadedLiftNet, variables: dict[str, Any], images: np.ndarray, boxes: np.ndarray,
                 modes: list[str], flops_model: CascadedLiftNet | None = None) -> dict[str, dict[str, Any]]:
  """Compiled JAX programs per mode: {'run': blocking callable, 'compile_s', 'flops', 'memory'}.

  'flops' is XLA's count for the same program built from `flops_model` (default: model), the model with
  XLA's own convolutions (common.flops_ops) when `model`'s are oneDNN custom calls.
  """
  images, boxes = jnp.asarray(images), jnp.asarray(boxes)
  tx = optax.adam(1e-3)
  flops_model = model if flops_model is None else flops_model
  programs = {}

  def describe(compiled, fn, *args) -> tuple[float | None, dict[str, int] | None]:
    flops = common.xla_flops(fn, *args)
    mem = None
    try:
      m = compiled.memory_analysis()
      mem = {k: int(getattr(m, k)) for k in ("argument_size_in_bytes", "output_size_in_bytes",
                                             "temp_size_in_bytes", "alias_size_in_bytes")}
    except Exception:  # pylint: disable=broad-except  # not every backend reports it
      pass
    return flops, mem

  if "train" in modes:
    train_step = make_train_step(model, tx)
    # Train on copies: the step donates its state, and inference keeps using `variables`.
    params, batch_stats = jax.tree_util.tree_map(jnp.copy, (variables["params"], variables["batch_stats"]))
    state = [(params, batch_stats, tx.init(params))]
    t0 = time.perf_counter()
    step = jax.jit(train_step, donate_argnums=(0,)).lower(state[0], images, boxes).compile()
    compile_s = time.perf_counter() - t0

    def run_train():
      state[0], loss = step(state[0], images, boxes)
      jax.block_until_ready((state[0], loss))

    flops, memory = describe(step, make_train_step(flops_model, tx), state[0], images, boxes)
    programs["train"] = {"run": run_train, "compile_s": compile_s, "flops": flops, "memory": memory}

  forward = make_forward(model)

  if "infer" in modes:
    t0 = time.perf_counter()
    fwd = jax.jit(forward).lower(variables, images, boxes).compile()
    compile_s = time.perf_counter() - t0
    programs["infer"] = {"run": lambda: jax.block_until_ready(fwd(variables, images, boxes)),
                         "compile_s": compile_s, "fn": lambda: fwd(variables, images, boxes),
                         **dict(zip(("flops", "memory"),
                                    describe(fwd, make_forward(flops_model), variables, images, boxes)))}

  if "flip" in modes:
    flip = make_flip(model)
    t0 = time.perf_counter()
    fl = jax.jit(flip).lower(variables, images, boxes).compile()
    compile_s = time.perf_counter() - t0
    programs["flip"] = {"run": lambda: jax.block_until_ready(fl(variables, images, boxes)),
                        "compile_s": compile_s,
                        **dict(zip(("flops", "memory"), describe(fl, make_flip(flops_model), variables, images, boxes)))}
  return programs


# ----------------------------------------------------------------------------- PyTorch contenders

def torch_programs(net, images: np.ndarray, boxes: np.ndarray, modes: list[str], *, dtype: str, fmt: str,
                   compile_model: bool = False) -> dict[str, Callable[[], Any]]:
  """Blocking callables per mode for the PyTorch model in memory format fmt ('contiguous' | 'channels_last')."""
  import torch  # pylint: disable=g-import-not-at-top
  memory_format = torch.channels_last if fmt == "channels_last" else torch.contiguous_format
  # A private copy: contenders in different formats must not convert each other's weights.
  net = copy.deepcopy(net).to(memory_format=memory_format)
  x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(memory_format=memory_format)
  bx = torch.from_numpy(boxes)
  perm = torch.as_tensor(sk.H36M.flip_permutation)
  model = torch.compile(net) if compile_model else net
  autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if dtype == "bfloat16" else (
      lambda: torch.autocast("cpu", enabled=False))
  try:
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, fused=True)
  except (RuntimeError, TypeError, ValueError):
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
  programs = {}

  def train():
    net.train()
    opt.zero_grad(set_to_none=True)
    with autocast():
      out = model(x, bx)
      loss = torch_bench_loss(out)
    loss.backward()
    opt.step()
    return loss

  def infer():
    net.eval()
    with torch.inference_mode(), autocast():
      return model(x, bx)

  def flip():
    net.eval()
    with torch.inference_mode(), autocast():
      out, fout = model(x, bx), model(x.flip(3), bx)
      s, w = images.shape[2], out["joint_heatmaps"].shape[3]
      fc = fout["coords"].float()[:, perm].clone()
      fc[..., 0] = (s - 1) * w / s - fc[..., 0]
      fp = fout["pose_3d"].float()[:, perm].clone()
      fp[..., 0] *= -1
      return (out["coords"].float() + fc) / 2, (out["pose_3d"].float() + fp) / 2

  for name, fn in (("train", train), ("infer", infer), ("flip", flip)):
    if name in modes:
      programs[name] = fn
  return programs


def analytic_flops(net, size: int) -> dict[str, float]:
  """2 x multiply-adds per image of Conv2d / ConvTranspose2d / Linear layers in one forward pass."""
  import torch  # pylint: disable=g-import-not-at-top
  totals = {"conv": 0.0, "deconv": 0.0, "linear": 0.0}

  def hook(module, inp, out):
    if isinstance(module, torch.nn.ConvTranspose2d):
      # Every input pixel meets every kernel tap: H_in W_in kh kw C_in C_out / groups.
      h, w = inp[0].shape[2:]
      totals["deconv"] += 2.0 * h * w * module.weight.numel() / module.groups
    elif isinstance(module, torch.nn.Conv2d):
      h, w = out.shape[2:]
      totals["conv"] += 2.0 * h * w * module.weight.numel()
    elif isinstance(module, torch.nn.Linear):
      totals["linear"] += 2.0 * module.weight.numel()

  handles = [m.register_forward_hook(hook) for m in net.modules()
             if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d, torch.nn.Linear))]
  net.eval()
  with torch.inference_mode():
    net(torch.zeros(1, 3, size, size), torch.tensor([[0.0, 0.0, 200.0, 200.0]]))
  for h in handles:
    h.remove()
  totals["total"] = sum(totals.values())
  return totals


# ----------------------------------------------------------------------------- main

def relative_error(got: Any, want: Any) -> float:
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  return float(np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-30))


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
  common.add_model_args(p)
  p.add_argument("--modes", default="train,infer,flip")
  p.add_argument("--warmup", type=int, default=2)
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--torch-format", default="auto", choices=("auto", "contiguous", "channels_last"))
  p.add_argument("--torch-compile", action="store_true", help="torch.compile the PyTorch model (slow start)")
  p.add_argument("--no-torch", action="store_true", help="time JAX alone")
  p.add_argument("--isolate", action="store_true",
                 help="time each contender in its own process, one after the other, instead of interleaving "
                      "them in one process (where each framework's freed memory and page faults slow the next)")
  p.add_argument("--in-process", action="store_true",
                 help="interleave PyTorch's calls with JAX's in this process instead of in a worker process of "
                      "its own (the frameworks then share one heap: BENCHMARKS.md)")
  p.add_argument("--contender", default=None, help=argparse.SUPPRESS)  # internal: what an --isolate child times
  p.add_argument("--torch-worker", action="store_true", help=argparse.SUPPRESS)  # internal: common.serve
  p.add_argument("-v", "--verbose", action="store_true")
  args = p.parse_args(argv)
  args.modes = [m for m in args.modes.split(",") if m]
  bad = set(args.modes) - {"train", "infer", "flip"}
  if bad:
    p.error(f"unknown mode(s) {sorted(bad)}; choose from train, infer, flip")
  return args


def torch_formats_to_time(args: argparse.Namespace) -> list[str]:
  """--torch-format auto times both memory formats; otherwise the one asked for."""
  return ["contiguous", "channels_last"] if args.torch_format == "auto" else [args.torch_format]


def serve_torch(args: argparse.Namespace) -> None:
  """--torch-worker: the PyTorch contenders ("<mode>/torch_<format>") of this benchmark's settings, timed
  one call at a time on the parent's request (common.serve)."""
  cfg = model_config(args.model)
  net = build_torch(cfg)  # the same seed, so the same weights as the parent's copy
  images, boxes = inputs(args.batch, args.size)
  contenders = {}
  for mode in args.modes:
    for f in torch_formats_to_time(args):
      contenders[f"{mode}/torch_{f}"] = torch_programs(net, images, boxes, [mode], dtype=args.dtype, fmt=f,
                                                       compile_model=args.torch_compile)[mode]
  common.serve(contenders)


def run_isolated(args: argparse.Namespace, argv: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
  """--isolate: one child process per contender (JAX first, then each PyTorch format), each timing
  only its own calls; returns the JAX child's record and {mode: {contender: timings}}."""
  import json  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top
  torch_formats = torch_formats_to_time(args)
  names = ["jax"] + ([] if args.no_torch else ["torch_" + f for f in torch_formats])
  records = {}
  for name in names:
    cmd = [sys.executable, __file__, *[a for a in argv if a != "--isolate"], "--contender", name]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if args.verbose:
      print(proc.stderr, file=sys.stderr, end="", flush=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("JSON ")]
    if proc.returncode != 0 or not lines:
      raise RuntimeError(f"bench_model child for {name} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    records[name] = json.loads(lines[-1][5:])
  results = {mode: {name: records[name]["results"][mode][name] for name in names} for mode in args.modes}
  return records["jax"], results


def main(argv=None) -> dict[str, Any]:
  argv = list(sys.argv[1:] if argv is None else argv)
  args = parse_args(argv)
  if args.isolate:
    record, results = run_isolated(args, argv)
    modes = [m for m in ("infer", "flip", "train") if m in args.modes]
    record["isolated"] = True
    record["processes"] = "one per contender, one after the other"
    return report(args, record, results, modes, record["loadavg_before"])
  common.configure_host(args)
  import torch  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(args.threads)
  # XLA:CPU runs with denormals flushed to zero; give PyTorch the same (its fastest) setting.
  torch.set_flush_denormal(True)
  if args.torch_worker:
    return serve_torch(args)
  log = (lambda s: print(s, file=sys.stderr, flush=True)) if args.verbose else None
  load_before = common.load_average()

  ops = common.layer_ops(args)
  cfg = model_config(args.model)
  dtype = jnp.bfloat16 if args.dtype == "bfloat16" else jnp.float32
  model = CascadedLiftNet(**cfg, dtype=dtype, ops=ops)
  images, boxes = inputs(args.batch, args.size)
  net = build_torch(cfg)
  variables = jax_variables(model, net, args.size)
  flops_analytic = analytic_flops(net, args.size)
  modes = [m for m in ("infer", "flip", "train") if m in args.modes]  # train last: it changes the weights

  timing_jax = args.contender in (None, "jax")
  flops_model = model.clone(ops=common.flops_ops(args, ops))
  programs = jax_programs(model, variables, images, boxes, modes, flops_model) if timing_jax else {}
  record: dict[str, Any] = {
      "benchmark": "bench_model", "model": args.model, "config": cfg, "batch": args.batch, "size": args.size,
      "dtype": args.dtype, "deconv": args.deconv, **common.ops_report(args, ops), "host_malloc": args.host_malloc,
      "conv_grad": args.conv_grad, "threads": args.threads, "warmup": args.warmup,
      "repeats": args.repeats, "torch_compile": args.torch_compile,
      "loss": "sum_k mean(out_k^2) for k in bone/joint heatmaps, depth volume, ordinal logits, joint volumes"
              " + mean|coords| + mean|pose_3d|; Adam lr 1e-3",
      "flops_per_image": {
          "method": "XLA cost_analysis of the compiled JAX programs / batch; analytic = 2 x MACs of "
                    "conv/deconv/linear layers (forward)",
          "analytic_forward": flops_analytic,
          **{f"xla_{m}": (programs[m]["flops"] / args.batch if programs[m]["flops"] else None) for m in programs}},
      "jax_compile_s": {m: programs[m]["compile_s"] for m in programs},
      "jax_xla_buffers_bytes": {m: programs[m]["memory"] for m in programs},
  }

  results: dict[str, dict[str, Any]] = {mode: {} for mode in modes}
  torch_names = [] if args.no_torch else ["torch_" + f for f in torch_formats_to_time(args)]
  names = [args.contender] if args.contender else ["jax"] + torch_names
  if torch_names and not args.contender and not args.in_process:
    # Each PyTorch memory format in a worker process of its own, one after the other, its calls
    # interleaved with JAX's; JAX's timings pool over both passes. (Two formats in one process fault
    # each other's freed pages back in, like two frameworks do; and three big processes at once would
    # not fit a 24 GiB machine.)
    for n in torch_names:
      with common.WorkerProcess([sys.executable, __file__, *argv, "--torch-worker",
                                 "--torch-format", n[len("torch_"):]]) as worker:
        for mode in modes:
          contenders = {"jax": programs[mode]["run"], n: worker.calls([f"{mode}/{n}"])[f"{mode}/{n}"]}
          if log:
            log(f"{mode}: timing {list(contenders)} ({n} in a process of its own)")
          r = common.interleaved(contenders, warmup=args.warmup, repeats=args.repeats, log=log)
          results[mode][n] = r[n]
          results[mode]["jax"] = common.pool_timings(results[mode].get("jax"), r["jax"])
    record["processes"] = "each PyTorch format in a worker process of its own"
  else:
    for mode in modes:
      contenders: dict[str, Any] = {}
      if "jax" in names:
        contenders["jax"] = programs[mode]["run"]
      # Both PyTorch memory formats take turns with JAX (A B C A B C ...); the faster one is the baseline.
      for n in torch_names:
        if n in names:
          contenders[n] = torch_programs(net, images, boxes, [mode], dtype=args.dtype, fmt=n[len("torch_"):],
                                         compile_model=args.torch_compile)[mode]
      if log:
        log(f"{mode}: timing {list(contenders)}")
      results[mode] = common.interleaved(contenders, warmup=args.warmup, repeats=args.repeats, log=log)
    record["processes"] = "isolated" if args.contender else "one process"
  # Same weights, same inputs: the float32 inference outputs agree (a check that both run one model).
  # After the timing, so that PyTorch's allocations in this process do not shape JAX's heap before it.
  if "infer" in programs and not args.no_torch:
    out = programs["infer"]["fn"]()
    ref = torch_programs(net, images, boxes, ["infer"], dtype=args.dtype, fmt="contiguous")["infer"]()
    record["parity_rel_error"] = {
        k: relative_error(out[k], ref[k].float().numpy().transpose(0, 2, 3, 1) if ref[k].ndim == 4 and
                          k != "joint_volumes" else ref[k].float().numpy())
        for k in ("joint_heatmaps", "coords", "pose_3d")}

  return report(args, record, results, modes, load_before)


def report(args: argparse.Namespace, record: dict[str, Any], results: dict[str, Any], modes: list[str],
           load_before: Any) -> dict[str, Any]:
  """Picks the faster PyTorch format per mode, prints the table and the JSON line; returns the record."""
  torch_formats = torch_formats_to_time(args)
  formats = {}
  for mode in modes:
    if all("torch_" + f in results[mode] for f in torch_formats):
      formats[mode] = min(torch_formats, key=lambda f: results[mode]["torch_" + f]["median_s"])
      results[mode]["torch"] = results[mode]["torch_" + formats[mode]]

  rows = []
  for mode in modes:
    r = results[mode]
    if "jax" not in r:  # an --isolate child timing a PyTorch contender
      continue
    jax_ips = args.batch / r["jax"]["median_s"]
    row = [mode, r["jax"]["median_s"], jax_ips]
    if "torch" in r:
      torch_ips = args.batch / r["torch"]["median_s"]
      r["ratio_jax_over_torch"] = jax_ips / torch_ips
      row += [r["torch"]["median_s"], torch_ips, r["ratio_jax_over_torch"], formats[mode]]
    else:
      row += ["-", "-", "-", "-"]
    for k in r:
      if isinstance(r[k], dict):
        r[k]["images_per_s"] = args.batch / r[k]["median_s"]
    rows.append(row)

  record.update(results=results, torch_format=formats,
                loadavg_before=load_before, loadavg_after=common.load_average(), machine=common.machine_info())
  fl = record["flops_per_image"]
  how = {"one process": "interleaved runs in one process",
         "each PyTorch format in a worker process of its own":
             "interleaved runs, each PyTorch format in a process of its own (JAX pooled over both)"}.get(
             record.get("processes"), "runs, one process per contender, one after the other")
  print(f"CascadedLiftNet ({args.model}) vs PyTorch SpecNet: batch {args.batch}, {args.size} px, {args.dtype}, "
        f"{args.threads} torch threads, layers {record.get('layer_ops', '?')}; medians of {args.repeats} {how}")
  print(f"machine: {record['machine']['cpu']} ({record['machine']['cpu_count']} cpus), load avg "
        f"{load_before} -> {record['loadavg_after']}; {record['machine']['versions']}")
  print(f"FLOPs/image (forward): analytic {fl['analytic_forward']['total'] / 1e9:.2f} G"
        + "".join(f", XLA {m} {fl['xla_' + m] / 1e9:.2f} G" for m in modes if fl.get("xla_" + m)))
  if "parity_rel_error" in record:
    print("float32 parity (relative error, JAX vs PyTorch inference): "
          + ", ".join(f"{k} {v:.1e}" for k, v in record["parity_rel_error"].items()))
  print(common.table(["mode", "jax s/step", "jax img/s", "torch s/step", "torch img/s", "jax/torch",
                      "torch format"], rows))
  for mode in modes:
    others = [f"{f} {results[mode]['torch_' + f]['median_s']:.3g} s" for f in torch_formats
              if f != formats.get(mode) and "torch_" + f in results[mode]]
    if others:
      print(f"{mode}: PyTorch's other format: " + ", ".join(others))
  peaks: dict[str, int] = {}
  for mode in modes:
    for name, r in results[mode].items():
      if name != "torch" and isinstance(r, dict) and r.get("peak_rss_mib"):
        peaks[name] = max(peaks.get(name, 0), r["peak_rss_mib"])
  if peaks:
    print("peak resident memory of each contender's process (MiB): "
          + ", ".join(f"{k} {v}" for k, v in peaks.items()))
  common.print_json(record)
  return record


if __name__ == "__main__":
  main()

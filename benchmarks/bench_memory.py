"""Peak host memory of a training step and of inference: CascadedLiftNet (JAX) vs the PyTorch SpecNet.

Each (framework, mode) runs in its own fresh Python process (so neither framework's allocator sees
the other's), with the same model, batch, input size, dtype and step as benchmarks/bench_model.py.
Per process: the resident set (RSS) after imports, weights and inputs are in memory ("base"), then
the highest RSS sampled every 2 ms while --steps calls run ("peak", after the JAX program is compiled,
so the compiler's own memory is not counted; PyTorch's gradients and Adam state are created by the
first step, JAX's optimizer state just before it), and peak - base = the step's working memory. For JAX
also XLA's own buffer assignment of the compiled program (arguments + outputs + temporaries - aliased),
which is what a GPU would need for it.

On CPU both frameworks allocate from the same host memory; on a GPU, pass --device-stats to add
jax.devices()[0].memory_stats()['peak_bytes_in_use'] (not available on CPU).

Usage (prints a table, then one line starting with "JSON "):
  python benchmarks/bench_memory.py                     # full model, batch 8, 256 px, float32
  python benchmarks/bench_memory.py --model tiny --size 64 --batch 2
Options: --model tiny|full --batch N --size S --dtype float32|bfloat16 --modes train,infer --steps N
  --threads N --platform-ops auto|standard|cpu --cpu-conv M --conv-grad M --deconv F --host-malloc M
  --torch-format contiguous|channels_last
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import threading
import time
from typing import Any

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import common  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_bytes() -> int:
  """Current resident set size of this process (Linux /proc/self/statm)."""
  with open("/proc/self/statm", encoding="utf-8") as f:
    return int(f.read().split()[1]) * _PAGE


class PeakSampler:
  """Samples the RSS every `interval` seconds in a thread; .peak is the highest seen."""

  def __init__(self, interval: float = 0.002):
    self.interval, self.peak = interval, rss_bytes()
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._run, daemon=True)

  def _run(self):
    while not self._stop.is_set():
      self.peak = max(self.peak, rss_bytes())
      time.sleep(self.interval)

  def __enter__(self):
    self._thread.start()
    return self

  def __exit__(self, *exc):
    self._stop.set()
    self._thread.join()
    self.peak = max(self.peak, rss_bytes())


def worker(args: argparse.Namespace) -> dict[str, Any]:
  """Runs one framework's one mode in this process and returns its memory figures."""
  import bench_model as bm  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(args.threads)
  cfg = bm.model_config(args.model)
  images, boxes = bm.inputs(args.batch, args.size)
  net = bm.build_torch(cfg)
  out: dict[str, Any] = {}
  if args.worker == "jax":
    dtype = jnp.bfloat16 if args.dtype == "bfloat16" else jnp.float32
    ops = common.layer_ops(args)
    model = bm.CascadedLiftNet(**cfg, dtype=dtype, ops=ops)
    flops_model = model.clone(ops=common.flops_ops(args, ops))
    variables = bm.jax_variables(model, net, args.size)
    del net
    base = rss_bytes()
    program = bm.jax_programs(model, variables, images, boxes, [args.mode], flops_model)[args.mode]
    run = program["run"]
    out["xla_buffers_bytes"] = program["memory"]
  else:
    base = rss_bytes()
    run = bm.torch_programs(net, images, boxes, [args.mode], dtype=args.dtype, fmt=args.torch_format)[args.mode]
  with PeakSampler() as sampler:
    for _ in range(args.steps):
      run()
  out.update(base_rss_bytes=base, peak_rss_bytes=sampler.peak, step_bytes=sampler.peak - base)
  if args.device_stats and args.worker == "jax":
    out["device_peak_bytes"] = (jax.devices()[0].memory_stats() or {}).get("peak_bytes_in_use")
  return out


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
  common.add_model_args(p)
  p.add_argument("--modes", default="train,infer")
  p.add_argument("--steps", type=int, default=2)
  p.add_argument("--torch-format", default="channels_last", choices=("contiguous", "channels_last"))
  p.add_argument("--device-stats", action="store_true")
  p.add_argument("--worker", choices=("jax", "torch"), help=argparse.SUPPRESS)
  p.add_argument("--mode", choices=("train", "infer"), help=argparse.SUPPRESS)
  return p.parse_args(argv)


def main(argv=None) -> dict[str, Any]:
  args = parse_args(argv)
  common.configure_host(args)
  if args.worker:
    print("RESULT " + json.dumps(worker(args)), flush=True)
    return {}
  load_before = common.load_average()
  passthrough = ["--model", args.model, "--batch", str(args.batch), "--size", str(args.size), "--dtype", args.dtype,
                 "--steps", str(args.steps), "--threads", str(args.threads), "--platform-ops", args.platform_ops, "--deconv", args.deconv,
                 "--torch-format", args.torch_format, "--host-malloc", args.host_malloc, "--cpu-conv", args.cpu_conv,
                 "--conv-grad", args.conv_grad] + (["--device-stats"] if args.device_stats else [])
  results: dict[str, dict[str, Any]] = {}
  rows = []
  gib = 2.0**30
  for mode in [m for m in args.modes.split(",") if m]:
    results[mode] = {}
    for fw in ("jax", "torch"):
      cmd = [sys.executable, __file__, "--worker", fw, "--mode", mode] + passthrough
      proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
      lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
      if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{fw} {mode} worker failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
      r = json.loads(lines[-1][len("RESULT "):])
      results[mode][fw] = r
      xla = r.get("xla_buffers_bytes")
      xla_gib = ((xla["argument_size_in_bytes"] + xla["output_size_in_bytes"] + xla["temp_size_in_bytes"]
                  - xla["alias_size_in_bytes"]) / gib) if xla else "-"
      rows.append([mode, fw, r["base_rss_bytes"] / gib, r["peak_rss_bytes"] / gib, r["step_bytes"] / gib, xla_gib])
  record = {"benchmark": "bench_memory", "model": args.model, "batch": args.batch, "size": args.size,
            "dtype": args.dtype, "deconv": args.deconv, **common.ops_report(args, common.layer_ops(args)),
            "conv_grad": args.conv_grad, "torch_format": args.torch_format, "steps": args.steps,
            "results": results, "loadavg_before": load_before, "loadavg_after": common.load_average(),
            "machine": common.machine_info()}
  print(f"Peak host memory (GiB), {args.model} model, batch {args.batch}, {args.size} px, {args.dtype}, "
        f"PyTorch {args.torch_format}; one process per row")
  print(f"machine: {record['machine']['cpu']} ({record['machine']['cpu_count']} cpus), "
        f"{record['machine'].get('mem_total_gib')} GiB")
  print(common.table(["mode", "framework", "base RSS", "peak RSS", "peak - base", "XLA buffers"], rows))
  common.print_json(record)
  return record


if __name__ == "__main__":
  main()

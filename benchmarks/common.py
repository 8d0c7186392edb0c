"""Shared helpers of the benchmarks: machine and version report, interleaved timing, the JSON line.

Every benchmark prints a human-readable table and then exactly one line that starts with "JSON " and
holds everything (machine, versions, settings, timings), so that results can be collected with
`grep '^JSON ' | cut -c6-`.

Timing on a shared machine: run the contenders in turns (A B A B ...) so that a burst of load from
another process hits both, report medians, and record the load average before and after. Contenders
may live in other processes (WorkerProcess / serve): bench_model.py keeps PyTorch in its own, so that
neither framework's heap is shaped by the other's allocations (BENCHMARKS.md).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from typing import Any, Callable, Mapping, Sequence

# PyTorch's OpenMP threads busy-wait after each parallel region; in a process that also times JAX they
# keep spinning into XLA's timed calls and take its cores (measured: the JAX training step 14.3 s
# interleaved with PyTorch, 12.3 s with passive waiting, 10.8 s with no PyTorch in the process), while
# PyTorch itself was no slower with passive waiting (6.57 s vs 6.85 s). Set before torch is imported;
# an explicit OMP_WAIT_POLICY in the environment wins, and the JSON line records it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def cpu_model() -> str:
  """The CPU's model name from /proc/cpuinfo (Linux), else platform.processor()."""
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      for line in f:
        if line.lower().startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown"


def load_average() -> list[float] | None:
  """1, 5 and 15 minute load averages, or None where the OS has none."""
  try:
    return [round(x, 2) for x in os.getloadavg()]
  except OSError:
    return None


def machine_info() -> dict[str, Any]:
  """Machine, OS, Python and library versions, JAX devices and the relevant environment variables."""
  info: dict[str, Any] = {
      "cpu": cpu_model(),
      "cpu_count": os.cpu_count(),
      "affinity_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
      "platform": platform.platform(),
      "python": sys.version.split()[0],
      "loadavg": load_average(),
      "env": {k: os.environ[k] for k in ("XLA_FLAGS", "OMP_NUM_THREADS", "OMP_WAIT_POLICY", "JAX_PLATFORMS") if k in os.environ},
  }
  try:
    with open("/proc/meminfo", encoding="utf-8") as f:
      info["mem_total_gib"] = round(int(f.readline().split()[1]) / 2**20, 1)
  except (OSError, ValueError, IndexError):
    pass
  versions = {}
  for name in ("jax", "jaxlib", "flax", "optax", "numpy", "torch"):
    module = sys.modules.get(name)
    if module is not None:
      versions[name] = getattr(module, "__version__", "?")
  info["versions"] = versions
  if "jax" in sys.modules:
    jax = sys.modules["jax"]
    info["jax_backend"] = jax.default_backend()
    info["jax_devices"] = [str(d.device_kind) for d in jax.devices()]
  if "torch" in sys.modules:
    torch = sys.modules["torch"]
    info["torch_threads"] = torch.get_num_threads()
    info["torch_cuda"] = bool(torch.cuda.is_available())
  return info


def time_call(fn: Callable[[], Any]) -> float:
  """Seconds one call of fn takes; fn must block until its work is done."""
  t0 = time.perf_counter()
  fn()
  return time.perf_counter() - t0


def peak_rss_mib() -> int | None:
  """This process's peak resident memory in MiB: VmHWM of /proc/self/status (the current program's
  own; getrusage's ru_maxrss would also count the parent's memory at fork, kept across exec)."""
  try:
    with open("/proc/self/status", encoding="utf-8") as f:
      for line in f:
        if line.startswith("VmHWM:"):
          return int(line.split()[1]) // 1024
  except (OSError, ValueError, IndexError):
    pass
  try:
    import resource  # pylint: disable=g-import-not-at-top
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
  except (ImportError, OSError):
    return None


def measure_call(fn: Callable[[], Any]) -> dict[str, Any]:
  """One blocking call of fn: its seconds, and the process's minor page faults and system CPU seconds
  during it (getrusage, Unix only): how much of the call the kernel spent mapping fresh memory."""
  import resource  # pylint: disable=g-import-not-at-top
  before = resource.getrusage(resource.RUSAGE_SELF)
  dt = time_call(fn)
  after = resource.getrusage(resource.RUSAGE_SELF)
  return {"s": dt, "minor_faults": after.ru_minflt - before.ru_minflt,
          "sys_s": round(after.ru_stime - before.ru_stime, 3), "peak_rss_mib": peak_rss_mib()}


class WorkerProcess:
  """A child process that holds some contenders and times one call of any of them on request, so that
  contenders living in different processes (each framework with its own heap) still take turns.

  The child runs `cmd` and calls serve() with its contenders; calls(names) gives stand-ins for
  interleaved() that measure in the child (its own time, page faults and system seconds).
  """

  def __init__(self, cmd: Sequence[str], env: Mapping[str, str] | None = None):
    import subprocess  # pylint: disable=g-import-not-at-top
    self.cmd = list(cmd)
    # stderr is inherited: the child's warnings and -v log go where ours go.
    self.proc = subprocess.Popen(self.cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                 bufsize=1, env=None if env is None else dict(env))
    self.names = self._reply("READY")

  def _reply(self, tag: str) -> Any:
    assert self.proc.stdout is not None
    for line in self.proc.stdout:  # other output of the child is skipped
      if line.startswith(tag + " "):
        return json.loads(line[len(tag) + 1:])
    raise RuntimeError(f"benchmark worker {' '.join(self.cmd)} exited ({self.proc.wait()}) before "
                       f"answering {tag}; its stderr is above")

  def measure(self, name: str) -> dict[str, Any]:
    assert self.proc.stdin is not None
    self.proc.stdin.write(name + "\n")
    self.proc.stdin.flush()
    return self._reply("RESULT")

  def calls(self, names: Sequence[str]) -> dict[str, "_RemoteCall"]:
    missing = set(names) - set(self.names)
    if missing:
      raise KeyError(f"worker has no contender(s) {sorted(missing)}; it has {self.names}")
    return {n: _RemoteCall(self, n) for n in names}

  def close(self) -> None:
    if self.proc.poll() is None:
      assert self.proc.stdin is not None
      self.proc.stdin.close()  # serve() ends at end of input
      self.proc.wait()

  def __enter__(self) -> "WorkerProcess":
    return self

  def __exit__(self, *exc: Any) -> None:
    self.close()


class _RemoteCall:
  """A contender of a WorkerProcess, as interleaved() takes it."""

  def __init__(self, worker: WorkerProcess, name: str):
    self.worker, self.name = worker, name

  def measure(self) -> dict[str, Any]:
    return self.worker.measure(self.name)


def serve(contenders: Mapping[str, Callable[[], Any]]) -> None:
  """The child side of WorkerProcess: announces its contenders, then times one call per input line
  naming one, until end of input."""
  print("READY " + json.dumps(sorted(contenders)), flush=True)
  for line in sys.stdin:
    name = line.strip()
    print("RESULT " + json.dumps(measure_call(contenders[name])), flush=True)


def interleaved(contenders: Mapping[str, Any], *, warmup: int, repeats: int,
                log: Callable[[str], None] | None = None) -> dict[str, dict[str, Any]]:
  """Times each contender in turns: warmup rounds (first one = compile), then repeats rounds.

  A contender is a blocking callable, timed here, or a WorkerProcess call (anything with a measure()
  method), timed in its own process. Returns per contender: first_s (the first call, which includes
  compilation), times_s (timed calls), median_s and min_s, and for the timed calls the minor page
  faults and system CPU seconds of the contender's process during each (minor_faults, sys_s).
  """
  out: dict[str, dict[str, Any]] = {k: {"first_s": None, "times_s": [], "minor_faults": [], "sys_s": []}
                                    for k in contenders}
  for r in range(warmup + repeats):
    for name, fn in contenders.items():
      m = fn.measure() if hasattr(fn, "measure") else measure_call(fn)
      if r == 0:
        out[name]["first_s"] = m["s"]
      if r >= warmup:
        out[name]["times_s"].append(m["s"])
        out[name]["minor_faults"].append(m["minor_faults"])
        out[name]["sys_s"].append(m["sys_s"])
      out[name]["peak_rss_mib"] = m["peak_rss_mib"]
      if log is not None:
        log(f"  round {r} {'warmup' if r < warmup else 'timed'} {name}: {m['s']:.3f} s "
            f"({m['minor_faults']} minor faults, {m['sys_s']:.2f} s system)")
  for v in out.values():
    v["median_s"] = statistics.median(v["times_s"]) if v["times_s"] else None
    v["min_s"] = min(v["times_s"]) if v["times_s"] else None
  return out


def pool_timings(a: dict[str, Any] | None, b: dict[str, Any]) -> dict[str, Any]:
  """One contender's interleaved() timings from two runs as one: the timed calls of both (first_s from
  the first run, the larger peak memory), median and min over all of them."""
  if a is None:
    return dict(b)
  out = {"first_s": a["first_s"], "peak_rss_mib": max(a.get("peak_rss_mib") or 0, b.get("peak_rss_mib") or 0)}
  for k in ("times_s", "minor_faults", "sys_s"):
    out[k] = a[k] + b[k]
  out["median_s"] = statistics.median(out["times_s"]) if out["times_s"] else None
  out["min_s"] = min(out["times_s"]) if out["times_s"] else None
  return out


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
  """A plain-text table with right-aligned columns (floats to 3 significant digits)."""

  def fmt(x: Any) -> str:
    if isinstance(x, float):
      return f"{x:.3g}" if abs(x) < 1e4 else f"{x:.4g}"
    return str(x)

  cells = [[fmt(c) for c in header]] + [[fmt(c) for c in r] for r in rows]
  widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
  lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in cells]
  lines.insert(1, "  ".join("-" * w for w in widths))
  return "\n".join(lines)


def print_json(record: Mapping[str, Any]) -> None:
  """Prints the machine-readable line: 'JSON ' + one line of JSON."""
  print("JSON " + json.dumps(record, default=str, separators=(",", ":")), flush=True)


DECONV_FORMULATIONS = ("auto", "adjoint_conv", "four_phase", "depth_to_space", "conv_transpose")
PLATFORM_OPS = ("auto", "standard", "cpu")


def add_model_args(parser: Any, *, dtype: bool = True) -> None:
  """The model-shape options every model benchmark takes: --model, --batch, --size, [--dtype],
  --threads (torch.set_num_threads; XLA sizes its own pool), and the layer implementations:
  --platform-ops, --cpu-conv, --conv-grad, --deconv (see layer_ops), --host-malloc (see configure_host)."""
  parser.add_argument("--model", default="full", choices=("tiny", "full"))
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--size", type=int, default=256)
  if dtype:
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (XLA sizes its own pool)")
  parser.add_argument("--platform-ops", default="auto", choices=PLATFORM_OPS,
                      help="the network's layer implementations (config.platform_ops, cascaded_lift/platform.py): "
                           "'auto' the CPU forms (cascaded_lift/cpu/layers.py) on a CPU backend and the standard "
                           "Flax layers elsewhere, 'standard' nn.Conv / nn.ConvTranspose / nn.max_pool everywhere, "
                           "'cpu' the CPU forms everywhere; --cpu-conv, --conv-grad and --deconv apply to the "
                           "CPU forms")
  parser.add_argument("--deconv", default="auto", choices=DECONV_FORMULATIONS,
                      help="the CPU forms' transposed convolutions (cpu/layers.py CpuDeconv; auto: adjoint_conv with "
                           "oneDNN's kernels, else four_phase)")
  parser.add_argument("--host-malloc", default="retain", choices=("retain", "default"),
                      help="glibc malloc for the whole process, both frameworks: 'retain' keeps freed memory "
                           "for reuse (cascaded_lift/cpu/hostmem.py; what config.cpu.host_malloc='retain' does), "
                           "'default' leaves glibc's")
  parser.add_argument("--cpu-conv", default="auto", choices=("auto", "onednn", "xla"),
                      help="which kernels compute the CPU forms' float32 convolutions: oneDNN's through the XLA FFI "
                           "(auto: where they build) or XLA's own (cpu/conv_ops.py KERNELS)")
  parser.add_argument("--conv-grad", default="auto", choices=("auto", "taps", "xla"),
                      help="how the CPU forms compute convolution kernel gradients on XLA's path "
                           "(cpu/conv_ops.py KERNEL_GRADS)")


def configure_host(args: Any) -> bool:
  """Applies --host-malloc to the whole process (cpu/hostmem.py). Call it before the first JAX or PyTorch
  computation: malloc options act on arenas created later. True when glibc's options were changed."""
  from cascaded_lift.cpu import hostmem  # pylint: disable=g-import-not-at-top
  return hostmem.configure(args.host_malloc)


def uses_cpu_forms(args: Any) -> bool:
  """Whether --platform-ops picks the CPU forms on JAX's default backend (cascaded_lift.platform's rule)."""
  from cascaded_lift import platform as platform_policy  # pylint: disable=g-import-not-at-top
  return platform_policy.uses_cpu_forms({"platform_ops": args.platform_ops})


def layer_ops(args: Any) -> Any:
  """The models.LayerOps the benchmarked network is built from: STANDARD_OPS, or
  cpu_ops(conv=--cpu-conv, kernel_grad=--conv-grad, deconv=--deconv) where --platform-ops picks the CPU
  forms (cascaded_lift.platform's policy). --cpu-conv onednn fails here, with the reason, when the
  kernels cannot be built. Starts JAX's backend: call configure_host first."""
  from cascaded_lift.cpu import layers  # pylint: disable=g-import-not-at-top
  from cascaded_lift.models.ops import STANDARD_OPS  # pylint: disable=g-import-not-at-top
  if not uses_cpu_forms(args):
    return STANDARD_OPS
  if args.cpu_conv == "onednn":
    from cascaded_lift.cpu.kernels import onednn  # pylint: disable=g-import-not-at-top
    onednn.register()
  return layers.cpu_ops(conv=args.cpu_conv, kernel_grad=args.conv_grad, deconv=args.deconv)


def flops_ops(args: Any, ops: Any) -> Any:
  """The LayerOps to count FLOPs with (xla_flops): `ops` with XLA's own convolutions in place of the oneDNN
  custom calls, which XLA's cost analysis cannot see into (they would count as zero). The same
  formulations otherwise: STANDARD_OPS stays, the CPU forms become cpu_ops(conv="xla", ...)."""
  from cascaded_lift.cpu import layers  # pylint: disable=g-import-not-at-top
  from cascaded_lift.models.ops import STANDARD_OPS  # pylint: disable=g-import-not-at-top
  if ops == STANDARD_OPS:
    return ops
  return layers.cpu_ops(conv="xla", kernel_grad=args.conv_grad, deconv=args.deconv)


def ops_report(args: Any, ops: Any) -> dict[str, Any]:
  """The JSON fields that say how the network's layers were computed: platform_ops, layer_ops (the
  LayerOps' name) and cpu_conv (cpu_conv_report)."""
  return {"platform_ops": args.platform_ops, "layer_ops": ops.name, "cpu_conv": cpu_conv_report(args, ops)}


def cpu_conv_report(args: Any, ops: Any) -> dict[str, Any]:
  """What computed the convolutions: the --cpu-conv mode and, for CPU float32, whether oneDNN did (never
  with the standard layers)."""
  from cascaded_lift.cpu.kernels import onednn  # pylint: disable=g-import-not-at-top
  from cascaded_lift.cpu import conv_ops  # pylint: disable=g-import-not-at-top
  from cascaded_lift.models.ops import STANDARD_OPS  # pylint: disable=g-import-not-at-top
  active = ops != STANDARD_OPS and conv_ops.onednn_active("float32", args.cpu_conv)
  return {"mode": args.cpu_conv, "onednn_float32": active, "onednn_unavailable_reason": onednn.unavailable_reason(),
          "onednn_version": onednn.version()}


def xla_flops(fn: Callable[..., Any], *args: Any) -> float | None:
  """XLA's cost-analysis FLOPs of jit(fn)(*args). fn must compute its convolutions with XLA's own
  operations (a model built with flops_ops): XLA cannot see inside the oneDNN custom calls, which would
  count as zero, so a function that lowers to them is refused with a ValueError."""
  import jax  # pylint: disable=g-import-not-at-top
  lowered = jax.jit(fn).lower(*args)
  if "cascaded_lift_onednn" in lowered.as_text():
    raise ValueError("xla_flops: the function lowers to oneDNN custom calls, whose FLOPs XLA's cost analysis "
                     "counts as zero; build it with common.flops_ops(args, ops)")
  cost = lowered.compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost["flops"]) if cost and "flops" in cost else None

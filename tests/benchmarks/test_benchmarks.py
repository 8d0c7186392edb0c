"""Tests for the benchmark helpers that classify and time work (benchmarks/ is run as scripts)."""

import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "benchmarks"))
import bench_ops  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position


def _compiled_text(fn, *args) -> str:
  return jax.jit(fn).lower(*args).compile().as_text()


def test_hlo_classes_names_convolutions_matmuls_and_transposes():
  x = jnp.ones((2, 9, 9, 3))
  w = jnp.ones((3, 3, 3, 4))
  m = jnp.ones((7, 5))

  def conv_only(x, w):
    return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))

  classes = set(bench_ops.hlo_classes(_compiled_text(conv_only, x, w)).values())
  assert "convolution" in classes and "matmul" not in classes
  from cascaded_lift.cpu.kernels import onednn  # pylint: disable=g-import-not-at-top
  from cascaded_lift.cpu import conv_ops  # pylint: disable=g-import-not-at-top
  if onednn.available():  # the oneDNN custom calls count as convolutions too
    text = _compiled_text(lambda x, w: conv_ops.conv2d(x, w, 1, ((1, 1), (1, 1)), 1, kernels="onednn"), x, w)
    assert "cascaded_lift_onednn_conv_forward" in text
    assert set(bench_ops.hlo_classes(text).values()) & {"convolution", "matmul"} == {"convolution"}
  classes = set(bench_ops.hlo_classes(_compiled_text(lambda a: a @ a.T, m)).values())
  assert "matmul" in classes and "convolution" not in classes
  # A materialised transpose (its result is returned, so XLA cannot fold it into a consumer).
  classes = set(bench_ops.hlo_classes(_compiled_text(lambda a: jnp.transpose(a * 2.0 + 1.0, (2, 0, 1, 3)),
                                                     x)).values())
  assert "layout copy" in classes
  classes = set(bench_ops.hlo_classes(_compiled_text(lambda a: jnp.exp(a).sum(), m)).values())
  assert classes <= {"elementwise/reduce"} and classes


def test_trace_op_times_sees_the_ops_of_a_jitted_call():
  f = jax.jit(lambda a: jnp.tanh(a @ a.T).sum())
  a = jnp.asarray(np.random.default_rng(0).normal(size=(256, 256)), jnp.float32)
  jax.block_until_ready(f(a))
  per_op, wall = bench_ops.trace_op_times(lambda: jax.block_until_ready(f(a)), steps=2)
  assert wall > 0
  names = set(bench_ops.hlo_classes(f.lower(a).compile().as_text()))
  assert names & set(per_op), "no traced op matched an instruction of the compiled module"


def _model_args(*argv):
  import argparse  # pylint: disable=g-import-not-at-top
  import common  # pylint: disable=g-import-not-at-top  # benchmarks/common.py
  parser = argparse.ArgumentParser()
  common.add_model_args(parser)
  return parser.parse_args(list(argv))


def test_layer_ops_follow_the_platform_flags():
  import common  # pylint: disable=g-import-not-at-top  # benchmarks/common.py
  from cascaded_lift.cpu import layers  # pylint: disable=g-import-not-at-top
  from cascaded_lift.models import STANDARD_OPS  # pylint: disable=g-import-not-at-top
  args = _model_args()
  assert (args.platform_ops, args.cpu_conv, args.conv_grad, args.deconv) == ("auto", "auto", "auto", "auto")
  assert jax.default_backend() == "cpu"  # tests run on CPU (conftest): auto means the CPU forms
  assert common.layer_ops(args) is layers.cpu_ops(conv="auto", kernel_grad="auto", deconv="auto")
  assert common.layer_ops(_model_args("--platform-ops", "standard", "--cpu-conv", "xla")) is STANDARD_OPS
  flags = _model_args("--platform-ops", "cpu", "--cpu-conv", "xla", "--conv-grad", "taps", "--deconv", "four_phase")
  ops = common.layer_ops(flags)
  assert ops is layers.cpu_ops(conv="xla", kernel_grad="taps", deconv="four_phase")
  report = common.ops_report(flags, ops)
  assert report["platform_ops"] == "cpu" and report["layer_ops"] == ops.name
  assert report["cpu_conv"]["mode"] == "xla" and report["cpu_conv"]["onednn_float32"] is False
  # FLOPs are counted with XLA's convolutions and otherwise the same layers.
  assert common.flops_ops(flags, ops) is layers.cpu_ops(conv="xla", kernel_grad="taps", deconv="four_phase")
  assert common.flops_ops(flags, STANDARD_OPS) is STANDARD_OPS
  assert common.ops_report(flags, STANDARD_OPS)["cpu_conv"]["onednn_float32"] is False


def test_xla_flops_counts_convolutions_of_the_xla_form_and_refuses_onednn_calls(onednn_kernels):
  import common  # pylint: disable=g-import-not-at-top  # benchmarks/common.py
  x = jnp.ones((2, 8, 8, 3))
  args = _model_args("--cpu-conv", "onednn")
  ops = common.layer_ops(args)  # as the timed program is built: the conv is a custom call
  layer = ops.conv(4, (3, 3), padding=((1, 1), (1, 1)), use_bias=False)
  variables = {"params": {"kernel": jnp.ones((3, 3, 3, 4))}}
  conv = lambda v, x: layer.apply(v, x)  # noqa: E731
  assert "cascaded_lift_onednn_conv_forward" in _compiled_text(conv, variables, x)
  with pytest.raises(ValueError, match="oneDNN custom calls"):
    common.xla_flops(conv, variables, x)
  counted = common.flops_ops(args, ops).conv(4, (3, 3), padding=((1, 1), (1, 1)), use_bias=False)
  flops = common.xla_flops(lambda v, x: counted.apply(v, x), variables, x)
  # 2 x the multiply-adds of a 3x3 SAME convolution that touch the image (XLA skips the padding): per
  # spatial axis the 8 outputs read 3 taps each but the two border outputs one fewer, 22 in all.
  assert flops == 2 * 2 * 4 * 3 * 22 * 22


_WORKER_SCRIPT = """
import sys
sys.path.insert(0, {benchmarks!r})
import common

def touch_fresh_memory():  # 64 MiB written: glibc maps a fresh block (no huge pages) and unmaps it after
  return len(bytearray(b"x") * (64 * 2**20))

common.serve({{"touch": touch_fresh_memory, "noop": lambda: None}})
"""


def test_worker_process_contenders_are_timed_in_their_own_process(tmp_path):
  import resource  # pylint: disable=g-import-not-at-top
  import common  # pylint: disable=g-import-not-at-top  # benchmarks/common.py
  script = tmp_path / "worker.py"
  script.write_text(_WORKER_SCRIPT.format(benchmarks=str(pathlib.Path(common.__file__).parent)))
  ballast = bytearray(b"x") * (384 * 2**20)  # this process's memory when it starts the worker
  with common.WorkerProcess([sys.executable, str(script)]) as worker:
    assert worker.names == ["noop", "touch"]
    with np.testing.assert_raises(KeyError):
      worker.calls(["touch", "missing"])
    local = []
    contenders = {"local": lambda: local.append(1), **worker.calls(["touch", "noop"])}
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    out = common.interleaved(contenders, warmup=1, repeats=2)
    parent_faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
  assert len(local) == 3  # the local contender ran here, once per round
  assert [len(out[k]["times_s"]) for k in ("local", "touch", "noop")] == [2, 2, 2]
  # 64 MiB = 16384 pages faulted in the worker on every call; the parent faulted far fewer in all.
  assert min(out["touch"]["minor_faults"]) >= 16384 > parent_faults
  assert max(out["noop"]["minor_faults"]) < 1000
  # The worker's own peak memory: its 64 MiB blocks, not the 384 MiB its parent held when it started.
  assert 64 <= out["touch"]["peak_rss_mib"] < 300 <= common.peak_rss_mib()
  assert worker.proc.returncode == 0  # closed at the end of the with block
  del ballast


def test_pool_timings_joins_two_runs_of_one_contender():
  import common  # pylint: disable=g-import-not-at-top  # benchmarks/common.py
  a = {"first_s": 9.0, "times_s": [4.0, 6.0], "minor_faults": [0, 5], "sys_s": [0.1, 0.2], "peak_rss_mib": 700,
       "median_s": 5.0, "min_s": 4.0}
  b = {"first_s": 1.0, "times_s": [3.0, 8.0, 5.5], "minor_faults": [1, 2, 3], "sys_s": [0.0, 0.0, 0.3],
       "peak_rss_mib": 900, "median_s": 5.5, "min_s": 3.0}
  assert common.pool_timings(None, b) == b
  pooled = common.pool_timings(a, b)
  assert pooled["times_s"] == [4.0, 6.0, 3.0, 8.0, 5.5] and pooled["minor_faults"] == [0, 5, 1, 2, 3]
  assert pooled["median_s"] == 5.5 and pooled["min_s"] == 3.0  # of 3, 4, 5.5, 6, 8
  assert pooled["first_s"] == 9.0 and pooled["peak_rss_mib"] == 900


def test_worker_process_that_dies_is_reported_with_its_command(tmp_path):
  import common  # pylint: disable=g-import-not-at-top  # benchmarks/common.py
  script = tmp_path / "broken.py"
  script.write_text("raise SystemExit(3)\n")
  with pytest.raises(RuntimeError, match=r"broken\.py exited \(3\) before answering READY"):
    common.WorkerProcess([sys.executable, str(script)])

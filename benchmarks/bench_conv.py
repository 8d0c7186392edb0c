"""Single convolution layers: oneDNN's kernels (the XLA FFI custom calls) against XLA:CPU's own.

For each layer of the full model's kinds (ResNet 3x3 and 1x1, the volumetric head's wide 1x1, the ASPP's
dilated 3x3, the stem), times jit(conv) and jit(grad(sum(conv**2))) with respect to input and kernel,
with conv_ops.conv2d(..., kernels="onednn") and kernels="xla" (XLA's path: 1x1 kernels as a matrix
product, as cpu.layers.CpuConv computes them without oneDNN; kernel gradients as conv_ops'
kernel_grad="auto" picks). Batch 8, float32; medians of --repeats calls in ms.

  python benchmarks/bench_conv.py [--repeats 5] [--batch 8]
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import common  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position

from cascaded_lift.cpu import conv_ops  # noqa: E402

# name, map size, in, out, kernel, stride, dilation
LAYERS = [("3x3 256->256", 64, 256, 256, 3, 1, 1), ("3x3 64->64", 64, 64, 64, 3, 1, 1),
          ("1x1 256->64", 64, 256, 64, 1, 1, 1), ("1x1 512->1152", 64, 512, 1152, 1, 1, 1),
          ("3x3 d4 256->256", 64, 256, 256, 3, 1, 4), ("7x7 /2 3->64 stem", 256, 3, 64, 7, 2, 1)]


def layer(x, w, k, s, d, mode):
  if mode == "xla" and k == 1:
    return jax.lax.dot_general(x[:, ::s, ::s], w[0, 0], (((3,), (0,)), ((), ())))
  p = d * (k - 1) // 2
  return conv_ops.conv2d(x, w, s, ((p, p), (p, p)), d, kernels=mode)


def median_ms(fn, *args, repeats: int) -> float:
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return 1e3 * float(np.median(times))


def main(argv=None) -> dict:
  ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
  ap.add_argument("--batch", type=int, default=8)
  ap.add_argument("--repeats", type=int, default=5)
  args = ap.parse_args(argv)
  rng = np.random.default_rng(0)
  rows, record = [], {"benchmark": "bench_conv", "batch": args.batch, "repeats": args.repeats, "layers": {}}
  for name, size, cin, cout, k, s, d in LAYERS:
    x = jnp.asarray(rng.standard_normal((args.batch, size, size, cin), np.float32))
    w = jnp.asarray(rng.standard_normal((k, k, cin, cout), np.float32) * 0.05)
    res = {}
    for mode in ("onednn", "xla"):
      fwd = jax.jit(lambda x, w, m=mode: layer(x, w, k, s, d, m))
      grad = jax.jit(jax.grad(lambda x, w, m=mode: jnp.sum(layer(x, w, k, s, d, m) ** 2), argnums=(0, 1)))
      res[mode] = (median_ms(fwd, x, w, repeats=args.repeats), median_ms(grad, x, w, repeats=args.repeats))
    record["layers"][name] = {m: {"forward_ms": f, "forward_backward_ms": fb} for m, (f, fb) in res.items()}
    rows.append([name, res["onednn"][0], res["onednn"][1], res["xla"][0], res["xla"][1],
                 res["xla"][1] / res["onednn"][1]])
  record["machine"] = common.machine_info()
  print(f"batch {args.batch}, float32, medians of {args.repeats}; ms")
  print(common.table(["layer", "onednn fwd", "onednn fwd+bwd", "xla fwd", "xla fwd+bwd", "xla/onednn fwd+bwd"], rows))
  common.print_json(record)
  return record


if __name__ == "__main__":
  main()

"""The CPU-friendly ops: conv_ops.conv2d (the same operator and gradients as a convolution, checked
against PyTorch's conv2d and a NumPy loop for the kernel gradient, with oneDNN's kernels and with XLA's,
chosen by its `kernels` / `kernel_grad` arguments) and cpu.layers.max_pool_taps / max_pool (a NumPy loop,
nn.max_pool)."""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cascaded_lift.cpu.kernels import onednn
from cascaded_lift.cpu import conv_ops
from cascaded_lift.cpu import layers

CASES = [  # kernel, stride, dilation, padding, in channels
    (3, 1, 1, 1, 5),
    (3, 2, 1, 1, 4),   # strided, odd input size: the last window must stop inside the padded input
    (3, 1, 4, 4, 3),   # atrous, as in the ASPP block
    (7, 2, 1, 3, 3),   # the ResNet stem
    (2, 1, 1, 0, 6),   # a four-phase deconvolution tap
    (1, 2, 1, 0, 4),
]


# conv2d's arguments for each way of computing convolutions on CPU: oneDNN's kernels, or XLA's with the
# kernel gradient as tap products or as XLA's own.
MODES = {"onednn": dict(kernels="onednn"), "taps": dict(kernels="xla", kernel_grad="taps"),
         "xla": dict(kernels="xla", kernel_grad="xla")}


@pytest.fixture(params=list(MODES))
def kernel_grad(request):
  """Runs a test with each of MODES (its name; MODES[name] are the arguments to pass)."""
  if request.param == "onednn":
    request.getfixturevalue("onednn_kernels")
  return request.param


def _case(k, c, seed=0):
  rng = np.random.default_rng(seed)
  return (rng.normal(size=(2, 11, 9, c)).astype(np.float32), rng.normal(size=(k, k, c, 7)).astype(np.float32))


@pytest.mark.parametrize("k,s,d,p,c", CASES)
def test_conv2d_matches_torch_forward_and_gradients(k, s, d, p, c, kernel_grad):
  torch = pytest.importorskip("torch")
  x, w = _case(k, c)
  xt = torch.tensor(x.transpose(0, 3, 1, 2), requires_grad=True)
  wt = torch.tensor(w.transpose(3, 2, 0, 1), requires_grad=True)
  yt = torch.nn.functional.conv2d(xt, wt, stride=s, padding=p, dilation=d)
  cot = np.random.default_rng(1).normal(size=yt.shape).astype(np.float32)
  (yt * torch.from_numpy(cot)).sum().backward()
  f = lambda x, w: conv_ops.conv2d(x, w, s, ((p, p), (p, p)), d, **MODES[kernel_grad])  # noqa: E731
  y = jax.jit(f)(x, w)
  np.testing.assert_allclose(y, yt.detach().numpy().transpose(0, 2, 3, 1), rtol=1e-4, atol=1e-4)
  gx, gw = jax.jit(jax.grad(lambda x, w: jnp.sum(f(x, w) * cot.transpose(0, 2, 3, 1)), argnums=(0, 1)))(x, w)
  np.testing.assert_allclose(gx, xt.grad.numpy().transpose(0, 2, 3, 1), rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(gw, wt.grad.numpy().transpose(2, 3, 1, 0), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("k,s,d,p,c", CASES)
def test_conv2d_transpose_is_the_convolutions_input_gradient(k, s, d, p, c, kernel_grad):
  """conv2d_transpose(y) = vjp of lax.conv_general_dilated in x, applied to y; and its gradients in y and
  the kernel are those of that reference (autodiff through XLA's transposed convolution)."""
  x, w = _case(k, c)
  pad = ((p, p), (p, p))
  ref_conv = lambda v, kk: jax.lax.conv_general_dilated(  # noqa: E731
      v, kk, (s, s), pad, rhs_dilation=(d, d), dimension_numbers=("NHWC", "HWIO", "NHWC"))
  y = np.random.default_rng(3).normal(size=jax.eval_shape(ref_conv, x, w).shape).astype(np.float32)

  def ref(y, kk):
    return jax.vjp(lambda v: ref_conv(v, kk), jnp.zeros_like(x))[1](y)[0]

  kernels = MODES[kernel_grad]["kernels"]  # the transpose has no kernel_grad: XLA's path is XLA's own
  ours = lambda y, kk: conv_ops.conv2d_transpose(y, kk, s, pad, d, x.shape[1:3], kernels=kernels)  # noqa: E731
  np.testing.assert_allclose(jax.jit(ours)(y, w), ref(y, w), rtol=1e-4, atol=1e-4)
  cot = np.random.default_rng(4).normal(size=x.shape).astype(np.float32)
  g_ours = jax.jit(jax.grad(lambda y, kk: jnp.sum(ours(y, kk) * cot), argnums=(0, 1)))(y, w)
  g_ref = jax.grad(lambda y, kk: jnp.sum(ref(y, kk) * cot), argnums=(0, 1))(y, w)
  for a, b in zip(g_ours, g_ref):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
  if kernel_grad == "onednn":  # computed by the three custom calls alone, no XLA convolution
    grad = jax.jit(jax.grad(lambda y, kk: jnp.sum(ours(y, kk) * cot), argnums=(0, 1)))
    text = grad.lower(y, w).compile().as_text() + jax.jit(ours).lower(y, w).compile().as_text()
    assert all(t in text for t in onednn.TARGETS) and " convolution(" not in text
  else:  # kernels="xla": XLA's convolutions, no custom call
    assert "cascaded_lift_onednn" not in jax.jit(ours).lower(y, w).as_text()


def test_kernel_gradient_matches_a_numpy_loop(kernel_grad):
  k, s, d, p, c = 3, 2, 2, 2, 3
  x, w = _case(k, c, seed=3)
  y = conv_ops.xla_conv2d(jnp.asarray(x), jnp.asarray(w), s, ((p, p), (p, p)), d)
  dy = np.random.default_rng(4).normal(size=y.shape).astype(np.float32)
  xp = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0))).astype(np.float64)
  ref = np.zeros(w.shape)
  for i in range(k):
    for j in range(k):
      for h in range(dy.shape[1]):
        for v in range(dy.shape[2]):
          ref[i, j] += xp[:, h * s + i * d, v * s + j * d, :].T @ dy[:, h, v, :]
  grad = lambda: jax.jit(jax.grad(lambda w: jnp.sum(  # noqa: E731
      conv_ops.conv2d(jnp.asarray(x), w, s, ((p, p), (p, p)), d, **MODES[kernel_grad]) * dy)))(jnp.asarray(w))
  np.testing.assert_allclose(grad(), ref, rtol=1e-4, atol=1e-4)


def test_auto_uses_taps_only_for_wide_dilated_or_phase_kernels():
  assert conv_ops._prefer_taps((3, 3, 256, 256), dilation=4, kernel_grad="auto")
  assert conv_ops._prefer_taps((2, 2, 256, 256), dilation=1, kernel_grad="auto")
  assert not conv_ops._prefer_taps((3, 3, 256, 256), dilation=1, kernel_grad="auto")
  assert not conv_ops._prefer_taps((2, 2, 128, 32), dilation=1, kernel_grad="auto")
  # An explicit setting wins whatever the kernel.
  assert conv_ops._prefer_taps((3, 3, 8, 8), dilation=1, kernel_grad="taps")
  assert not conv_ops._prefer_taps((3, 3, 256, 256), dilation=4, kernel_grad="xla")

  def grad_program(cout, kernel_grad="auto"):
    f = lambda w: jnp.sum(conv_ops.conv2d(jnp.ones((1, 9, 9, 128)), w, 1, ((0, 0), (0, 0)), 1,  # noqa: E731
                                          kernels="xla", kernel_grad=kernel_grad))
    return str(jax.make_jaxpr(jax.grad(f))(jnp.ones((2, 2, 128, cout))))

  # The CPU branch of platform_dependent holds the tap products only where auto chose taps.
  assert "dot_general" in grad_program(128)
  assert "dot_general" not in grad_program(32)
  assert "dot_general" in grad_program(32, "taps") and "dot_general" not in grad_program(128, "xla")


def test_bfloat16_gradients_keep_their_dtype_and_track_float32(kernel_grad):
  x, w = _case(3, 8)
  loss = lambda x, w: jnp.sum(conv_ops.conv2d(  # noqa: E731
      x, w, 1, ((1, 1), (1, 1)), 1, **MODES[kernel_grad]).astype(jnp.float32) ** 2)
  g32 = jax.grad(loss, argnums=(0, 1))(jnp.asarray(x), jnp.asarray(w))
  g16 = jax.grad(loss, argnums=(0, 1))(jnp.asarray(x, jnp.bfloat16), jnp.asarray(w, jnp.bfloat16))
  for a, b in zip(g16, g32):
    assert a.dtype == jnp.bfloat16
    assert np.linalg.norm(np.asarray(a, np.float32) - b) / np.linalg.norm(b) < 3e-2


@pytest.mark.parametrize("window,stride,pad", [(3, 2, 1), (2, 2, 0), (3, 1, 1)])
@pytest.mark.parametrize("ties", [False, True])
def test_max_pool_matches_a_numpy_loop_and_its_gradient_picks_the_maximum(window, stride, pad, ties):
  """With ties the gradient goes to the window's first maximum in row-major order (np.argmax; PyTorch's
  rule). layers.max_pool (nn.max_pool's signature, what cpu_ops() holds) is the same function and gives
  nn.max_pool's values."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  max_pool = layers.max_pool_taps
  x = np.random.default_rng(5).normal(size=(2, 13, 10, 3)).astype(np.float32)
  if ties:  # a few integer values: most windows hold their maximum more than once
    x = np.round(x).astype(np.float32)
  xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), constant_values=-np.inf)
  ho, wo = (13 + 2 * pad - window) // stride + 1, (10 + 2 * pad - window) // stride + 1
  ref = np.zeros((2, ho, wo, 3), np.float32)
  grad_ref = np.zeros_like(xp)
  for b in range(2):
    for i in range(ho):
      for j in range(wo):
        for c in range(3):
          win = xp[b, i * stride:i * stride + window, j * stride:j * stride + window, c]
          ref[b, i, j, c] = win.max()
          a, k = np.unravel_index(np.argmax(win), win.shape)
          grad_ref[b, i * stride + a, j * stride + k, c] += np.cos(win.max())
  np.testing.assert_array_equal(max_pool(jnp.asarray(x), window, stride, pad), ref)
  grad = jax.jit(jax.grad(lambda x: jnp.sum(jnp.sin(max_pool(x, window, stride, pad)))))(jnp.asarray(x))
  np.testing.assert_allclose(grad, grad_ref[:, pad:pad + 13, pad:pad + 10], rtol=1e-6, atol=1e-6)
  flax_args = ((window, window), (stride, stride), ((pad, pad), (pad, pad)))
  np.testing.assert_array_equal(layers.max_pool(jnp.asarray(x), *flax_args), ref)
  np.testing.assert_array_equal(nn.max_pool(jnp.asarray(x), *flax_args), ref)
  grad2 = jax.jit(jax.grad(lambda x: jnp.sum(jnp.sin(layers.max_pool(x, *flax_args)))))(jnp.asarray(x))
  np.testing.assert_array_equal(grad2, grad)


def _grad_program_text(platforms=None, kernels="auto") -> str:
  x, w = jnp.ones((2, 9, 9, 4)), jnp.ones((3, 3, 4, 5))
  f = jax.jit(jax.grad(lambda x, w: jnp.sum(conv_ops.conv2d(x, w, 2, ((1, 1), (1, 1)), 1, kernels=kernels) ** 2),
                       argnums=(0, 1)))
  if platforms is None:
    return f.lower(x, w).as_text()
  from jax import export  # pylint: disable=g-import-not-at-top
  return export.export(f, platforms=platforms)(x, w).mlir_module()


def test_onednn_mode_puts_all_three_custom_calls_in_the_cpu_program_only(onednn_kernels):
  cpu = _grad_program_text(kernels="onednn")
  for target in onednn.TARGETS:
    assert target in cpu
  # Lowered for a GPU (no GPU needed to lower), platform_dependent keeps XLA's convolutions.
  cuda = _grad_program_text(platforms=("cuda",), kernels="onednn")
  assert "cascaded_lift_onednn" not in cuda and "convolution" in cuda
  assert "cascaded_lift_onednn" not in _grad_program_text(kernels="xla")
  assert conv_ops.onednn_active(jnp.float32, "onednn") and not conv_ops.onednn_active(jnp.float32, "xla")
  assert not conv_ops.onednn_active(jnp.bfloat16, "onednn")  # bfloat16 always takes XLA's path


def test_cpu_conv_mode_is_checked():
  x, w = jnp.ones((1, 5, 5, 2)), jnp.ones((3, 3, 2, 2))
  with pytest.raises(ValueError, match=r"config\.cpu\.conv must be one of"):
    conv_ops.conv2d(x, w, 1, ((1, 1), (1, 1)), 1, kernels="mkl")
  with pytest.raises(ValueError, match=r"config\.cpu\.kernel_grad must be one of"):
    conv_ops.conv2d(x, w, 1, ((1, 1), (1, 1)), 1, kernel_grad="fast")
  with pytest.raises(ValueError, match=r"config\.cpu\.conv must be one of"):
    conv_ops.onednn_active(jnp.float32, "mkl")
  with pytest.raises(ValueError, match=r"config\.cpu\.conv must be one of"):
    layers.cpu_ops(conv="mkl")
  with pytest.raises(ValueError, match=r"config\.cpu\.kernel_grad must be one of"):
    layers.cpu_ops(kernel_grad="fast")
  with pytest.raises(ValueError, match=r"config\.cpu\.deconv must be one of"):
    layers.cpu_ops(deconv="nope")


def test_a_failed_build_names_the_compiler_and_the_source(tmp_path, monkeypatch):
  monkeypatch.setenv("CXX", "cascaded-lift-no-such-compiler")
  with pytest.raises(onednn.KernelUnavailable, match="no C\\+\\+ compiler 'cascaded-lift-no-such-compiler'"):
    onednn.build(tmp_path / "lib.so")
  # A compiler that runs but fails (as a missing oneDNN header would make g++ fail): its output is
  # reported with the command and the way to install oneDNN; no partial library is left behind.
  monkeypatch.setenv("CXX", "false")
  with pytest.raises(onednn.KernelUnavailable, match="(?s)onednn_conv.cc failed.*onednn-devel-cpu-gomp.*libdnnl-dev"):
    onednn.build(tmp_path / "lib.so")
  assert list(tmp_path.iterdir()) == []


_SHARDED_SCRIPT = """
import numpy as np, jax, jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from cascaded_lift.cpu import conv_ops
mesh = Mesh(np.array(jax.devices()), ("data",))
rng = np.random.default_rng(0)
x = rng.normal(size=(8, 12, 12, 5)).astype(np.float32)
w = rng.normal(size=(3, 3, 5, 7)).astype(np.float32)
batch, rep = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
xs = jax.device_put(x, batch)
results, steps = {}, {}
for mode in ("onednn", "xla"):
  f = lambda x, w, mode=mode: jnp.sum(jnp.sin(conv_ops.conv2d(x, w, 2, ((1, 1), (1, 1)), 1, kernels=mode)))
  g = steps[mode] = jax.jit(jax.value_and_grad(f, argnums=(0, 1)), in_shardings=(batch, rep))
  hlo = g.lower(xs, w).compile().as_text()
  results[mode] = g(xs, w)
  if mode == "onednn":
    assert hlo.count("cascaded_lift_onednn") == 3, hlo
    assert "all-gather" not in hlo, "activations gathered onto every device"
    assert results[mode][1][0].sharding.spec == P("data")
  else:
    assert "cascaded_lift_onednn" not in hlo
for a, b in zip(jax.tree.leaves(results["onednn"]), jax.tree.leaves(results["xla"])):
  np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
# Four devices' programs ran their calls at the same time; the kernels took them one at a time.
from cascaded_lift.cpu.kernels import onednn
for _ in range(5):
  jax.block_until_ready(steps["onednn"](xs, w))
assert onednn.max_concurrent_calls() == 1, onednn.max_concurrent_calls()
print("ok")
"""


def _run_python(script: str, **env: str) -> subprocess.CompletedProcess:
  """Runs `script` in a fresh CPU-only Python process with `env` added to this one's environment:
  the kernel build and its fallback, and the forced device count, are state of a whole process."""
  return subprocess.run([sys.executable, "-c", script], env=dict(os.environ, JAX_PLATFORMS="cpu", **env),
                        capture_output=True, text=True, timeout=300, check=False)


def test_onednn_calls_are_batch_partitioned_across_devices(onednn_kernels):
  out = _run_python(_SHARDED_SCRIPT, XLA_FLAGS="--xla_force_host_platform_device_count=4")
  assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-3000:]


_FALLBACK_SCRIPT = """
import numpy as np, jax, jax.numpy as jnp
from cascaded_lift.cpu import conv_ops
x = np.random.default_rng(0).normal(size=(2, 7, 6, 3)).astype(np.float32)
w = np.random.default_rng(1).normal(size=(3, 3, 3, 4)).astype(np.float32)
f = jax.jit(lambda x, w: conv_ops.conv2d(x, w, 2, ((1, 1), (1, 1)), 1, kernels="auto"))
assert "cascaded_lift_onednn" not in f.lower(x, w).as_text()
np.testing.assert_allclose(f(x, w), conv_ops.xla_conv2d(x, w, 2, ((1, 1), (1, 1)), 1), rtol=1e-6)
assert not conv_ops.onednn_active("float32", "auto")
print("ok")
"""


def _fresh_machine(case: str, tmp_path: pathlib.Path) -> tuple[dict[str, str], tuple[str, ...]]:
  """(environment, what the warning must say) for one way a fresh machine cannot build the kernels."""
  cache = {"CASCADED_LIFT_KERNEL_CACHE": str(tmp_path / "cache")}
  if case == "no_compiler":
    return dict(cache, CXX="cascaded-lift-no-such-compiler"), ("no C++ compiler", "set $CXX")
  if case == "no_headers":  # a compiler that fails as a missing dnnl.hpp makes g++ fail
    return dict(cache, CXX="false"), ("failed", "apt-get install libdnnl-dev", "onednn-devel-cpu-gomp")
  if case == "read_only_cache":  # a cache path that cannot be created (root ignores permission bits)
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    return {"CASCADED_LIFT_KERNEL_CACHE": str(blocker / "kernels")}, ("cannot write", "CASCADED_LIFT_KERNEL_CACHE")
  # jaxlib FFI headers that do not match the source: a real compiler that finds a different ffi.h first.
  fake = tmp_path / "include" / "xla" / "ffi" / "api"
  fake.mkdir(parents=True)
  (fake / "ffi.h").write_text('#error "FFI header from another jaxlib"\n')
  wrapper = tmp_path / "cxx"
  wrapper.write_text(f'#!/bin/sh\nexec {shutil.which("g++") or "g++"} -I{tmp_path / "include"} "$@"\n')
  wrapper.chmod(0o755)
  return dict(cache, CXX=str(wrapper)), ("FFI header from another jaxlib", "install jax and jaxlib of one release")


@pytest.mark.parametrize("case", ["no_compiler", "no_headers", "read_only_cache", "mismatched_ffi_headers"])
def test_auto_falls_back_to_xla_with_a_warning_when_the_kernels_cannot_be_built(tmp_path, case):
  if case == "mismatched_ffi_headers" and shutil.which("g++") is None:
    pytest.skip("needs g++")
  env, says = _fresh_machine(case, tmp_path)
  out = _run_python(_FALLBACK_SCRIPT, **env)
  assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-3000:]
  warnings = [line for line in out.stderr.splitlines() if "oneDNN kernels unavailable" in line]
  assert len(warnings) == 1, out.stderr[-3000:]  # one warning, not one per convolution
  for text in says:
    assert text in out.stderr, (text, out.stderr[-3000:])


_INSTALL_SCRIPT = """
import json
import numpy as np, jax, jax.numpy as jnp
from cascaded_lift.cpu.kernels import onednn
from cascaded_lift.cpu import conv_ops
onednn.register()
rng = np.random.default_rng(0)
x = rng.normal(size=(2, 9, 8, 5)).astype(np.float32)
w = rng.normal(size=(3, 3, 5, 6)).astype(np.float32)
cot = rng.normal(size=(2, 5, 4, 6)).astype(np.float32)
f = lambda x, w, mode: jnp.sum(conv_ops.conv2d(x, w, 2, ((1, 1), (1, 1)), 1, kernels=mode) * cot)
out = {}
for mode in ("onednn", "xla"):
  out[mode] = jax.jit(jax.value_and_grad(f, argnums=(0, 1)), static_argnums=2)(x, w, mode)
for a, b in zip(jax.tree.leaves(out["onednn"]), jax.tree.leaves(out["xla"])):
  np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
maps = sorted({line.split()[-1] for line in open("/proc/self/maps") if "libdnnl.so" in line})
print(json.dumps({"loaded": maps, "version": onednn.version()}))
"""


@pytest.mark.parametrize("install", ["environment", "system"])
def test_kernels_build_and_agree_with_xla_against_each_onednn_install(install, tmp_path):
  """The C++ supports oneDNN 3.x (PyPI's onednn-devel-cpu-gomp, in the Python environment) and 2.x
  (Debian's libdnnl-dev): each found here is built against in a fresh cache and checked against XLA."""
  if install == "environment":
    env_root = onednn.dnnl_root() if not os.environ.get("CASCADED_LIFT_DNNL_ROOT") else None
    if env_root is None:
      if os.environ.get("CI"):
        pytest.fail("CI installs onednn-devel-cpu-gomp (setup.py): the environment must have oneDNN 3.x")
      pytest.skip("no oneDNN in the Python environment (pip install onednn-devel-cpu-gomp)")
    root, expected, major = str(env_root), "libdnnl.so.3", "3."
  else:
    if not os.path.exists("/usr/include/oneapi/dnnl/dnnl.hpp"):
      pytest.skip("no system oneDNN (apt-get install libdnnl-dev)")
    root, expected, major = "system", "libdnnl.so.2", "2."
  out = _run_python(_INSTALL_SCRIPT, CASCADED_LIFT_DNNL_ROOT=root, CASCADED_LIFT_KERNEL_CACHE=str(tmp_path))
  assert out.returncode == 0, out.stderr[-3000:]
  report = json.loads(out.stdout.strip().splitlines()[-1])
  loaded = report["loaded"]  # the libdnnl files mapped into the process
  assert len(loaded) == 1 and expected in loaded[0], loaded
  assert report["version"].startswith(major), report
  if install == "environment":
    assert loaded[0].startswith(root), loaded

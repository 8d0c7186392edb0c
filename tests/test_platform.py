"""cascaded_lift.platform: which layer implementations a config's network is built from on each backend.

A model built for a GPU or TPU (config.platform_ops "auto" or "standard") is the plain Flax network: its
training step, lowered for CUDA here (lowering needs no GPU), holds no oneDNN custom call, no four-phase
deconvolution, no tap-wise kernel gradient and no tap-wise max-pool. Each of those signatures is also
shown present where the CPU forms are built, so that the detectors below can see them. On CPU the
standard and the CPU forms compute the same outputs and gradients from the same variables (tolerances at
test_cpu_forms_match_the_standard_forms_on_cpu). configure_host never touches a GPU or TPU host's malloc.
"""

from __future__ import annotations

import functools
import re

import jax
import jax.numpy as jnp
import flax.linen as flax_nn
import ml_collections
import numpy as np
import pytest

from cascaded_lift import platform
from cascaded_lift.configs import tiny
from cascaded_lift.cpu import hostmem
from cascaded_lift.cpu import layers as cpu_layers
from cascaded_lift.cpu.kernels import onednn
from cascaded_lift.models import STANDARD_OPS
from cascaded_lift.training.builders import init_variables

XLA_CPU_FORMS = dict(conv="xla", kernel_grad="taps", deconv="four_phase")  # every CPU form but oneDNN's


def _config(platform_ops: str = "auto", image_size: int | None = None, **cpu) -> ml_collections.ConfigDict:
  config = tiny.get_config()
  config.platform_ops = platform_ops
  config.cpu.update(cpu)
  if image_size is not None:
    config.data.image_size, config.data.output_size = image_size, image_size // 4
  return config


def _cpu_ops(conv: str = "auto", kernel_grad: str = "auto", deconv: str = "auto"):
  return cpu_layers.cpu_ops(conv=conv, kernel_grad=kernel_grad, deconv=deconv)


def _assert_cpu_forms(ops, conv: str, kernel_grad: str, deconv: str) -> None:
  assert ops is not STANDARD_OPS and ops == _cpu_ops(conv, kernel_grad, deconv)
  assert ops.conv.func is cpu_layers.CpuConv and ops.conv.keywords == dict(kernels=conv, kernel_grad=kernel_grad)
  assert ops.deconv.func is cpu_layers.CpuDeconv
  assert ops.deconv.keywords == dict(formulation=deconv, kernels=conv, kernel_grad=kernel_grad)
  assert ops.max_pool is cpu_layers.max_pool


# ----------------------------------------------------------------------------- the policy

@pytest.mark.parametrize("accelerator", ["gpu", "tpu", "cuda"])
def test_layer_ops_are_standard_off_cpu_unless_the_cpu_forms_are_asked_for(accelerator):
  assert platform.layer_ops(_config("auto"), platform=accelerator) is STANDARD_OPS
  assert platform.layer_ops(_config("standard"), platform=accelerator) is STANDARD_OPS
  # The CPU forms with config.cpu's settings (host_malloc is not a layer setting).
  ops = platform.layer_ops(_config("cpu", **XLA_CPU_FORMS, host_malloc="retain"), platform=accelerator)
  _assert_cpu_forms(ops, **XLA_CPU_FORMS)
  assert platform.build_model(_config("auto"), platform=accelerator).ops is STANDARD_OPS
  assert platform.build_model(_config("cpu", **XLA_CPU_FORMS), platform=accelerator).ops is ops
  assert not platform.uses_cpu_forms(_config("auto"), accelerator.upper())


def test_layer_ops_on_cpu():
  _assert_cpu_forms(platform.layer_ops(_config("auto"), platform="cpu"), "auto", "auto", "auto")
  _assert_cpu_forms(platform.layer_ops(_config("auto", conv="onednn", deconv="adjoint_conv"), platform="CPU"),
                    "onednn", "auto", "adjoint_conv")
  _assert_cpu_forms(platform.layer_ops(_config("cpu"), platform="cpu"), "auto", "auto", "auto")
  assert platform.layer_ops(_config("standard"), platform="cpu") is STANDARD_OPS
  # Without a platform: JAX's default backend (the tests run on CPU, conftest.py).
  assert jax.default_backend() == "cpu"
  assert platform.layer_ops(_config("auto")) is platform.layer_ops(_config("auto"), platform="cpu")
  # A config without platform_ops or cpu gets "auto" and conv_ops' defaults.
  bare = ml_collections.ConfigDict({})
  assert platform.layer_ops(bare, platform="gpu") is STANDARD_OPS
  _assert_cpu_forms(platform.layer_ops(bare, platform="cpu"), "auto", "auto", "auto")
  assert platform.build_model(_config("auto"), platform="cpu").ops is _cpu_ops()


def test_bad_settings_are_named():
  for accelerator in ("gpu", "cpu"):
    with pytest.raises(ValueError, match=r"config\.platform_ops must be one of .*'gpu'"):
      platform.layer_ops(_config("gpu"), platform=accelerator)
    with pytest.raises(ValueError, match=r"config\.platform_ops"):
      platform.build_model(_config("CPU"), platform=accelerator)
  with pytest.raises(ValueError, match=r"config\.cpu\.conv must be one of"):
    platform.layer_ops(_config("cpu", conv="mkl"), platform="gpu")
  with pytest.raises(ValueError, match=r"config\.cpu\.kernel_grad must be one of"):
    platform.layer_ops(_config("auto", kernel_grad="fast"), platform="cpu")
  with pytest.raises(ValueError, match=r"config\.cpu\.deconv must be one of"):
    platform.layer_ops(_config("auto", deconv="nope"), platform="cpu")


# ----------------------------------------------------------------------------- the lowered programs

# 96 px crops: no feature map of the tiny network is 2 x 2 (C5 is 3 x 3), so a kernel gradient (a
# convolution whose window is an output map) cannot pass for a 2x2 four-phase kernel.
LOWERING_SIZE = 96
_CONV = re.compile(r"stablehlo\.convolution\(.*dim_numbers = \[[^\]]*\]x\[([^\]]*)\]->\[[^\]]*\], "
                   r"window = \{([^}]*)\}.*: \(tensor<[^>]*>, tensor<([^>]*)>\) -> tensor<[^>]*>")
_DOT = re.compile(r"stablehlo\.dot_general .*contracting_dims = \[([^\]]*)\] x \[([^\]]*)\].*"
                  r": \(tensor<([^>]*)>, tensor<([^>]*)>\)")


def _dims(tensor_type: str) -> tuple[int, ...]:
  return tuple(int(d) for d in tensor_type.split("x")[:-1])


def _convolutions(text: str) -> list[tuple[tuple[int, int], bool]]:
  """(window, lhs-dilated) of every stablehlo.convolution: the window is the spatial size of the rhs
  (the kernel, or for a kernel gradient the output gradient), read through the dimension numbers."""
  out = []
  for line in text.splitlines():
    if "stablehlo.convolution" in line:
      m = _CONV.search(line)
      assert m, f"unparsed convolution: {line}"
      rhs_spec, window, rhs_type = m.groups()
      spec, dims = [d.strip() for d in rhs_spec.split(",")], _dims(rhs_type)
      dilated = re.search(r"lhs_dilate = \[([^\]]*)\]", window)
      out.append(((dims[spec.index("0")], dims[spec.index("1")]),
                  bool(dilated) and dilated.group(1).replace(" ", "") != "1,1"))
  return out


def _tap_products(text: str) -> int:
  """dot_generals of two NHWC maps contracting batch, height and width: a per-tap kernel gradient
  (conv_ops._kernel_grad_by_taps), or the kernel gradient of a 1x1 convolution written as a matrix product
  (cpu.layers.CpuConv without oneDNN)."""
  n = 0
  for line in text.splitlines():
    if "stablehlo.dot_general" in line:
      m = _DOT.search(line)
      assert m, f"unparsed dot_general: {line}"
      lhs, rhs, lhs_type, rhs_type = m.groups()
      n += (lhs.replace(" ", "") == rhs.replace(" ", "") == "0,1,2" and len(_dims(lhs_type)) == 4
            and len(_dims(rhs_type)) == 4)
  return n


def _onednn_calls(text: str) -> set[str]:
  return set(re.findall(r"custom_call @(cascaded_lift_onednn\w*)", text))


@functools.lru_cache(maxsize=None)
def _train_step_text(platform_ops: str, policy_platform: str, lowering_platform: str,
                     cpu: tuple[tuple[str, str], ...] = ()) -> str:
  """StableHLO of a training step's forward + backward (BatchNorm in train mode) of the tiny network built
  by platform.build_model(config, policy_platform), lowered for `lowering_platform`."""
  config = _config(platform_ops, image_size=LOWERING_SIZE, **dict(cpu))
  model = platform.build_model(config, platform=policy_platform)
  images = jax.ShapeDtypeStruct((2, LOWERING_SIZE, LOWERING_SIZE, 3), jnp.uint8)
  boxes = jax.ShapeDtypeStruct((2, 4), jnp.float32)
  variables = jax.eval_shape(lambda k: model.init(k, jnp.zeros(images.shape, images.dtype),
                                                  jnp.ones(boxes.shape, boxes.dtype), train=False), jax.random.key(0))

  def loss(params, batch_stats, images, boxes):
    out, updates = model.apply({"params": params, "batch_stats": batch_stats}, images, boxes, train=True,
                               mutable=["batch_stats"])
    return sum(jnp.mean(jnp.square(v.astype(jnp.float32))) for v in jax.tree.leaves(out)), updates

  step = jax.jit(jax.value_and_grad(loss, has_aux=True))
  traced = step.trace(variables["params"], variables["batch_stats"], images, boxes)
  return traced.lower(lowering_platforms=(lowering_platform,)).as_text()


@pytest.mark.parametrize("platform_ops", ["auto", "standard"])
def test_gpu_training_step_holds_none_of_the_cpu_forms(platform_ops):
  text = _train_step_text(platform_ops, "gpu", "cuda")
  convs = _convolutions(text)
  assert not _onednn_calls(text) and "cascaded_lift_onednn" not in text
  # No four-phase deconvolution: no 2x2 convolution anywhere; the deconvolutions are transposed
  # convolutions, i.e. 4x4 convolutions of the 2x-dilated input (nn.ConvTranspose), one per deconv layer
  # of the two upsampling branches.
  assert [w for w, _ in convs if w == (2, 2)] == []
  assert sum(w == (4, 4) and dilated for w, dilated in convs) >= 2 * _config().model.num_deconvs
  assert _tap_products(text) == 0  # kernel gradients are XLA's own convolutions
  # The max-pool is reduce_window, with XLA's select_and_scatter gradient: no tap-wise int8 winner index.
  assert "stablehlo.reduce_window" in text and "stablehlo.select_and_scatter" in text and "xi8>" not in text
  # Nothing is left for run time to choose between (lax.platform_dependent's branches).
  assert "stablehlo.case" not in text


def test_the_detectors_see_the_cpu_forms_where_they_are_built():
  cpu = tuple(sorted(XLA_CPU_FORMS.items()))
  # config.platform_ops "cpu" on a GPU: the formulations stay (four-phase 2x2 convolutions, the tap-wise
  # max-pool), while the per-tap kernel gradient sits in platform_dependent's CPU branch only.
  cuda = _train_step_text("cpu", "gpu", "cuda", cpu)
  windows = [w for w, _ in _convolutions(cuda)]
  assert windows.count((2, 2)) >= 4 * 2 * _config().model.num_deconvs  # four phases per deconv layer
  assert "xi8>" in cuda and "stablehlo.select_and_scatter" not in cuda
  host = _train_step_text("cpu", "cpu", "cpu", cpu)
  assert _tap_products(host) > _tap_products(cuda) > 0  # the latter: 1x1 convolutions as matrix products
  assert [w for w, _ in _convolutions(host)].count((2, 2)) == windows.count((2, 2))


def test_cpu_training_step_calls_onednn_only_where_it_runs_on_cpu(onednn_kernels):
  host = _train_step_text("auto", "cpu", "cpu")
  assert _onednn_calls(host) == set(onednn.TARGETS)
  assert _convolutions(host) == []  # every convolution and both its gradients are oneDNN's
  # The same CPU forms lowered for a GPU fall back to XLA's convolutions (platform_dependent).
  cuda = _train_step_text("cpu", "gpu", "cuda")
  assert not _onednn_calls(cuda) and _convolutions(cuda)


# ----------------------------------------------------------------------------- same numbers on CPU

# Tolerances, relative to the largest magnitude of each compared array (each output, updated BatchNorm
# statistic and parameter gradient):
#   outputs and BatchNorm statistics: 1e-4 (observed <= 4e-5 over four seeds, oneDNN's and XLA's forms);
#   parameter gradients: 2e-2 per parameter, and 3e-3 for the relative L2 norm of the difference over all
#   parameters together (observed here: <= 3.9e-3 and 6.6e-4 with oneDNN's kernels, 3.4e-4 and 9e-5 with
#   XLA's CPU forms).
# Why the gradients need more: in train mode each BatchNorm's backward pass subtracts the components of the
# output gradient along its batch mean and normalised input, leaving a residual far smaller than its terms,
# and a ReLU input or a max-pool tie within rounding of each other switches where gradient flows. A
# parameter's gradient then moves with the order of float32 operations alone: the standard forms on the
# same batch in another sample order (a permutation, mathematically the same gradients) differ from
# themselves by up to 3.9e-3 per parameter and 6.6e-4 overall here, exactly as oneDNN's forms do.
OUTPUT_RTOL = 1e-4
GRAD_RTOL = 2e-2
GRAD_GLOBAL_RTOL = 3e-3
NUMERICS_SIZE, NUMERICS_BATCH = 64, 4


@pytest.fixture(scope="module")
def standard_run():
  """(variables, images, boxes, the run of the standard forms) with variables from one model.init of the
  STANDARD_OPS network."""
  config = _config("standard", image_size=NUMERICS_SIZE)
  model = platform.build_model(config, platform="cpu")
  assert model.ops is STANDARD_OPS
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.integers(0, 256, (NUMERICS_BATCH, NUMERICS_SIZE, NUMERICS_SIZE, 3)), jnp.uint8)
  # Different boxes per sample: the lifter's train-mode BatchNorm would otherwise normalise features that
  # are nearly constant over the batch.
  b = NUMERICS_BATCH
  boxes = jnp.asarray(np.stack([rng.uniform(0, 100, b), rng.uniform(0, 100, b), rng.uniform(150, 300, b),
                                rng.uniform(150, 300, b)], -1), jnp.float32)
  variables = init_variables(model, config, jax.random.key(0))
  return variables, images, boxes, _run(model, variables, images, boxes)


def _run(model, variables, images, boxes):
  """(outputs, gradients of the loss w.r.t. the parameters, updated batch statistics), train-mode BatchNorm."""

  def loss(params):
    out, updates = model.apply({"params": params, "batch_stats": variables["batch_stats"]}, images, boxes,
                               train=True, mutable=["batch_stats"])
    return sum(jnp.mean(jnp.square(out[k].astype(jnp.float32))) for k in out if k != "lifter_input"), (out, updates)

  (_, (out, updates)), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(variables["params"])
  return jax.tree.map(lambda a: np.asarray(a, np.float64), (out, grads, updates["batch_stats"]))


def _flat(tree) -> dict[str, np.ndarray]:
  return {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


@pytest.mark.parametrize("cpu", [dict(conv="auto", kernel_grad="auto", deconv="auto"), XLA_CPU_FORMS],
                         ids=["auto", "xla_taps_four_phase"])
def test_cpu_forms_match_the_standard_forms_on_cpu(standard_run, cpu):
  variables, images, boxes, (ref_out, ref_grads, ref_stats) = standard_run
  model = platform.build_model(_config("cpu", image_size=NUMERICS_SIZE, **cpu), platform="cpu")
  _assert_cpu_forms(model.ops, **cpu)
  # The same variables: both forms' trees have the same structure, names, shapes and dtypes.
  shapes = lambda m: jax.tree.map(lambda s: (s.shape, s.dtype), jax.eval_shape(  # noqa: E731
      lambda k: m.init(k, images, boxes, train=False), jax.random.key(0)))
  assert shapes(model) == shapes(model.clone(ops=STANDARD_OPS)) == jax.tree.map(
      lambda a: (a.shape, a.dtype), variables)
  out, grads, stats = _run(model, variables, images, boxes)

  for name, got, want in [("output", out, ref_out), ("batch statistic", stats, ref_stats)]:
    got, want = _flat(got), _flat(want)
    assert got.keys() == want.keys()
    for k in want:
      scale = np.abs(want[k]).max()
      assert np.abs(got[k] - want[k]).max() <= OUTPUT_RTOL * scale, f"{name} {k}"

  got, want = _flat(grads), _flat(ref_grads)
  assert got.keys() == want.keys()
  # The ASPP's conv biases feed train-mode BatchNorms: their gradient is 0 in exact arithmetic, rounding
  # noise in either form (tests/test_models.py); checked as such, against their kernels' gradients.
  before_bn = {k for k in want if k.startswith("['dilated']['aspp']['conv_") and k.endswith("['bias']")}
  assert len(before_bn) == 6
  for k in before_bn:
    kernel = np.abs(want[k.replace("['bias']", "['kernel']")]).max()
    assert max(np.abs(got[k]).max(), np.abs(want[k]).max()) < 1e-5 * kernel, k
  diff = total = 0.0
  for k in sorted(set(want) - before_bn):
    scale = np.abs(want[k]).max()
    assert scale > 0, f"no gradient reaches {k}"
    assert np.abs(got[k] - want[k]).max() <= GRAD_RTOL * scale, f"gradient {k}"
    diff, total = diff + np.sum((got[k] - want[k]) ** 2), total + np.sum(want[k] ** 2)
  assert np.sqrt(diff / total) <= GRAD_GLOBAL_RTOL


# ----------------------------------------------------------------------------- host memory

class _FakeLibc:
  """Records mallopt calls instead of changing this process's malloc."""

  def __init__(self):
    self.calls = []

  def mallopt(self, option: int, value: int) -> int:
    self.calls.append((option, value))
    return 1


def test_configure_host_leaves_gpu_and_tpu_hosts_alone(monkeypatch):
  libc = _FakeLibc()
  monkeypatch.setattr(hostmem, "_libc", lambda: libc)
  retain = _config("auto", host_malloc="retain")
  for accelerator in ("gpu", "tpu", "cuda"):
    assert platform.configure_host(retain, platform=accelerator) is False
    assert platform.configure_host(_config("cpu", host_malloc="retain"), platform=accelerator) is False
  assert libc.calls == []
  assert platform.configure_host(_config("auto", host_malloc="default"), platform="cpu") is False
  assert libc.calls == []
  # On CPU "retain" sets the three options (arena_max 1, mmap_max 0, trim_threshold -1).
  assert platform.configure_host(retain, platform="cpu") is True
  assert libc.calls == [(-8, 1), (-4, 0), (-1, -1)]
  libc.calls.clear()
  # Without a platform: the one JAX will use (JAX_PLATFORMS=cpu in the tests), found without starting it.
  assert jax.config.jax_platforms.split(",")[0] == "cpu"
  assert platform.configure_host(retain) is True and len(libc.calls) == 3
  for accelerator in ("gpu", "cpu"):
    with pytest.raises(ValueError, match=r"config\.cpu\.host_malloc must be one of"):
      platform.configure_host(_config("auto", host_malloc="jemalloc"), platform=accelerator)


# ----------------------------------------------------------------------------- the initialisation's compile

def test_init_compiles_fast_on_cpu_only_and_gives_the_same_variables_to_an_ulp():
  for accelerator in ("gpu", "tpu"):
    assert platform.init_compiler_options(_config("auto"), platform=accelerator) == {}
  assert platform.init_compiler_options(_config("auto", init_compile="optimized"), platform="cpu") == {}
  fast = platform.init_compiler_options(_config("auto"), platform="cpu")
  assert fast == {"xla_backend_optimization_level": 0}
  with pytest.raises(ValueError, match=r"config\.cpu\.init_compile must be one of \('fast', 'optimized'\)"):
    platform.init_compiler_options(_config("auto", init_compile="quick"), platform="cpu")

  # The initialisers the network uses (He-normal convolutions, Dense, BatchNorm), compiled both ways:
  # XLA accepts the options, and the values agree to float32 rounding (the same random bits).
  class Net(flax_nn.Module):
    @flax_nn.compact
    def __call__(self, x):
      x = flax_nn.Conv(8, (3, 3), kernel_init=flax_nn.initializers.he_normal())(x)
      x = flax_nn.BatchNorm(use_running_average=True)(x)
      return flax_nn.Dense(4, kernel_init=flax_nn.initializers.truncated_normal(0.01))(x)

  init = jax.jit(lambda key: Net().init(key, jnp.zeros((1, 8, 8, 3))))
  key = jax.random.key(0)
  optimized = init.lower(key).compile()(key)
  unoptimized = init.lower(key).compile(compiler_options=fast)(key)
  for a, b in zip(jax.tree_util.tree_leaves(optimized), jax.tree_util.tree_leaves(unoptimized)):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-6, atol=1e-7)

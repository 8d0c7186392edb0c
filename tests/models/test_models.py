"""Tests for cascaded_lift.models: parameter counts, shapes/dtypes, gradients, the transposed-conv
formulations of cpu.layers.CpuDeconv, initialisation, and parity with an independent PyTorch statement of
the spec, with the standard layers (STANDARD_OPS) and with the CPU forms (cpu.layers.cpu_ops())."""

import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cascaded_lift.cpu import layers as cpu_layers
from cascaded_lift.cpu.layers import CpuDeconv
from cascaded_lift.models import STANDARD_OPS, CascadedLiftNet, ContextBranch, DilatedBlock, LayerOps, Lifter, ResNet
from cascaded_lift.weights import convert

# A tiny variant: ResNet-50 bottlenecks with one block per stage at width 8, narrow heads, D = 8.
TINY = dict(num_joints=18, num_bones=16, depth_bins=8, resnet_depth=50, resnet_width=8,
            resnet_stage_sizes=(1, 1, 1, 1), head_width=32, bone_width=16, lifter_width=64, lifter_blocks=2)
TINY_S, TINY_B = 64, 2
OUTPUT_KEYS = ("bone_heatmaps", "joint_heatmaps", "depth_volume", "ordinal_logits", "joint_volumes", "coords",
               "lifter_input", "pose_3d")
# The layer implementations a model can be built from: what GPUs and TPUs get, and what CPUs get
# (cascaded_lift.platform's choice for config.platform_ops "auto" on each).
OPS = {"standard": STANDARD_OPS, "cpu": cpu_layers.cpu_ops(conv="auto", kernel_grad="auto", deconv="auto")}


def _count(tree) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(tree))


def _template(model, size, batch=1):
  return jax.eval_shape(lambda k: model.init(k, jnp.zeros((batch, size, size, 3), jnp.uint8),
                                             jnp.ones((batch, 4)), train=False), jax.random.key(0))


def _random_variables(template, seed=0):
  """Random values of a sensible scale for a variables template (no model.init: it compiles slowly)."""
  rng = np.random.default_rng(seed)

  def fill(path, s):
    name = path[-1].key
    if name == "kernel":
      v = rng.normal(0, np.sqrt(2.0 / np.prod(s.shape[:-1])), s.shape)
    elif name == "scale":
      v = rng.uniform(0.5, 1.5, s.shape)
    elif name == "var":
      v = rng.uniform(0.5, 2.0, s.shape)
    else:  # biases, BN means
      v = rng.normal(0, 0.1, s.shape)
    return jnp.asarray(v, s.dtype)

  return jax.tree_util.tree_map_with_path(fill, template)


def _inputs(seed=0):
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, (TINY_B, TINY_S, TINY_S, 3)).astype(np.uint8)
  boxes = np.array([[10.0, 20.0, 200.0, 200.0], [-5.0, 3.0, 150.0, 150.0]], np.float32)
  return images, boxes


@functools.lru_cache(maxsize=None)
def _eval_apply(dtype=jnp.float32, ops="standard"):
  model = CascadedLiftNet(**TINY, dtype=dtype, ops=OPS[ops])
  return jax.jit(functools.partial(model.apply, train=False))


# ----------------------------------------------------------------------------- parameter counts

def test_default_model_parameter_counts_match_the_released_model():
  params = _template(CascadedLiftNet(), 256)["params"]
  counts = {k: _count(v) for k, v in params.items()}
  assert counts["backbone"] == 23_508_032  # ResNet-50 trunk
  assert counts["context"] == 11_077_632
  assert counts["bone_branch"] == 4_737_808  # the released limb net minus its two unused layers
  assert counts["bone_joint"] + counts["dilated"] + counts["depth_centric"] == 3_074_560
  assert counts["volumetric"] == 1_431_168
  assert counts["lifter"] == 15_908_918
  assert counts["ordinal_head"] == 256 * 64 + 64  # ours: 1x1 conv with bias
  assert sum(counts.values()) == 59_738_118 + 16_448
  # Statistics are outside 'params' (counts above exclude running stats) and exist for every BN.
  stats = _template(CascadedLiftNet(), 256)["batch_stats"]
  assert set(stats) == set(params) - {"ordinal_head"}


@pytest.mark.parametrize("depth,count", [(18, 11_176_512), (34, 21_284_672), (101, 42_500_160),
                                         (152, 58_143_808)])
def test_resnet_trunk_counts_match_torchvision(depth, count):
  # torchvision's resnet{18,34,101,152} totals minus their fc layers (513,000 / 2,049,000).
  shapes = jax.eval_shape(lambda k: ResNet(depth).init(k, jnp.zeros((1, 64, 64, 3)), train=False),
                          jax.random.key(0))
  assert _count(shapes["params"]) == count


# ----------------------------------------------------------------------------- shapes and dtypes

@pytest.mark.parametrize("kwargs,size,batch", [
    ({}, 256, 2),
    (TINY, 64, 3),
    (dict(TINY, num_joints=21, num_bones=20, depth_bins=16, resnet_depth=18, resnet_stage_sizes=None), 96, 1),
    (dict(TINY, dtype=jnp.bfloat16), 64, 2),
    (dict(TINY, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16), 64, 2),
    (dict(TINY, num_deconvs=2), 64, 2),
    (dict(TINY, resnet_output_stride=16, num_deconvs=1), 96, 2),  # C5 6 x 6 -> 12 x 12 heatmaps
])
@pytest.mark.parametrize("ops", list(OPS))
def test_output_shapes_and_dtypes(kwargs, size, batch, ops):
  model = CascadedLiftNet(**kwargs, ops=OPS[ops])
  j, nb, d = model.num_joints, model.num_bones, model.depth_bins
  h = size // model.resnet_output_stride * 2 ** model.num_deconvs
  assert model.output_size(size) == h
  variables = _template(model, size)
  out = jax.eval_shape(functools.partial(model.apply, train=True, mutable=["batch_stats"]), variables,
                       jnp.zeros((batch, size, size, 3), jnp.uint8), jnp.zeros((batch, 4)))[0]
  chex.assert_shape([out[k] for k in OUTPUT_KEYS], [
      (batch, h, h, nb), (batch, h, h, j), (batch, h, h, d), (batch, h, h, d), (batch, j, d, h, h), (batch, j, 3),
      (batch, 5 * j), (batch, j, 3)])
  for k in OUTPUT_KEYS[:5]:
    assert out[k].dtype == model.dtype, k
  for k in OUTPUT_KEYS[5:]:
    assert out[k].dtype == jnp.float32, k
  assert {x.dtype for x in jax.tree_util.tree_leaves(variables["params"])} == {jnp.dtype(model.param_dtype)}


def test_layer_ops_do_not_change_parameters():
  """The standard layers and the CPU forms, in every deconvolution formulation and conv setting, hold the
  same variables under the same names (checkpoints do not depend on the choice)."""
  all_ops = [STANDARD_OPS] + [cpu_layers.cpu_ops(conv="auto", kernel_grad="auto", deconv=f)
                              for f in cpu_layers.DECONV_FORMULATIONS]
  all_ops += [cpu_layers.cpu_ops(conv="xla", kernel_grad=g, deconv="auto") for g in ("taps", "xla")]
  trees = [jax.tree_util.tree_map(lambda s: (s.shape, s.dtype), _template(CascadedLiftNet(**TINY, ops=ops), 64))
           for ops in all_ops]
  assert len(trees) == 8
  for tree in trees[1:]:
    assert tree == trees[0]
  assert trees[0]["params"]["context"]["deconv0"]["kernel"][0] == (4, 4, 8 * 8 * 4, 32)


def test_bad_inputs_raise():
  model = CascadedLiftNet(**TINY)
  variables = _template(model, 64)
  with pytest.raises(ValueError, match="images must be"):
    jax.eval_shape(functools.partial(model.apply, train=False), variables, jnp.zeros((2, 64, 64)), jnp.zeros((2, 4)))
  with pytest.raises(ValueError, match="boxes must be"):
    jax.eval_shape(functools.partial(model.apply, train=False), variables, jnp.zeros((2, 64, 64, 3)),
                   jnp.zeros((2, 5)))
  with pytest.raises(ValueError, match=r"config\.cpu\.deconv must be one of"):
    cpu_layers.cpu_ops(deconv="nope")
  bad = LayerOps(conv=cpu_layers.CpuConv, deconv=functools.partial(CpuDeconv, formulation="nope"),
                 max_pool=cpu_layers.max_pool, name="bad")
  with pytest.raises(ValueError, match="unknown formulation"):
    _template(CascadedLiftNet(**TINY, ops=bad), 64)


# ----------------------------------------------------------------------------- running the tiny model

@pytest.mark.parametrize("ops", list(OPS))
def test_bfloat16_compute_with_float32_params_tracks_float32(ops):
  variables = _random_variables(_template(CascadedLiftNet(**TINY), TINY_S))
  images, boxes = _inputs()
  ref = _eval_apply(jnp.float32, ops)(variables, images, boxes)
  out = _eval_apply(jnp.bfloat16, ops)(variables, images, boxes)
  chex.assert_tree_all_finite(out)
  for k in OUTPUT_KEYS[:5]:
    assert out[k].dtype == jnp.bfloat16, k
    a, b = np.asarray(out[k], np.float32), np.asarray(ref[k])
    assert np.linalg.norm(a - b) / np.linalg.norm(b) < 0.1, k
  assert out["coords"].dtype == out["pose_3d"].dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(out["coords"]), np.asarray(ref["coords"]), atol=0.5)


@pytest.mark.parametrize("ops", list(OPS))
def test_gradients_reach_every_parameter_and_lifter_is_cut_off(ops):
  model = CascadedLiftNet(**TINY, ops=OPS[ops])
  variables = _random_variables(_template(model, TINY_S), seed=1)
  images, boxes = _inputs(1)
  rng = np.random.default_rng(2)
  shapes = jax.eval_shape(functools.partial(model.apply, train=False), variables, images, boxes)
  proj = {k: jnp.asarray(rng.normal(size=s.shape), jnp.float32) for k, s in shapes.items()}

  def losses(params, batch_stats):
    out, new = model.apply({"params": params, "batch_stats": batch_stats}, images, boxes, train=True,
                           mutable=["batch_stats"])
    per = {k: jnp.mean(out[k].astype(jnp.float32) * proj[k]) for k in out if k != "lifter_input"}
    return sum(per.values()), (per["pose_3d"], new["batch_stats"])

  @jax.jit
  def run(params, batch_stats):
    grads, (_, new_stats) = jax.grad(losses, has_aux=True)(params, batch_stats)
    pose_grads = jax.grad(lambda p: losses(p, batch_stats)[1][0])(params)
    # Stage 2: rest frozen in eval mode, lifter in train mode.
    _, stage2 = model.apply({"params": params, "batch_stats": batch_stats}, images, boxes, train=False,
                            lifter_train=True, mutable=["batch_stats"])
    return grads, pose_grads, new_stats, stage2["batch_stats"]

  grads, pose_grads, new_stats, stage2_stats = run(variables["params"], variables["batch_stats"])
  flat = {"/".join(k.key for k in p): np.asarray(g) for p, g in jax.tree_util.tree_flatten_with_path(grads)[0]}
  # A conv bias right before a train-mode BatchNorm has zero gradient in exact arithmetic (BN removes
  # the channel mean): only the ASPP's convs have such biases. Everything else must get gradient.
  before_bn = {k for k in flat if k.startswith("dilated/aspp/conv_") and k.endswith("/bias")}
  assert len(before_bn) == 6
  for k, g in flat.items():
    if k in before_bn:
      assert np.abs(g).max() < 1e-5 * np.abs(flat[k[:-4] + "kernel"]).max(), k
    else:
      assert np.abs(g).max() > 0, f"no gradient reaches {k}"
  # The lifter's loss trains the lifter only (its input is under stop_gradient).
  for p, g in jax.tree_util.tree_flatten_with_path(pose_grads)[0]:
    top = p[0].key
    assert (np.abs(np.asarray(g)).max() > 0) == (top == "lifter"), "/".join(k.key for k in p)
  # train=True updates every BatchNorm's statistics; stage 2 (train=False, lifter_train=True) only the lifter's.
  old = variables["batch_stats"]
  for top in old:
    changed1 = any(not np.allclose(a, b) for a, b in zip(jax.tree_util.tree_leaves(old[top]),
                                                         jax.tree_util.tree_leaves(new_stats[top])))
    changed2 = any(not np.allclose(a, b) for a, b in zip(jax.tree_util.tree_leaves(old[top]),
                                                         jax.tree_util.tree_leaves(stage2_stats[top])))
    assert changed1, top
    assert changed2 == (top == "lifter"), top


def test_aspp_biases_get_gradient_in_eval_mode():
  block = DilatedBlock(width=16, num_bottlenecks=1)
  x = jnp.asarray(np.random.default_rng(3).normal(size=(2, 8, 8, 16)), jnp.float32)
  variables = _random_variables(jax.eval_shape(lambda k: block.init(k, x, train=False), jax.random.key(0)))
  grads = jax.grad(lambda p: jnp.sum(block.apply({"params": p, "batch_stats": variables["batch_stats"]}, x,
                                                  train=False) ** 2))(variables["params"])
  for name, mod in grads["aspp"].items():
    if "bias" in mod and name.startswith("conv"):
      assert np.abs(np.asarray(mod["bias"])).max() > 0, name


# ----------------------------------------------------------------------------- initialisation

def test_initialisation_follows_the_design():
  x = jnp.ones((1, 2, 2, 16))
  ctx = ContextBranch(width=32, num_deconvs=2).init(jax.random.key(0), x, train=False)
  for name in ("deconv0", "deconv1", "final_conv"):
    std = float(np.std(np.asarray(ctx["params"][name]["kernel"])))
    assert 0.0009 < std < 0.0011, name
  for name in ("bn0", "bn1", "final_bn"):
    np.testing.assert_array_equal(ctx["params"][name]["scale"], 1.0)
    np.testing.assert_array_equal(ctx["params"][name]["bias"], 0.0)
    np.testing.assert_array_equal(ctx["batch_stats"][name]["var"], 1.0)
  aspp = DilatedBlock(width=16, num_bottlenecks=0).init(jax.random.key(1), jnp.ones((1, 4, 4, 16)), train=False)
  np.testing.assert_array_equal(aspp["params"]["aspp"]["conv_3x3_2"]["bias"], 0.0)
  # Backbone without weights: He normal, fan_out (std sqrt(2 / (k * k * out))).
  res = ResNet(18, width=16, stage_sizes=(1, 1, 1, 1)).init(jax.random.key(2), jnp.ones((1, 32, 32, 3)),
                                                            train=False)
  k = np.asarray(res["params"]["layer3_0"]["conv1"]["kernel"])  # 3x3x32x64
  assert abs(np.std(k) / np.sqrt(2.0 / (9 * 64)) - 1) < 0.05
  lift = Lifter(num_joints=4, width=256, num_blocks=1).init(jax.random.key(3), jnp.ones((2, 20)), train=False)
  w = np.asarray(lift["params"]["block1"]["fc2"]["kernel"])
  assert np.abs(w).max() <= 1 / 16 and np.abs(w).max() > 0.9 / 16  # U(-1/sqrt(256), 1/sqrt(256))
  np.testing.assert_array_equal(lift["params"]["fc2"]["bias"], 0.0)


# ----------------------------------------------------------------------------- transposed convolution

def _deconv_case(seed=0, cin=3, cout=5, h=4, w=6):
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.normal(size=(2, h, w, cin)), jnp.float32)
  k = jnp.asarray(rng.normal(size=(4, 4, cin, cout)), jnp.float32)
  return x, k


@pytest.mark.parametrize("kernels", ["auto", "xla"])
@pytest.mark.parametrize("formulation", cpu_layers.DECONV_FORMULATIONS)
def test_deconv_formulations_match_flax_conv_transpose(formulation, kernels):
  x, k = _deconv_case()
  ref_layer = nn.ConvTranspose(5, (4, 4), strides=(2, 2), padding=((2, 2), (2, 2)), use_bias=False)
  ref = lambda x, k: ref_layer.apply({"params": {"kernel": k}}, x)  # noqa: E731
  layer = CpuDeconv(5, formulation=formulation, kernels=kernels)
  ours = lambda x, k: layer.apply({"params": {"kernel": k}}, x)  # noqa: E731
  np.testing.assert_allclose(ours(x, k), ref(x, k), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(ours(x, k), jax.lax.conv_transpose(x, k, (2, 2), ((2, 2), (2, 2)),
                                                               dimension_numbers=("NHWC", "HWIO", "NHWC")),
                             rtol=1e-5, atol=1e-5)
  cot = jnp.asarray(np.random.default_rng(1).normal(size=(2, 8, 12, 5)), jnp.float32)
  g_ours = jax.grad(lambda x, k: jnp.sum(ours(x, k) * cot), argnums=(0, 1))(x, k)
  g_ref = jax.grad(lambda x, k: jnp.sum(ref(x, k) * cot), argnums=(0, 1))(x, k)
  for a, b in zip(g_ours, g_ref):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
  params = CpuDeconv(7, formulation=formulation, kernels=kernels).init(jax.random.key(0), x)["params"]
  assert params["kernel"].shape == (4, 4, 3, 7)
  assert jax.tree_util.tree_map(jnp.shape, params) == jax.tree_util.tree_map(
      jnp.shape, nn.ConvTranspose(7, (4, 4), strides=(2, 2), padding=((2, 2), (2, 2)), use_bias=False).init(
          jax.random.key(0), x)["params"])


@pytest.mark.parametrize("formulation", cpu_layers.DECONV_FORMULATIONS)
def test_deconv_matches_torch_conv_transpose2d(formulation):
  torch = pytest.importorskip("torch")
  rng = np.random.default_rng(2)
  xt = torch.tensor(rng.normal(size=(2, 3, 5, 4)), dtype=torch.float32, requires_grad=True)
  layer = torch.nn.ConvTranspose2d(3, 6, 4, stride=2, padding=1, bias=False)
  with torch.no_grad():
    layer.weight.copy_(torch.tensor(rng.normal(size=(3, 6, 4, 4)), dtype=torch.float32))
  yt = layer(xt)
  cot = rng.normal(size=yt.shape).astype(np.float32)
  (yt * torch.from_numpy(cot)).sum().backward()
  # (in, out, kh, kw) -> (kh, kw, in, out), spatially flipped: the gather form of PyTorch's scatter.
  k = jnp.asarray(layer.weight.detach().numpy()[:, :, ::-1, ::-1].transpose(2, 3, 0, 1))
  x = jnp.asarray(xt.detach().numpy().transpose(0, 2, 3, 1))
  f = lambda x, k: CpuDeconv(6, formulation=formulation).apply({"params": {"kernel": k}}, x)  # noqa: E731
  np.testing.assert_allclose(f(x, k), yt.detach().numpy().transpose(0, 2, 3, 1), rtol=1e-5, atol=1e-5)
  gx, gk = jax.grad(lambda x, k: jnp.sum(f(x, k) * cot.transpose(0, 2, 3, 1)), argnums=(0, 1))(x, k)
  np.testing.assert_allclose(gx, xt.grad.numpy().transpose(0, 2, 3, 1), rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(gk, layer.weight.grad.numpy()[:, :, ::-1, ::-1].transpose(2, 3, 0, 1),
                             rtol=1e-4, atol=1e-4)


def test_deconv_bfloat16_compute():
  x, k = _deconv_case(cin=8, cout=8)
  y = CpuDeconv(8, dtype=jnp.bfloat16).apply({"params": {"kernel": k}}, x)
  assert y.dtype == jnp.bfloat16
  ref = cpu_layers.conv_transpose(x, k)
  assert np.linalg.norm(np.asarray(y, np.float32) - ref) / np.linalg.norm(ref) < 2e-2


# ----------------------------------------------------------------------------- parity with PyTorch

@pytest.mark.parametrize("ops", list(OPS))
def test_parity_with_pytorch_spec_model(ops):
  torch = pytest.importorskip("torch")
  from torch_spec_model import SpecNet, randomize_  # pylint: disable=g-import-not-at-top
  net = SpecNet(**TINY, num_deconvs=3, context_bottlenecks=2, joint_bottlenecks=2, depth_bottlenecks=1,
                volumetric_bottlenecks=3, aspp_dilations=(4, 8, 12), lifter_layers_per_block=3)
  randomize_(net, seed=0)
  net.eval()
  images, boxes = _inputs(4)
  with torch.no_grad():
    ref = net(torch.from_numpy(images.astype(np.float32)).permute(0, 3, 1, 2), torch.from_numpy(boxes))
  state = {k: v.numpy() for k, v in net.state_dict().items()}
  variables, report = convert.import_torch_state_dict(state, _template(CascadedLiftNet(**TINY), TINY_S))
  assert report["kept"] == [] and "ordinal_head" in report["loaded"]
  out = _eval_apply(jnp.float32, ops)({"params": variables["params"], "batch_stats": variables["batch_stats"]},
                                      images, boxes)
  for k in OUTPUT_KEYS:
    want = ref[k].numpy()
    if want.ndim == 4 and k != "joint_volumes":
      want = want.transpose(0, 2, 3, 1)  # NCHW -> NHWC
    got = np.asarray(out[k])
    assert got.shape == want.shape, k
    err = np.linalg.norm(got - want) / np.linalg.norm(want)
    assert err < 1e-4, f"{k}: relative error {err:.2e}"
  # The soft-argmax is not degenerate (coordinates spread over the map), so the comparison has teeth.
  assert np.std(np.asarray(out["coords"])[..., 0]) > 0.5


def test_crop_and_heatmap_sizes_are_checked_against_the_model():
  from cascaded_lift.configs import tiny  # pylint: disable=g-import-not-at-top
  from cascaded_lift.models.build import check_heatmap_size  # pylint: disable=g-import-not-at-top
  from cascaded_lift.platform import build_model  # pylint: disable=g-import-not-at-top
  cfg = tiny.get_config()
  model = build_model(cfg)
  check_heatmap_size(cfg, model)
  assert model.output_size(cfg.data.image_size) == cfg.data.output_size
  cfg.data.output_size *= 2  # a stride-2 heatmap is not what three deconvs from C5 make
  with pytest.raises(ValueError, match=r"data.output_size 16 .*image_size / 4 = 8"):
    check_heatmap_size(cfg, model)
  cfg = tiny.get_config()
  cfg.data.image_size = 48  # not a multiple of the stride-32 C5
  with pytest.raises(ValueError, match="multiple of model.resnet_output_stride"):
    build_model(cfg)

"""Tests for cascaded_lift.weights.convert: torchvision / released-model naming, layouts, files, errors."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cascaded_lift.weights import convert
from cascaded_lift.models import CascadedLiftNet, ResNet

TINY = dict(num_joints=18, num_bones=16, depth_bins=8, resnet_depth=50, resnet_width=8,
            resnet_stage_sizes=(1, 1, 1, 1), head_width=32, bone_width=16, lifter_width=64, lifter_blocks=2)


def _random_variables(template, seed=0):
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map(lambda s: rng.normal(size=s.shape).astype(s.dtype), template)


@functools.lru_cache(maxsize=None)
def _tiny_template():
  model = CascadedLiftNet(**TINY)
  return jax.eval_shape(lambda k: model.init(k, jnp.zeros((1, 64, 64, 3)), jnp.ones((1, 4)), train=False),
                        jax.random.key(0))


def _tiny_variables(seed=0):
  return _random_variables(_tiny_template(), seed)


def _assert_trees_equal(a, b):
  fa, fb = jax.tree_util.tree_flatten_with_path(a)[0], jax.tree_util.tree_flatten_with_path(b)[0]
  assert [p for p, _ in fa] == [p for p, _ in fb]
  for (p, x), (_, y) in zip(fa, fb):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=jax.tree_util.keystr(p))


def _subset(variables, top):
  return {c: {k: v for k, v in variables[c].items() if k in top} for c in ("params", "batch_stats")}


# ----------------------------------------------------------------------------- naming and layouts

def test_export_uses_the_released_names():
  sd = convert.export_torch_state_dict(_tiny_variables())
  # Names as in the released main/model.py (typos included), for the tiny variant's counts.
  for key, shape in [
      ("posenet.backbone.conv1.weight", (8, 3, 7, 7)),
      ("posenet.backbone.layer4.0.downsample.1.running_var", (256,)),
      ("posenet.up.deconv_layers.0.weight", (256, 32, 4, 4)),
      ("posenet.up.deconv_layers.7.running_mean", (32,)),
      ("posenet.up.final_layer.weight", (32, 32, 3, 3)),
      ("posenet.up.bn.weight", (32,)),
      ("posenet.limb.deconv_layers.6.weight", (16, 16, 4, 4)),
      ("posenet.limb.hm_layer.bias", (16,)),
      ("posenet.sel.down_sample_conv1.weight", (32, 48, 1, 1)),
      ("posenet.sel.limb_feature_bottlenneck3.conv3.weight", (32, 8, 1, 1)),
      ("posenet.sel.limb_feature_bottlenneck4.bn2.running_mean", (8,)),
      ("posenet.sel.up_feature_bottleneck2.conv2.weight", (8, 8, 3, 3)),
      ("posenet.sel.aspp.conv_3x3_3.bias", (32,)),
      ("posenet.sel.aspp.bn_conv_1x1_3.running_var", (32,)),
      ("posenet.sel.final_layer1.weight", (18, 32, 3, 3)),
      ("posenet.sel.final_layer2.weight", (8, 32, 3, 3)),
      ("posenet.sel.down_sample_bn2.bias", (32,)),
      ("posenet.final.bottleNeck3.conv1.weight", (16, 64, 1, 1)),
      ("posenet.final.final_conv.weight", (18 * 8, 64, 1, 1)),
      ("posenet.ordinal.weight", (8, 32, 1, 1)),
      ("fc1.weight", (64, 90)),
      ("bn1.running_mean", (64,)),
      ("block2.fc3.weight", (64, 64)),
      ("block1.bn2.bias", (64,)),
      ("fc2.weight", (54, 64)),
      ("fc2.bias", (54,))]:
    assert key in sd, key
    assert sd[key].shape == shape, key
  assert sd["posenet.up.bn.num_batches_tracked"].dtype == np.int64
  assert not any(k.startswith("posenet.sel.limb_feature_bottlenneck5") for k in sd)
  assert not any("block3" in k for k in sd)


def test_layout_conversions_hand_worked():
  variables = _tiny_variables()
  sd = convert.export_torch_state_dict(variables)
  # Mark single elements in PyTorch layout and see where they land.
  sd = {k: np.zeros_like(v) for k, v in sd.items()}
  sd["posenet.backbone.conv1.weight"][5, 2, 1, 6] = 1.0  # (out, in, kh, kw)
  sd["posenet.up.deconv_layers.3.weight"][7, 9, 0, 3] = 1.0  # (in, out, kh, kw)
  sd["block1.fc2.weight"][4, 11] = 1.0  # (out, in)
  sd["posenet.sel.aspp.bn_conv_1x1_1.running_var"][3] = 1.0
  new, _ = convert.import_torch_state_dict(sd, variables)
  p = new["params"]
  assert np.argwhere(p["backbone"]["conv1"]["kernel"]).tolist() == [[1, 6, 2, 5]]
  assert np.argwhere(p["context"]["deconv1"]["kernel"]).tolist() == [[3, 0, 7, 9]]  # flipped: 3 - 0, 3 - 3
  assert np.argwhere(p["lifter"]["block1"]["fc2"]["kernel"]).tolist() == [[11, 4]]
  assert np.argwhere(new["batch_stats"]["dilated"]["aspp"]["bn_conv_1x1_1"]["var"]).tolist() == [[3]]


def test_round_trip_restores_every_variable():
  variables = _tiny_variables(seed=3)
  template = _tiny_variables(seed=4)
  new, report = convert.import_torch_state_dict(convert.export_torch_state_dict(variables), template)
  assert report["kept"] == [] and report["skipped"] == []
  _assert_trees_equal({c: new[c] for c in ("params", "batch_stats")}, variables)


# ----------------------------------------------------------------------------- partial dicts and prefixes

def test_posenet_only_dict_without_prefix_keeps_the_lifter():
  variables, template = _tiny_variables(1), _tiny_variables(2)
  sd = convert.export_torch_state_dict(variables, posenet_prefix="", include_lifter=False)
  new, report = convert.import_torch_state_dict(sd, template)
  assert report["posenet_prefix"] == "" and report["kept"] == ["lifter"]
  posenet = [k for k in variables["params"] if k != "lifter"]
  _assert_trees_equal(_subset(new, posenet), _subset(variables, posenet))
  _assert_trees_equal(_subset(new, ["lifter"]), _subset(template, ["lifter"]))


def test_lifter_only_dict_and_module_prefix():
  variables, template = _tiny_variables(1), _tiny_variables(2)
  sd = {"module." + k: v for k, v in convert.export_torch_state_dict(variables).items()
        if not k.startswith("posenet.")}
  new, report = convert.import_torch_state_dict(sd, template)
  assert "lifter" in report["loaded"] and "backbone" in report["kept"]
  _assert_trees_equal(_subset(new, ["lifter"]), _subset(variables, ["lifter"]))
  _assert_trees_equal(_subset(new, ["backbone", "volumetric"]), _subset(template, ["backbone", "volumetric"]))
  with pytest.raises(ValueError, match=r"unexpected keys \(1\): head.weight"):
    convert.import_torch_state_dict(dict(sd, **{"head.weight": np.zeros(1)}), template)
  # A stray PoseNet-looking key makes it a PoseNet dict, whose other keys are then missing (list capped).
  with pytest.raises(ValueError, match=r"missing keys \(306\): .*, \.\.\. \(286 more\)"):
    convert.import_torch_state_dict(dict(sd, **{"up.final_layer.weight": np.zeros(1)}), template)


def test_released_dict_without_ordinal_head_and_with_unused_limb_layers():
  variables, template = _tiny_variables(1), _tiny_variables(2)
  sd = {k: v for k, v in convert.export_torch_state_dict(variables).items() if ".ordinal." not in k}
  sd["posenet.limb.final_layer1.weight"] = np.zeros((16, 16, 3, 3), np.float32)
  for leaf in ("weight", "bias", "running_mean", "running_var"):
    sd[f"posenet.limb.bn1.{leaf}"] = np.zeros((16,), np.float32)
  new, report = convert.import_torch_state_dict(sd, template)
  assert report["kept"] == ["ordinal_head"]
  assert "posenet.limb.final_layer1.weight" in report["skipped"]
  _assert_trees_equal(_subset(new, ["ordinal_head"]), _subset(template, ["ordinal_head"]))
  _assert_trees_equal(_subset(new, ["bone_branch"]), _subset(variables, ["bone_branch"]))


# ----------------------------------------------------------------------------- errors

def test_missing_unexpected_and_misshaped_keys_are_named():
  variables = _tiny_variables()
  sd = convert.export_torch_state_dict(variables)
  missing = dict(sd)
  del missing["posenet.sel.final_layer2.weight"]
  with pytest.raises(ValueError, match=r"missing keys \(1\): posenet.sel.final_layer2.weight"):
    convert.import_torch_state_dict(missing, variables)
  extra = dict(sd, **{"posenet.sel.extra_conv.weight": np.zeros(3)})
  with pytest.raises(ValueError, match=r"unexpected keys \(1\): posenet.sel.extra_conv.weight"):
    convert.import_torch_state_dict(extra, variables)
  stray = dict(sd, **{"head.weight": np.zeros(3)})
  with pytest.raises(ValueError, match="unexpected keys.*head.weight"):
    convert.import_torch_state_dict(stray, variables)
  bad = dict(sd)
  bad["block1.fc1.weight"] = np.zeros((64, 32), np.float32)
  with pytest.raises(ValueError, match=r"block1.fc1.weight: got \(64, 32\), expected \(64, 64\)"):
    convert.import_torch_state_dict(bad, variables)
  with pytest.raises(ValueError, match="no key of the released naming"):
    convert.import_torch_state_dict({"foo.weight": np.zeros(1)}, variables)


def test_resnet_import_errors_name_the_file(tmp_path):
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  variables = _tiny_variables()
  sd = convert.export_resnet(variables)
  del sd["layer2.0.conv2.weight"]
  sd["fc.weight"] = np.zeros((10, 256), np.float32)  # a classifier is fine
  path = tmp_path / "r.safetensors"
  save_file(sd, str(path))
  with pytest.raises(ValueError, match=r"r.safetensors: ResNet weights: missing keys \(1\): layer2.0.conv2.weight"):
    convert.load_resnet_into(variables, path)
  sd["layer2.0.conv2.weight"] = np.zeros((16, 16, 3, 3), np.float32)
  sd["layer5.0.conv1.weight"] = np.zeros((1,), np.float32)
  save_file(sd, str(path))
  with pytest.raises(ValueError, match=r"unexpected keys \(1\): layer5.0.conv1.weight"):
    convert.load_resnet_into(variables, path)
  with pytest.raises(ValueError, match="unknown weights format"):
    convert.load_state_dict(tmp_path / "w.h5")


# ----------------------------------------------------------------------------- files and PyTorch

@pytest.mark.parametrize("suffix", [".safetensors", ".npz"])
def test_resnet_weights_from_file_fill_only_the_backbone(tmp_path, suffix):
  source, target = _tiny_variables(5), _tiny_variables(6)
  sd = convert.export_resnet(source)
  assert "layer1.0.downsample.0.weight" in sd and "bn1.running_mean" in sd
  path = tmp_path / ("resnet" + suffix)
  if suffix == ".npz":
    np.savez(path, **sd)
  else:
    from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
    save_file(sd, str(path))
  new = convert.load_resnet_into(target, path)
  _assert_trees_equal(_subset(new, ["backbone"]), _subset(source, ["backbone"]))
  rest = [k for k in target["params"] if k != "backbone"]
  _assert_trees_equal(_subset(new, rest), _subset(target, rest))


@pytest.mark.parametrize("depth,stage_sizes,output_stride", [
    (18, None, 32), (18, None, 16), (50, (1, 1, 1, 2), 16)])
def test_torchvision_resnet_matches_pytorch(tmp_path, depth, stage_sizes, output_stride):
  # output_stride 16 is torchvision's replace_stride_with_dilation for the last stage (C5 at S / 16).
  torch = pytest.importorskip("torch")
  from torch_spec_model import ResNetBackbone, randomize_  # pylint: disable=g-import-not-at-top
  net = ResNetBackbone(depth, width=8, stage_sizes=stage_sizes, dilate_last=output_stride == 16)
  randomize_(net, seed=1)
  net.eval()
  sd = dict(net.state_dict())
  sd["fc.weight"], sd["fc.bias"] = torch.zeros(1000, net.out_channels), torch.zeros(1000)  # as torchvision ships it
  path = tmp_path / f"resnet{depth}.pth"
  torch.save({"state_dict": {"module." + k: v for k, v in sd.items()}}, path)
  model = ResNet(depth, width=8, stage_sizes=stage_sizes, output_stride=output_stride)
  template = jax.eval_shape(lambda k: model.init(k, jnp.zeros((1, 64, 64, 3)), train=False), jax.random.key(0))
  variables = convert.load_resnet_into(template, path)
  x = np.random.default_rng(0).normal(size=(2, 64, 64, 3)).astype(np.float32)
  got = jax.jit(functools.partial(model.apply, train=False))(
      {"params": variables["params"], "batch_stats": variables["batch_stats"]}, x)
  with torch.no_grad():
    want = net(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy().transpose(0, 2, 3, 1)
  c5 = 64 // output_stride
  assert got.shape == want.shape == (2, c5, c5, net.out_channels)
  assert np.linalg.norm(np.asarray(got) - want) / np.linalg.norm(want) < 1e-5
  exported = convert.export_resnet(variables)
  assert set(exported) == {k for k in sd if not k.startswith("fc.") and not k.endswith("num_batches_tracked")}


def test_pth_checkpoint_with_network_key_and_spec_model_key_set(tmp_path):
  torch = pytest.importorskip("torch")
  from torch_spec_model import SpecNet, randomize_  # pylint: disable=g-import-not-at-top
  net = SpecNet(**TINY, num_deconvs=3, context_bottlenecks=2, joint_bottlenecks=2, depth_bottlenecks=1,
                volumetric_bottlenecks=3, aspp_dilations=(4, 8, 12), lifter_layers_per_block=3)
  randomize_(net, seed=2)
  path = tmp_path / "snapshot.pth.tar"
  torch.save({"epoch": 3, "network": {"module." + k: v for k, v in net.state_dict().items()}}, path)
  variables, report = convert.load_torch_checkpoint(_tiny_template(), path)
  assert report["kept"] == []
  # Exporting gives back the spec model's state dict, except the two layers the released model never uses.
  back = convert.export_torch_state_dict(variables)
  ref = net.state_dict()
  unused = {k for k in ref if k.startswith(("posenet.limb.final_layer1.", "posenet.limb.bn1."))}
  assert set(back) == set(ref) - unused
  for k in back:
    np.testing.assert_array_equal(back[k], ref[k].numpy(), err_msg=k)
  missing, unexpected = net.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in back.items()},
                                            strict=False)
  # (PyTorch does not report a BN's missing num_batches_tracked.)
  assert set(missing) == {k for k in unused if not k.endswith("num_batches_tracked")} and not unexpected


def test_non_finite_weights_are_refused_with_the_file_and_key(tmp_path):
  good = {"conv1.weight": np.ones((4, 3, 7, 7), np.float32), "bn1.num_batches_tracked": np.array(3)}
  bad = dict(good, **{"bn1.running_var": np.array([1.0, np.nan, np.inf, 2.0], np.float32)})
  np.savez(tmp_path / "good.npz", **good)
  np.savez(tmp_path / "bad.npz", **bad)
  assert set(convert.load_state_dict(tmp_path / "good.npz")) == set(good)
  with pytest.raises(ValueError, match=r"bad\.npz: weight 'bn1\.running_var' holds 2 non-finite values"):
    convert.load_state_dict(tmp_path / "bad.npz")
  with pytest.raises(FileNotFoundError, match="does not exist"):
    convert.load_state_dict(tmp_path / "missing.npz")

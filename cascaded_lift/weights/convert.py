"""Weight import/export between CascadedLiftNet (Flax) and PyTorch state dicts, without PyTorch.

Two namings are understood:
- torchvision ResNet (conv1.weight, bn1.*, layer1.0.conv1.weight, ..., layer1.0.downsample.0/1.*; fc.*
  ignored): ImageNet initialisation of the backbone, `load_resnet_into` / `import_resnet`.
- the authors' released model (github.com/fnzhan/Pose-Estimation, main/model.py): CoordinateNet with
  `posenet.` = ResPoseNet {backbone, up, limb, sel, final} and the lifter fc1 / bn1 / block1..5 / fc2
  at top level. A PoseNet-only dict (backbone.*, up.*, ... without `posenet.`) and a lifter-only dict
  load too; `module.` prefixes (DataParallel) are dropped. `import_torch_state_dict` /
  `export_torch_state_dict`.

Module correspondence (Flax path -> released name; i counts from 0 in Flax, from 1 in PyTorch):
  context/deconv{i}, bn{i}             up.deconv_layers.{3i}, .{3i+1};  final_conv, final_bn -> up.final_layer, up.bn
  bone_branch/deconv{i}, bn{i}         limb.deconv_layers.{3i}, .{3i+1}; heatmap_conv -> limb.hm_layer
  bone_joint/reduce_conv, reduce_bn    sel.down_sample_conv1, sel.down_sample_bn1
  bone_joint/bottleneck{i}             sel.limb_feature_bottlenneck{i+1} (sic); feature_bottleneck -> the next one
  bone_joint/joint_conv                sel.final_layer1
  dilated/bottleneck{i}, aspp/*        sel.up_feature_bottleneck{i+1}, sel.aspp.*
  depth_centric/reduce_*, volume_conv  sel.down_sample_conv2 / _bn2, sel.final_layer2; its bottlenecks
                                       continue the limb_feature_bottlenneck numbering
  volumetric/bottleneck{i}, final_conv final.bottleNeck{i+1}, final.final_conv
  ordinal_head                         ordinal (not in the released model: kept as initialised when absent)
  lifter/*                             same names, '/' -> '.'
The released limb.final_layer1 and limb.bn1 are never used by its forward pass and are skipped.

Layouts: conv OIHW -> HWIO; ConvTranspose2d (in, out, kh, kw) -> (kh, kw, in, out) flipped spatially
(cpu/layers.py explains why); Linear (out, in) -> (in, out); BN weight/bias -> params scale/bias,
running_mean/var -> batch_stats mean/var; num_batches_tracked ignored.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any, Mapping

import numpy as np
from flax import traverse_util
from safetensors.numpy import load_file

StateDict = Mapping[str, np.ndarray]
Variables = Mapping[str, Any]

_POSENET_GROUPS = ("backbone", "context", "bone_branch", "bone_joint", "dilated", "depth_centric",
                   "ordinal_head", "volumetric")
_POSENET_ROOTS = ("backbone.", "up.", "limb.", "sel.", "final.", "ordinal.")
_LIFTER_KEY = re.compile(r"^(fc1|bn1|fc2|block\d+)\.")
_UNUSED = ("limb.final_layer1.", "limb.bn1.")  # in the released dict, unused by its forward pass
_OPTIONAL = ("ordinal.",)  # ours only


@dataclasses.dataclass(frozen=True)
class _Entry:
  """One Flax module <-> one PyTorch module."""
  path: tuple[str, ...]  # Flax module path inside params / batch_stats
  torch: str  # PyTorch module name
  kind: str  # conv | deconv | linear | bn


# ----------------------------------------------------------------------------- file loading

def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads a state dict from .safetensors or .npz (no PyTorch needed) or .pth/.pt/.tar (needs PyTorch).

  A .pth holding a checkpoint dict ({'network': ...}, {'state_dict': ...} or {'model': ...}) is unwrapped.
  Raises ValueError naming the file and the first weight that holds NaN or infinite values.
  """
  path = os.fspath(path)
  if not path.endswith((".safetensors", ".npz", ".pth", ".pt", ".tar", ".pth.tar", ".bin")):
    raise ValueError(f"{path}: unknown weights format (use .safetensors, .npz or .pth)")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"weights file {path!r} does not exist")
  return _check_finite(_read_state_dict(path), path)


def _check_finite(state_dict: dict[str, np.ndarray], path: str) -> dict[str, np.ndarray]:
  for key, value in state_dict.items():
    value = np.asarray(value)
    if value.dtype.kind == "f" and not np.all(np.isfinite(value)):
      bad = int(np.size(value) - np.count_nonzero(np.isfinite(value)))
      raise ValueError(f"{path}: weight {key!r} holds {bad} non-finite values (NaN or inf) of {value.size}; "
                       "the file is damaged or came from a diverged run")
  return state_dict


def _read_state_dict(path: str) -> dict[str, np.ndarray]:
  if path.endswith(".safetensors"):
    return dict(load_file(path))
  if path.endswith(".npz"):
    with np.load(path) as f:
      return {k: f[k] for k in f.files}
  if path.endswith((".pth", ".pt", ".tar", ".pth.tar", ".bin")):
    try:
      import torch  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise ImportError(f"{path}: reading PyTorch files needs torch; convert it to .safetensors or .npz") from e
    obj = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("network", "state_dict", "model"):
      if isinstance(obj, dict) and isinstance(obj.get(key), dict):
        obj = obj[key]
    if not isinstance(obj, dict):
      raise ValueError(f"{path}: expected a state dict, found {type(obj).__name__}")
    return {k: (v.float() if v.is_floating_point() else v).numpy() for k, v in obj.items() if hasattr(v, "numpy")}
  raise ValueError(f"{path}: unknown weights format (use .safetensors, .npz or .pth)")


def _clean(state_dict: StateDict) -> dict[str, np.ndarray]:
  """Drops 'module' name components (DataParallel) and num_batches_tracked counters."""
  out = {}
  for k, v in state_dict.items():
    k = ".".join(p for p in k.split(".") if p != "module")
    if not k.endswith("num_batches_tracked"):
      out[k] = np.asarray(v)
  return out


# ----------------------------------------------------------------------------- naming

def _modules(tree: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], dict]]:
  """(path, leaf dict) of every module that holds arrays directly, in sorted order."""
  found = []
  for name in sorted(tree):
    sub = tree[name]
    if isinstance(sub, Mapping):
      if any(not isinstance(v, Mapping) for v in sub.values()):
        found.append((prefix + (name,), dict(sub)))
      else:
        found.extend(_modules(sub, prefix + (name,)))
  return found


def _kind(path: tuple[str, ...], leaves: dict) -> str:
  if "scale" in leaves:
    return "bn"
  ndim = len(leaves["kernel"].shape)
  if ndim == 2:
    return "linear"
  return "deconv" if path[-1].startswith("deconv") else "conv"


def _resnet_name(path: tuple[str, ...]) -> str:
  names = []
  for p in path:
    m = re.fullmatch(r"layer(\d+)_(\d+)", p)
    names.append(f"layer{m[1]}.{m[2]}" if m else {"downsample_conv": "downsample.0",
                                                  "downsample_bn": "downsample.1"}.get(p, p))
  return ".".join(names)


def _posenet_name(path: tuple[str, ...], n_joint: int) -> str:
  """Released name (without the 'posenet.' prefix) of a Flax module path in the PoseNet groups."""
  group, head, rest = path[0], path[1] if len(path) > 1 else "", path[2:]
  tail = ("." + _resnet_name(rest)) if rest else ""
  m = re.fullmatch(r"(deconv|bn|bottleneck)(\d+)", head)
  idx = int(m[2]) if m else None
  if group == "backbone":
    return "backbone." + _resnet_name(path[1:])
  if group == "ordinal_head":
    return "ordinal"
  if group in ("context", "bone_branch"):
    root = "up" if group == "context" else "limb"
    if m and m[1] == "deconv":
      return f"{root}.deconv_layers.{3 * idx}"
    if m and m[1] == "bn":
      return f"{root}.deconv_layers.{3 * idx + 1}"
    return root + "." + {"final_conv": "final_layer", "final_bn": "bn", "heatmap_conv": "hm_layer"}[head]
  if group == "bone_joint":
    if m:
      return f"sel.limb_feature_bottlenneck{idx + 1}{tail}"
    if head == "feature_bottleneck":
      return f"sel.limb_feature_bottlenneck{n_joint + 1}{tail}"
    return "sel." + {"reduce_conv": "down_sample_conv1", "reduce_bn": "down_sample_bn1",
                     "joint_conv": "final_layer1"}[head]
  if group == "dilated":
    if m:
      return f"sel.up_feature_bottleneck{idx + 1}{tail}"
    return "sel." + ".".join(path[1:])
  if group == "depth_centric":
    if m:
      return f"sel.limb_feature_bottlenneck{n_joint + 2 + idx}{tail}"
    return "sel." + {"reduce_conv": "down_sample_conv2", "reduce_bn": "down_sample_bn2",
                     "volume_conv": "final_layer2"}[head]
  if group == "volumetric":
    return f"final.bottleNeck{idx + 1}{tail}" if m else "final." + head
  raise KeyError(f"no released name for Flax module {'/'.join(path)}")


def _layout(params: Mapping[str, Any]) -> list[_Entry]:
  """Every CascadedLiftNet module and its released name (PoseNet names without 'posenet.')."""
  n_joint = sum(1 for k in params.get("bone_joint", {}) if re.fullmatch(r"bottleneck\d+", k))
  entries = []
  for path, leaves in _modules(params):
    if path[0] == "lifter":
      name = ".".join(path[1:])
    elif path[0] in _POSENET_GROUPS:
      name = _posenet_name(path, n_joint)
    else:
      raise KeyError(f"unknown top-level module {path[0]!r} in params")
    entries.append(_Entry(path, name, _kind(path, leaves)))
  return entries


# ----------------------------------------------------------------------------- array layouts

def _to_flax(kind: str, leaf: str, w: np.ndarray) -> np.ndarray:
  if leaf != "kernel":
    return w
  if kind == "conv":
    return w.transpose(2, 3, 1, 0)
  if kind == "deconv":
    return w[:, :, ::-1, ::-1].transpose(2, 3, 0, 1)
  return w.T  # linear


def _to_torch(kind: str, leaf: str, w: np.ndarray) -> np.ndarray:
  if leaf != "kernel":
    return w
  if kind == "conv":
    return w.transpose(3, 2, 0, 1)
  if kind == "deconv":
    return w.transpose(2, 3, 0, 1)[:, :, ::-1, ::-1]
  return w.T


def _torch_shape(kind: str, leaf: str, shape: tuple[int, ...]) -> tuple[int, ...]:
  return _to_torch(kind, leaf, np.empty(shape, np.bool_)).shape


_PARAM_LEAVES = {"bn": (("scale", "weight"), ("bias", "bias")), "other": (("kernel", "weight"), ("bias", "bias"))}
_STAT_LEAVES = (("mean", "running_mean"), ("var", "running_var"))


def _pairs(entry: _Entry, params: Mapping[str, Any]):
  """(collection, flax leaf, torch leaf) for one module, only those it has."""
  have = _get(params, entry.path)
  for flax_leaf, torch_leaf in _PARAM_LEAVES["bn" if entry.kind == "bn" else "other"]:
    if flax_leaf in have:
      yield "params", flax_leaf, torch_leaf
  if entry.kind == "bn":
    for flax_leaf, torch_leaf in _STAT_LEAVES:
      yield "batch_stats", flax_leaf, torch_leaf


def _get(tree: Mapping[str, Any], path: tuple[str, ...]) -> Any:
  for p in path:
    tree = tree[p]
  return tree


# ----------------------------------------------------------------------------- import / export

def _import(entries: list[_Entry], state_dict: dict[str, np.ndarray], variables: Variables, prefix: str,
            what: str) -> tuple[dict[str, Any], set[str]]:
  """Copies state_dict[prefix + torch name] into a copy of `variables`; raises on missing / misshaped keys.

  Returns ({'params', 'batch_stats'}, the state-dict keys used).
  """
  flat = {c: traverse_util.flatten_dict(dict(variables.get(c, {}))) for c in ("params", "batch_stats")}
  missing, bad, used = [], [], set()
  for e in entries:
    for coll, fl, tl in _pairs(e, variables["params"]):
      key = f"{prefix}{e.torch}.{tl}"
      target = flat[coll].get(e.path + (fl,))
      if target is None:
        raise KeyError(f"{what}: variables lack {coll}/{'/'.join(e.path + (fl,))}")
      if key not in state_dict:
        missing.append(key)
        continue
      used.add(key)
      w = state_dict[key]
      want = _torch_shape(e.kind, fl, tuple(target.shape))
      if tuple(w.shape) != want:
        bad.append(f"{key}: got {tuple(w.shape)}, expected {want}")
        continue
      flat[coll][e.path + (fl,)] = np.ascontiguousarray(_to_flax(e.kind, fl, w)).astype(target.dtype)
  if missing or bad:
    lines = ([f"missing keys ({len(missing)}): {_names(missing)}"] if missing else []) + (
        [f"mis-shaped keys ({len(bad)}): {_names(bad, '; ')}"] if bad else [])
    raise ValueError(f"{what}: " + "\n".join(lines))
  return {c: traverse_util.unflatten_dict(f) for c, f in flat.items()}, used


def _names(items: list[str], sep: str = ", ", limit: int = 20) -> str:
  """The first `limit` items, then how many more (a whole wrong checkpoint would list hundreds)."""
  more = f"{sep}... ({len(items) - limit} more)" if len(items) > limit else ""
  return sep.join(items[:limit]) + more


def _unexpected(keys: set[str], what: str) -> None:
  if keys:
    raise ValueError(f"{what}: unexpected keys ({len(keys)}): {_names(sorted(keys))}")


def _resnet_entries(params: Mapping[str, Any], path: tuple[str, ...]) -> list[_Entry]:
  return [_Entry(path + p, _resnet_name(p), _kind(p, leaves)) for p, leaves in _modules(_get(params, path))]


def import_resnet(state_dict: StateDict, variables: Variables, *, prefix: str = "") -> dict[str, Any]:
  """Puts a torchvision-named ResNet state dict into `variables`.

  `variables` are either a CascadedLiftNet's (the 'backbone' subtree is filled) or a bare ResNet's.
  fc.* is ignored; any other key the backbone does not have is an error, as is a missing or mis-shaped one.
  Returns new {'params', 'batch_stats'} (NumPy leaves where loaded, the others unchanged).
  """
  sd = {k[len(prefix):]: v for k, v in _clean(state_dict).items() if k.startswith(prefix)}
  sd = {k: v for k, v in sd.items() if not k.startswith("fc.")}
  path = ("backbone",) if "backbone" in variables["params"] else ()
  entries = _resnet_entries(variables["params"], path)
  out, used = _import(entries, sd, variables, "", "ResNet weights")
  _unexpected(set(sd) - used, "ResNet weights")
  return {**dict(variables), **out}


def load_resnet_into(variables: Variables, path: str | os.PathLike, *, prefix: str = "") -> dict[str, Any]:
  """`import_resnet` from a .safetensors / .npz / .pth file (errors name the file)."""
  try:
    return import_resnet(load_state_dict(path), variables, prefix=prefix)
  except (ValueError, KeyError) as e:
    raise type(e)(f"{os.fspath(path)}: {e}") from None


def import_torch_state_dict(state_dict: StateDict, variables: Variables) -> tuple[dict[str, Any], dict[str, Any]]:
  """Loads a state dict in the released model's naming into CascadedLiftNet variables.

  Which parts are present is detected: the PoseNet (with or without 'posenet.'), the lifter, or both;
  a part that is absent keeps its current values, as does the ordinal head (ours only). Within a
  present part every key must be there with the right shape, and no key may be left over.

  Returns:
    (new variables {'params', 'batch_stats'}, report {'posenet_prefix', 'loaded': [...], 'kept': [...],
    'skipped': [unused released keys]}).
  """
  sd = _clean(state_dict)
  prefix = "posenet." if any(k.startswith("posenet.") for k in sd) else ""
  has_posenet = any(k.startswith(prefix + r) for k in sd for r in _POSENET_ROOTS)
  has_lifter = any(_LIFTER_KEY.match(k) for k in sd)
  if not (has_posenet or has_lifter):
    raise ValueError(f"no key of the released naming found (first keys: {', '.join(list(sd)[:5])})")
  entries = _layout(variables["params"])
  wanted, kept = [], []
  for e in entries:
    is_lifter = e.path[0] == "lifter"
    present = has_lifter if is_lifter else has_posenet
    if present and not is_lifter and (e.torch + ".").startswith(_OPTIONAL):
      present = any(k.startswith(prefix + e.torch + ".") for k in sd)
    if present:
      wanted.append(e)
    elif e.path[0] not in kept:
      kept.append(e.path[0])
  skipped = sorted(k for k in sd if k.startswith(tuple(prefix + u for u in _UNUSED)))
  lifter_sd = {k: v for k, v in sd.items() if _LIFTER_KEY.match(k)}
  posenet_sd = {k: v for k, v in sd.items() if k not in lifter_sd and k not in skipped}
  out = dict(variables)
  for part, part_prefix, part_sd in (("posenet", prefix, posenet_sd), ("lifter", "", lifter_sd)):
    part_entries = [e for e in wanted if (e.path[0] == "lifter") == (part == "lifter")]
    if not part_entries and not part_sd:
      continue
    res, used = _import(part_entries, part_sd, out, part_prefix, f"released {part} weights")
    _unexpected(set(part_sd) - used, f"released {part} weights")
    out.update(res)
  loaded = sorted({e.path[0] for e in wanted})
  return out, {"posenet_prefix": prefix, "loaded": loaded, "kept": kept, "skipped": skipped}


def load_torch_checkpoint(variables: Variables, path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any]]:
  """`import_torch_state_dict` from a file (errors name the file)."""
  try:
    return import_torch_state_dict(load_state_dict(path), variables)
  except (ValueError, KeyError) as e:
    raise type(e)(f"{os.fspath(path)}: {e}") from None


def export_torch_state_dict(variables: Variables, *, posenet_prefix: str = "posenet.", include_lifter: bool = True,
                            num_batches_tracked: bool = True) -> dict[str, np.ndarray]:
  """CascadedLiftNet variables -> a state dict in the released naming (float32 NumPy arrays).

  With num_batches_tracked, every BN gets a zero int64 counter so that PyTorch's strict loading accepts
  the dict; the released limb.final_layer1 / limb.bn1 (unused) are not produced.
  """
  params, stats = variables["params"], variables.get("batch_stats", {})
  out = {}
  for e in _layout(params):
    if e.path[0] == "lifter" and not include_lifter:
      continue
    name = e.torch if e.path[0] == "lifter" else posenet_prefix + e.torch
    for coll, fl, tl in _pairs(e, params):
      w = np.asarray(_get(params if coll == "params" else stats, e.path + (fl,)), np.float32)
      out[f"{name}.{tl}"] = np.ascontiguousarray(_to_torch(e.kind, fl, w))
    if e.kind == "bn" and num_batches_tracked:
      out[f"{name}.num_batches_tracked"] = np.zeros((), np.int64)
  return out


def export_resnet(variables: Variables) -> dict[str, np.ndarray]:
  """ResNet (bare, or a CascadedLiftNet's backbone) -> torchvision-named state dict (float32)."""
  params, stats = variables["params"], variables.get("batch_stats", {})
  path = ("backbone",) if "backbone" in params else ()
  out = {}
  for e in _resnet_entries(params, path):
    for coll, fl, tl in _pairs(e, params):
      w = np.asarray(_get(params if coll == "params" else stats, e.path + (fl,)), np.float32)
      out[f"{e.torch}.{tl}"] = np.ascontiguousarray(_to_torch(e.kind, fl, w))
  return out

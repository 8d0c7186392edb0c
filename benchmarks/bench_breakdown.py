"""Where a training step's time goes: per-part forward and forward + backward, JAX vs PyTorch.

The network is cut where the released model's modules meet, so that both frameworks time the same
work: backbone (ResNet trunk, images -> C5), context ("up": deconvs + 3x3 conv), bone branch ("limb":
deconvs + heatmap conv), sel (bone-joint + dilated + depth-centric blocks), volumetric ("final": 3
bottlenecks + 1x1 conv to J*D, then the soft-argmax) and the lifter; plus each single deconv layer of
the context branch (the JAX network's layers set by --platform-ops, and for the CPU forms by --cpu-conv,
--conv-grad and --deconv: benchmarks/common.py layer_ops). Each part runs with BatchNorm in train mode on
the activations the previous parts produce for the benchmark batch; forward + backward takes the
gradient of mean(out^2) (summed over the part's outputs) w.r.t. the parameters and the part's inputs
(not the images). JAX parts are jitted separately, so XLA cannot fuse across their borders as it does
in the whole step; the sum of the parts is therefore an upper bound of the step's model work.

Usage (prints a table, then one line starting with "JSON "):
  python benchmarks/bench_breakdown.py                     # full model, batch 8, 256 px, float32
  python benchmarks/bench_breakdown.py --model tiny --size 64 --batch 2
Options: --model --batch --size --warmup --repeats --threads --platform-ops --cpu-conv --conv-grad --deconv
  --host-malloc --torch-format --parts a,b
"""

from __future__ import annotations

import argparse
import copy
import pathlib
import sys
from typing import Any, Callable

import jax
import jax.numpy as jnp

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import bench_model as bm  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position
import common  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position

from cascaded_lift.heatmaps import soft_argmax_3d  # noqa: E402
from cascaded_lift.models import (BoneBranch, BoneJointBlock, ContextBranch, DepthCentricBlock,  # noqa: E402
                                  DilatedBlock, LayerOps, Lifter, ResNet, VolumetricHead)

PARTS = ("backbone", "context", "bone_branch", "sel", "volumetric", "lifter", "deconv0", "deconv1", "deconv2")


def _sq(outs) -> Any:
  return sum(jnp.mean(jnp.square(o.astype(jnp.float32))) for o in jax.tree_util.tree_leaves(outs))


def jax_parts(cfg: dict[str, Any], variables: dict[str, Any], ops: LayerOps) -> dict[str, tuple[Callable, list[str]]]:
  """part -> (f(params, stats, *inputs) -> outputs, the names of its params' top-level modules), every
  module built from `ops`."""
  p, s = variables["params"], variables["batch_stats"]

  def run(module, name, params, stats, *inputs, **kw):
    out, _ = module.apply({"params": params[name], "batch_stats": stats[name]}, *inputs, train=True,
                          mutable=["batch_stats"], **kw)
    return out

  up = dict(num_deconvs=cfg["num_deconvs"], ops=ops)
  w, j, d = cfg["head_width"], cfg["num_joints"], cfg["depth_bins"]
  backbone = ResNet(cfg["resnet_depth"], cfg["resnet_width"], cfg["resnet_stage_sizes"], ops=ops)
  context = ContextBranch(w, **up)
  bone = BoneBranch(cfg["bone_width"], num_bones=cfg["num_bones"], **up)
  bone_joint = BoneJointBlock(w, j, cfg["joint_bottlenecks"], ops=ops)
  dilated = DilatedBlock(w, cfg["context_bottlenecks"], tuple(cfg["aspp_dilations"]), ops=ops)
  depth = DepthCentricBlock(w, d, cfg["depth_bottlenecks"], ops=ops)
  volumetric = VolumetricHead(j, d, cfg["volumetric_bottlenecks"], ops=ops)
  lifter = Lifter(j, cfg["lifter_width"], cfg["lifter_blocks"], cfg["lifter_layers_per_block"], 0.0)

  def sel(pp, ss, ctx, limb):
    joint, hm = run(bone_joint, "bone_joint", pp, ss, ctx, limb)
    ctx2 = run(dilated, "dilated", pp, ss, ctx)
    feat, vol = run(depth, "depth_centric", pp, ss, ctx2, joint)
    return ctx2, feat, hm, vol

  def vol_head(pp, ss, ctx2, feat):
    return soft_argmax_3d(run(volumetric, "volumetric", pp, ss, ctx2, feat), layout="BHWJD")

  def deconv_layer(i):
    # As _Upsampler builds it: a CpuDeconv in --deconv's formulation with the CPU forms, else nn.ConvTranspose.
    layer = ops.deconv(w, (4, 4), strides=(2, 2), padding=((2, 2), (2, 2)), use_bias=False)
    return lambda pp, ss, x: layer.apply({"params": pp["context"][f"deconv{i}"]}, x)

  return {
      "backbone": (lambda pp, ss, x: run(backbone, "backbone", pp, ss, x), ["backbone"]),
      "context": (lambda pp, ss, c5: run(context, "context", pp, ss, c5), ["context"]),
      "bone_branch": (lambda pp, ss, c5: run(bone, "bone_branch", pp, ss, c5), ["bone_branch"]),
      "sel": (sel, ["bone_joint", "dilated", "depth_centric"]),
      "volumetric": (vol_head, ["volumetric"]),
      "lifter": (lambda pp, ss, x: run(lifter, "lifter", pp, ss, x), ["lifter"]),
      **{f"deconv{i}": (deconv_layer(i), ["context"]) for i in range(cfg["num_deconvs"])},
  }


def torch_parts(net, cfg: dict[str, Any]) -> dict[str, Callable]:
  """part -> f(*inputs) -> tuple of outputs, on the PyTorch SpecNet's modules."""
  import torch  # pylint: disable=g-import-not-at-top
  from torch.nn import functional as F  # pylint: disable=g-import-not-at-top
  p, j, d = net.posenet, cfg["num_joints"], cfg["depth_bins"]

  def vol_head(ctx2, feat):
    vol = p.final(torch.cat([ctx2, feat], 1))
    b, _, h, w = vol.shape
    prob = F.softmax(vol.reshape(b, j, -1), dim=2).view(b, j, d, h, w)
    return torch.stack([(prob.sum((2, 3)) * torch.arange(w)).sum(2), (prob.sum((2, 4)) * torch.arange(h)).sum(2),
                        (prob.sum((3, 4)) * torch.arange(d)).sum(2)], dim=2)

  def lifter(x):
    y = F.relu(net.bn1(net.fc1(x)))
    for k in range(1, cfg["lifter_blocks"] + 1):
      y = getattr(net, f"block{k}")(y)
    return net.fc2(y)

  deconvs = p.up.deconv_layers
  return {"backbone": p.backbone, "context": p.up, "bone_branch": p.limb, "sel": p.sel, "volumetric": vol_head,
          "lifter": lifter, **{f"deconv{i}": deconvs[3 * i] for i in range(cfg["num_deconvs"])}}


def main(argv=None) -> dict[str, Any]:
  ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
  common.add_model_args(ap, dtype=False)
  ap.add_argument("--warmup", type=int, default=2)
  ap.add_argument("--repeats", type=int, default=3)
  ap.add_argument("--torch-format", default="channels_last", choices=("contiguous", "channels_last"))
  ap.add_argument("--parts", default=",".join(PARTS))
  ap.add_argument("-v", "--verbose", action="store_true")
  args = ap.parse_args(argv)
  common.configure_host(args)
  import torch  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(args.threads)
  torch.set_flush_denormal(True)
  log = (lambda s: print(s, file=sys.stderr, flush=True)) if args.verbose else None
  load_before = common.load_average()
  ops = common.layer_ops(args)
  cfg = bm.model_config(args.model)
  images, boxes = bm.inputs(args.batch, args.size)
  net = bm.build_torch(cfg)
  model = bm.CascadedLiftNet(**cfg, ops=ops)
  variables = bm.jax_variables(model, net, args.size)
  fmt = torch.channels_last if args.torch_format == "channels_last" else torch.contiguous_format
  net = copy.deepcopy(net).to(memory_format=fmt).train()

  # The activations each part consumes, from one forward pass in PyTorch (train-mode BatchNorm).
  with torch.no_grad():
    x = (torch.from_numpy(images).permute(0, 3, 1, 2) - torch.tensor(bm.load_spec_module().MEAN).view(1, 3, 1, 1)
         ) / torch.tensor(bm.load_spec_module().STD).view(1, 3, 1, 1)
    x = x.contiguous(memory_format=fmt)
    pn = net.posenet
    c5 = pn.backbone(x)
    ctx = pn.up(c5)
    limb, _ = pn.limb(c5)
    ctx2, feat, _, _ = pn.sel(ctx, limb)
    lift_in = net(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(memory_format=fmt),
                  torch.from_numpy(boxes))["lifter_input"]
    act = {"backbone": [x], "context": [c5], "bone_branch": [c5], "sel": [ctx, limb], "volumetric": [ctx2, feat],
           "lifter": [lift_in]}
    h = c5
    for i in range(cfg["num_deconvs"]):
      act[f"deconv{i}"] = [h]
      h = pn.up.deconv_layers[3 * i + 2](pn.up.deconv_layers[3 * i + 1](pn.up.deconv_layers[3 * i](h)))

  def to_jax(t):
    return jnp.asarray(t.permute(0, 2, 3, 1).contiguous().numpy() if t.ndim == 4 else t.contiguous().numpy())

  jparts, tparts = jax_parts(cfg, variables, ops), torch_parts(net, cfg)
  params, stats = variables["params"], variables["batch_stats"]
  rows, results = [], {}
  for part in [q for q in args.parts.split(",") if q]:
    f, _ = jparts[part]
    jin = [to_jax(t) for t in act[part]]
    needs_input_grad = part != "backbone"
    fwd = jax.jit(f)

    def loss(pp, inputs, f=f):
      return _sq(f(pp, stats, *inputs))

    grad = jax.jit(jax.grad(loss, argnums=(0, 1) if needs_input_grad else 0))
    tin = [t.detach().clone().requires_grad_(needs_input_grad) for t in act[part]]
    tf = tparts[part]

    def t_fwd(tf=tf, tin=tin):
      with torch.no_grad():
        tf(*tin)

    def t_fb(tf=tf, tin=tin):
      net.zero_grad(set_to_none=True)
      out = tf(*tin)
      out = out if isinstance(out, (tuple, list)) else (out,)
      sum(o.float().square().mean() for o in out).backward()

    contenders = {
        "jax_fwd": lambda fwd=fwd, jin=jin: jax.block_until_ready(fwd(params, stats, *jin)),
        "torch_fwd": t_fwd,
        "jax_fwd_bwd": lambda grad=grad, jin=jin: jax.block_until_ready(grad(params, jin)),
        "torch_fwd_bwd": t_fb,
    }
    if log:
      log(f"part {part}")
    r = common.interleaved(contenders, warmup=args.warmup, repeats=args.repeats, log=log)
    results[part] = {k: v["median_s"] for k, v in r.items()}
    m = results[part]
    rows.append([part, m["jax_fwd"] * 1e3, m["torch_fwd"] * 1e3, m["jax_fwd_bwd"] * 1e3, m["torch_fwd_bwd"] * 1e3,
                 m["torch_fwd_bwd"] / m["jax_fwd_bwd"]])
  record = {"benchmark": "bench_breakdown", "model": args.model, "batch": args.batch, "size": args.size,
            "deconv": args.deconv, **common.ops_report(args, ops), "conv_grad": args.conv_grad,
            "torch_format": args.torch_format, "repeats": args.repeats,
            "median_s": results, "loadavg_before": load_before, "loadavg_after": common.load_average(),
            "machine": common.machine_info()}
  print(f"Per-part medians (ms), {args.model} model, batch {args.batch}, {args.size} px, float32, layers "
        f"{ops.name}, PyTorch {args.torch_format}, BatchNorm in train mode; load {load_before} -> "
        f"{record['loadavg_after']}")
  print(common.table(["part", "jax fwd", "torch fwd", "jax fwd+bwd", "torch fwd+bwd", "torch/jax fwd+bwd"], rows))
  common.print_json(record)
  return record


if __name__ == "__main__":
  main()

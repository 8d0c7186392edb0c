"""A PyTorch statement of the network's layer spec, for parity tests only (torch.nn alone, NCHW).

Written from docs/design.md section 3 with the module names of the authors' released model
(github.com/fnzhan/Pose-Estimation, main/model.py), so that its state_dict goes through
cascaded_lift.weights.convert exactly as a released checkpoint would. It mirrors the released model's structure
(including the unused limb.final_layer1 / limb.bn1) plus our ordinal head (`posenet.ordinal`), and it is
parametrised like CascadedLiftNet so tests can build tiny variants. Nothing here imports cascaded_lift.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

MEAN = (123.675, 116.28, 103.53)
STD = (58.395, 57.12, 57.375)


class Bottleneck(nn.Module):
  expansion = 4

  def __init__(self, inplanes: int, planes: int, stride: int = 1, dilation: int = 1):
    super().__init__()
    out = planes * 4
    self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(out)
    self.downsample = None
    if stride != 1 or inplanes != out:
      self.downsample = nn.Sequential(nn.Conv2d(inplanes, out, 1, stride=stride, bias=False), nn.BatchNorm2d(out))

  def forward(self, x):
    y = F.relu(self.bn1(self.conv1(x)))
    y = F.relu(self.bn2(self.conv2(y)))
    y = self.bn3(self.conv3(y))
    return F.relu(y + (x if self.downsample is None else self.downsample(x)))


class BasicBlock(nn.Module):
  expansion = 1

  def __init__(self, inplanes: int, planes: int, stride: int = 1, dilation: int = 1):
    super().__init__()
    self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, padding=dilation, dilation=dilation, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.downsample = None
    if stride != 1 or inplanes != planes:
      self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False),
                                      nn.BatchNorm2d(planes))

  def forward(self, x):
    y = F.relu(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    return F.relu(y + (x if self.downsample is None else self.downsample(x)))


_SPECS = {18: (BasicBlock, (2, 2, 2, 2)), 34: (BasicBlock, (3, 4, 6, 3)), 50: (Bottleneck, (3, 4, 6, 3)),
          101: (Bottleneck, (3, 4, 23, 3)), 152: (Bottleneck, (3, 8, 36, 3))}


class ResNetBackbone(nn.Module):
  """torchvision-named ResNet without avgpool/fc; forward returns C5.

  dilate_last: torchvision's replace_stride_with_dilation=[False, False, True] (C5 at stride 16): the
  last stage's first block keeps dilation 1 and loses its stride, the later blocks' 3x3 convs get
  dilation 2 (torchvision allows this for Bottleneck only; BasicBlock here dilates both its 3x3 convs).
  """

  def __init__(self, depth: int = 50, width: int = 64, stage_sizes=None, dilate_last: bool = False):
    super().__init__()
    block, sizes = _SPECS[depth]
    sizes = stage_sizes or sizes
    self.conv1 = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
    self.bn1 = nn.BatchNorm2d(width)
    self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
    inplanes = width
    for i, n in enumerate(sizes):
      planes = width * 2 ** i
      blocks = []
      dilate = dilate_last and i == len(sizes) - 1
      for j in range(n):
        stride = 2 if (i > 0 and j == 0 and not dilate) else 1
        blocks.append(block(inplanes, planes, stride, 2 if (dilate and j > 0) else 1))
        inplanes = planes * block.expansion
      setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
    self.out_channels = inplanes

  def forward(self, x):
    x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
    return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def _deconvs(cin: int, cout: int, n: int) -> nn.Sequential:
  layers = []
  for _ in range(n):
    layers += [nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1, output_padding=0, bias=False),
               nn.BatchNorm2d(cout), nn.ReLU()]
    cin = cout
  return nn.Sequential(*layers)


class Up(nn.Module):
  def __init__(self, cin: int, width: int, n: int):
    super().__init__()
    self.deconv_layers = _deconvs(cin, width, n)
    self.final_layer = nn.Conv2d(width, width, 3, padding=1, bias=False)
    self.bn = nn.BatchNorm2d(width)

  def forward(self, x):
    return F.relu(self.bn(self.final_layer(self.deconv_layers(x))))


class Limb(nn.Module):
  def __init__(self, cin: int, width: int, n: int, num_bones: int):
    super().__init__()
    self.deconv_layers = _deconvs(cin, width, n)
    self.hm_layer = nn.Conv2d(width, num_bones, 3, padding=1)
    self.final_layer1 = nn.Conv2d(width, width, 3, padding=1, bias=False)  # unused, as released
    self.bn1 = nn.BatchNorm2d(width)  # unused, as released

  def forward(self, x):
    x = self.deconv_layers(x)
    return x, self.hm_layer(x)


class ASPP(nn.Module):
  def __init__(self, width: int, dilations):
    super().__init__()
    self.conv_1x1_1 = nn.Conv2d(width, width, 1)
    self.bn_conv_1x1_1 = nn.BatchNorm2d(width)
    for k, d in enumerate(dilations, start=1):
      setattr(self, f"conv_3x3_{k}", nn.Conv2d(width, width, 3, padding=d, dilation=d))
      setattr(self, f"bn_conv_3x3_{k}", nn.BatchNorm2d(width))
    self.n = len(dilations)
    self.conv_1x1_2 = nn.Conv2d(width, width, 1)
    self.bn_conv_1x1_2 = nn.BatchNorm2d(width)
    self.conv_1x1_3 = nn.Conv2d(width * (self.n + 2), width, 1)
    self.bn_conv_1x1_3 = nn.BatchNorm2d(width)

  def forward(self, x):
    outs = [F.relu(self.bn_conv_1x1_1(self.conv_1x1_1(x)))]
    for k in range(1, self.n + 1):
      outs.append(F.relu(getattr(self, f"bn_conv_3x3_{k}")(getattr(self, f"conv_3x3_{k}")(x))))
    pooled = F.relu(self.bn_conv_1x1_2(self.conv_1x1_2(F.adaptive_avg_pool2d(x, 1))))
    outs.append(F.interpolate(pooled, size=x.shape[2:], mode="bilinear", align_corners=False))
    return F.relu(self.bn_conv_1x1_3(self.conv_1x1_3(torch.cat(outs, 1))))


class Sel(nn.Module):
  """Bone-joint block + dilated block + depth-centric block, named as the released Serial_Net."""

  def __init__(self, width, bone_width, num_joints, depth_bins, n_joint=2, n_ctx=2, n_depth=1,
               dilations=(4, 8, 12)):
    super().__init__()
    self.n_joint, self.n_ctx, self.n_depth = n_joint, n_ctx, n_depth
    for k in range(1, n_ctx + 1):
      setattr(self, f"up_feature_bottleneck{k}", Bottleneck(width, width // 4))
    for k in range(1, n_joint + n_depth + 2):
      setattr(self, f"limb_feature_bottlenneck{k}", Bottleneck(width, width // 4))
    self.aspp = ASPP(width, dilations)
    self.down_sample_conv1 = nn.Conv2d(width + bone_width, width, 1, bias=False)
    self.down_sample_bn1 = nn.BatchNorm2d(width)
    self.down_sample_conv2 = nn.Conv2d(2 * width, width, 1, bias=False)
    self.down_sample_bn2 = nn.BatchNorm2d(width)
    self.final_layer1 = nn.Conv2d(width, num_joints, 3, padding=1, bias=False)
    self.final_layer2 = nn.Conv2d(width, depth_bins, 3, padding=1, bias=False)

  def _limb(self, k):
    return getattr(self, f"limb_feature_bottlenneck{k}")

  def forward(self, up, limb):
    limb = F.relu(self.down_sample_bn1(self.down_sample_conv1(torch.cat([up, limb], 1))))
    for k in range(1, self.n_ctx + 1):
      up = getattr(self, f"up_feature_bottleneck{k}")(up)
    for k in range(1, self.n_joint + 1):
      limb = self._limb(k)(limb)
    hm_2d = self.final_layer1(limb)
    limb = self._limb(self.n_joint + 1)(limb)
    up = self.aspp(up)
    limb = F.relu(self.down_sample_bn2(self.down_sample_conv2(torch.cat([up, limb], 1))))
    for k in range(self.n_joint + 2, self.n_joint + 2 + self.n_depth):
      limb = self._limb(k)(limb)
    return up, limb, hm_2d, self.final_layer2(limb)


class Final(nn.Module):
  def __init__(self, width, num_joints, depth_bins, n=3):
    super().__init__()
    self.n = n
    for k in range(1, n + 1):
      setattr(self, f"bottleNeck{k}", Bottleneck(width, width // 4))
    self.final_conv = nn.Conv2d(width, num_joints * depth_bins, 1)

  def forward(self, x):
    for k in range(1, self.n + 1):
      x = getattr(self, f"bottleNeck{k}")(x)
    return self.final_conv(x)


class PoseNet(nn.Module):
  def __init__(self, cfg):
    super().__init__()
    self.backbone = ResNetBackbone(cfg["resnet_depth"], cfg["resnet_width"], cfg.get("resnet_stage_sizes"))
    c5 = self.backbone.out_channels
    w, bw = cfg["head_width"], cfg["bone_width"]
    self.up = Up(c5, w, cfg["num_deconvs"])
    self.limb = Limb(c5, bw, cfg["num_deconvs"], cfg["num_bones"])
    self.sel = Sel(w, bw, cfg["num_joints"], cfg["depth_bins"], cfg["joint_bottlenecks"],
                   cfg["context_bottlenecks"], cfg["depth_bottlenecks"], cfg["aspp_dilations"])
    self.final = Final(2 * w, cfg["num_joints"], cfg["depth_bins"], cfg["volumetric_bottlenecks"])
    self.ordinal = nn.Conv2d(w, cfg["depth_bins"], 1)


class ResFC(nn.Module):
  def __init__(self, width, layers):
    super().__init__()
    self.layers = layers
    for l in range(1, layers + 1):
      setattr(self, f"fc{l}", nn.Linear(width, width, bias=False))
      setattr(self, f"bn{l}", nn.BatchNorm1d(width))

  def forward(self, x):
    y = x
    for l in range(1, self.layers + 1):
      y = F.relu(getattr(self, f"bn{l}")(getattr(self, f"fc{l}")(y)))
    return x + y


class SpecNet(nn.Module):
  """The whole network; forward(images (B, 3, S, S) 0..255, boxes (B, 4)) -> dict of NCHW outputs.

  normalized=True: the images are already (x - MEAN) / STD, as the authors' data loader hands them over.
  """

  def __init__(self, **cfg):
    super().__init__()
    self.cfg = cfg
    self.posenet = PoseNet(cfg)
    j, w = cfg["num_joints"], cfg["lifter_width"]
    self.fc1 = nn.Linear(5 * j, w, bias=False)
    self.bn1 = nn.BatchNorm1d(w)
    for k in range(1, cfg["lifter_blocks"] + 1):
      setattr(self, f"block{k}", ResFC(w, cfg["lifter_layers_per_block"]))
    self.fc2 = nn.Linear(w, 3 * j)

  def forward(self, images, boxes, normalized: bool = False):
    cfg, p = self.cfg, self.posenet
    j, d = cfg["num_joints"], cfg["depth_bins"]
    x = images if normalized else (images - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    c5 = p.backbone(x)
    up = p.up(c5)
    limb, bone_hm = p.limb(c5)
    up, depth_feat, joint_hm, depth_vol = p.sel(up, limb)
    ordinal = p.ordinal(depth_feat)
    vol = p.final(torch.cat([up, depth_feat], 1))
    b, _, h, w = vol.shape
    vol = vol.view(b, j, d, h, w)
    prob = F.softmax(vol.reshape(b, j, -1), dim=2).view(b, j, d, h, w)
    coords = torch.stack([(prob.sum((2, 3)) * torch.arange(w)).sum(2), (prob.sum((2, 4)) * torch.arange(h)).sum(2),
                          (prob.sum((3, 4)) * torch.arange(d)).sum(2)], dim=2)
    u = coords[..., 0] / w * boxes[:, 2:3] + boxes[:, 0:1]
    v = coords[..., 1] / h * boxes[:, 3:4] + boxes[:, 1:2]
    z = (coords[..., 2] / d * 2 - 1) * 1000
    root = cfg.get("root_index", 0)
    z = torch.cat([z[:, :root], torch.zeros_like(z[:, :1]), z[:, root + 1:]], 1)
    lift_in = torch.stack([u, v, u - u[:, root:root + 1], v - v[:, root:root + 1], z], 2).reshape(b, -1)
    y = F.relu(self.bn1(self.fc1(lift_in)))
    for k in range(1, cfg["lifter_blocks"] + 1):
      y = getattr(self, f"block{k}")(y)
    pose = self.fc2(y).view(b, j, 3)
    return {"bone_heatmaps": bone_hm, "joint_heatmaps": joint_hm, "depth_volume": depth_vol,
            "ordinal_logits": ordinal, "joint_volumes": vol, "coords": coords, "lifter_input": lift_in,
            "pose_3d": pose}


def randomize_(model: nn.Module, seed: int = 0) -> None:
  """Random weights of a sensible scale and non-trivial BatchNorm statistics, in place."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        fan_in = m.weight[0].numel() if not isinstance(m, nn.ConvTranspose2d) else m.weight.shape[0] * 4
        m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
        if m.bias is not None:
          m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
      elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
        n = m.num_features
        m.weight.copy_(0.5 + torch.rand(n, generator=g))
        m.bias.copy_(torch.randn(n, generator=g) * 0.1)
        m.running_mean.copy_(torch.randn(n, generator=g) * 0.2)
        m.running_var.copy_(0.5 + 1.5 * torch.rand(n, generator=g))

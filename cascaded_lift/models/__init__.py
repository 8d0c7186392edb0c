"""Flax modules of the cascaded dimension-lifting network (NHWC); the network only.

CascadedLiftNet is the whole network, ResNet the backbone; the blocks and heads are exported for
benchmarks and tests. Every module takes `ops: LayerOps` (models/ops.py), the conv / deconv /
max-pool implementations it is built from: STANDARD_OPS (plain Flax) unless cascaded_lift.platform
passes others. build.py turns a config into a model and holds the evaluation forward pass.
"""

from cascaded_lift.models.blocks import ASPP, BasicBlock, Bottleneck
from cascaded_lift.models.cascade import IMAGE_MEAN, IMAGE_STD, CascadedLiftNet
from cascaded_lift.models.heads import (BoneBranch, BoneJointBlock, ContextBranch, DepthCentricBlock,
                                        DilatedBlock, VolumetricHead)
from cascaded_lift.models.lifter import Lifter
from cascaded_lift.models.ops import STANDARD_OPS, LayerOps
from cascaded_lift.models.resnet import RESNET_SPECS, ResNet

__all__ = [
    "ASPP", "BasicBlock", "BoneBranch", "BoneJointBlock", "Bottleneck", "CascadedLiftNet", "ContextBranch",
    "DepthCentricBlock", "DilatedBlock", "IMAGE_MEAN", "IMAGE_STD", "LayerOps", "Lifter", "RESNET_SPECS", "ResNet",
    "STANDARD_OPS", "VolumetricHead",
]

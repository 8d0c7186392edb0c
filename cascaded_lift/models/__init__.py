"""Flax modules of the cascaded dimension-lifting network (NHWC).

CascadedLiftNet is the whole network; ResNet the backbone. The blocks and heads are exported for
benchmarks and tests.
"""

from cascaded_lift.models.blocks import ASPP, BasicBlock, Bottleneck
from cascaded_lift.models.cascade import IMAGE_MEAN, IMAGE_STD, CascadedLiftNet
from cascaded_lift.models.deconv import FORMULATIONS as DECONV_FORMULATIONS
from cascaded_lift.models.deconv import Deconv
from cascaded_lift.models.heads import (BoneBranch, BoneJointBlock, ContextBranch, DepthCentricBlock,
                                        DilatedBlock, VolumetricHead)
from cascaded_lift.models.lifter import Lifter
from cascaded_lift.models.resnet import RESNET_SPECS, ResNet

__all__ = [
    "ASPP", "BasicBlock", "BoneBranch", "BoneJointBlock", "Bottleneck", "CascadedLiftNet", "ContextBranch",
    "DECONV_FORMULATIONS", "Deconv", "DepthCentricBlock", "DilatedBlock", "IMAGE_MEAN", "IMAGE_STD", "Lifter",
    "RESNET_SPECS", "ResNet", "VolumetricHead",
]

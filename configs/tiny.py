"""A tiny config for tests: seconds per run on one CPU core, synthetic 'small' data (64x64 frames).

  python train.py --config configs/tiny.py --workdir /tmp/cascaded_lift_tiny
"""

import ml_collections

from cascaded_lift.configs import default
from cascaded_lift.configs import synthetic


def get_config() -> ml_collections.ConfigDict:
  c = synthetic.get_config()
  c.model = ml_collections.ConfigDict(dict(
      resnet_depth=18, resnet_width=8, head_width=16, bone_width=8, lifter_width=32, lifter_blocks=1,
      lifter_layers_per_block=2, lifter_dropout=0.0,
      volumetric_bottlenecks=1, context_bottlenecks=1, joint_bottlenecks=1, depth_bottlenecks=1,
      num_deconvs=3))
  c.data.train_3d.config = "small"
  c.data.eval.config = "small"
  c.data.image_size = 32
  c.data.output_size = 8
  c.data.depth_bins = 8
  c.data.read_threads = 0
  c.stage1.batch_size = 8
  c.stage1.num_steps = 4
  c.stage1.decay_epochs = (0.5,)
  # Tests exercise the paper's flips (in training and at test time), which the synthetic main job turns
  # off for its colour-coded limbs, and the default stage-2 learning rate.
  paper = default.get_config()
  c.data.augment.flip_prob = paper.data.augment.flip_prob
  c.eval.flip_test = paper.eval.flip_test
  c.stage2.learning_rate = paper.stage2.learning_rate
  c.stage2.batch_size = 8
  c.stage2.num_steps = 2
  c.stage2.decay_epochs = (0.5,)
  c.init.backbone_weights = "none"  # a random start on purpose: no ImageNet weights fit this network
  # The per-term trunk-gradient logging compiles one pull-back per loss term: in runs of a few steps that
  # is most of the compile time. Tests of it (and experiments/ablation.py) turn it on.
  c.trunk_gradients.enabled = False
  c.checkpoint.every_steps = 2
  c.checkpoint.async_save = False
  c.log_every_steps = 1
  c.progress_bar = False
  c.eval.batch_size = 8
  c.eval.num_plot_examples = 2
  return c

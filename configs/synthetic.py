"""The main job: train and evaluate on the built-in synthetic dataset, on a laptop CPU, nothing to download.

  python train.py --config configs/synthetic.py --workdir /tmp/cascaded_lift_synthetic

Builds the synthetic 'studio' set (128x128 frames, 12000 train / 500 test, one focal length) on
first use, trains a small cascade (ResNet-18 at a quarter width, 128x128 crops, two deconvs to 16x16
maps, 16 depth bins) through both stages (1500 + 1500 steps), then writes eval/metrics.json and plots.
Sized to finish in about 7.5 minutes on 2 CPU cores. Compare mpjpe with mean_pose_mpjpe (the error of
always predicting the training mean pose) in metrics.json to see how much it learned.

Measured (2-core CPU): MPJPE 201-206 mm vs mean pose 294.6 mm. What limits it: the stage-1 2.5D
estimate (mean voxel error x 0.77, y 0.62, z 0.96 voxels, i.e. ~85-120 mm on this 16^3 grid); the
lifter, trained on those noisy inputs, gives 187 mm even when fed ground-truth 2.5D: it learned to lean
on the mean pose. Next to try: a better stage 1, or training the lifter on ground-truth 2.5D plus noise. Tried without gain: heatmap loss weights x10, learning rate 2e-3, 2000 stage-1 steps,
geodesic normalisation off, 32 depth bins. 64 px crops (2x2 C5) learned almost nothing.
"""

import ml_collections

from cascaded_lift.data import config as data_config
from configs import default


def get_config() -> ml_collections.ConfigDict:
  c = default.get_config()
  c.model = ml_collections.ConfigDict(dict(
      resnet_depth=18, resnet_width=16, head_width=32, bone_width=16, lifter_width=256, lifter_blocks=2,
      lifter_layers_per_block=2, lifter_dropout=0.0, deconv_formulation="four_phase",
      volumetric_bottlenecks=1, context_bottlenecks=1, joint_bottlenecks=1,
      num_deconvs=2))  # 128 px input, stride 32 -> 4x4 C5, two deconvs -> 16x16 maps (stride 8)
  c.data.train_3d = data_config.source_config("synthetic", "train", "studio")
  c.data.train_2d = None
  c.data.eval = data_config.source_config("synthetic", "test", "studio")
  c.data.eval.use_det_bbox = False
  c.data.image_size = 128
  c.data.output_size = 16
  c.data.depth_bins = 16
  c.data.worker_count = 0
  c.data.read_threads = 2
  c.data.build_if_missing = True
  # Milder augmentation than the paper's: the synthetic set already varies pose, view and texture,
  # and a short CPU run learns faster without occluders.
  c.data.augment.occlusion_prob = 0.0
  c.data.augment.rotation = 15.0
  c.data.augment.scale = 0.15
  c.targets.sigma = 1.0
  c.targets.bone_sigma_start = 2.0
  c.targets.bone_sigma_end = 1.0
  c.stage1.batch_size = 32
  c.stage1.num_steps = 1500
  c.stage1.decay_epochs = (3.2,)   # in epochs of 375 steps: decay at step 1200
  c.stage2.batch_size = 64
  c.stage2.num_steps = 1500
  c.stage2.decay_epochs = (6.4,)   # epochs of 187 steps: decay at step 1200
  c.checkpoint.every_steps = 500
  c.log_every_steps = 50
  c.eval.batch_size = 100
  c.eval.num_plot_examples = 4
  return c

"""The paper's model and stage-1/stage-2 regime (docs/design.md section 6); the other configs start from it.

Not a run of its own: use configs/h36m.py, configs/muco_mupots.py or configs/synthetic.py, e.g.
  python train.py --config configs/h36m.py:protocol=1 --workdir ~/runs/h36m_p1
"""

import ml_collections

from cascaded_lift.data import config as data_config


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.skeleton = "h36m"          # the model's joint set; every dataset is mapped onto it by joint name
  c.dtype = "float32"          # compute dtype: "float32" or "bfloat16" (parameters stay float32)

  # CascadedLiftNet constructor arguments (num_joints/num_bones/depth_bins come from skeleton/data).
  c.model = ml_collections.ConfigDict(dict(
      resnet_depth=50, resnet_width=64, resnet_output_stride=32, head_width=256, bone_width=128, lifter_width=1024,
      lifter_blocks=5, lifter_layers_per_block=3, lifter_dropout=0.0, num_deconvs=3, context_bottlenecks=2,
      joint_bottlenecks=2, depth_bottlenecks=1, volumetric_bottlenecks=3, aspp_dilations=(4, 8, 12)))

  # The data section (fields documented in cascaded_lift/data/config.py); its skeleton follows c.skeleton.
  c.data = data_config.default_data_config()
  c.data.skeleton = c.get_ref("skeleton")
  c.data.train_3d = data_config.source_config("human36m", "train", "protocol1")
  c.data.train_2d = data_config.source_config("mpii", "train")
  c.data.eval = data_config.source_config("human36m", "test", "protocol1")
  c.data.eval.use_det_bbox = False
  c.data.worker_count = 8          # grain worker processes per host
  c.data.build_if_missing = False  # real datasets are built with cascaded-lift-build

  c.targets = ml_collections.ConfigDict(dict(
      sigma=2.0,               # joint Gaussians, output px
      bone_sigma_start=4.0,    # bone heatmaps: annealed from start to end over stage 1
      bone_sigma_end=2.0,
      ordinal_threshold=0.1,   # pixels whose largest joint heatmap exceeds this get ordinal labels
      volume_method="scatter"))  # how the depth-centric volume target is built (training/targets.py)
  # The dense terms (bone, joint, volume_3d, depth) are per-sample sums, as the paper writes them
  # ("sample_sum"; "mean" averages over their elements instead), and L_coord weighs 50: measured on the
  # synthetic set, this gives the cascade's supervision about two thirds of the trunk's gradient and
  # the lowest errors of the three settings tried (docs/design.md section 5.3).
  c.loss_weights = ml_collections.ConfigDict(dict(bone=1.0, joint=1.0, volume_3d=1.0, depth=0.1, coord=50.0))
  c.loss_normalization = "sample_sum"
  # The paper's ablation (Table 4) by weight alone, same network: "baseline" (L_coord only), "jh" (+ joint
  # heatmaps), "jh_bh" (+ bone heatmaps), "full" (+ the depth-centric volume and ordinal depth).
  c.supervision = "full"
  # Stage 1 logs each term's gradient norm on the shared trunk and its share of their sum at logging
  # steps (train/trunk_grad_norm/*, train/trunk_grad_share/*); cost in docs/design.md section 5.3.
  c.trunk_gradients = ml_collections.ConfigDict(dict(enabled=True, pattern=r"^(backbone|context)/"))
  c.geodesic_normalization = True   # stage 2: scale training poses to 1077 mm neck-to-knee

  # Stage 1: everything but the lifter. Epoch = one pass over the 3D set's half-batches.
  c.stage1 = ml_collections.ConfigDict(dict(
      enabled=True, batch_size=64, num_epochs=20.0, num_steps=0, optimizer="adam", learning_rate=1e-3,
      decay_epochs=(17.0,), decay_factor=0.1, weight_decay=0.0, grad_clip_norm=0.0,
      # Everything but the lifter, except the ASPP conv biases: each feeds a train-mode BatchNorm,
      # so its gradient is identically zero and Adam would only turn rounding noise into lr-sized
      # random steps (which BatchNorm then cancels). They stay at their initial 0.
      trainable=(r"^(?!lifter/)(?!dilated/aspp/conv_[^/]+/bias$)",)))
  # Stage 2: the lifter on 3D data only, everything else frozen (BatchNorm statistics too).
  c.stage2 = ml_collections.ConfigDict(dict(
      enabled=True, batch_size=64, num_epochs=20.0, num_steps=0, optimizer="adam", learning_rate=1e-3,
      decay_epochs=(17.0,), decay_factor=0.1, weight_decay=0.0, grad_clip_norm=0.0,
      trainable=("^lifter/",),
      augment=dict(rotation=0.0)))  # the lifter learns from crop boxes; in-plane rotation would bias it

  # The backbone's start: "resnet50" = torchvision's ImageNet ResNet-50 from the cache (fetch it once with
  # `cascaded-lift-weights resnet50`), a path = that file (.safetensors/.npz/.pth, torchvision names),
  # "none" = random on purpose. "" is refused, so a forgotten setting never trains from random weights.
  # checkpoint: fine-tune from trained weights instead: a workdir (its latest checkpoint, e.g. one made by
  # `cascaded-lift-import-released`) or a .pth / .safetensors / .npz state dict in the released naming;
  # loaded before stage 1 of a fresh run, ignored on resume (training/init_checkpoint.py).
  c.init = ml_collections.ConfigDict(dict(backbone_weights="resnet50", checkpoint=""))
  # on_damaged: "error" (stop, naming the damaged step) or "previous" (move it aside, resume from the one
  # before); training/loop.py says why "error" is the default.
  c.checkpoint = ml_collections.ConfigDict(dict(every_steps=2000, max_to_keep=3, async_save=True, on_damaged="error"))
  # Fields that may differ from the run's saved config when resuming (comma-separated keys or prefixes,
  # e.g. "stage2.num_steps"); changes to the model or crop geometry are refused whatever this says.
  c.resume = ml_collections.ConfigDict(dict(allow_changes=""))
  c.log_every_steps = 50
  c.progress_bar = True
  # Which layer implementations the network is built from (cascaded_lift/platform.py): "auto" = the
  # XLA:CPU forms on a CPU backend, the standard Flax layers on GPU and TPU.
  c.platform_ops = "auto"
  # The CPU forms' settings, used only when they are chosen. host_malloc "retain" makes glibc keep freed
  # memory for reuse on a CPU backend (cpu/hostmem.py; docs/design.md section 10): it removed XLA:CPU's
  # per-step page faults, at the cost of keeping the peak heap; off unless a config asks for it.
  # init_compile "fast" compiles the one-off parameter initialisation without LLVM's optimisations on a
  # CPU backend (13 s less per run; values within 1 ulp; platform.init_compiler_options).
  c.cpu = ml_collections.ConfigDict(dict(conv="auto", kernel_grad="auto", deconv="auto", host_malloc="default",
                                         init_compile="fast"))
  c.eval = ml_collections.ConfigDict(dict(enabled=True, batch_size=64, flip_test=True, num_plot_examples=4))
  return c

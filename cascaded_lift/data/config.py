"""The `data` section of the training/evaluation config (an ml_collections ConfigDict).

Fields (defaults in :func:`default_data_config`):

  train_3d       {name, split, config, data_dir}: the 3D training set (e.g. human36m / protocol1,
                 muco, synthetic / default). `name` is a folder under datasets/; `config` a
                 BuilderConfig name or None for the builder's default; `data_dir` the TFDS data
                 directory (None = TFDS's default ~/tensorflow_datasets).
  train_2d       same fields, or None: the 2D set mixed in (MPII, COCO). When set, every training
                 batch holds exactly half 3D and half 2D examples (the batch size must be even).
  eval           {name, split, config, data_dir, use_det_bbox, boxes}: the evaluation set and the
                 boxes it crops (:func:`eval_boxes`). boxes = "detected" crops the dataset's detected
                 CROP boxes (det_bbox, from a bbox_root file: already squared and enlarged, used as
                 they are; a record without one falls back to its person box), "gt" the annotated
                 PERSON boxes (processed once: clip, square, enlarge bbox_scale times), "auto" the
                 detected ones when the dataset stores any, else the annotated ones with a warning.
                 Without `boxes`, use_det_bbox = True means "detected" and False "gt".
  skeleton       the model's joint set ("h36m", "muco", ...): every source is mapped onto it by name.
  image_size     S, crop side in px (model input), default 256.
  output_size    heatmap side in px (S / 4), default 64: joints_vox x, y are in these units.
  depth_bins     D, default 64; depth_range_mm the root-centred depth span the bins cover (2000:
                 z_rel in [-1000, +1000) mm); z_vox = (z_rel / (range / 2) + 1) / 2 * D.
  bbox_scale     enlargement of the (clipped, squared) person box before cropping, default 1.25.
  augment        scale (crop scale in [1 - scale, 1 + scale]), rotation (degrees, uniform in
                 [-rotation, rotation]), rotation_prob (probability of rotating at all), flip_prob,
                 color (per-channel factor in [1 - color, 1 + color]), occlusion_prob, occlusion_area
                 (max fraction of the box a noise rectangle covers), occlusion_min_aspect.
                 docs/design.md section 6.
  jpeg_reduce    training only: decode JPEGs at 1/2, 1/4 or 1/8 resolution (libjpeg DCT scaling)
                 when the crop shrinks the image at least that much: several times faster on
                 1000x1000 frames and anti-aliased; the crop geometry is exact either way. Evaluation
                 crops always warp the full-resolution image, as the authors' code does, so with it
                 the training crops are slightly smoother than the test crops (docs/evaluation.md).
  worker_count   grain worker processes (0 = in the calling process; tests use 0).
  worker_buffer_size  batches each worker prefetches.
  read_threads   threads that read and preprocess examples within a process (cv2 releases the GIL).
  seed           pipeline seed: the training order and augmentation are a function of it (and of the
                 shard index).
  build_if_missing  prepare a dataset that needs no manual download (synthetic) into its data_dir
                 on first use; real datasets must be built with cascaded-lift-build.
"""

from __future__ import annotations

from typing import Any

import ml_collections

EVAL_BOXES = ("auto", "detected", "gt")


def source_config(name: str, split: str, config: str | None = None,
                  data_dir: str | None = None) -> ml_collections.ConfigDict:
  """One dataset reference {name, split, config, data_dir}.

  `config` and `data_dir` are typed placeholders when None, so that they can still be set from the
  command line (e.g. --config.data.train_3d.data_dir=~/tensorflow_datasets).
  """
  return ml_collections.ConfigDict({
      "name": name, "split": split,
      "config": config if config is not None else ml_collections.config_dict.placeholder(str),
      "data_dir": data_dir if data_dir is not None else ml_collections.config_dict.placeholder(str)})


def eval_boxes(spec: Any) -> str:
  """The box choice of an eval spec: "auto", "detected" or "gt".

  `spec.boxes` when set; otherwise the older flag `spec.use_det_bbox` (True = "detected", False or
  absent = "gt"). use_det_bbox = True also turns "auto" into "detected" (a request for detections).
  Raises ValueError for an unknown value or use_det_bbox = True with boxes = "gt".
  """
  def field(key):
    try:
      return spec.get(key, None) if hasattr(spec, "get") else getattr(spec, key, None)
    except (AttributeError, KeyError):
      return None

  boxes, legacy = field("boxes"), bool(field("use_det_bbox") or False)
  if boxes is None:
    return "detected" if legacy else "gt"
  if boxes not in EVAL_BOXES:
    raise ValueError(f"data.eval.boxes must be one of {EVAL_BOXES}, got {boxes!r}")
  if legacy and boxes == "gt":
    raise ValueError("data.eval.use_det_bbox = True contradicts data.eval.boxes = 'gt'; set one of them")
  return "detected" if legacy else boxes


def default_data_config() -> ml_collections.ConfigDict:
  """The default data section: synthetic train/test, Human3.6M skeleton, paper's augmentation."""
  cfg = ml_collections.ConfigDict()
  cfg.train_3d = source_config("synthetic", "train", "default")
  cfg.train_2d = None  # or source_config("mpii", "train"); None = 3D data only
  cfg.eval = source_config("synthetic", "test", "default")
  cfg.eval.use_det_bbox = False
  cfg.eval.boxes = "gt"   # the synthetic sets have no detections; configs/h36m.py asks for "auto"
  cfg.skeleton = "h36m"
  cfg.image_size = 256
  cfg.output_size = 64
  cfg.depth_bins = 64
  cfg.depth_range_mm = 2000.0
  cfg.bbox_scale = 1.25
  cfg.augment = ml_collections.ConfigDict({
      "scale": 0.25,
      "rotation": 30.0,
      "rotation_prob": 0.6,
      "flip_prob": 0.5,
      "color": 0.2,
      "occlusion_prob": 0.5,
      "occlusion_area": 0.7,
      "occlusion_min_aspect": 0.3,
  })
  cfg.jpeg_reduce = True
  cfg.worker_count = 0
  cfg.worker_buffer_size = 2
  cfg.read_threads = 2
  cfg.seed = 0
  cfg.build_if_missing = True
  return cfg

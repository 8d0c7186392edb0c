"""Human3.6M (+ MPII half of every batch), the paper's regime, protocol 1 or 2.

  cascaded-lift-build human36m --config protocol1 --manual_dir ~/data/h36m --data_dir ~/tensorflow_datasets
  cascaded-lift-build mpii --manual_dir ~/data/mpii --data_dir ~/tensorflow_datasets
  cascaded-lift-weights resnet50    # once: the ImageNet ResNet-50 that config.init.backbone_weights names
  python train.py --config configs/h36m.py:protocol=1 --workdir ~/runs/h36m_p1

Protocol 1: train S1, S5, S6, S7, S8, test S9, S11, MPJPE (paper: 48.7 mm).
Protocol 2: train S1, S5, S6, S7, S8, S9, test S11, PA-MPJPE (paper: 31.8 mm).

Evaluation crops the detected boxes of bbox_root/bbox_root_human36m_output.json as the paper does
(crop boxes, used as they are) when the dataset was built with that file, and then also reports the
ground-truth boxes under "gt_boxes" in eval/metrics.json; without the file it uses the ground-truth
boxes and logs a warning (evaluation/h36m.py). --config.data.eval.boxes=gt|detected forces one.
"""

import ml_collections

from cascaded_lift.configs import default


def get_config(arg: str = "protocol=1") -> ml_collections.ConfigDict:
  options = dict(kv.split("=", 1) for kv in arg.split(",") if kv)
  protocol = int(options.get("protocol", 1))
  if protocol not in (1, 2):
    raise ValueError(f"configs/h36m.py: protocol must be 1 or 2, got {protocol}")
  c = default.get_config()
  c.data.train_3d.config = f"protocol{protocol}"
  c.data.eval.config = f"protocol{protocol}"
  c.data.eval.boxes = "auto"   # the paper's detected boxes when the dataset stores them, else ground truth
  c.protocol = protocol
  return c

"""Human3.6M (+ MPII half of every batch), the paper's regime, protocol 1 or 2.

  cascaded-lift-build human36m --config protocol1 --manual_dir ~/data/h36m --data_dir ~/tensorflow_datasets
  cascaded-lift-build mpii --manual_dir ~/data/mpii --data_dir ~/tensorflow_datasets
  python train.py --config configs/h36m.py:protocol=1 --workdir ~/runs/h36m_p1 \
      --config.init.backbone_weights=~/weights/resnet50.safetensors

Protocol 1: train S1, S5, S6, S7, S8, test S9, S11, MPJPE (paper: 48.7 mm).
Protocol 2: train S1, S5, S6, S7, S8, S9, test S11, PA-MPJPE (paper: 31.8 mm).
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
  c.protocol = protocol
  return c

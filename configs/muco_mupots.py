"""The multi-person model: MuCo-3DHP + COCO (half of every batch each), 21 MuCo joints, tested on MuPoTS-3D.

  cascaded-lift-build muco_3dhp --manual_dir ~/data/muco --data_dir ~/tensorflow_datasets
  cascaded-lift-build coco --manual_dir ~/data/coco --data_dir ~/tensorflow_datasets
  cascaded-lift-build mupots_3d --manual_dir ~/data/mupots --data_dir ~/tensorflow_datasets
  python train.py --config configs/muco_mupots.py --workdir ~/runs/muco
  python eval.py --config configs/muco_mupots.py --workdir ~/runs/muco      # MuPoTS-3D 3DPCK (paper: 83.3 %)
"""

import ml_collections

from cascaded_lift.data import config as data_config
from cascaded_lift.configs import default


def get_config() -> ml_collections.ConfigDict:
  c = default.get_config()
  c.skeleton = "muco"   # 21 joints, 20 bones
  c.data.train_3d = data_config.source_config("muco_3dhp", "train")
  c.data.train_2d = data_config.source_config("coco", "train")
  c.data.eval = data_config.source_config("mupots_3d", "test")
  c.data.eval.use_det_bbox = False
  return c

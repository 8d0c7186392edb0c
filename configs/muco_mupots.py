"""The multi-person model: MuCo-3DHP + COCO (half of every batch each), 21 MuCo joints, tested on MuPoTS-3D.

  cascaded-lift-build muco_3dhp --manual_dir ~/data/muco --data_dir ~/tensorflow_datasets
  cascaded-lift-build coco --manual_dir ~/data/coco --data_dir ~/tensorflow_datasets
  cascaded-lift-build mupots_3d --manual_dir ~/data/mupots --data_dir ~/tensorflow_datasets
  cascaded-lift-weights resnet50    # once: the ImageNet ResNet-50 that config.init.backbone_weights names
  python train.py --config configs/muco_mupots.py --workdir ~/runs/muco
  python eval.py --config configs/muco_mupots.py --workdir ~/runs/muco      # MuPoTS-3D 3DPCK (paper: 83.3 %)

Evaluation follows the paper's protocol (3DMPPE's): RootNet's detected boxes and root depths from
bbox_root_mupots_output.json (build mupots_3d with it; without it the annotated boxes are used, with a
warning), the official script's matching and bone-length rescaling. Variants, named in
eval/mupots_metrics.{json,md}: --config.data.eval.boxes=gt, --config.eval.mupots.matching=distance,
--config.eval.mupots.bone_tree=skeleton, --config.eval.mupots.root_depth=prior (evaluation/mupots.py).
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
  c.data.eval.boxes = "auto"   # detected crop boxes when the dataset stores them (the paper's setting)
  c.eval.mupots = ml_collections.ConfigDict(dict(
      root_depth="auto",       # "auto" | "detection" | "gt" | "prior"; 3DPCK is root-relative either way
      matching="mpii",         # the official script's rule; "distance": greedy on the mean 2D distance
      match_threshold=ml_collections.config_dict.placeholder(float),  # None: 40 px (mpii), 100 px (distance)
      bone_tree="official",    # official parents (Head_top off Thorax); "skeleton": the MUCO bones
      camera_pose="lifted"))
  return c

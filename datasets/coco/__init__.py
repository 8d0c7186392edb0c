"""COCO 2017 person keypoints (TFDS builder in coco_dataset_builder.py)."""

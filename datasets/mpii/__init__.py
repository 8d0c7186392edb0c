"""MPII Human Pose (TFDS builder in mpii_dataset_builder.py)."""

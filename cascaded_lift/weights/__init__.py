"""PyTorch weights: ImageNet ResNets (torchvision names) and the authors' released checkpoints (convert.py)."""

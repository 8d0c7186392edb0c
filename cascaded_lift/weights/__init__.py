"""PyTorch weights: ImageNet ResNets (torchvision names) and the authors' released checkpoints (convert.py);
torchvision's ImageNet ResNet-50 fetched by name, checked and cached (imagenet.py, `cascaded-lift-weights`
in cli.py)."""

"""MuPoTS-3D TFDS builder (3DMPPE release layout, manual download); see README.md."""

"""MuCo-3DHP TFDS builder (3DMPPE release layout, manual download); see README.md."""

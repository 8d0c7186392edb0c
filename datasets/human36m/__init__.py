"""Human3.6M TFDS builder (3DMPPE release layout, manual download); see README.md."""

"""cascaded_lift: monocular 3D human pose estimation by cascaded dimension-lifting, in JAX/Flax.

Modules are importable one by one; importing the package itself imports no JAX.
"""

__version__ = "0.1.0"

"""Chooses NumPy or jax.numpy for functions that accept either (geometry, skeleton, metrics)."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np


def is_jax_array(x: Any) -> bool:
  """True for jax.Array values and tracers, without importing JAX for NumPy callers."""
  return type(x).__module__.split(".")[0] in ("jax", "jaxlib")


def array_namespace(*xs: Any) -> ModuleType:
  """jax.numpy if any argument is a JAX array or tracer, else NumPy.

  NumPy inputs stay NumPy (no device transfer, float64 kept); anything traced under jit gets jnp.
  """
  if any(is_jax_array(x) for x in xs):
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
    return jnp
  return np

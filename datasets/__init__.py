"""TFDS builders of the pose datasets; installed as the subpackage `cascaded_lift.datasets`.

One folder per dataset, in TFDS's layout: datasets/<name>/<name>_dataset_builder.py defines
``class Builder(pose_builder.PoseDatasetBuilder)`` (see pose_builder.py for the shared feature schema
and how to write one), with README.md (description, citation, download instructions) and dummy_data/.

Builders stay out of TFDS's global registry; find them here by folder name:

  get_builder_class("synthetic")                      -> the Builder class
  get_builder("synthetic", config="small", data_dir=d) -> a builder instance (array_record files)
  list_builders()                                     -> names of the dataset folders present

Build one with datasets/build.py (console script ``cascaded-lift-build``). Importing this package
imports neither TFDS nor any builder.
"""

from __future__ import annotations

import importlib
import pathlib
from typing import Any

_HERE = pathlib.Path(__file__).resolve().parent


def list_builders() -> list[str]:
  """Names of the dataset folders that hold a <name>_dataset_builder.py."""
  return sorted(p.name for p in _HERE.iterdir()
                if p.is_dir() and (p / f"{p.name}_dataset_builder.py").is_file())


def get_builder_class(name: str) -> type:
  """The Builder class of dataset `name` (imports cascaded_lift.datasets.<name>.<name>_dataset_builder)."""
  if name not in list_builders():
    raise KeyError(f"unknown dataset {name!r}; known: {list_builders()}")
  module = importlib.import_module(f"{__name__}.{name}.{name}_dataset_builder")
  try:
    return module.Builder
  except AttributeError:
    raise AttributeError(f"{module.__name__} defines no class 'Builder'") from None


def get_builder(name: str, config: str | None = None, data_dir: str | None = None, **kwargs: Any):
  """An instance of dataset `name`'s builder writing/reading array_record files under data_dir."""
  cls = get_builder_class(name)
  return cls(config=config, data_dir=data_dir, file_format="array_record", **kwargs)

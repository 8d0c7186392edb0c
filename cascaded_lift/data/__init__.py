"""Input pipeline shared by all pose datasets: grain over tfds data sources, crops, augmentation.

Public entry points (imported lazily so that `cascaded_lift.data.schema` stays light for builders):
  create_train_iterator, create_eval_iterator, steps_per_epoch, eval_num_examples, mean_pose
                                                          (cascaded_lift.data.pipeline)
  default_data_config                                       (cascaded_lift.data.config)
  load_source                                               (cascaded_lift.data.sources)
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "create_train_iterator": "cascaded_lift.data.pipeline",
    "create_eval_iterator": "cascaded_lift.data.pipeline",
    "mean_pose": "cascaded_lift.data.pipeline",
    "steps_per_epoch": "cascaded_lift.data.pipeline",
    "eval_num_examples": "cascaded_lift.data.pipeline",
    "default_data_config": "cascaded_lift.data.config",
    "load_source": "cascaded_lift.data.sources",
}


def __getattr__(name: str) -> Any:
  if name in _LAZY:
    return getattr(importlib.import_module(_LAZY[name]), name)
  raise AttributeError(f"module 'cascaded_lift.data' has no attribute {name!r}")

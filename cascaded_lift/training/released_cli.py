"""`cascaded-lift-import-released`: the authors' released .pth as a workdir for eval.py, the Predictor and
cascaded-lift-predict, or as the start of a fine-tuning run.

  cascaded-lift-import-released snapshot_20.pth.tar --config configs/h36m.py:protocol=2 \
      --workdir ~/runs/released_p2                       # [--overwrite] replaces an existing workdir
  python eval.py --config configs/h36m.py:protocol=2 --workdir ~/runs/released_p2
  cascaded-lift-predict photo.jpg --box 120,40,200,380 --config configs/h36m.py:protocol=2 \
      --workdir ~/runs/released_p2 --out results/
  python train.py --config configs/h36m.py:protocol=2 --workdir ~/runs/finetune \
      --config.init.checkpoint=~/runs/released_p2       # fine-tuning (or =snapshot_20.pth.tar directly)

--config takes the same file[:arg] and --config.key=value overrides as train.py and eval.py; it must
describe the released network (training/released.py) and is saved as the workdir's config.json.
Prints what was loaded, what kept its initial values (the ordinal-depth head, absent from the release)
and what was skipped, then the eval.py command. Exit status 0; 2 with one line on stderr for a missing
or unreadable file, a missing, unexpected or mis-shaped key (named), a config of another architecture
(the field named; --any_architecture accepts a CoordinateNet of another size, whose keys and shapes are
still checked), or a workdir that already holds a checkpoint (without --overwrite).
"""

from __future__ import annotations

import sys
from typing import Sequence

from absl import app, flags, logging
from ml_collections import config_flags

from cascaded_lift import errors
from cascaded_lift.training import released
from cascaded_lift.training.writers import quiet_library_logs

PROGRAM = released.COMMAND
_CONFIG = config_flags.DEFINE_config_file("config", None, "Config of the released network, e.g. "
                                          "configs/h36m.py:protocol=2; saved as the workdir's config.json.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "The workdir to create (renamed into place when complete).")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace a workdir that already holds checkpoints.")
_ANY_ARCHITECTURE = flags.DEFINE_bool(
    "any_architecture", False, "Accept a config whose network differs from the released one (another backbone "
    "depth, width, crop size or depth bins): for a CoordinateNet trained with the authors' code at another size. "
    "Key names and shapes are still checked against the config's network.")
flags.mark_flags_as_required(["config", "workdir"])


def _names(keys: Sequence[str]) -> str:
  """'a.x, a.y' for up to 4 keys, else the count and the distinct module names."""
  if len(keys) <= 4:
    return ", ".join(keys)
  modules = sorted({k.rsplit(".", 1)[0] for k in keys})
  return f"{len(keys)} keys of {', '.join(modules)}"


def _main(argv: Sequence[str]) -> None:
  logging.set_verbosity(logging.WARNING)
  quiet_library_logs()
  if len(argv) != 2:
    errors.fail(PROGRAM, "give exactly one checkpoint file (the released .pth), e.g. "
                f"`{PROGRAM} snapshot_20.pth.tar --config configs/h36m.py:protocol=2 --workdir DIR`")
  record = errors.run_reporting_user_errors(PROGRAM, lambda: released.import_to_workdir(
      argv[1], _CONFIG.value, _WORKDIR.value, overwrite=_OVERWRITE.value, any_architecture=_ANY_ARCHITECTURE.value))
  print(f"{PROGRAM}: {record['file']} (sha256 {record['sha256'][:16]}...) -> {record['workdir']}")
  print(f"loaded: {', '.join(record['loaded'])}")
  print(f"kept as initialised (absent from the file): {', '.join(record['kept']) or 'nothing'}")
  if record["skipped"]:
    print(f"skipped (unused by the released forward pass): {_names(record['skipped'])}")
  if set(record["kept"]) - {"ordinal_head"}:  # more than the head the release never had
    print(f"warning: {', '.join(k for k in record['kept'] if k != 'ordinal_head')} hold(s) random initial "
          "weights: the file is not a whole CoordinateNet", file=sys.stderr)
  spec = config_flags.get_config_filename(flags.FLAGS["config"])
  print(f"evaluate: python eval.py --config {spec} --workdir {record['workdir']}")


def main() -> None:
  """Console-script entry point (setup.py)."""
  app.run(_main, flags_parser=errors.flags_parser(PROGRAM))


if __name__ == "__main__":
  main()

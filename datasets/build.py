"""Builds a pose dataset into a data_dir, without TensorFlow (TFDS's own `tfds build` needs it).

Command line (console script installed by setup.py):

  cascaded-lift-build NAME [--config C] [--manual_dir DIR] --data_dir DIR [--overwrite]

e.g. ``cascaded-lift-build human36m --config protocol1 --manual_dir ~/h36m --data_dir ~/tfds``.
From Python: ``build("synthetic", config="small", data_dir=tmp)`` returns the prepared builder.
Files are written as array_record, the only format TFDS can write and random-access without
TensorFlow; read them back with ``builder.as_data_source(split)``.
"""

from __future__ import annotations

import argparse
import logging
import os
import pathlib
import shutil
import sys
import tempfile
from typing import Any, Sequence

import tensorflow_datasets as tfds

from cascaded_lift import datasets
from cascaded_lift import errors

log = logging.getLogger(__name__)


def build(name: str, config: str | None = None, manual_dir: str | os.PathLike | None = None,
          data_dir: str | os.PathLike | None = None, overwrite: bool = False, progress: bool = True):
  """Prepares dataset `name` (config `config`) from `manual_dir` into `data_dir`.

  Args:
    name: dataset folder name under datasets/ (see cascaded_lift.datasets.list_builders()).
    config: BuilderConfig name; None = the builder's default.
    manual_dir: where the user unpacked the dataset (real datasets); None for synthetic.
    data_dir: TFDS data directory; None = TFDS's default (~/tensorflow_datasets).
    overwrite: rebuild even when the prepared files exist; the rebuild is written aside and replaces the
      old files only when it is complete (a failed rebuild keeps the old dataset).
    progress: show TFDS's progress bars.
  Returns:
    The prepared builder.
  Raises:
    FileNotFoundError: `manual_dir` is given but does not exist, or is required and missing.
  """
  cls = datasets.get_builder_class(name)
  if manual_dir is not None:
    manual_dir = os.path.expanduser(os.fspath(manual_dir))
    if not os.path.isdir(manual_dir):
      raise FileNotFoundError(f"{name}: manual_dir {manual_dir!r} does not exist")
  elif getattr(cls, "MANUAL_DOWNLOAD_INSTRUCTIONS", None):
    raise FileNotFoundError(f"{name} needs --manual_dir: {cls.MANUAL_DOWNLOAD_INSTRUCTIONS.strip()}")
  if data_dir is not None:
    data_dir = os.path.expanduser(os.fspath(data_dir))
  if not progress:
    tfds.disable_progress_bar()
  builder = datasets.get_builder(name, config=config, data_dir=data_dir)
  if overwrite and builder.is_prepared():
    builder = _rebuild_aside(name, config, manual_dir, builder)
  else:
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=manual_dir, download_mode=tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS))
  log.info("%s/%s prepared in %s: %s", name, builder.builder_config.name if builder.builder_config else "",
           builder.data_dir, {k: v.num_examples for k, v in builder.info.splits.items()})
  return builder


def _rebuild_aside(name: str, config: str | None, manual_dir: str | None, old: Any) -> Any:
  """Rebuilds a prepared dataset in a temporary data_dir beside it and swaps it in only when complete.

  TFDS itself deletes the prepared folder before it regenerates; here a rebuild that fails (broken
  source files, a full disk, an interrupt) leaves the previous dataset exactly as it was.
  """
  target = pathlib.Path(old.data_dir)                       # <data_dir>/<name>/<config>/<version>
  root = target.parents[2] if old.builder_config else target.parents[1]
  staging = pathlib.Path(tempfile.mkdtemp(prefix=f".rebuild-{name}-", dir=root))
  try:
    builder = datasets.get_builder(name, config=config, data_dir=str(staging))
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=manual_dir, download_mode=tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS))
    built = pathlib.Path(builder.data_dir)
    previous = target.with_name(target.name + f".previous-{os.getpid()}")
    os.replace(target, previous)   # two renames on one file system: the old set stays whole until the
    os.replace(built, target)      # new one is in place
    shutil.rmtree(previous)
  finally:
    shutil.rmtree(staging, ignore_errors=True)
  return datasets.get_builder(name, config=config, data_dir=str(root))


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="cascaded-lift-build", description=__doc__.split("\n\n")[0])
  parser.add_argument("name", help="dataset name (a folder under datasets/), e.g. synthetic, human36m")
  parser.add_argument("--config", default=None, help="BuilderConfig name (default: the builder's first)")
  parser.add_argument("--manual_dir", default=None, help="where the dataset's files were unpacked")
  parser.add_argument("--data_dir", required=True, help="TFDS data directory to write into")
  parser.add_argument("--overwrite", action="store_true", help="rebuild even if already prepared")
  args = parser.parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
  try:
    builder = build(args.name, config=args.config, manual_dir=args.manual_dir, data_dir=args.data_dir,
                    overwrite=args.overwrite)
  except (*errors.USER_ERRORS, KeyError, ValueError) as e:  # unknown names; a builder's bad-input errors name the file
    print(f"cascaded-lift-build: error: {errors.one_line(e)}", file=sys.stderr)
    return errors.EXIT_USER_ERROR
  for split, info in builder.info.splits.items():
    print(f"{split}: {info.num_examples} examples")
  print(f"written to {builder.data_dir}")
  return 0


if __name__ == "__main__":
  sys.exit(main())

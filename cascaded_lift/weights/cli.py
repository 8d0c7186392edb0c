"""`cascaded-lift-weights`: ImageNet ResNet weights by name, verified, cached and converted to .safetensors.

  cascaded-lift-weights resnet50                          # download, check, convert; prints the file's path
  cascaded-lift-weights resnet50 --from_file ~/Downloads/resnet50-0676ba61.pth   # without internet
  cascaded-lift-weights --list                            # the names, their URLs, and which are cached

The printed path is what config.init.backbone_weights="resnet50" resolves to; the cache folder is
$CASCADED_LIFT_CACHE (default ~/.cache/cascaded_lift). weights/imagenet.py says how files are checked:
torchvision's published SHA-256 prefix, or --sha256 for a copy checked some other way.
Exit status 0 with the path on stdout; 2 with one line on stderr for a wrong checksum, a truncated or
failed download, or a file that is not a torchvision ResNet.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from cascaded_lift import errors
from cascaded_lift.weights import imagenet

PROGRAM = imagenet.COMMAND


class _Progress:
  """Download progress on stderr: a rewritten line on a terminal, a line per 10 % otherwise."""

  def __init__(self) -> None:
    self._tty = sys.stderr.isatty()
    self._shown = -1

  def __call__(self, received: int, total: int | None) -> None:
    mb = received / 2**20
    if total:
      percent = int(100 * received / total)
      step = percent if self._tty else percent // 10 * 10
      if step == self._shown:
        return
      self._shown = step
      text = f"downloading: {mb:.1f} of {total / 2**20:.1f} MiB ({percent} %)"
    else:
      text = f"downloading: {mb:.1f} MiB"
    print(("\r" + text) if self._tty else text, end="" if self._tty else "\n", file=sys.stderr, flush=True)

  def finish(self) -> None:
    """Ends a rewritten progress line, so that what follows starts on a line of its own."""
    if self._tty and self._shown != -1:
      print(file=sys.stderr)
    self._shown = -1


def _list(cache: str | None) -> None:
  for name, ckpt in imagenet.CHECKPOINTS.items():
    path = imagenet.cached_path(name, cache)
    state = str(path) if path.is_file() else "not cached"
    print(f"{name}\t{ckpt.description}\t{ckpt.url}\t{state}")


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog=PROGRAM, description=__doc__.split("\n\n", 1)[0])
  parser.add_argument("name", nargs="?", help=f"registered weights: {', '.join(imagenet.CHECKPOINTS)}")
  parser.add_argument("--from_file", default=None,
                      help="a local copy of the checkpoint (.pth) to use instead of downloading; still checked")
  parser.add_argument("--url", default=None, help="download from this URL instead (a mirror); still checked")
  parser.add_argument("--sha256", default=None,
                      help="expect this SHA-256 (64 hex, or a prefix of >= 8) instead of the registered one: "
                           "for a copy you checked some other way")
  parser.add_argument("--cache_dir", default=None,
                      help=f"cache folder (default ${imagenet.CACHE_ENV}, else ~/.cache/cascaded_lift)")
  parser.add_argument("--force", action="store_true", help="convert again even when already cached")
  parser.add_argument("--list", action="store_true", help="list the registered names and exit")
  args = parser.parse_args(argv)
  if args.list:
    _list(args.cache_dir)
    return 0
  if not args.name:
    parser.error(f"give a name ({', '.join(imagenet.CHECKPOINTS)}) or --list")
  progress = _Progress()
  try:
    path = imagenet.fetch(args.name, from_file=args.from_file, url=args.url, sha256=args.sha256,
                          cache=args.cache_dir, force=args.force, progress=progress)
    meta = imagenet.source_metadata(path)
  except errors.USER_ERRORS as e:
    progress.finish()
    print(f"{PROGRAM}: error: {errors.one_line(e)}", file=sys.stderr)
    return errors.EXIT_USER_ERROR
  progress.finish()
  print(f"{args.name}: {meta.get('source_file', '?')} sha256 {meta.get('source_sha256', '?')} "
        f"(checked against {meta.get('expectation', '?')} {meta.get('expected_sha256', '?')})", file=sys.stderr)
  print(path)
  return 0


if __name__ == "__main__":
  sys.exit(main())

"""The library's exceptions for ordinary user mistakes, and how the command-line tools report them.

A UserError (or FileNotFoundError / PermissionError / NotADirectoryError / IsADirectoryError about a
path the user gave) is a mistake in what was asked: the entry points (train.py, eval.py,
cascaded-lift-build, cascaded-lift-predict) print it as one line, `<program>: error: <message>`, and
exit with status 2. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import re
import sys
from typing import Any, Callable, NoReturn, Sequence, TypeVar

from absl import flags


class UserError(Exception):
  """An ordinary mistake in the user's input; the message names the file, record, field or argument."""


class ConfigError(UserError, ValueError):
  """A config field with a value that cannot work (the message names the field)."""


class WorkdirError(UserError, ValueError):
  """A workdir that is in use, not writable, missing its checkpoints, or given a config that does not fit."""


class CheckpointError(UserError, ValueError):
  """A checkpoint that is missing or damaged (the message names the step, the cause and the intact steps)."""


USER_ERRORS = (UserError, FileNotFoundError, PermissionError, NotADirectoryError, IsADirectoryError)
EXIT_USER_ERROR = 2
T = TypeVar("T")


def one_line(error: BaseException | str) -> str:
  """The error's message on one line (config_flags' embedded traceback reduced to its last line)."""
  text = str(error)
  if "Traceback (most recent call last)" in text:  # config_flags embeds the config file's traceback
    text = [line for line in text.splitlines() if line.strip()][-1]
  return " ".join(text.split()) or type(error).__name__


def fail(program: str, error: BaseException | str) -> NoReturn:
  """Prints `program: error: <message on one line>` to stderr and exits with status 2."""
  print(f"{program}: error: {one_line(error)}", file=sys.stderr)
  raise SystemExit(EXIT_USER_ERROR)


def run_reporting_user_errors(program: str, fn: Callable[[], T]) -> T:
  """fn(), with USER_ERRORS turned into one line and exit status 2 (other exceptions propagate)."""
  try:
    return fn()
  except USER_ERRORS as e:
    fail(program, e)


def flags_parser(program: str) -> Callable[[Sequence[str]], Any]:
  """An absl `flags_parser` for app.run: a bad flag or config override (unknown key, wrong type, missing
  config file) becomes one line and exit status 2 instead of absl's usage dump."""
  def parse(argv: Sequence[str]) -> Any:
    try:
      rest = flags.FLAGS(argv)
      if "config" in flags.FLAGS:
        _ = flags.FLAGS.config.keys()  # config_flags reports a file it could not load only when it is read
      return rest
    except (flags.Error, OSError) as e:
      fail(program, e)
    except (KeyError, AttributeError) as e:  # config_flags: an override names no field of the config
      text = str(e.args[0]) if e.args else str(e)
      found = re.search(r"'([A-Za-z0-9_]+)", text)
      key = found.group(1) if found else text
      hint = re.search(r'Did you mean "([^"]+)"', text)
      given = [a.split("=")[0] for a in argv if a.startswith("--config.") and key in a.split("=")[0].split(".")]
      fail(program, f"{given[0] if given else 'a --config override'}: the config has no field {key!r}"
                    + (f" (did you mean {hint.group(1)!r}?)" if hint else ""))
  return parse

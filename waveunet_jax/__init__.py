"""Wave-U-Net music source separation on raw audio, in JAX/Flax."""

import contextlib as _contextlib
import pathlib as _pathlib
import re as _re
import sys as _sys
from collections.abc import Iterator as _Iterator

__version__ = "0.1.0"


def missing_extra(what: str, extra: str, error: ModuleNotFoundError) -> str | None:
  """The one line for `what` (a flag, a program) run without the install choice
  `extra` (setup.cfg's extras: jax, train, export, ...) that brings the module
  `error` did not find; None where the missing module is this package's own (a bug,
  not an install)."""
  if not error.name or error.name.partition(".")[0] == __name__:
    return None
  return (f"{what} needs the {extra} install (no module named {error.name}): "
          f"pip install 'waveunet_jax[{extra}]'")


@_contextlib.contextmanager
def needs(extra: str, what: str) -> _Iterator[None]:
  """For a program's `cli()`: a module of the install choice `extra` missing while
  the block runs ends the program with `missing_extra`'s line, not a traceback."""
  try:
    yield
  except ModuleNotFoundError as e:
    line = missing_extra(what, extra, e)
    if line is None:
      raise
    _sys.exit(f"error: {line}")


# absl's help flags, which print the usage and exit 1 before `main`.
_HELP_FLAGS = ("help", "helpshort", "helpfull", "helpxml", "?")


def run(main, program: str, flags_parser=None) -> None:
  """absl's `app.run` for this package's programs (`program`: the module defining
  the flags, its `__name__`), the same as `python -m` and as a console script:
  `--help` shows the program's docstring and flags (absl shows those of the script
  file, which has neither) and exits 0, as --help does elsewhere (absl: 1)."""
  from absl import app, flags

  if program != "__main__":  # a console script, or a module that re-imports itself
    for flag in flags.FLAGS.flags_by_module_dict().get(program, ()):
      flags.FLAGS.register_key_flag_for_module(_sys.argv[0], flag)
    script = _sys.modules["__main__"]
    script.__doc__ = script.__doc__ or _sys.modules[program].__doc__
  started = False

  def started_main(argv):
    nonlocal started
    started = True
    return main(argv)

  asked = any(name in _HELP_FLAGS and value in (None, "true", "1")
              for name, value, _ in _flag_arguments(_sys.argv[1:]))
  try:
    app.run(started_main, **({"flags_parser": flags_parser} if flags_parser else {}))
  except SystemExit as e:
    if asked and not started and e.code == 1:
      _sys.exit(0)
    raise


def _flag_arguments(argv: list[str]) -> _Iterator[tuple[str, str | None, str | None]]:
  """(name, value or None, next argument or None) of each flag in argv, written
  --name=value, -name=value, --name value or -name value."""
  for i, arg in enumerate(argv):
    if arg == "--":
      return
    if _re.match(r"--?[A-Za-z_]", arg):
      name, equals, value = arg.lstrip("-").partition("=")
      following = argv[i + 1] if i + 1 < len(argv) else None
      yield name, value if equals else None, following


def _looks_like_flag(arg: str | None) -> bool:
  return arg is not None and bool(_re.match(r"--?[A-Za-z_]", arg))


def _check_missing_values(argv: list[str]) -> None:
  """Exits if a flag that takes a value (among those defined so far) is followed by
  another flag instead: absl would take "--workdir --config=X" as a workdir named
  "--config=X"."""
  from absl import flags

  for name, value, following in _flag_arguments(argv[1:]):
    flag = flags.FLAGS[name] if name in flags.FLAGS else None
    if (value is None and flag is not None and not flag.boolean
        and _looks_like_flag(following)):
      _sys.exit(f"error: --{name}: missing value (the next argument is the flag {following})")


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parser for the command-line programs, with a bad --config path or
  override, or a missing value, explained in one line instead of absl's usage dump or
  a traceback, whichever way the flags are written (--config=X, --config X, -config=X)."""
  from absl import flags

  _check_missing_values(argv)
  for name, value, following in _flag_arguments(argv[1:]):
    if name == "config" and (value is not None or following is not None):
      path = (value if value is not None else following).split(":", 1)[0]
      if not _pathlib.Path(path).is_file():
        _sys.exit(f"error: --config={path}: no such file (configs live in experiments/)")
  try:
    rest = flags.FLAGS(argv)
  except flags.Error as e:
    _check_missing_values(argv)  # the likelier cause; the config's override flags exist now
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    last = lines[-1] if lines else str(e)
    # A config's own error arrives as the last line of a traceback: "ValueError: ...".
    _sys.exit(f"error: {_re.sub(r'^[A-Za-z]*(Error|Exception): ', '', last)}")
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    # ml_collections raises these for an override of a field the config lacks.
    overrides = [a for a in argv[1:] if a.lstrip("-").startswith("config.")]
    # ml_collections wraps a KeyError("'colour'") in an AttributeError.
    key = e if isinstance(e, KeyError) else (e.args or (None,))[0]
    detail = f"no field {key.args[0]}" if isinstance(key, KeyError) and key.args else e
    # "Did you mean ...?" comes on a line of its own.
    detail = "; ".join(line.strip() for line in str(detail).splitlines() if line.strip())
    _sys.exit(f"error: an override does not fit the config ({detail}): check the field names "
              f"and types of {' '.join(overrides)} against experiments/default.py")
  _check_missing_values(argv)  # again: the config's override flags exist only now
  for name in list(flags.FLAGS):
    try:
      getattr(flags.FLAGS[name].value, "keys", None)
    except OSError as e:  # config_flags keeps a config file's load error until first use
      _sys.exit(f"error: --{name}: {str(e).splitlines()[0]}")
  return rest


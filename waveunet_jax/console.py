"""How the command-line programs start, and what they print: this project's lines,
progress bars, a last line.

Every program's `cli()` is `run_program(main, _define_flags, ...)` (how flags, `--help`
and start-up go: its docstring); `setup` decides what the console shows (only this
project's short log lines unless `--verbosity=1`), `hide_native_logs` filters what
native code writes; `progress`, `done` and `missing_extra` are the programs' output.
"""

from __future__ import annotations

import contextlib
import logging as _logging
import os
import pathlib
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator

from absl import flags, logging

# Python loggers of these packages (matched on the source file's path) speak below
# ERROR only with --verbosity=1: (path part, the lowest level shown otherwise).
_LIBRARIES = (("/orbax/", _logging.ERROR), ("/tensorflow_datasets/", _logging.ERROR),
              ("/tensorflow/", _logging.ERROR), ("/absl/", _logging.WARNING),
              ("/jax/", _logging.WARNING), ("/jaxlib/", _logging.WARNING),
              ("/etils/", _logging.ERROR))


class _LibraryChatter(_logging.Filter):
  """Drops the libraries' logs below their level in `_LIBRARIES`."""

  def filter(self, record: _logging.LogRecord) -> bool:
    for part, lowest in _LIBRARIES:
      if part in record.pathname:
        return record.levelno >= lowest
    return True


class _Short(_logging.Formatter):
  """'HH:MM:SS message', with 'warning: ' or 'error: ' before the message where it is one."""

  def format(self, record: _logging.LogRecord) -> str:
    clock = time.strftime("%H:%M:%S", time.localtime(record.created))
    kind = ("error: " if record.levelno >= _logging.ERROR else
            "warning: " if record.levelno >= _logging.WARNING else "")
    text = f"{clock} {kind}{record.getMessage()}"
    if record.exc_info:
      text += "\n" + self.formatException(record.exc_info)
    return text


class _Handler(_logging.Handler):
  """Writes each record to stderr above the progress bars (tqdm clears and redraws them)."""

  def emit(self, record: _logging.LogRecord) -> None:
    try:
      import tqdm

      tqdm.tqdm.write(self.format(record), file=sys.stderr)
    except Exception:  # as logging.StreamHandler: never raise from a log call
      self.handleError(record)


def verbose() -> bool:
  """Whether --verbosity asks for the libraries' own logs (1 or more)."""
  return flags.FLAGS.is_parsed() and flags.FLAGS["verbosity"].value >= 1


def setup() -> None:
  """For command-line programs, before `main` (`run_program`) and before TensorFlow is
  imported (its C++ log level is read once, at import).

  Unless `--verbosity=1` (absl's flag) or more, the console then shows only this
  project's log lines, written short ("12:03:04 step 100: ...", warnings marked),
  progress bars on a terminal, and the program's own output. Left out: the INFO and
  WARNING logs of TensorFlow, TFDS, Orbax and absl, JAX's INFO logs (its backend
  probing: "Unable to initialize backend 'tpu'"), and every log line that native code
  (TensorFlow, XLA, absl, gRPC) writes to the process's stderr, whenever it writes it:
  at import, at the first tf.data op ("E0000 ... util.cc:131] oneDNN supports DT_INT16
  only on platforms with AVX-512"), from a thread (`hide_native_logs`). Python errors
  and tracebacks, native fatal lines ("F0000 ...") and anything else native code writes
  always show. With `--verbosity=1` everything is as the libraries print it, in absl's
  long format."""
  if verbose():
    return
  # TensorFlow's and XLA's C++ logs: 2 keeps errors (3 would hide them too).
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  root = _logging.getLogger()
  if any(isinstance(h, _Handler) for h in root.handlers):
    return
  hide_native_logs()
  root.removeHandler(logging.get_absl_handler())
  handler = _Handler()
  handler.addFilter(_LibraryChatter())
  handler.setFormatter(_Short())
  root.addHandler(handler)


# A line that native code logs: absl's and glog's format ("E1206 08:39:33.123456 4948
# util.cc:131] ...", or "E0000 00:00:1733490000.123456 ..." before absl's clock is set), TensorFlow's older one ("2024-01-01 12:00:00.123456: I
# tensorflow/core/util/port.cc:113] ..."), absl's notice before its logging starts, and
# the second line of TensorFlow's CPU-feature notice. Fatal lines (F) are not matched.
NATIVE_LOG_LINE = (r"(?:[IWE]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ [^ \]]+:\d+\] "
                   r"|\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [IWE] [^ \]]+:\d+\] "
                   r"|WARNING: All log messages before absl::InitializeLog\(\) "
                   r"|To enable the following instructions: )")

# The filter between native code and the terminal: a process of its own, so that what a
# dying process wrote last (a fatal check, "Fatal Python error: ...") is still shown, and
# one that outlives Ctrl-C and SIGTERM until every writer has closed the pipe.
_FILTER = """
import re, signal, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGTERM, signal.SIG_IGN)
native = re.compile(sys.argv[1].encode())
for line in sys.stdin.buffer:
  if not native.match(line):
    sys.stdout.buffer.write(line)
    sys.stdout.buffer.flush()
"""


def hide_native_logs() -> None:
  """From now on, what native code writes to file descriptor 2 passes through a filter
  process that drops `NATIVE_LOG_LINE`s: levels do not reach them all (the oneDNN
  warning is logged as an error; absl's notice comes before any level applies; a
  thread may write at any time). Python's own stderr (`sys.stderr`: log lines, progress
  bars, tracebacks) goes to the terminal directly, as before. Once per process; where
  stderr cannot be duplicated, nothing changes."""
  global _filter
  if _filter is not None:
    return
  sys.stderr.flush()
  try:
    terminal = os.dup(2)
  except OSError:
    return
  try:
    _filter = subprocess.Popen([sys.executable, "-I", "-c", _FILTER, NATIVE_LOG_LINE],
                               stdin=subprocess.PIPE, stdout=terminal, stderr=terminal)
  except OSError:
    os.close(terminal)
    return
  python_stderr = open(terminal, "w", buffering=1, encoding=sys.stderr.encoding,  # noqa: SIM115
                       errors=sys.stderr.errors)
  os.dup2(_filter.stdin.fileno(), 2)
  _filter.stdin.close()  # fd 2 is now the only writer of this process
  sys.stderr = python_stderr
  with contextlib.suppress(AttributeError, ValueError, RuntimeError):
    import faulthandler  # absl enabled it on fd 2; keep its fatal report direct too

    if faulthandler.is_enabled():
      faulthandler.enable(python_stderr)


_filter: subprocess.Popen | None = None


def import_tensorflow():
  """TensorFlow (for tf.data and TFDS only), kept off the GPUs, whose memory is JAX's.

  Unless --verbosity=1, what its native code writes to stderr while it loads is
  hidden: that is start-up chatter written before its log level applies ("All log
  messages before absl::InitializeLog() ...", "Could not find cuda drivers", "failed
  call to cuInit"). If loading fails, that text is shown with the error."""
  with contextlib.nullcontext() if verbose() else _native_stderr_hidden():
    import tensorflow as tf

    tf.config.set_visible_devices([], "GPU")
  return tf


@contextlib.contextmanager
def _native_stderr_hidden():
  """Sends file descriptor 2 (native code's and Python's stderr) to a temporary file
  for the block; writes it out after all if the block raises."""
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as sink:
    os.dup2(sink.fileno(), 2)
    failed = True
    try:
      yield
      failed = False
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      if failed:
        sink.seek(0)
        sys.stderr.write(sink.read().decode(errors="replace"))
        sys.stderr.flush()


def is_primary() -> bool:
  """Process 0 of a multi-process run (or the only process); JAX is not imported for it."""
  jax = sys.modules.get("jax")
  return jax is None or jax.process_index() == 0


def progress(total: float | None, desc: str, unit: str = "it", shown: bool = True, **kwargs):
  """A tqdm bar on stderr, shown where stderr is a terminal and in process 0 only; in
  a log file (or with --verbosity=1, whose log lines would break it) it does nothing."""
  import tqdm

  return tqdm.tqdm(total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True,
                   disable=not (shown and shows_bars()), **kwargs)


def shows_bars() -> bool:
  """Whether progress bars show: stderr is a terminal, this is process 0 and the
  libraries' log lines (--verbosity=1) are not on."""
  return sys.stderr.isatty() and is_primary() and not verbose()


def python() -> str:
  """The Python running this program, as a command to print: relative to the current
  folder where it lies below it (.venv/bin/python), else absolute."""
  relative = os.path.relpath(sys.executable)
  return sys.executable if relative.startswith("..") else relative


def done(text: str) -> None:
  """The program's last line: where the results are and what to run next (stdout)."""
  print(text, flush=True)


# --------------------------------------------------------------------------- #
# Start-up: the install a program needs, its flags, absl's app.run.
# --------------------------------------------------------------------------- #


def missing_extra(what: str, extra: str, error: ModuleNotFoundError) -> str | None:
  """The one line for `what` (a flag, a program) run without the install choice
  `extra` (setup.cfg's extras: jax, train, export, ...) that brings the module
  `error` did not find; None where the missing module is this package's own (a bug,
  not an install)."""
  if not error.name or error.name.partition(".")[0] == __package__:
    return None
  return (f"{what} needs the {extra} install (no module named {error.name}): "
          f"pip install 'waveunet_jax[{extra}]'")


@contextlib.contextmanager
def needs(extra: str, what: str) -> Iterator[None]:
  """A module of the install choice `extra` missing while the block runs ends the
  program with `missing_extra`'s line, not a traceback."""
  try:
    yield
  except ModuleNotFoundError as e:
    line = missing_extra(what, extra, e)
    if line is None:
      raise
    sys.exit(f"error: {line}")


# What a program stopped by a signal left (`run_program`'s `interrupted`), by default.
INTERRUPTED = ("nothing half-written is kept (outputs are written under a temporary "
               "name and renamed); re-running the same command does the work again")


def run_program(main: Callable[[list[str]], None], define_flags: Callable[[], None], *,
                install: tuple[str, str] | None = None, usage_status: int = 1,
                interrupted: str = INTERRUPTED) -> None:
  """The program whose `main` this is (every program's `cli()`, for `python -m` and its
  console script): defines its flags (`define_flags`; the shared ones by
  `shared_flags.define`), parses them with `parse_flags` (a bad flag is one line) and
  runs `main` under absl's `app.run`, after `setup`. `--help` shows the program's
  docstring and flags, the same as `python -m` and as a console script.

  install: (extra, what) where the program needs an install choice beyond the base
    one (`needs`), checked from the flags' definition on (`--help` included).
  usage_status: the exit status of a command line that cannot work (a bad flag or
    value, a missing argument); synthetic keeps argparse's 2, the others exit 1.
  interrupted: what a SIGINT (Ctrl-C) or SIGTERM that reaches the program's top left,
    and what re-running does: the end of the one line `exit_interrupted` prints
    (exit 128 + the signal). A program that cleans up first catches the
    KeyboardInterrupt itself (separate, training)."""
  with needs(*install) if install else contextlib.nullcontext():
    define_flags()
    _run(main, usage_status, interrupted)


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[None]:
  """SIGTERM raises KeyboardInterrupt('SIGTERM') while active, as Ctrl-C does
  (KeyboardInterrupt()), so that a stopped program cleans up as an interrupted one."""

  def interrupt(signum, frame):
    del frame
    raise KeyboardInterrupt(signal.Signals(signum).name)

  previous = signal.signal(signal.SIGTERM, interrupt)
  try:
    yield
  finally:
    signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def exit_interrupted(e: KeyboardInterrupt, what: str) -> None:
  """Ends a program that `e` stopped: `error: interrupted (SIGINT): <what>` on stderr
  (its message in the parentheses, where it has one beyond the signal's name), exit
  128 + the signal (130, 143), as a shell reports a program its signal ended."""
  signum = getattr(e, "signum", None)  # SeparationInterrupted's: its own line is separate's
  detail = signal.Signals(signum).name if signum else str(e) or "SIGINT"
  name = detail.split()[0] if detail.split()[0] in signal.Signals.__members__ else "SIGINT"
  print(f"error: interrupted ({detail}): {what}", file=sys.stderr, flush=True)
  sys.exit(128 + signal.Signals[name])


# absl's help flags, which print the usage and exit 1 before `main`.
_HELP_FLAGS = ("help", "helpshort", "helpfull", "helpxml", "?")


def _run(main: Callable[[list[str]], None], usage_status: int, interrupted: str) -> None:
  """absl's `app.run` for `main`: `--help` (or `-h`) shows the program's docstring and
  flags (absl shows those of the script file, which has neither, and only the flags
  defined in it, not the shared ones) and exits 0, as --help does elsewhere (absl: 1)."""
  from absl import app

  program = main.__module__
  # The flags this package defined for the program: its own and the shared ones.
  ours = [flag for module, defined in flags.FLAGS.flags_by_module_dict().items()
          if module in (program, sys.argv[0]) or module.startswith(f"{__package__}.")
          for flag in defined]
  for flag in ours:
    flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)
  script = sys.modules["__main__"]
  script.__doc__ = script.__doc__ or sys.modules[program].__doc__
  end = sys.argv.index("--") if "--" in sys.argv else len(sys.argv)
  sys.argv[1:end] = ["--help" if arg == "-h" else arg for arg in sys.argv[1:end]]
  asked = any(name in _HELP_FLAGS and value in (None, "true", "1")
              for name, value, _ in _flag_arguments(sys.argv[1:]))
  started = False

  def started_main(argv: list[str]) -> None:
    nonlocal started
    started = True
    setup()
    try:
      with sigterm_interrupts():
        main(argv)
    except KeyboardInterrupt as e:
      exit_interrupted(e, interrupted)

  try:
    app.run(started_main, flags_parser=lambda argv: parse_flags(argv, usage_status))
  except SystemExit as e:
    if asked and not started and e.code == 1:
      sys.exit(0)
    raise


def no_arguments(argv: list[str]) -> None:
  """For a program that takes flags only: absl's usage, then the arguments it was given."""
  from absl import app

  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")


def _flag_arguments(argv: list[str]) -> Iterator[tuple[str, str | None, str | None]]:
  """(name, value or None, next argument or None) of each flag in argv, written
  --name=value, -name=value, --name value or -name value."""
  for i, arg in enumerate(argv):
    if arg == "--":
      return
    if re.match(r"--?[A-Za-z_]", arg):
      name, equals, value = arg.lstrip("-").partition("=")
      following = argv[i + 1] if i + 1 < len(argv) else None
      yield name, value if equals else None, following


def _looks_like_flag(arg: str | None) -> bool:
  return arg is not None and bool(re.match(r"--?[A-Za-z_]", arg))


def _fail(line: str, status: int) -> None:
  """Ends the program with `error: line` on stderr."""
  print(f"error: {line}", file=sys.stderr, flush=True)
  sys.exit(status)


def _check_missing_values(argv: list[str], status: int) -> None:
  """Exits if a flag that takes a value (among those defined so far) is followed by
  another flag instead: absl would take "--workdir --config=X" as a workdir named
  "--config=X"."""
  for name, value, following in _flag_arguments(argv[1:]):
    flag = flags.FLAGS[name] if name in flags.FLAGS else None
    if (value is None and flag is not None and not flag.boolean
        and _looks_like_flag(following)):
      _fail(f"--{name}: missing value (the next argument is the flag {following})", status)


def parse_flags(argv: list[str], status: int = 1) -> list[str]:
  """absl's flag parser for the command-line programs, with a bad flag, a bad --config
  path or override, or a missing value explained in one line (exit `status`) instead of
  absl's usage dump or a traceback, whichever way the flags are written (--config=X,
  --config X, -config=X)."""
  _check_missing_values(argv, status)
  # A config file (ml_collections' flag), not a --config of another kind (a benchmark's name).
  config_file = "config" in flags.FLAGS and flags.FLAGS["config"].flag_type() == "config object"
  for name, value, following in _flag_arguments(argv[1:]):
    if name == "config" and config_file and (value, following) != (None, None):
      path = (value if value is not None else following).split(":", 1)[0]
      if not pathlib.Path(path).is_file():
        _fail(f"--config={path}: no such file (configs live in experiments/)", status)
  try:
    rest = flags.FLAGS(argv)
  except flags.Error as e:
    _check_missing_values(argv, status)  # the likelier cause; a config's override flags exist now
    lines = [line.strip() for line in str(e).splitlines() if line.strip()] or [str(e)]
    if len(lines) > 1 and all(line.startswith("flag --") for line in lines):
      # Several flags missing or bad: each, on one line.
      _fail("; ".join(line.rstrip(".") for line in lines), status)
    # A config's own error arrives as the last line of a traceback: "ValueError: ...".
    _fail(re.sub(r"^[A-Za-z]*(Error|Exception): ", "", lines[-1]), status)
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    # ml_collections raises these for an override of a field the config lacks.
    overrides = [a for a in argv[1:] if a.lstrip("-").startswith("config.")]
    # ml_collections wraps a KeyError("'colour'") in an AttributeError.
    key = e if isinstance(e, KeyError) else (e.args or (None,))[0]
    detail = f"no field {key.args[0]}" if isinstance(key, KeyError) and key.args else e
    # "Did you mean ...?" comes on a line of its own.
    detail = "; ".join(line.strip() for line in str(detail).splitlines() if line.strip())
    _fail(f"an override does not fit the config ({detail}): check the field names and "
          f"types of {' '.join(overrides)} against experiments/default.py", status)
  _check_missing_values(argv, status)  # again: the config's override flags exist only now
  for name in list(flags.FLAGS):
    try:
      getattr(flags.FLAGS[name].value, "keys", None)
    except OSError as e:  # config_flags keeps a config file's load error until first use
      _fail(f"--{name}: {str(e).splitlines()[0]}", status)
  return rest

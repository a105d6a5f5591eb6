"""Wave-U-Net music source separation on raw audio, in JAX/Flax."""

import logging as _logging
import pathlib as _pathlib
import sys as _sys

__version__ = "0.1.0"


class _LibraryChatter(_logging.Filter):
  """Drops Orbax's, TFDS's and TensorFlow's INFO and WARNING logs: they bury our
  progress lines."""

  def filter(self, record: _logging.LogRecord) -> bool:
    noisy = any(part in record.pathname
                for part in ("/orbax/", "/tensorflow_datasets/", "/tensorflow/"))
    return not (noisy and record.levelno < _logging.ERROR)


def quiet_library_logs() -> None:
  """For command-line programs: keep the console to this project's own log lines."""
  from absl import logging

  logging.get_absl_handler().addFilter(_LibraryChatter())


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parser for the command-line programs, with a bad --config path or
  override explained in one line instead of absl's usage dump."""
  from absl import flags

  for arg in argv[1:]:
    if arg.startswith("--config="):
      path = arg.split("=", 1)[1].split(":", 1)[0]
      if not _pathlib.Path(path).is_file():
        _sys.exit(f"error: --config={path}: no such file (configs live in experiments/)")
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    _sys.exit(f"error: {lines[-1] if lines else e}")
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    # ml_collections raises these for an override of a field the config lacks.
    overrides = [a for a in argv[1:] if a.startswith("--config.")]
    _sys.exit(f"error: an override does not fit the config ({e}): check the field names "
              f"and types of {' '.join(overrides)} against experiments/default.py")


from waveunet_jax.audio import write_text_atomic  # noqa: E402,F401 (re-exported)

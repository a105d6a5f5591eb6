"""Wave-U-Net music source separation on raw audio, in JAX/Flax."""

import logging as _logging
import os as _os
import pathlib as _pathlib

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


def write_text_atomic(path: _pathlib.Path, text: str) -> None:
  """Writes `text` to a temporary name beside `path` and renames it into place, so a
  crash or a kill never leaves a half-written file."""
  path.parent.mkdir(parents=True, exist_ok=True)
  temp = path.with_name(f".{path.name}.part-{_os.getpid()}")
  try:
    temp.write_text(text)
    _os.replace(temp, path)
  finally:
    temp.unlink(missing_ok=True)

"""Wave-U-Net music source separation on raw audio, in JAX/Flax."""

import logging as _logging

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

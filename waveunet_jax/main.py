"""Trains a Wave-U-Net: flags only; the work is in `train.train_and_evaluate`.

  python -m waveunet_jax.main --config=experiments/shallow.py:smoke --workdir=/tmp/smoke
  python -m waveunet_jax.main --config=experiments/deep.py:M4 --workdir=runs/m4 \\
      --config.data.data_dir=/data/tfds --config.optim.learning_rate=3e-4

Re-running the same command resumes from the workdir's checkpoints. Add --distributed
on every host of a multi-host TPU slice or GPU cluster.
"""

import os
import pathlib
import sys

from absl import app, flags, logging
from ml_collections import config_flags

import waveunet_jax

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file with an optional argument, e.g. experiments/deep.py:M5.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, logs and TensorBoard go.")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Call jax.distributed.initialize() (multi-host TPU or GPU).")
flags.mark_flags_as_required(["config", "workdir"])


def parse_flags(argv: list[str]) -> list[str]:
  """absl's parser, with bad --config paths and overrides explained in one line."""
  for arg in argv[1:]:
    if arg.startswith("--config="):
      path = arg.split("=", 1)[1].split(":", 1)[0]
      if not pathlib.Path(path).is_file():
        sys.exit(f"error: --config={path}: no such file (configs live in experiments/)")
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    sys.exit(f"error: {lines[-1] if lines else e}")
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    # ml_collections raises these for an override of a field the config lacks.
    overrides = [a for a in argv[1:] if a.startswith("--config.")]
    sys.exit(f"error: an override does not fit the config ({e}): check the field names "
             f"and types of {' '.join(overrides)} against experiments/default.py")


def main(argv: list[str]) -> None:
  waveunet_jax.quiet_library_logs()
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  # tf.data must not take the accelerators (or their memory) from JAX.
  import tensorflow as tf

  tf.config.set_visible_devices([], "GPU")
  import jax

  if _DISTRIBUTED.value:
    jax.distributed.initialize()
  from waveunet_jax import models, prepare, train

  logging.info("JAX process %d of %d, devices: %s", jax.process_index(), jax.process_count(),
               jax.devices())
  try:
    train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except (models.ConfigError, prepare.DataError, train.TrainingError) as e:
    sys.exit(f"error: {e}")


if __name__ == "__main__":
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter
  app.run(main, flags_parser=parse_flags)

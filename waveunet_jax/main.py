"""Trains a Wave-U-Net: flags only; the work is in `train.train_and_evaluate`.

  python -m waveunet_jax.main --config=experiments/shallow.py:smoke --workdir=/tmp/smoke
  python -m waveunet_jax.main --config=experiments/deep.py:M4 --workdir=runs/m4 \\
      --config.data.data_dir=/data/tfds --config.optim.learning_rate=3e-4

Re-running the same command resumes from the workdir's checkpoints. Add --distributed
on every host of a multi-host TPU slice or GPU cluster.
"""

import os
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
  app.run(main, flags_parser=waveunet_jax.parse_flags)

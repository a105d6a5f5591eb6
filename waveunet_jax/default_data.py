"""The built-in default data: a run whose config names no dataset trains on a synthetic
corpus (`synthetic`), prepared once (`prepare`) inside its workdir.

Training calls `ensure_data` at the start of every run; with `config.data.data_dir`
set it does nothing.
"""

from __future__ import annotations

import jax
import ml_collections
from absl import logging
from jax.experimental import multihost_utils

from waveunet_jax import checkpoints, prepare, synthetic


def ensure_data(config: ml_collections.ConfigDict,
                workdir: checkpoints.Workdir) -> ml_collections.ConfigDict:
  """The config with `data.data_dir` set: as given, or a synthetic corpus prepared once
  under the workdir when none is given (process 0 writes it, the others wait)."""
  if config.data.data_dir:
    return config
  data = config.data
  root, data_dir = workdir.synthetic_corpus, workdir.synthetic_data_dir
  logging.info("config.data.data_dir is not set: training on a synthetic corpus of %d tracks "
               "of %.0f s in %s. To train on MUSDB18, run python -m waveunet_jax.prepare "
               "--musdb_root=DIR --data_dir=OUT --config=<this config> and pass "
               "--config.data.data_dir=OUT.", data.synthetic_tracks, data.synthetic_seconds, root)
  if jax.process_index() == 0:
    tracks = synthetic.write_corpus(root, num_train=data.synthetic_tracks, num_test=1,
                                    seconds=data.synthetic_seconds, seed=config.seed)
    valid = [tracks[0].name]
    prepare.prepare(config, root, data_dir, wav=True, valid_tracks=valid)
  multihost_utils.sync_global_devices("synthetic data prepared")
  config = ml_collections.ConfigDict(config.to_dict())
  config.data.data_dir = str(data_dir)
  return config

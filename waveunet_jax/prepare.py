"""The program that turns MUSDB18 (stem files or the HQ wav release) or one's own
multitracks into a TFDS dataset of TFRecord windows (`data.builder` does the work).

  python -m waveunet_jax.prepare --musdb_root=DIR --data_dir=OUT --config=experiments/shallow.py
  python -m waveunet_jax.prepare --musdb_root=DIR --wav ...      # MUSDB18-HQ layout
  python -m waveunet_jax.prepare --tracks_file=FILE ...          # track folders listed

`data.tracks` reads the tracks and chooses the splits; `records.Layout` says how they
are stored. docs/data.md has the details.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence

from absl import flags

from waveunet_jax import console, shared_flags

# `models`, TFDS and the data path are imported in `main`, so that without the train
# install `cli()` can say what to install in one line.


def main(argv: Sequence[str]) -> None:
  console.no_arguments(argv)
  console.import_tensorflow()
  from ml_collections import config_flags

  from waveunet_jax import models
  from waveunet_jax.data import builder, tracks

  FLAGS = flags.FLAGS
  valid = tracks.track_names(FLAGS.valid_tracks)
  try:
    result = builder.prepare(FLAGS.config, FLAGS.musdb_root, FLAGS.data_dir, wav=FLAGS.wav,
                             valid_tracks=valid, tracks_file=FLAGS.tracks_file)
  except (builder.DataError, models.ConfigError) as e:
    raise SystemExit(f"error: {e}") from None
  splits = {name: split.num_examples for name, split in result.info.splits.items()}
  config = [f"--config={config_flags.get_config_filename(FLAGS['config'])}",
            *(f"--config.{k}={v}" for k, v in config_flags.get_override_values(FLAGS["config"])
              .items() if k != "data.data_dir")]
  command = [console.python(), "-m", "waveunet_jax.main", *config, "--workdir=WORKDIR",
             f"--config.data.data_dir={FLAGS.data_dir}"]
  console.done(f"done: prepared {result.data_dir}, windows per split {splits}. Train on it "
               f"(the same config and overrides):\n  {shlex.join(command)}")


def _define_flags() -> None:
  # Defined only when run as a program (shared_flags says why).
  shared_flags.define(
      "config", "musdb_root", "wav", "valid_tracks",
      config="Training config whose sources, rate and lengths to prepare.",
      musdb_root="MUSDB18, or any folder in its layout: train/, optionally valid/ and test/.",
      valid_tracks="Comma-separated training tracks to validate on (default: the valid/ "
                   "folder or valid lines; else musdb's 14-track split for MUSDB18; else "
                   "about 10 % of the training tracks).")
  flags.DEFINE_string("tracks_file", None, "Instead of --musdb_root: a text file naming one "
                      "track folder per line, optionally followed by its split (train, valid, "
                      "test).")
  flags.DEFINE_string("data_dir", None, "Where to write the TFDS dataset.")
  flags.mark_flags_as_required(["config", "data_dir"])


def cli() -> None:
  """The program `python -m waveunet_jax.prepare` (and the console script
  waveunet-prepare)."""
  console.run_program(main, _define_flags, install=("train", "prepare"))


if __name__ == "__main__":
  cli()

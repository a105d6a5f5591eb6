"""MUSDB18 (stem files or the HQ wav release) or one's own multitracks -> a TFDS
dataset of TFRecord windows.

  python -m waveunet_jax.prepare --musdb_root=DIR --data_dir=OUT --config=experiments/shallow.py
  python -m waveunet_jax.prepare --musdb_root=DIR --wav ...      # MUSDB18-HQ layout
  python -m waveunet_jax.prepare --tracks_file=FILE ...          # track folders listed

Reads `DIR/{train,valid,test}` (valid/ and test/ optional): `<track>.stem.mp4` files
(MUSDB18, decoded by PyAV) or, with `--wav`, `<track>/<stem>.wav`
folders (MUSDB18-HQ, or one's own multitracks: extra stems such as `piano.wav` count
as `other`, `accompaniment.wav` or `instrumental.wav` as drums + bass + other, and a
stem that no source of the config needs may be missing; `stems` owns the rule).
`--tracks_file` lists track folders instead. The splits are `train`, `valid` and
`test`; the validation tracks are `--valid_tracks`, else the valid/ folder (or
lines), else musdb's 14-track split for MUSDB18, else about 10 % of the training
tracks. `tracks` owns reading the tracks and choosing the splits; this module the
layout, the windows and the TFDS builder.

Storage, chosen so that a random crop never decodes a whole track:
* only the config's sources are stored (never a mix: training sums the sources), at
  the config's sample rate and channel count, as int16;
* each track is zero-padded by the network's context at both ends, as in the paper,
  and cut into overlapping windows: window k holds the crops that start at
  `k * hop ... (k + 1) * hop - 1` (so `hop + input_length - 1` samples), where
  `hop` is a multiple of the output length near 4 input lengths. A crop reads one
  window (about 25 % of storage is overlap), and validation tiles with hop =
  output length line up with windows.
The windows depend on the model's input and output lengths, so the dataset's TFDS
config name records them (`Layout.name`); a second config with other lengths
prepares its own dataset beside the first in the same --data_dir.

Never on the training path: training only reads what this wrote.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
import shlex
import shutil
from collections.abc import Iterator, Sequence

import numpy as np
from absl import logging

from waveunet_jax import console
from waveunet_jax import stems as stems_lib
from waveunet_jax import tracks as tracks_lib
# Raised here too, for layouts and datasets; the data path catches it as prepare.DataError.
from waveunet_jax.tracks import DataError

# `models` (Flax) is imported where it is used, so that without the train install
# `cli()` can say what to install in one line.

# int16 sample = round(float sample * AUDIO_SCALE), clipped to the int16 range.
AUDIO_SCALE = 32768.0
# Windows hold about this many input lengths of crop starts (overlap is 1 / this).
WINDOW_INPUT_LENGTHS = 4


@dataclasses.dataclass(frozen=True)
class Layout:
  """What a prepared dataset holds: which audio, and cut for which lengths."""

  sources: tuple[str, ...]
  sample_rate: int
  num_channels: int
  input_length: int
  output_length: int

  @property
  def offset(self) -> int:
    from waveunet_jax import models

    return models.Lengths(self.input_length, self.output_length).offset

  @property
  def hop(self) -> int:
    """Crop starts per window: a multiple of the output length."""
    tiles = math.ceil(WINDOW_INPUT_LENGTHS * self.input_length / self.output_length)
    return tiles * self.output_length

  @property
  def window_length(self) -> int:
    return self.hop + self.input_length - 1

  @property
  def name(self) -> str:
    """The TFDS config name: everything the stored windows depend on."""
    return (f"{'-'.join(self.sources)}_{self.sample_rate}hz_{self.num_channels}ch"
            f"_in{self.input_length}_out{self.output_length}")


def layout_for(config) -> Layout:
  """The dataset layout a training config needs."""
  sources = tuple(config.model.sources)
  known = stems_lib.STEMS + tuple(stems_lib.derivable(stems_lib.STEMS))
  for source in sources:
    if source not in known:
      raise DataError(f"config.model.sources: {source!r} is not in MUSDB18; use "
                      f"{', '.join(known)}")
  if config.model.num_channels not in (1, 2):
    raise DataError(f"config.model.num_channels: MUSDB18 is stereo; use 1 (downmixed) or 2, "
                    f"got {config.model.num_channels}")
  from waveunet_jax import models

  size = models.lengths(config.model, config.data.output_length)
  return Layout(sources, int(config.data.sample_rate), int(config.model.num_channels),
                size.input_length, size.output_length)


# --------------------------------------------------------------------------- #
# A track's sources, as stored.
# --------------------------------------------------------------------------- #


def track_sources(stems: dict[str, np.ndarray], rate: int, layout: Layout) -> np.ndarray:
  """The layout's sources of one track's stems (`tracks.read_multitrack`), summed as `stems`
  says: int16 [sources, time, channels], resampled
  with a band-limited resampler (soxr, high quality) and downmixed if mono."""
  import soxr

  out = []
  for source in stems_lib.combine_multitrack(stems, layout.sources).values():
    if layout.num_channels == 1:
      source = source.mean(axis=1, keepdims=True)
    if rate != layout.sample_rate:
      source = soxr.resample(source, rate, layout.sample_rate, quality="HQ")
    out.append(source)
  return to_int16(np.stack(out))


def to_int16(audio: np.ndarray) -> np.ndarray:
  return np.clip(np.round(audio * AUDIO_SCALE), -32768, 32767).astype(np.int16)


# --------------------------------------------------------------------------- #
# Windows.
# --------------------------------------------------------------------------- #


def track_windows(sources: np.ndarray, layout: Layout) -> Iterator[dict[str, np.ndarray | int]]:
  """Cuts one track, [S, N, C], into the stored windows (see the module docstring).

  A crop starting at s (0 <= s < N - output_length + 1) is
  `padded[:, s:s + input_length]` of the track padded by `layout.offset` zeros on the
  left; its targets are the track's samples s ... s + output_length - 1. Window k
  holds `padded[:, k * hop:k * hop + window_length]`, `num_starts` training crop
  starts and `num_tiles` validation tiles (starts k * hop + j * output_length), the
  last tile running into zero padding past the end of the track.
  """
  n = sources.shape[1]
  hop, out = layout.hop, layout.output_length
  num_starts = n - out + 1
  num_tiles = math.ceil(n / out)
  last_start = max(num_starts - 1, (num_tiles - 1) * out)
  num_windows = last_start // hop + 1
  right = num_windows * hop + layout.input_length - 1 - layout.offset - n
  padded = np.pad(sources, ((0, 0), (layout.offset, right), (0, 0)))
  for k in range(num_windows):
    yield {
        "index": k,
        "start": k * hop,
        "num_starts": int(np.clip(num_starts - k * hop, 0, hop)),
        "num_tiles": int(np.clip(num_tiles - k * (hop // out), 0, hop // out)),
        "sources": padded[:, k * hop:k * hop + layout.window_length],
    }


# --------------------------------------------------------------------------- #
# Splits.
# --------------------------------------------------------------------------- #



# --------------------------------------------------------------------------- #
# The TFDS builder.
# --------------------------------------------------------------------------- #


def _builder_class():
  """Defines the builder on first use, so importing this module does not import
  tensorflow (the separation path never needs it)."""
  global _BUILDER
  if _BUILDER is not None:
    return _BUILDER
  import tensorflow_datasets as tfds

  class MusdbWindows(tfds.core.GeneratorBasedBuilder):
    """MUSDB18 sources cut into windows for random crops (see waveunet_jax.prepare)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}

    def __init__(self, *, layout: Layout,
                 splits: dict[str, list[tracks_lib.Track]] | None = None, **kwargs):
      self.layout = layout
      self._tracks = splits
      super().__init__(config=tfds.core.BuilderConfig(name=layout.name), **kwargs)

    def _info(self):
      shape = (len(self.layout.sources), self.layout.window_length, self.layout.num_channels)
      return self.dataset_info_from_configs(
          description=__doc__,
          features=tfds.features.FeaturesDict({
              "track": tfds.features.Text(),
              "index": np.int32,
              "start": np.int64,
              "num_starts": np.int32,
              "num_tiles": np.int32,
              "sources": tfds.features.Tensor(shape=shape, dtype=np.int16,
                                              encoding=tfds.features.Encoding.BYTES),
          }),
          metadata=tfds.core.MetadataDict(layout=dataclasses.asdict(self.layout)),
      )

    # TFDS prints these to stdout whatever the log level; prepare logs its own lines.
    def _log_download_bytes(self) -> None:
      logging.info("writing %s to %s", self.layout.name, self.data_dir)

    def _log_download_done(self) -> None:
      logging.info("%s is prepared in %s", self.layout.name, self.data_dir)

    def _split_generators(self, dl_manager):
      del dl_manager  # everything is local
      return {split: self._generate_examples(split, tracks)
              for split, tracks in self._tracks.items() if tracks}

    def _generate_examples(self, split: str, tracks: list[tracks_lib.Track]):
      with console.progress(len(tracks), f"prepare {split}", unit="track") as bar:
        yield from self._split_examples(split, tracks, bar)

    def _split_examples(self, split: str, tracks: list[tracks_lib.Track], bar):
      longest, used = (0.0, ""), 0
      for i, track in enumerate(tracks):
        bar.set_postfix_str(track.name, refresh=False)
        stems, rate = tracks_lib.read_multitrack(track, self.layout.sources)
        sources = track_sources(stems, rate, self.layout)
        extra = ", ".join(f"{s} counted as {' + '.join(stems_lib.holds(s))}"
                          for s in stems if s not in stems_lib.STEMS)
        seconds = sources.shape[1] / self.layout.sample_rate
        longest = max(longest, (seconds, track.name))
        if sources.shape[1] < self.layout.output_length:
          logging.warning("%s [%d/%d] %s: skipped, %.2f s is shorter than one output "
                          "(%d samples)", split, i + 1, len(tracks), track.name, seconds,
                          self.layout.output_length)
          if i == len(tracks) - 1 and not used:
            # Else TFDS stops with "No examples were yielded".
            raise DataError(
                f"every track of the {split} split is shorter than one training example: "
                f"this config's examples have {self.layout.output_length} output samples at "
                f"{self.layout.sample_rate} Hz, so tracks must last at least "
                f"{self.layout.output_length / self.layout.sample_rate:.2f} s, and the "
                f"longest, {longest[1]!r}, lasts {longest[0]:.2f} s. Use longer tracks or a "
                "smaller config.data.output_length")
          continue
        used += 1
        count = 0
        for window in track_windows(sources, self.layout):
          count += 1
          yield f"{track.name}/{window['index']}", {"track": track.name, **window}
        bar.update()
        # Every track on a log line where no bar shows (a log file); extra stems always.
        if bar.disable or extra:
          logging.info("%s [%d/%d] %s: %.1f s, %d windows%s", split, i + 1, len(tracks),
                       track.name, seconds, count,
                       f" ({extra})" if extra else "")

  _BUILDER = MusdbWindows
  return _BUILDER


_BUILDER = None


def builder(layout: Layout, data_dir: str | pathlib.Path, splits=None):
  """The TFDS builder of `layout` under `data_dir` (prepared or not)."""
  return _builder_class()(layout=layout, splits=splits, data_dir=str(data_dir))


def prepare(config, musdb_root: str | pathlib.Path | None, data_dir: str | pathlib.Path, *,
            wav: bool = False, valid_tracks: Sequence[str] | None = None,
            tracks_file: str | pathlib.Path | None = None):
  """Builds the dataset `config` trains on from the tracks of `musdb_root` or of
  `tracks_file` (`tracks.split_tracks`); does nothing if it is already there.

  TFDS writes into a temporary `incomplete.*` folder and renames it when every split
  is written, so a killed run leaves no dataset that loads half-written; leftovers
  of killed runs are removed here and the next run starts the job again.
  """
  tracks_lib.check_one_of(musdb_root, tracks_file)
  import tensorflow_datasets as tfds

  layout = layout_for(config)
  result = builder(layout, data_dir)
  if result.is_prepared():
    logging.info("%s is already prepared in %s", layout.name, result.data_dir)
    return result
  splits = tracks_lib.split_tracks(musdb_root, wav, valid_tracks, tracks_file=tracks_file)
  for split, tracks in splits.items():
    logging.info("%s: %d tracks", split, len(tracks))
  for track in (track for tracks in splits.values() for track in tracks):
    tracks_lib.check_track(track, layout.sources)
  result = builder(layout, data_dir, splits)
  version_dir = pathlib.Path(result.data_dir)
  for stale in version_dir.parent.glob("incomplete.*"):
    logging.info("removing %s, left by an interrupted run", stale)
    shutil.rmtree(stale, ignore_errors=True)
  tfds.display_progress_bar(False)  # TFDS's bars for splits and shuffling; ours count tracks
  result.download_and_prepare(download_config=tfds.download.DownloadConfig(
      try_download_gcs=False, compute_stats=tfds.download.ComputeStatsMode.SKIP))
  return result


def main(argv: Sequence[str]) -> None:
  from absl import flags

  from waveunet_jax import models

  console.no_arguments(argv)
  console.import_tensorflow()
  FLAGS = flags.FLAGS
  valid = tracks_lib.track_names(FLAGS.valid_tracks)
  try:
    result = prepare(FLAGS.config, FLAGS.musdb_root, FLAGS.data_dir, wav=FLAGS.wav,
                     valid_tracks=valid, tracks_file=FLAGS.tracks_file)
  except (DataError, models.ConfigError) as e:
    raise SystemExit(f"error: {e}") from None
  splits = {name: split.num_examples for name, split in result.info.splits.items()}
  from ml_collections import config_flags

  config = [f"--config={config_flags.get_config_filename(FLAGS['config'])}",
            *(f"--config.{k}={v}" for k, v in config_flags.get_override_values(FLAGS["config"])
              .items() if k != "data.data_dir")]
  command = [console.python(), "-m", "waveunet_jax.main", *config, "--workdir=WORKDIR",
             f"--config.data.data_dir={FLAGS.data_dir}"]
  console.done(f"done: prepared {result.data_dir}, windows per split {splits}. Train on it "
               f"(the same config and overrides):\n  {shlex.join(command)}")


def _define_flags() -> None:
  # Defined only when run as a program (shared_flags says why).
  from absl import flags

  from waveunet_jax import shared_flags

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
  # Run the imported module's code: TFDS locates a builder by its package, which
  # `__main__` does not have.
  from waveunet_jax import prepare as _prepare

  _prepare.cli()

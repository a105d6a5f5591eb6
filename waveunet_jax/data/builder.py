"""The TFDS builder of prepared datasets: tracks -> int16 windows (`records.Layout`), and
the prepared datasets a config trains on (`load_builders`).

`prepare(config, musdb_root, data_dir)` writes one (the `prepare` program's job);
`load_builder(config)` reads one back for the samplers.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
import shutil
from collections.abc import Iterator, Sequence

import ml_collections
import numpy as np
import soxr
import tensorflow as tf
import tensorflow_datasets as tfds
from absl import logging

from waveunet_jax import console
from waveunet_jax import stems as stems_lib
from waveunet_jax.data import tracks as tracks_lib
from waveunet_jax.data.records import DataDir, DataError, Layout, data_dirs, layout_for, to_int16

# The dataset's description in its dataset_info.json.
DESCRIPTION = ("MUSDB18 (or one's own multitracks) cut into int16 windows for random crops, "
               "by waveunet_jax.prepare.")


def track_sources(stems: dict[str, np.ndarray], rate: int, layout: Layout) -> np.ndarray:
  """The layout's sources of one track's stems (`tracks.read_multitrack`), summed as `stems`
  says: int16 [sources, time, channels], resampled
  with a band-limited resampler (soxr, high quality) and downmixed if mono."""
  out = []
  for source in stems_lib.combine_multitrack(stems, layout.sources).values():
    if layout.num_channels == 1:
      source = source.mean(axis=1, keepdims=True)
    if rate != layout.sample_rate:
      source = soxr.resample(source, rate, layout.sample_rate, quality="HQ")
    out.append(source)
  return to_int16(np.stack(out))


def track_windows(sources: np.ndarray, layout: Layout) -> Iterator[dict[str, np.ndarray | int]]:
  """Cuts one track, [S, N, C], into the stored windows (`Layout` says why).

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


class MusdbWindows(tfds.core.GeneratorBasedBuilder):
  """MUSDB18 sources (or one's own) cut into windows for random crops (`records.Layout`)."""

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
        description=DESCRIPTION,
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


def dataset_builder(layout: Layout, data_dir: str | pathlib.Path, splits=None) -> MusdbWindows:
  """The TFDS builder of `layout` under `data_dir` (prepared or not)."""
  return MusdbWindows(layout=layout, splits=splits, data_dir=str(data_dir))


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
  layout = layout_for(config)
  result = dataset_builder(layout, data_dir)
  if result.is_prepared():
    logging.info("%s is already prepared in %s", layout.name, result.data_dir)
    return result
  splits = tracks_lib.split_tracks(musdb_root, wav, valid_tracks, tracks_file=tracks_file)
  for split, tracks in splits.items():
    logging.info("%s: %d tracks", split, len(tracks))
  for track in (track for tracks in splits.values() for track in tracks):
    tracks_lib.check_track(track, layout.sources)
  result = dataset_builder(layout, data_dir, splits)
  version_dir = pathlib.Path(result.data_dir)
  for stale in version_dir.parent.glob("incomplete.*"):
    logging.info("removing %s, left by an interrupted run", stale)
    shutil.rmtree(stale, ignore_errors=True)
  tfds.display_progress_bar(False)  # TFDS's bars for splits and shuffling; ours count tracks
  result.download_and_prepare(download_config=tfds.download.DownloadConfig(
      try_download_gcs=False, compute_stats=tfds.download.ComputeStatsMode.SKIP))
  return result


def load_builder(config: ml_collections.ConfigDict, data_dir: str | None = None):
  """The prepared dataset `config` trains on (the one of `data_dir`, by default the
  only one of config.data.data_dir); a clear error if it is not there or was
  prepared for another layout."""
  layout = layout_for(config)
  datasets = data_dirs(config)
  if data_dir is None:
    if len(datasets) > 1:
      raise ValueError("config.data.data_dir names several datasets: say which")
    data_dir = datasets[0].path
  builder = dataset_builder(layout, data_dir)
  if not builder.is_prepared():
    held = sorted({pathlib.PurePath(p).parent.parent.name for p in tf.io.gfile.glob(
        f"{data_dir}/{builder.name}/*/*/dataset_info.json")})
    field = "config.data.data_dir=" if len(datasets) == 1 else "config.data.data_dir: the dataset "
    raise DataError(
        f"{field}{data_dir} holds no dataset {layout.name} (the sources, rate, channels and "
        f"lengths of this config{'; it holds ' + ', '.join(held) if held else ''}): run "
        f"python -m waveunet_jax.prepare --musdb_root=DIR --data_dir={data_dir} "
        "--config=<this config>")
  return builder, layout


def load_builders(config: ml_collections.ConfigDict) -> list[tuple[DataDir, object]]:
  """Every dataset of config.data.data_dir with its builder: each must be prepared for
  the config's layout."""
  return [(d, load_builder(config, d.path)[0]) for d in data_dirs(config)]


def shard_split(split: str, shard: int, num_shards: int):
  """Share `shard` of `num_shards` of a split's examples (disjoint, together all)."""
  if not 0 <= shard < num_shards:
    raise ValueError(f"shard {shard} is not in [0, {num_shards})")
  return tfds.split_for_jax_process(split, process_index=shard, process_count=num_shards)

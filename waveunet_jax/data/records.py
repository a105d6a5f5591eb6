"""The prepared dataset's contract, without TensorFlow: the window layout and int16 scale,
`config.data.data_dir`'s datasets, the data seeds, the augmentation names, DataError.

The samplers (`tfdata`, `device`), the builder and training read these; importing this
module imports neither TensorFlow nor Flax.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from typing import NamedTuple

import ml_collections
import numpy as np

from waveunet_jax import stems

# int16 sample = round(float sample * AUDIO_SCALE), clipped to the int16 range.
AUDIO_SCALE = 32768.0
# Windows hold about this many input lengths of crop starts (overlap is 1 / this).
WINDOW_INPUT_LENGTHS = 4
# config.data.augmentations may name these; both samplers implement each alike.
AUGMENTATION_NAMES = ("gain", "channel_swap", "remix", "polarity")


class DataError(ValueError):
  """Input data that cannot be used; the message names the track, file or field."""


@dataclasses.dataclass(frozen=True)
class Layout:
  """What a prepared dataset holds: which audio, and cut for which lengths.

  Storage, chosen so that a random crop never decodes a whole track: only the config's
  sources (never a mix: training sums the sources), at the config's sample rate and
  channel count, as int16 (`AUDIO_SCALE`); each track zero-padded by the network's
  context at both ends, as in the paper, and cut into overlapping windows: window k
  holds the crops that start at `k * hop ... (k + 1) * hop - 1` (so `hop +
  input_length - 1` samples), `hop` a multiple of the output length near
  `WINDOW_INPUT_LENGTHS` input lengths. A crop reads one window (about 25 % of storage
  is overlap), and validation tiles with hop = output length line up with windows.
  The windows depend on the lengths, so the TFDS config name records them (`name`): a
  config with other lengths prepares its own dataset beside the first.
  """

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
  for source in sources:
    if source not in stems.SOURCES:
      raise DataError(f"config.model.sources: {source!r} is not in MUSDB18; use "
                      f"{', '.join(stems.SOURCES)}")
  if config.model.num_channels not in (1, 2):
    raise DataError(f"config.model.num_channels: MUSDB18 is stereo; use 1 (downmixed) or 2, "
                    f"got {config.model.num_channels}")
  from waveunet_jax import models

  size = models.lengths(config.model, config.data.output_length)
  return Layout(sources, int(config.data.sample_rate), int(config.model.num_channels),
                size.input_length, size.output_length)


def to_int16(audio: np.ndarray) -> np.ndarray:
  return np.clip(np.round(audio * AUDIO_SCALE), -32768, 32767).astype(np.int16)


def augmentation_names(data: ml_collections.ConfigDict) -> tuple[str, ...]:
  """config.data.augmentations, checked, for both samplers (their tables hold the
  names of `AUGMENTATION_NAMES`, tested), so either sampler trains any config."""
  names = tuple(data.augmentations)
  for name in names:
    if name not in AUGMENTATION_NAMES:
      raise DataError(f"config.data.augmentations: unknown augmentation {name!r}; "
                       f"choose from {', '.join(AUGMENTATION_NAMES)}")
  return names


def derived_seed(*entropy: int) -> int:
  """A non-negative int64 seed from several numbers, decorrelated from the seeds of
  other numbers (numpy's SeedSequence)."""
  return int(np.random.SeedSequence(list(entropy)).generate_state(1)[0] >> 1)


class DataDir(NamedTuple):
  """One prepared dataset of `config.data.data_dir`."""

  path: str
  weight: float  # its share of the training crops (the weights sum to 1)
  name: str      # short and unique among the run's datasets: metric names use it


DATA_DIR_SYNTAX = ("write DIR, or DIR:WEIGHT,DIR:WEIGHT,... (e.g. /data/musdb:0.7,/data/mine:0.3; "
                   "a weight left out is 1)")


def data_dirs(config: ml_collections.ConfigDict) -> list[DataDir]:
  """The prepared datasets `config` trains on, from `config.data.data_dir`: one folder,
  or several with sampling weights, 'DIR:WEIGHT,DIR:WEIGHT,...' (a weight left out is
  1; weights are normalised to sum to 1). A ':' followed by something that is not a
  number belongs to the path (gs://...). Raises DataError naming the field."""
  value = config.data.data_dir
  if not value:
    raise DataError(
        "config.data.data_dir is not set: prepare MUSDB18 with python -m waveunet_jax.prepare "
        "--musdb_root=DIR --data_dir=OUT --config=<this config> and pass "
        "--config.data.data_dir=OUT")
  entries = []
  for item in str(value).split(","):
    item = item.strip()
    path, weight = item, 1.0
    if ":" in item:
      head, tail = item.rsplit(":", 1)
      try:
        path, weight = head.strip(), float(tail)
      except ValueError:
        pass  # not a weight: part of the path
    if not path:
      raise DataError(f"config.data.data_dir={value}: an empty entry; {DATA_DIR_SYNTAX}")
    if not (math.isfinite(weight) and weight > 0):
      raise DataError(f"config.data.data_dir={value}: the weight of {path} is {weight}; "
                              "weights must be finite positive numbers")
    entries.append((path, weight))
  paths = [path for path, _ in entries]
  seen = {}  # the folder, resolved -> the entry that named it first
  for path in paths:
    if _same_folder_key(path) in seen:
      first = seen[_same_folder_key(path)]
      raise DataError(
          f"config.data.data_dir={value}: {path} is named twice"
          + (f" ({first} is the same folder)" if first != path else "")
          + "; name each dataset once, with its weight")
    seen[_same_folder_key(path)] = path
  weights = [weight for _, weight in entries]
  if not math.isfinite(sum(weights)):  # huge weights: their sum overflows, not their ratios
    weights = [weight / max(weights) for weight in weights]
  shares = [weight / sum(weights) for weight in weights]
  for path, share in zip(paths, shares):
    if not np.float32(share) > 0:  # tf.data samples by float32 weights: never drawn
      raise DataError(f"config.data.data_dir={value}: the weight of {path} is too small "
                              "beside the others' to be drawn at all; give weights of "
                              "comparable sizes")
  return [DataDir(path, share, name)
          for path, share, name in zip(paths, shares, _short_names(paths))]


def _same_folder_key(path: str) -> str:
  """What two names of one folder share: the resolved path (`DIR` and `DIR/`, a link
  and its target), or for a URL (gs://...) its text without trailing slashes."""
  if "://" in path:
    return path.rstrip("/")
  return os.path.realpath(path)


def _short_names(paths: list[str]) -> list[str]:
  """The shortest unique path tails, '_'-joined, in characters metric names allow."""
  parts = [[re.sub(r"[^A-Za-z0-9_.-]", "_", p) for p in path.split("/") if p] or ["root"]
           for path in paths]
  for length in range(1, max(len(p) for p in parts) + 1):
    names = ["_".join(p[-length:]) for p in parts]
    if len(set(names)) == len(names):
      return names
  return [f"{name}_{i}" for i, name in enumerate(names)]

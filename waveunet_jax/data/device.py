"""Training data that live on the accelerators: the prepared windows, held by the
devices as int16, sampled and augmented by a jitted function (`DeviceSampler`).

`config.data.pipeline` chooses between this and `tfdata` (`choose`, which `batches`
asks): 'device', 'tfdata', or 'auto' (this where each device's share fits beside the
compiled train step: `Fit`). `read_share` reads a device's windows once, at start;
`crops_and_batch` draws a batch from them with tf.data's statistics; `AUGMENTATIONS`
are `tfdata`'s, in JAX. Validation is tf.data's in both cases (whole tracks, tiled,
weighted).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from jax.experimental import multihost_utils

from waveunet_jax import files, parallel
from waveunet_jax.data import builder as builder_lib
from waveunet_jax.data import records
from waveunet_jax.data.records import DataError, Layout

PIPELINES = ("auto", "device", "tfdata")
# The share of a device's memory the windows and the train step may use together.
MEMORY_MARGIN = 0.8
# Written beside each checkpoint instead of tf.data's iterator positions.
MARKER = "device_sampler.json"

Augmentation = Callable[[jax.Array, jax.Array, ml_collections.ConfigDict], jax.Array]


# --------------------------------------------------------------------------- #
# Augmentations: sources [B, S, T, C] float32, a key -> sources (tfdata's).
# --------------------------------------------------------------------------- #


def random_gain(sources: jax.Array, key: jax.Array, data: ml_collections.ConfigDict) -> jax.Array:
  """Each source of each example times a gain from U[gain_range]."""
  low, high = data.gain_range
  return sources * jax.random.uniform(key, sources.shape[:2] + (1, 1), sources.dtype, low, high)


def channel_swap(sources: jax.Array, key: jax.Array, data: ml_collections.ConfigDict) -> jax.Array:
  """Left and right swapped in half of the examples (all sources alike)."""
  del data
  swap = jax.random.uniform(key, (sources.shape[0], 1, 1, 1)) < 0.5
  return jnp.where(swap, sources[..., ::-1], sources)


def remix(sources: jax.Array, key: jax.Array, data: ml_collections.ConfigDict) -> jax.Array:
  """Each source of each example is, with `remix_probability`, replaced by the same
  source of another example of the device's batch."""
  batch, num_sources = sources.shape[:2]
  shuffle_key, choose_key = jax.random.split(key)
  order = jnp.argsort(jax.random.uniform(shuffle_key, (num_sources, batch)), axis=1)
  others = jnp.stack([sources[order[s], s] for s in range(num_sources)], axis=1)
  take = jax.random.uniform(choose_key, (batch, num_sources, 1, 1)) < data.remix_probability
  return jnp.where(take, others, sources)


def polarity(sources: jax.Array, key: jax.Array, data: ml_collections.ConfigDict) -> jax.Array:
  """Each source of each example negated with probability 1/2."""
  del data
  flip = jax.random.uniform(key, sources.shape[:2] + (1, 1)) < 0.5
  return jnp.where(flip, -sources, sources)


AUGMENTATIONS: dict[str, Augmentation] = {
    "gain": random_gain,
    "channel_swap": channel_swap,
    "remix": remix,
    "polarity": polarity,
}


def augment(sources: jax.Array, key: jax.Array, data: ml_collections.ConfigDict) -> jax.Array:
  """Applies `data.augmentations` (checked by `records.augmentation_names`: both
  samplers know the same names), in order, each with its own key."""
  names = records.augmentation_names(data)
  for name, k in zip(names, jax.random.split(key, max(len(names), 1))):
    sources = AUGMENTATIONS[name](sources, k, data)
  return sources


# --------------------------------------------------------------------------- #
# The windows of one device.
# --------------------------------------------------------------------------- #


@dataclasses.dataclass
class Share:
  """One device's windows of every dataset: int16 [N, S, W, C], the crop starts of
  each and its probability of being drawn (0 for a window without starts)."""

  windows: np.ndarray
  num_starts: np.ndarray  # [N] int32
  probability: np.ndarray  # [N] float32, sums to 1

  @classmethod
  def of(cls, windows: Sequence[np.ndarray], num_starts: Sequence[np.ndarray],
         weights: Sequence[float]) -> Share:
    """Several datasets' windows and crop starts, dataset i drawn with probability
    weights[i] (the weights sum to 1), every crop start of a dataset alike."""
    probability = [w * s / s.sum() for w, s in zip(weights, num_starts)]
    return cls(np.concatenate(windows), np.concatenate(num_starts).astype(np.int32),
               np.concatenate(probability).astype(np.float32))

  def padded(self, size: int) -> Share:
    extra = size - len(self.num_starts)
    return Share(np.pad(self.windows, ((0, extra),) + ((0, 0),) * 3),
                 np.pad(self.num_starts, (0, extra)), np.pad(self.probability, (0, extra)))


def _read_windows(builder, split) -> tuple[np.ndarray, np.ndarray]:
  """Every window of `split` in file order: int16 [N, S, W, C] and num_starts [N]."""
  ds = builder.as_dataset(split=split, shuffle_files=False)
  count = int(ds.cardinality())  # TFDS knows it: the windows go straight to their place
  if count < 0:
    read = list(tfds.as_numpy(ds))
    return (np.stack([w["sources"] for w in read]),
            np.array([w["num_starts"] for w in read], np.int32))
  windows = np.zeros((count,) + tuple(builder.info.features["sources"].shape), np.int16)
  starts = np.zeros(count, np.int32)
  for i, window in enumerate(tfds.as_numpy(ds)):
    windows[i], starts[i] = window["sources"], window["num_starts"]
  return windows, starts


def read_share(config: ml_collections.ConfigDict, shard: int, num_shards: int) -> Share:
  """Device `shard`'s windows of every dataset of config.data.data_dir, as tf.data's
  stream of that device reads them, with each window's probability: its dataset's
  weight times its share of the dataset's crop starts here.

  Device d of D holds share d, as `builder.shard_split` gives it to tf.data's
  per-device streams (with fewer windows than devices, all of them), as int16
  [windows, sources, window_length, channels]; `DeviceSampler` pads the shares with
  empty windows to the longest."""
  windows, starts, weights = [], [], []
  for data_dir in records.data_dirs(config):
    builder, _ = builder_lib.load_builder(config, data_dir.path)
    few = builder.info.splits["train"].num_examples < num_shards
    split = "train" if few else builder_lib.shard_split("train", shard, num_shards)
    w, s = _read_windows(builder, split)
    if not s.sum() and split != "train":
      # A few windows, those of this share holding only track ends: like the devices of a
      # tiny corpus, this one crops from all of them, so that the weights hold here too.
      logging.info("device %d of %d: its share of %s holds no training crop; it crops from "
                   "all of the dataset's windows", shard, num_shards, data_dir.path)
      w, s = _read_windows(builder, "train")
    if not s.sum():
      raise DataError(f"config.data.data_dir: {data_dir.path} has no training crop "
                              "(its tracks are shorter than an output length): prepare "
                              "longer tracks")
    windows.append(w)
    starts.append(s)
    weights.append(data_dir.weight)
  return Share.of(windows, starts, weights)


def share_bytes(config: ml_collections.ConfigDict, num_shards: int) -> int:
  """The bytes of the largest device share of `read_share`, from the datasets' sizes
  alone (nothing is read)."""
  total = 0
  for data_dir in records.data_dirs(config):
    builder, _ = builder_lib.load_builder(config, data_dir.path)
    count = builder.info.splits["train"].num_examples
    per_device = count if count < num_shards else -(-count // num_shards)
    window = int(np.prod(builder.info.features["sources"].shape)) * 2
    total += per_device * (window + 8)  # int16 samples, num_starts and probability
  return total


# --------------------------------------------------------------------------- #
# Does it fit?
# --------------------------------------------------------------------------- #


def device_capacity(device: jax.Device) -> int:
  """The bytes `device` can hold: its allocator's limit on GPU and TPU; on a CPU, the
  machine's memory divided among its local devices."""
  stats = device.memory_stats() if hasattr(device, "memory_stats") else None
  if stats and stats.get("bytes_limit"):
    return int(stats["bytes_limit"])
  memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
  return memory // max(len(jax.local_devices(backend=device.platform)), 1)


def step_bytes(compiled) -> int | None:
  """What one device needs to run a compiled step (arguments, outputs not aliased to
  them, temporaries), or None where the backend cannot say."""
  try:
    memory = compiled.memory_analysis()
  except Exception:  # noqa: BLE001 -- not every backend implements it
    return None
  if memory is None:
    return None
  return int(memory.argument_size_in_bytes + memory.output_size_in_bytes
             - memory.alias_size_in_bytes + memory.temp_size_in_bytes)


@dataclasses.dataclass(frozen=True)
class Fit:
  """Whether the windows fit on each device beside the train step."""

  share: int  # bytes of the largest device share
  step: int | None  # bytes the compiled step needs per device
  capacity: int  # bytes a device holds

  @property
  def fits(self) -> bool:
    return self.share + (self.step or 0) <= MEMORY_MARGIN * self.capacity

  def describe(self) -> str:
    step = "" if self.step is None else f" + {_size(self.step)} for the train step"
    return (f"{_size(self.share)} of training windows per device{step}, against "
            f"{MEMORY_MARGIN:.0%} of the {_size(self.capacity)} a device holds")


def _size(size: int) -> str:
  if size >= 2**30:
    return f"{size / 2**30:.2f} GiB"
  return f"{size / 2**20:.1f} MiB" if size >= 2**20 else f"{size / 2**10:.1f} KiB"


def check_pipeline(config: ml_collections.ConfigDict) -> str:
  """config.data.pipeline, or DataError naming the choices."""
  pipeline = config.data.get("pipeline", "auto")
  if pipeline not in PIPELINES:
    raise DataError(f"config.data.pipeline={pipeline!r}: choose from "
                            f"{', '.join(PIPELINES)}")
  return pipeline


def choose(config: ml_collections.ConfigDict, fit: Callable[[], Fit]) -> str:
  """'device' or 'tfdata' for config.data.pipeline, logged with why; 'device' that does
  not fit raises DataError naming the sizes."""
  pipeline = check_pipeline(config)
  if pipeline == "tfdata":
    logging.info("training data: tf.data (config.data.pipeline='tfdata')")
    return pipeline
  found = fit()
  if found.fits:
    logging.info("training data: sampled on the devices (config.data.pipeline=%r): %s",
                 pipeline, found.describe())
    return "device"
  if pipeline == "device":
    raise DataError(
        f"config.data.pipeline='device': the training data do not fit on the devices "
        f"({found.describe()}); use config.data.pipeline='tfdata' or 'auto', or more devices")
  logging.info("training data: tf.data (config.data.pipeline='auto'; it does not fit on the "
               "devices: %s)", found.describe())
  return "tfdata"


# --------------------------------------------------------------------------- #
# The sampler.
# --------------------------------------------------------------------------- #


def crops_and_batch(windows: jax.Array, num_starts: jax.Array, cumulative: jax.Array,
                    key: jax.Array, *, batch_size: int, layout: Layout,
                    data: ml_collections.ConfigDict) -> dict[str, jax.Array]:
  """One device's batch from its windows: `batch_size` crops, augmented and mixed, as
  `tfdata` gives them ({'mix': [B, T_in, C], 'sources': [B, S, T_out, C]}).

  Statistics as in tf.data: a crop starts uniformly among every allowed start of a
  dataset's tracks on that device (a window is drawn with probability proportional to
  its number of starts, then a start in it uniformly; tf.data draws windows alike, so
  its crops favour the short last window of each track a little), a dataset is drawn
  with its weight (`Share.of`), and the augmentations of `config.data.augmentations`
  (`AUGMENTATIONS`, the same distributions as `tfdata`'s) act on the device's batch;
  the mix is the sum of the augmented sources."""
  windows, num_starts, cumulative = map(jnp.asarray, (windows, num_starts, cumulative))
  window_key, start_key, augment_key = jax.random.split(key, 3)
  draw = jax.random.uniform(window_key, (batch_size,)) * cumulative[-1]
  chosen = jnp.minimum(jnp.searchsorted(cumulative, draw, side="right"), len(cumulative) - 1)
  starts = jnp.floor(jax.random.uniform(start_key, (batch_size,))
                     * num_starts[chosen]).astype(jnp.int32)
  starts = jnp.clip(starts, 0, jnp.maximum(num_starts[chosen] - 1, 0))
  _, num_sources, _, channels = windows.shape

  def crop(w, s):
    return jax.lax.dynamic_slice(windows, (w, 0, s, 0),
                                 (1, num_sources, layout.input_length, channels))[0]

  sources = jax.vmap(crop)(chosen, starts).astype(jnp.float32) / records.AUDIO_SCALE
  sources = augment(sources, augment_key, data)
  return {"mix": sources.sum(axis=1),
          "sources": sources[:, :, layout.offset:layout.offset + layout.output_length]}


class DeviceSampler:
  """The training batches of one stage, drawn on the devices: `batch(step)` is the
  global batch of the step that follows `step` (sharded as `DataParallel.sharded`),
  the same for the same (seed, step, devices) in any run, process layout or resume.

  Why: the tf.data path (`tfdata.train_dataset`) decodes records, crops, augments and
  copies every batch from the host: about 120 M4 examples/s per CPU core, while one
  GPU trains on over 1,000. Here the host reads the prepared TFRecords once, at start
  (`read_share`), and every batch is made where it is used; TensorFlow is then needed
  only to read the records once and to write TensorBoard.

  Each device draws from its own share by a jitted function of (seed, step): the key
  is `fold_in(fold_in(key(seed), step), d)`, so the batch of step n depends only on the
  seed, n and d. A resumed run draws the batches it would have drawn, with nothing
  saved (`save` writes a marker only); processes never exchange data.

  `data`: config.data (the augmentations); `data_layout`: the crops' lengths;
  `shares[i]`: the windows of the i-th device of `shards` (this process's mesh
  positions, as in `tfdata.ShardedData`)."""

  def __init__(self, data: ml_collections.ConfigDict, layout: parallel.DataParallel,
               data_layout: Layout, shares: Sequence[Share], shards: Sequence[int], *,
               batch_size: int, seed: int):
    num_shards = layout.size
    if batch_size % num_shards:
      raise ValueError(f"batch {batch_size} is not a multiple of {num_shards} devices")
    self.seed, shards = int(seed), list(shards)
    size = max(len(s.num_starts) for s in shares)
    if jax.process_count() > 1:  # every process pads to the longest share of all
      size = int(np.max(multihost_utils.process_allgather(np.int32(size))))
    shares = [s.padded(size) for s in shares]
    local = {d: i for i, d in enumerate(shards)}
    devices = list(layout.mesh.devices.flat)

    def global_array(part: Callable[[Share], np.ndarray]) -> jax.Array:
      pieces = [jax.device_put(part(shares[local[d]]), devices[d]) for d in shards]
      shape = (size * num_shards,) + pieces[0].shape[1:]
      return jax.make_array_from_single_device_arrays(shape, layout.sharded, pieces)

    self.windows = global_array(lambda s: s.windows)
    self.num_starts = global_array(lambda s: s.num_starts)
    self.cumulative = global_array(lambda s: np.cumsum(s.probability, dtype=np.float64)
                                   .astype(np.float32))
    per_device = batch_size // num_shards
    spec = jax.sharding.PartitionSpec(parallel.AXIS)

    def local_batch(windows, num_starts, cumulative, seed, step):
      device = jax.lax.axis_index(parallel.AXIS)
      key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed[0]), step[0]), device)
      return crops_and_batch(windows, num_starts, cumulative, key, batch_size=per_device,
                             layout=data_layout, data=data)

    sampled = jax.shard_map(local_batch, mesh=layout.mesh,
                            in_specs=(spec, spec, spec, jax.sharding.PartitionSpec(),
                                      jax.sharding.PartitionSpec()),
                            out_specs=spec, check_vma=False)
    self._sample = jax.jit(sampled, out_shardings=layout.sharded)
    self._seed = jax.device_put(np.array([self.seed % 2**32], np.uint32), layout.replicated)

  def batch(self, step: int) -> dict[str, jax.Array]:
    """The global batch that trains step `step + 1` (made from `step`, the state's)."""
    return self._sample(self.windows, self.num_starts, self.cumulative, self._seed,
                        np.array([step], np.int32))

  # The data positions of a checkpoint: nothing to restore, a marker that says so.

  def save(self, directory: pathlib.Path) -> None:
    if jax.process_index() == 0:
      directory.mkdir(parents=True, exist_ok=True)
      files.write_text_atomic(directory / MARKER, json.dumps({"pipeline": "device",
                                                              "seed": self.seed}))


def sampled_by_device(directory: pathlib.Path) -> bool:
  """Whether the data positions in `directory` were written by a DeviceSampler."""
  return (directory / MARKER).is_file()

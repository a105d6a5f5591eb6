"""Prepared MUSDB18 windows (written by `builder`) -> tf.data batches for JAX.

Validation always reads through here; training does where config.data.pipeline is
'tfdata' (or 'auto' and the windows do not fit on the devices): otherwise the devices
sample the training batches themselves (`device`, the same statistics). `batches`
chooses and builds the streams; the TensorFlow-free contract (layout, scale, seeds,
augmentation names) is `records`'.

`train_dataset`: endless augmented training batches of one device's share; `eval_dataset`:
validation tiles; `AUGMENTATIONS`: the named augmentations; `ShardedData`: the training
streams whose positions are saved beside every checkpoint.
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable

import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from absl import logging

from waveunet_jax import files
from waveunet_jax.data import records
from waveunet_jax.data.builder import load_builder, shard_split
from waveunet_jax.data.records import DataError, Layout, data_dirs, derived_seed

Augmentation = Callable[[tf.Tensor, tf.Tensor, ml_collections.ConfigDict], tf.Tensor]


# --------------------------------------------------------------------------- #
# Augmentations: sources [B, S, T, C] float32, a stateless seed [2] -> sources.
# --------------------------------------------------------------------------- #


def random_gain(sources: tf.Tensor, seed: tf.Tensor, data: ml_collections.ConfigDict) -> tf.Tensor:
  """Each source of each example times a gain from U[gain_range] (the paper's)."""
  low, high = data.gain_range
  shape = tf.concat([tf.shape(sources)[:2], [1, 1]], axis=0)
  return sources * tf.random.stateless_uniform(shape, seed, low, high)


def channel_swap(sources: tf.Tensor, seed: tf.Tensor, data: ml_collections.ConfigDict) -> tf.Tensor:
  """Left and right swapped in half of the examples (all sources alike)."""
  del data
  swap = tf.random.stateless_uniform([tf.shape(sources)[0], 1, 1, 1], seed) < 0.5
  return tf.where(swap, tf.reverse(sources, axis=[-1]), sources)


def remix(sources: tf.Tensor, seed: tf.Tensor, data: ml_collections.ConfigDict) -> tf.Tensor:
  """Each source of each example is, with `remix_probability`, replaced by the same
  source of another example of the batch (crops of other tracks, mostly), making
  mixes that no song has."""
  batch, num_sources = tf.shape(sources)[0], sources.shape[1]
  shuffle_seed, choose_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  order = tf.argsort(tf.random.stateless_uniform([num_sources, batch], shuffle_seed), axis=1)
  others = tf.stack([tf.gather(sources[:, s], order[s]) for s in range(num_sources)], axis=1)
  take = tf.random.stateless_uniform([batch, num_sources, 1, 1], choose_seed) < data.remix_probability
  return tf.where(take, others, sources)


def polarity(sources: tf.Tensor, seed: tf.Tensor, data: ml_collections.ConfigDict) -> tf.Tensor:
  """Each source of each example negated with probability 1/2: a source's sign is
  inaudible alone, but the mix of signs changes how the sources add up."""
  del data
  shape = tf.concat([tf.shape(sources)[:2], [1, 1]], axis=0)
  flip = tf.random.stateless_uniform(shape, seed) < 0.5
  return tf.where(flip, -sources, sources)


AUGMENTATIONS: dict[str, Augmentation] = {
    "gain": random_gain,
    "channel_swap": channel_swap,
    "remix": remix,
    "polarity": polarity,
}


def augment(sources: tf.Tensor, seed: tf.Tensor, data: ml_collections.ConfigDict) -> tf.Tensor:
  """Applies `data.augmentations`, in order, each with its own seed."""
  names = records.augmentation_names(data)
  seeds = tf.random.experimental.stateless_split(seed, max(len(names), 1))
  for i, name in enumerate(names):
    sources = AUGMENTATIONS[name](sources, seeds[i], data)
  return sources


# --------------------------------------------------------------------------- #
# Datasets.
# --------------------------------------------------------------------------- #


def _to_batch(sources: tf.Tensor, layout: Layout) -> dict[str, tf.Tensor]:
  """Sources [B, S, T_in, C] float32 -> the mix and the central targets."""
  return {
      "mix": tf.reduce_sum(sources, axis=1),
      "sources": sources[:, :, layout.offset:layout.offset + layout.output_length],
  }


def _scaled(sources: tf.Tensor) -> tf.Tensor:
  return tf.cast(sources, tf.float32) / records.AUDIO_SCALE


def train_dataset(config: ml_collections.ConfigDict, batch_size: int, *, seed: int,
                  shard: int = 0, num_shards: int = 1) -> tf.data.Dataset:
  """Endless training batches of `batch_size` from share `shard` of `num_shards` of
  the training windows (in training: one device's share of the global batch); with
  fewer windows than shards, every shard reads them all.

  Batches are random crops of the network's input length: the targets are the central
  `output_length` samples (`models.lengths` decides both), tracks are zero-padded by
  the context at their edges (done by `builder`), the augmentations of
  `config.data.augmentations` act on the sources, and the mix is always the sum of the
  augmented sources. As numpy (`as_numpy`), a batch is

    {'mix': [B, T_in, C] float32, 'sources': [B, S, T_out, C] float32}

  with sources ordered as `config.model.sources`.

  Data parallelism shards the data by device, not by process: device d of D reads
  share d of the files (`shard=d, num_shards=D`) into its own batches of the
  per-device batch size, with its own seed, and a process stacks the batches of its
  devices. The global batch therefore depends on the devices' number only, not on how
  they are spread over hosts: 2 processes of 1 device and 1 process of 2 devices train
  on the same batches. Randomness is stateless and seeded, so the same seed gives the
  same batches.

  Several prepared datasets (`config.data.data_dir = "DIR:WEIGHT,DIR:WEIGHT"`, read by
  `data_dirs`) are mixed crop by crop: each device's stream draws each crop from its
  share of dataset i with probability weight i (`tf.data.Dataset.sample_from_datasets`,
  seeded from the device's seed), then batches and augments the mixed crops as above.
  """
  data = config.data
  seed = derived_seed(seed, shard)  # each shard's stream its own
  datasets = data_dirs(config)
  if len(datasets) == 1:
    ds, layout = _train_crops(config, datasets[0].path, seed, shard, num_shards)
  else:
    streams = [_train_crops(config, d.path, derived_seed(seed, 1, i), shard, num_shards)
               for i, d in enumerate(datasets)]
    layout = streams[0][1]
    ds = tf.data.Dataset.sample_from_datasets(
        [crops for crops, _ in streams], weights=[d.weight for d in datasets],
        seed=derived_seed(seed, 0))
  ds = ds.batch(batch_size, drop_remainder=True)

  def augment_and_mix(index, sources):
    return _to_batch(augment(_scaled(sources), tf.stack([seed, 2 * index + 1]), data), layout)

  ds = ds.enumerate().map(augment_and_mix, num_parallel_calls=tf.data.AUTOTUNE)
  return ds.prefetch(tf.data.AUTOTUNE)


def _train_crops(config: ml_collections.ConfigDict, data_dir: str, seed: int, shard: int,
                 num_shards: int) -> tuple[tf.data.Dataset, Layout]:
  """Endless shuffled int16 crops [S, T_in, C] of one dataset's share of windows."""
  builder, layout = load_builder(config, data_dir)
  data = config.data
  # Fewer windows than devices (a tiny corpus): each device crops from all of them,
  # with its own seed.
  few = builder.info.splits["train"].num_examples < num_shards
  split = "train" if few else shard_split("train", shard, num_shards)
  ds = builder.as_dataset(split=split, shuffle_files=True,
                          read_config=tfds.ReadConfig(shuffle_seed=seed))
  ds = ds.filter(lambda window: window["num_starts"] > 0)
  ds = ds.repeat().shuffle(data.window_shuffle_buffer, seed=seed)
  crops = data.crops_per_window

  def random_crops(index, window):
    # Several crops per decoded window: reading is the costly part.
    starts = tf.random.stateless_uniform([crops], [seed, 2 * index], 0,
                                         window["num_starts"], dtype=tf.int32)
    positions = starts[:, None] + tf.range(layout.input_length)[None, :]
    return tf.transpose(tf.gather(window["sources"], positions, axis=1), [1, 0, 2, 3])

  ds = ds.enumerate().map(random_crops, num_parallel_calls=tf.data.AUTOTUNE)
  return ds.unbatch().shuffle(data.crop_shuffle_buffer, seed=seed), layout


def eval_dataset(config: ml_collections.ConfigDict, batch_size: int, *, split: str = "valid",
                 shard: int = 0, num_shards: int = 1,
                 data_dir: str | None = None) -> tf.data.Dataset:
  """Every tile (hop = output length) of every track of share `shard` of `num_shards`
  of `split` of one dataset (`data_dir`, by default the only one of
  config.data.data_dir), in a fixed order, in batches of `batch_size`: the batches of
  `train_dataset` plus 'weight': [B] float32, 0 for the examples that pad the last
  batch. Shares may hold different numbers of tiles. Several datasets are validated
  one at a time (a call per `data_dir`)."""
  builder, layout = load_builder(config, data_dir)
  if split not in builder.info.splits:
    raise DataError(f"the prepared dataset in {data_dir or config.data.data_dir} has "
                            f"no {split!r} split (it has {', '.join(builder.info.splits)})")
  if builder.info.splits[split].num_examples > shard:
    ds = builder.as_dataset(split=shard_split(split, shard, num_shards), shuffle_files=False)
  else:  # fewer windows than shards: this one's share is empty
    ds = builder.as_dataset(split=split, shuffle_files=False).take(0)

  def tiles(window):
    starts = tf.range(window["num_tiles"]) * layout.output_length
    positions = starts[:, None] + tf.range(layout.input_length)[None, :]
    tiled = tf.transpose(tf.gather(window["sources"], positions, axis=1), [1, 0, 2, 3])
    return tf.data.Dataset.from_tensor_slices(tiled)

  ds = ds.flat_map(tiles).batch(batch_size)

  def pad(sources):
    count = tf.shape(sources)[0]
    padding = [[0, batch_size - count], [0, 0], [0, 0], [0, 0]]
    batch = _to_batch(_scaled(tf.pad(sources, padding)), layout)
    batch["weight"] = tf.cast(tf.range(batch_size) < count, tf.float32)
    return batch

  return ds.map(pad, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def as_numpy(ds: tf.data.Dataset):
  """Iterates a dataset as dicts of numpy arrays."""
  return tfds.as_numpy(ds)


# --------------------------------------------------------------------------- #
# Training streams whose positions are saved with each checkpoint.
# --------------------------------------------------------------------------- #


class DataIterator:
  """A tf.data iterator of numpy batches whose position can be saved and restored
  (`tf.train.Checkpoint`)."""

  def __init__(self, dataset: tf.data.Dataset):
    self._iterator = iter(dataset)
    self._checkpoint = tf.train.Checkpoint(iterator=self._iterator)

  def __next__(self) -> dict[str, np.ndarray]:
    return tf.nest.map_structure(lambda t: t.numpy(), next(self._iterator))

  def __iter__(self):
    return self

  def save(self, directory: pathlib.Path) -> None:
    """Writes atomically: into a temporary folder renamed when complete (replacing an
    earlier save of this step, which holds only the iterator's files)."""
    with files.atomic_path(directory, ours=lambda f: all(
        p.name.startswith("iterator.") for p in f.iterdir())) as temp:
      self._checkpoint.write(str(temp / "iterator"))

  def restore(self, directory: pathlib.Path) -> None:
    self._checkpoint.read(str(directory / "iterator")).assert_consumed()


class ShardedData:
  """This process's devices' input streams: `shards[i]` is the mesh position of the
  i-th local device, whose stream is share `shards[i]` of `num_shards`.
  `next()` gives one batch per local device; positions are saved per shard, under
  `DIR/shard_<d>_of_<D>` (one `tf.train.Checkpoint` of the iterator each), so another
  grouping of the same devices into processes restores them. Training saves them beside
  every checkpoint, so that a resumed run reads on exactly where it stopped; the
  training workdir (`workdir.Workdir`) says in which folder."""

  def __init__(self, datasets: list[tf.data.Dataset], shards: list[int], num_shards: int):
    self.iterators = [DataIterator(d) for d in datasets]
    self.shards, self.num_shards = shards, num_shards

  def __next__(self) -> list[dict[str, np.ndarray]]:
    return [next(it) for it in self.iterators]

  def shard_dir(self, directory: pathlib.Path, shard: int) -> pathlib.Path:
    return directory / f"shard_{shard}_of_{self.num_shards}"

  def save(self, directory: pathlib.Path) -> None:
    for shard, iterator in zip(self.shards, self.iterators):
      iterator.save(self.shard_dir(directory, shard))

  def can_restore(self, directory: pathlib.Path) -> bool:
    return all(self.shard_dir(directory, s).is_dir() for s in self.shards)

  def restore(self, directory: pathlib.Path) -> bool:
    """Whether the saved positions were restored: False if they do not fit these
    streams (another mixture of datasets), which must then not be used."""
    try:
      for shard, iterator in zip(self.shards, self.iterators):
        iterator.restore(self.shard_dir(directory, shard))
    except (tf.errors.OpError, AssertionError) as e:
      logging.info("the data positions in %s do not fit: %s", directory, str(e)[:300])
      return False
    return True

  def why_not_restored(self, directory: pathlib.Path) -> str:
    """Why the positions in `directory` did not restore, for the log: another mixture of
    datasets, or another number of devices."""
    if self.can_restore(directory):
      return "do not fit this run's datasets (config.data.data_dir names others)"
    saved_as = sorted({p.name.rsplit("_of_", 1)[-1] for p in directory.glob("shard_*_of_*")})
    return (f"were saved for {' or '.join(saved_as) or 'no'} device(s), and this run has "
            f"{self.num_shards}")

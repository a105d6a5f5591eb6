"""Training's one door to the data: the datasets a run trains on (`ensure_data`, `check`),
each stage's sampler with its positions saved and restored, and the validation streams
(`TrainingData`).

`train.Trainer` asks `TrainingData.sampler(...)` for a stage's batches (`.batch(step)`,
`.save(dir)`) and `TrainingData.validation_batches(...)` for a dataset's tiles.
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from waveunet_jax import parallel, workdir as workdir_lib
from waveunet_jax.data import builder, device, generator, records, tfdata


def check(config: ml_collections.ConfigDict) -> None:
  """What can be checked of the data's fields before anything is read: the pipeline and
  the augmentations (DataError naming the field)."""
  device.check_pipeline(config)
  records.augmentation_names(config.data)


def ensure_data(config: ml_collections.ConfigDict,
                workdir: workdir_lib.Workdir) -> ml_collections.ConfigDict:
  """The config with `data.data_dir` set: as given, or the built-in default data, a
  synthetic corpus (`generator`) prepared once under the workdir when none is given
  (process 0 writes it, the others wait)."""
  if config.data.data_dir:
    return config
  data = config.data
  root, data_dir = workdir.synthetic_corpus, workdir.synthetic_data_dir
  logging.info("config.data.data_dir is not set: training on a synthetic corpus of %d tracks "
               "of %.0f s in %s. To train on MUSDB18, run python -m waveunet_jax.prepare "
               "--musdb_root=DIR --data_dir=OUT --config=<this config> and pass "
               "--config.data.data_dir=OUT.", data.synthetic_tracks, data.synthetic_seconds, root)
  if jax.process_index() == 0:
    tracks = generator.write_corpus(root, num_train=data.synthetic_tracks, num_test=1,
                                    seconds=data.synthetic_seconds, seed=config.seed)
    valid = [tracks[0].name]
    builder.prepare(config, root, data_dir, wav=True, valid_tracks=valid)
  multihost_utils.sync_global_devices("synthetic data prepared")
  config = ml_collections.ConfigDict(config.to_dict())
  config.data.data_dir = str(data_dir)
  return config


class Sampler(Protocol):
  """A stage's training batches: `batch(step)` is the global batch that trains step
  `step + 1`; `save(directory)` writes the positions a resumed run restores."""

  def batch(self, step: int) -> dict[str, jax.Array]: ...

  def save(self, directory: pathlib.Path) -> None: ...


class TfdataSampler:
  """tf.data's streams of this process's devices (`tfdata.ShardedData`), stacked into
  global batches; their positions are saved beside each checkpoint."""

  def __init__(self, streams: tfdata.ShardedData, batch_size: int,
               global_batch: Callable[[list[dict[str, np.ndarray]]], dict[str, jax.Array]]):
    self.streams, self.batch_size, self._global_batch = streams, batch_size, global_batch

  def batch(self, step: int) -> dict[str, jax.Array]:
    del step  # the streams stand where the last batch left them
    return self._global_batch(next(self.streams))

  def save(self, directory: pathlib.Path) -> None:
    self.streams.save(directory)


class TrainingData:
  """The prepared datasets of one run (each must be there, for the config's layout) on
  the devices of `layout`: device d of the mesh reads data shard d of D, so the global
  batch depends on the devices' number only, not on how they are spread over hosts.

  Training batches are drawn on the devices (`device.DeviceSampler`: the batch of step
  n depends on the seed and n alone, nothing to restore) or read by tf.data
  (`tfdata.ShardedData`, whose positions are saved beside each checkpoint), as
  config.data.pipeline and the devices' memory decide (`sampler`). Validation is
  tf.data's in both cases: whole tracks, tiled, weighted."""

  def __init__(self, config: ml_collections.ConfigDict, layout: parallel.DataParallel):
    self.config, self.layout = config, layout
    self.data_layout = records.layout_for(config)
    self.datasets = [d for d, _ in builder.load_builders(config)]  # each there, or DataError
    # Device d of the mesh reads data shard d; these are this process's.
    self.local_devices = [d for d in layout.mesh.devices.flat
                          if d.process_index == jax.process_index()]
    self.shards = [int(np.flatnonzero(layout.mesh.devices.flat == d)[0])
                   for d in self.local_devices]

  def global_batch(self, per_device: list[dict[str, np.ndarray]]) -> dict[str, jax.Array]:
    """One batch per local device (in `self.local_devices` order) -> the global batch,
    device d's rows at the d-th place."""
    def stack(*parts):
      shape = (parts[0].shape[0] * self.layout.size,) + parts[0].shape[1:]
      on_devices = [jax.device_put(p, d) for p, d in zip(parts, self.local_devices)]
      return jax.make_array_from_single_device_arrays(shape, self.layout.sharded, on_devices)

    return jax.tree_util.tree_map(stack, *per_device)

  def seed(self, progress: workdir_lib.Progress) -> int:
    """The seed of the data order: per stage, and anew where the order restarted."""
    return records.derived_seed(self.config.seed, progress.stage, progress.data_start_step)

  def sampler(self, progress: workdir_lib.Progress, batch_size: int,
              compiled_step: Callable[[], Any]) -> Sampler:
    """The training batches of the stage and data order of `progress`, of `batch_size`
    (global): sampled on the devices or read by tf.data, as config.data.pipeline and
    the memory decide (`device.choose`; `compiled_step()`: the stage's train step,
    compiled, whose memory analysis sizes what the windows may use)."""
    if device.choose(self.config, lambda: self._fit(compiled_step)) == "tfdata":
      return self.tfdata_sampler(progress, batch_size)
    num_shards = self.layout.size
    shares = [device.read_share(self.config, shard, num_shards) for shard in self.shards]
    return device.DeviceSampler(self.config.data, self.layout, self.data_layout, shares,
                                self.shards, batch_size=batch_size, seed=self.seed(progress))

  def tfdata_sampler(self, progress: workdir_lib.Progress, batch_size: int) -> TfdataSampler:
    """This process's devices' tf.data streams for the stage and data order of
    `progress`."""
    num_shards = self.layout.size
    streams = tfdata.ShardedData([
        tfdata.train_dataset(self.config, batch_size // num_shards, seed=self.seed(progress),
                             shard=shard, num_shards=num_shards)
        for shard in self.shards], self.shards, num_shards)
    return TfdataSampler(streams, batch_size, self.global_batch)

  def _fit(self, compiled_step: Callable[[], Any]) -> device.Fit:
    """Whether the device sampler's windows fit beside the compiled train step."""
    compiled = compiled_step()
    capacity = min(device.device_capacity(d) for d in self.local_devices)
    if jax.process_count() > 1:  # every process decides alike: by the smallest device
      mib = multihost_utils.process_allgather(np.float32(capacity / 2**20))  # JAX: 32 bits
      capacity = int(np.min(mib) * 2**20)
    return device.Fit(device.share_bytes(self.config, self.layout.size),
                      device.step_bytes(compiled), capacity)

  def resumed(self, sampler: Sampler, progress: workdir_lib.Progress, positions: pathlib.Path,
              step: int) -> Sampler:
    """`sampler` at the positions saved with checkpoint `step` (in `positions`): the
    device sampler needs none; tf.data's streams restore theirs, or, where they cannot
    (saved by the device sampler, for other devices or datasets), start a new random
    order from `step` (`progress.data_start_step`), all processes alike."""
    if isinstance(sampler, device.DeviceSampler):
      if not device.sampled_by_device(positions):
        logging.info("step %d was trained on tf.data's batches; from here the devices draw "
                     "them (the batch of each step from the seed and the step alone)", step)
      return sampler
    streams = sampler.streams
    if device.sampled_by_device(positions):
      reason = ("were not saved: the devices drew the batches (config.data.pipeline="
                "'device'), and tf.data cannot continue their order")
      restored = False
    else:
      reason = streams.why_not_restored(positions)
      restored = streams.can_restore(positions) and streams.restore(positions)
    if jax.process_count() > 1:  # all restore, or all start anew
      restored = bool(np.all(multihost_utils.process_allgather(np.int32(restored))))
    if restored:
      return sampler
    logging.warning("step %d's data positions %s: the parameters and the optimiser resume "
                    "exactly, the training data start a new random order here", step, reason)
    progress.data_start_step = step
    # tf.data still (chosen before), for the same stage's batch size.
    return self.tfdata_sampler(progress, sampler.batch_size)

  def validation_batches(self, batch_size: int, data_dir: str) -> Iterator[dict[str, jax.Array]]:
    """Global batches of every validation tile of one dataset, with 'weight' [B]: 0 for
    the examples that pad. Shares may differ in tiles: a device (or a process) that has
    run out joins in with weight-0 batches until every device of every process has."""
    num_shards = self.layout.size
    per_device = batch_size // num_shards
    streams = [iter(tfdata.as_numpy(tfdata.eval_dataset(
        self.config, per_device, shard=shard, num_shards=num_shards, data_dir=data_dir)))
        for shard in self.shards]
    size = self.data_layout
    channels, sources = size.num_channels, len(size.sources)
    empty = {"mix": np.zeros((per_device, size.input_length, channels), np.float32),
             "sources": np.zeros((per_device, sources, size.output_length, channels),
                                 np.float32),
             "weight": np.zeros((per_device,), np.float32)}
    while True:
      batches = [next(stream, None) for stream in streams]
      more = any(b is not None for b in batches)
      if jax.process_count() > 1:
        more = bool(np.any(multihost_utils.process_allgather(np.array(more))))
      if not more:
        return
      yield self.global_batch([empty if b is None else b for b in batches])

  def validation_excerpt(self, tiles: int) -> dict[str, np.ndarray]:
    """The first `tiles` validation tiles of the first dataset, in its fixed order
    (consecutive tiles of one track are consecutive stretches of it), with 'weight'."""
    return next(iter(tfdata.as_numpy(tfdata.eval_dataset(
        self.config, tiles, data_dir=self.datasets[0].path))))

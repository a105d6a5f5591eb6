"""Training: the train state, a data-parallel jitted step, the paper's schedule, checkpoints.

`train_and_evaluate(config, workdir)` is the whole job; `main.py` only parses flags.

* State: `TrainState` (step, params, batch_stats, opt_state, rng), one pytree,
  replicated over a 1-D device mesh of every device of every process; batches are
  sharded on its `data` axis, so BatchNorm statistics are global-batch ones. Each
  device has its own input stream (`input_pipeline`: shard d of D), so the run is
  the same whether its D devices sit in one process or in several.
* Several processes (hosts): `connect` joins them (`jax.distributed`); every process
  runs the same command, and `check_same_run` refuses to start if their configs or
  workdirs differ. Process 0 alone writes config.json, TensorBoard and the synthetic
  corpus; Orbax checkpoints are written and read by all together.
* Optimiser: Adam (AMSGrad for the seed's config) after L2 with Keras semantics
  (loss += weight_decay * sum(w^2), i.e. 2 * weight_decay * w added to the gradient)
  on the parameters whose path matches `config.optim.l2_mask`, optional global-norm
  clipping, a learning-rate schedule; only on those `config.optim.trainable` selects,
  if set (the others are frozen).
* Fine-tuning: `config.init_from` starts a new run from another run's parameters and
  BatchNorm statistics (`start_from`), with a fresh optimiser at step 0.
* Data: one prepared dataset, or several mixed by weight (`config.data.data_dir`,
  see `input_pipeline`), each validated and logged on its own as well.
* Schedule (the paper's): validate every `eval_every_steps`; a stage ends after
  `patience` validations without improvement; then the fine-tune stage restarts from
  the best parameters with its own batch size and learning rate and a fresh optimiser.
* Checkpoints (Orbax): `checkpoints/` every `checkpoint_every_steps` (asynchronous)
  and `best/` at each new best validation loss; each holds the state and the
  schedule's progress, and the data iterator's position is saved beside them, so
  re-running the same command resumes exactly where the run stopped. The workdir
  itself (config.json, loading for inference) belongs to `checkpoints.py`.
* Stopping: SIGINT (Ctrl-C) or SIGTERM (a preempted VM) ends the run after the current
  step with a checkpoint of that step (`Interrupted`); a second one quits at once.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import hashlib
import json
import os
import pathlib
import re
import shutil
import signal
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils

from waveunet_jax import checkpoints, console, files, models, parallel


class TrainingError(RuntimeError):
  """The run cannot go on; the message says why and what to do."""


class Interrupted(Exception):
  """The run stopped on a signal after `step`, with a checkpoint of that step saved;
  re-running the same command resumes from it."""

  def __init__(self, step: int, signum: int):
    self.step, self.signum = step, signum
    super().__init__(f"stopped at step {step} on {signal.Signals(signum).name}, "
                     "with a checkpoint of that step")


class StopOnSignal:
  """While active (a context manager), the first SIGINT or SIGTERM only records itself
  in `.signum`, for the loop to stop after its current step; a second one raises
  KeyboardInterrupt at once. Does nothing outside the main thread, where Python
  cannot take signals."""

  SIGNALS = (signal.SIGINT, signal.SIGTERM)

  def __init__(self):
    self.signum: int | None = None
    self._announced = False
    self._previous = {}

  def __enter__(self) -> StopOnSignal:
    if threading.current_thread() is threading.main_thread():
      self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
    return self

  def __exit__(self, *exc) -> None:
    for s, handler in self._previous.items():
      # None: a handler installed outside Python, which cannot be put back.
      signal.signal(s, signal.SIG_DFL if handler is None else handler)
    self._previous = {}

  def _handle(self, signum: int, frame) -> None:
    del frame
    if self.signum is not None:
      self.__exit__()  # a third one gets Python's own handling
      raise KeyboardInterrupt(f"{signal.Signals(signum).name} again: quitting without saving")
    self.signum = signum  # said by `announce`: a log call here could land inside a
    # write to stderr that the signal interrupted ("reentrant call inside BufferedWriter")

  def announce(self) -> None:
    """Logs, once, that a signal came and the run stops after this step (from the loop,
    not from the handler)."""
    if self.signum is not None and not self._announced:
      self._announced = True
      logging.warning("%s: stopping after this step with a checkpoint (again to quit at "
                      "once, without saving)", signal.Signals(self.signum).name)


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  rng: jax.Array  # raw uint32 key data, folded with the step where randomness is needed


# --------------------------------------------------------------------------- #
# Model, optimiser, loss.
# --------------------------------------------------------------------------- #


def stage_settings(config: ml_collections.ConfigDict, stage: int) -> tuple[int, float]:
  """(global batch size, learning rate) of a stage."""
  if stage == 0:
    return config.batch_size, config.optim.learning_rate
  return config.fine_tune.batch_size, config.fine_tune.learning_rate


def path_mask(params: Any, pattern: str) -> Any:
  """True for every parameter whose '/'-joined path ('down_0/conv/kernel') fully
  matches `pattern`."""
  regex = re.compile(pattern)
  return jax.tree_util.tree_map_with_path(
      lambda path, _: bool(regex.fullmatch("/".join(k.key for k in path))), params)


def trainable_mask(config: ml_collections.ConfigDict, params: Any) -> Any | None:
  """True for the parameters `config.optim.trainable` selects; None: all train."""
  pattern = config.optim.trainable
  if pattern is None:
    return None
  try:
    mask = path_mask(params, pattern)
  except re.error as e:
    raise models.ConfigError(f"config.optim.trainable={pattern}: not a regular expression "
                             f"({e})") from None
  if not any(jax.tree_util.tree_leaves(mask)):
    raise models.ConfigError(
        f"config.optim.trainable={pattern}: matches no parameter; paths look like "
        "down_0/conv/kernel, up_0/conv/kernel, upsample_0/weights, output/kernel")
  return mask


def learning_rate_schedule(config: ml_collections.ConfigDict,
                           learning_rate: float) -> optax.Schedule:
  """The stage's rate by optimiser step (counted from the stage's start)."""
  optim = config.optim
  if optim.schedule == "constant":
    return optax.constant_schedule(learning_rate)
  if optim.schedule == "warmup_cosine":
    return optax.warmup_cosine_decay_schedule(
        0.0, learning_rate, optim.warmup_steps, max(config.num_train_steps, optim.warmup_steps + 1))
  raise models.ConfigError(f"config.optim.schedule: unknown value {optim.schedule!r}; "
                           "choose 'constant' or 'warmup_cosine'")


def make_optimizer(config: ml_collections.ConfigDict, learning_rate: float,
                   params: Any) -> optax.GradientTransformation:
  optim = config.optim
  schedule = learning_rate_schedule(config, learning_rate)
  parts = []
  if optim.grad_clip_norm:
    parts.append(optax.clip_by_global_norm(optim.grad_clip_norm))
  if optim.weight_decay:
    # Keras L2: d/dw (wd * w^2) = 2 wd w, added to the gradient before Adam. A
    # function of the parameters it sees: with `trainable`, only the trainable ones.
    parts.append(optax.add_decayed_weights(2 * optim.weight_decay,
                                           mask=lambda p: path_mask(p, optim.l2_mask)))
  adam = optax.amsgrad if optim.amsgrad else optax.adam
  parts.append(adam(schedule, b1=optim.b1, b2=optim.b2, eps=optim.eps))
  trainable = trainable_mask(config, params)
  if trainable is None:
    return optax.chain(*parts)
  # Frozen parameters get zero updates (exactly: p + 0 = p), and no optimiser state.
  labels = jax.tree_util.tree_map(lambda t: "train" if t else "freeze", trainable)
  return optax.multi_transform({"train": optax.chain(*parts), "freeze": optax.set_to_zero()},
                               labels)


def loss_crop(config: ml_collections.ConfigDict, output_length: int) -> tuple[int, int]:
  """(start, length) of the output samples the loss sees."""
  central = config.loss.central_length or output_length
  if not 0 < central <= output_length:
    raise models.ConfigError(f"config.loss.central_length: {central} must be between 1 and "
                             f"the output length {output_length}")
  return (output_length - central) // 2, central


def create_state(config: ml_collections.ConfigDict, model: models.WaveUNet,
                 tx: optax.GradientTransformation) -> TrainState:
  rng = jax.random.PRNGKey(config.seed)
  shortest = jnp.zeros((1, models.lengths(model, 1).input_length, model.num_channels))
  variables = jax.jit(model.init)(jax.random.fold_in(rng, 0), shortest)
  params = variables["params"]
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    batch_stats=variables.get("batch_stats", {}),
                    opt_state=tx.init(params), rng=rng)


# The module of models.WaveUNet whose parameters depend on the sources: fine-tuning
# into other sources starts it afresh.
OUTPUT_LAYER = "output"


def start_from(config: ml_collections.ConfigDict, workdir: pathlib.Path, params: Any,
               batch_stats: Any) -> tuple[Any, Any, dict[str, Any]]:
  """The parameters and BatchNorm statistics of the run `config.init_from` names, in
  place of the fresh ones (`params`, `batch_stats`: this run's initialisation), and
  where they come from (`checkpoints.STARTED_FROM`). Same network: all are loaded.
  Other sources (`config.model.sources` or `.output`): the output layer keeps its
  fresh values. Anything else that differs is refused (TrainingError) naming the
  first parameter that does not fit."""
  try:
    trained, origin = checkpoints.load_init_from(config.init_from, workdir)
  except checkpoints.WorkdirError as e:
    raise TrainingError(str(e)) from None
  same_sources = (tuple(trained.config.model.sources) == tuple(config.model.sources)
                  and trained.config.model.output == config.model.output)
  fresh = flax.traverse_util.flatten_dict({"params": params, "batch_stats": batch_stats},
                                          sep="/")
  there = flax.traverse_util.flatten_dict(dict(trained.variables), sep="/")
  fit = ("; only the output layer may differ (other config.model.sources): start from a run "
         "of this network")
  merged = {}
  for path in list(fresh) + [p for p in there if p not in fresh]:
    here, theirs = fresh.get(path), there.get(path)
    if not same_sources and path.split("/")[1] == OUTPUT_LAYER:
      if here is not None:
        merged[path] = here
      continue
    if theirs is None:
      raise TrainingError(f"config.init_from={config.init_from}: that run's network has no "
                          f"{path} (shape {tuple(here.shape)} here){fit}")
    if here is None:
      raise TrainingError(f"config.init_from={config.init_from}: that run's {path} (shape "
                          f"{tuple(theirs.shape)}) is not in this network{fit}")
    if here.shape != theirs.shape:
      raise TrainingError(f"config.init_from={config.init_from}: {path} has shape "
                          f"{tuple(theirs.shape)} there and {tuple(here.shape)} here{fit}")
    merged[path] = jnp.asarray(theirs, here.dtype)
  if trained.config.data.sample_rate != config.data.sample_rate:
    logging.warning("config.init_from=%s trained at %d Hz and this run trains at %d Hz: the "
                    "network's filters will hear other frequencies", config.init_from,
                    trained.config.data.sample_rate, config.data.sample_rate)
  logging.info("starting from the parameters of %s, checkpoint %s (step %d)%s",
               origin["workdir"], origin["checkpoint"], origin["step"],
               "" if same_sources else f"; the output layer anew, for the sources "
               f"{', '.join(config.model.sources)}")
  variables = flax.traverse_util.unflatten_dict(merged, sep="/")
  return variables["params"], variables.get("batch_stats", {}), origin


def train_step(state: TrainState, batch: dict[str, jax.Array], *, model: models.WaveUNet,
               tx: optax.GradientTransformation, crop: tuple[int, int],
               scale: float) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimiser step on a (global) batch: MSE over the cropped output samples,
  averaged over sources, times `scale`."""
  start, length = crop

  def loss_fn(params):
    variables = {"params": params, "batch_stats": state.batch_stats}
    estimates, updates = model.apply(variables, batch["mix"], train=True,
                                     mutable=["batch_stats"])
    error = (estimates - batch["sources"])[:, :, start:start + length]
    return scale * jnp.mean(error ** 2), updates

  (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  changes, opt_state = tx.update(grads, state.opt_state, state.params)
  state = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, changes),
                        batch_stats=updates.get("batch_stats", state.batch_stats),
                        opt_state=opt_state)
  return state, {"loss": loss, "grad_norm": optax.tree_utils.tree_norm(grads)}


def eval_step(state: TrainState, batch: dict[str, jax.Array], *, model: models.WaveUNet,
              crop: tuple[int, int], scale: float) -> dict[str, jax.Array]:
  """Weighted sums for the validation loss and the per-source SDR (energy of the
  targets over energy of the errors, pooled over the whole validation set)."""
  start, length = crop
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  estimates = model.apply(variables, batch["mix"], train=False)
  targets = batch["sources"][:, :, start:start + length]
  error = (estimates[:, :, start:start + length] - targets) ** 2
  weight = batch["weight"]
  return {
      "loss_sum": scale * jnp.sum(weight * jnp.mean(error, axis=(1, 2, 3))),
      "count": jnp.sum(weight),
      "signal": jnp.einsum("b,bs->s", weight, jnp.sum(targets ** 2, axis=(2, 3))),
      "noise": jnp.einsum("b,bs->s", weight, jnp.sum(error, axis=(2, 3))),
  }


def jit_steps(config: ml_collections.ConfigDict, model: models.WaveUNet,
              tx: optax.GradientTransformation, layout: parallel.DataParallel):
  """The jitted train and eval steps of a run, laid out data-parallel on `layout`:
  state replicated, batches sharded, the train step donating its state. Training
  runs these; the compile-only accelerator checks lower the same functions."""
  lengths = models.lengths(model, config.data.output_length)
  static = dict(model=model, crop=loss_crop(config, lengths.output_length),
                scale=config.loss.scale)
  train = jax.jit(functools.partial(train_step, tx=tx, **static),
                  in_shardings=(layout.replicated, layout.sharded),
                  out_shardings=(layout.replicated, layout.replicated), donate_argnums=0)
  evaluate = jax.jit(functools.partial(eval_step, **static),
                     in_shardings=(layout.replicated, layout.sharded),
                     out_shardings=layout.replicated)
  return train, evaluate


# --------------------------------------------------------------------------- #
# Data.
# --------------------------------------------------------------------------- #


class DataIterator:
  """A tf.data iterator of numpy batches whose position can be saved and restored
  (`tf.train.Checkpoint`)."""

  def __init__(self, dataset):
    import tensorflow as tf

    self._iterator = iter(dataset)
    self._checkpoint = tf.train.Checkpoint(iterator=self._iterator)

  def __next__(self) -> dict[str, np.ndarray]:
    return jax.tree_util.tree_map(lambda t: t.numpy(), next(self._iterator))

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
  `DIR/shard_<d>_of_<D>`, so another grouping of the same devices into processes
  restores them."""

  def __init__(self, datasets: list, shards: list[int], num_shards: int):
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
    import tensorflow as tf

    try:
      for shard, iterator in zip(self.shards, self.iterators):
        iterator.restore(self.shard_dir(directory, shard))
    except (tf.errors.OpError, AssertionError) as e:
      logging.info("the data positions in %s do not fit: %s", directory, str(e)[:300])
      return False
    return True


def ensure_data(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> ml_collections.ConfigDict:
  """The config with `data.data_dir` set: as given, or a synthetic corpus prepared once
  under the workdir when none is given (the built-in default)."""
  from waveunet_jax import prepare, synthetic

  if config.data.data_dir:
    return config
  data = config.data
  root = workdir / "synthetic_corpus"
  data_dir = workdir / "synthetic_tfds"
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


# --------------------------------------------------------------------------- #
# The loop.
# --------------------------------------------------------------------------- #


class Trainer:
  """Holds what one run needs: mesh, model, jitted steps, checkpoint managers."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: pathlib.Path):
    self.config = config
    self.workdir = workdir
    self.model = models.from_config(config)
    self.lengths = models.lengths(self.model, config.data.output_length)
    self.crop = loss_crop(config, self.lengths.output_length)
    self.layout = parallel.data_parallel()
    self.mesh, self.replicated, self.sharded = (self.layout.mesh, self.layout.replicated,
                                                self.layout.sharded)
    # Device d of the mesh reads data shard d; these are this process's.
    self.local_devices = [d for d in self.mesh.devices.flat
                          if d.process_index == jax.process_index()]
    self.shards = [int(np.flatnonzero(self.mesh.devices.flat == d)[0])
                   for d in self.local_devices]
    self.init = create_state(config, self.model, optax.identity())
    trainable_mask(config, self.init.params)  # a pattern that selects nothing fails here
    # Both save the same step at times: with several processes their barriers need
    # names of their own, or the two saves meet in one barrier and time out.
    options = lambda name: dict(
        enable_async_checkpointing=True, create=True,
        multiprocessing_options=ocp.options.MultiprocessingOptions(barrier_sync_key_prefix=name))
    self.checkpoints = ocp.CheckpointManager(
        workdir / "checkpoints", options=ocp.CheckpointManagerOptions(
            max_to_keep=config.keep_checkpoints, **options("checkpoints")))
    self.best = ocp.CheckpointManager(
        workdir / "best", options=ocp.CheckpointManagerOptions(max_to_keep=1, **options("best")))
    # Where this run starts (checkpoints.STARTED_FROM), if from another run: only if it
    # has no checkpoint of its own to resume from.
    self.started_from = None
    if config.init_from and self.checkpoints.latest_step() is None:
      params, batch_stats, self.started_from = start_from(
          config, workdir, self.init.params, self.init.batch_stats)
      self.init = self.init.replace(params=params, batch_stats=batch_stats)
    elif config.init_from:
      logging.info("the workdir has checkpoints: resuming from them (config.init_from=%s "
                   "served the run's start)", config.init_from)
    self.writer = self.listening = None
    if jax.process_index() == 0:
      import tensorflow as tf

      self.writer = tf.summary.create_file_writer(str(workdir / "tensorboard"))

  # -- state and steps ---------------------------------------------------------

  def new_state(self, stage: int, params=None, batch_stats=None, step=0) -> tuple[TrainState, Any]:
    """A state for `stage`: fresh, or from given parameters with a fresh optimiser."""
    _, learning_rate = stage_settings(self.config, stage)
    tx = make_optimizer(self.config, learning_rate, self.init.params)
    if params is None:
      params, batch_stats = self.init.params, self.init.batch_stats
    state = TrainState(step=jnp.asarray(step, jnp.int32), params=params, batch_stats=batch_stats,
                       opt_state=tx.init(params), rng=self.init.rng)
    # Copies: the train step donates its state, and self.init must outlive it.
    state = jax.tree_util.tree_map(jnp.copy, state)
    return jax.device_put(state, self.replicated), tx

  def compile_steps(self, tx) -> None:
    self.train_step, self.eval_step = jit_steps(self.config, self.model, tx, self.layout)

  def global_batch(self, per_device: list[dict[str, np.ndarray]]) -> dict[str, jax.Array]:
    """One batch per local device (in `self.local_devices` order) -> the global batch,
    device d's rows at the d-th place."""
    def stack(*parts):
      shape = (parts[0].shape[0] * len(self.mesh.devices.flat),) + parts[0].shape[1:]
      return jax.make_array_from_single_device_arrays(
          shape, self.sharded, [jax.device_put(p, d) for p, d in zip(parts, self.local_devices)])

    return jax.tree_util.tree_map(stack, *per_device)

  def data_seed(self, progress: checkpoints.Progress) -> int:
    """The seed of the data order: per stage, and anew where the order restarted."""
    from waveunet_jax import input_pipeline

    return input_pipeline.derived_seed(self.config.seed, progress.stage, progress.data_start_step)

  def train_data(self, progress: checkpoints.Progress) -> ShardedData:
    from waveunet_jax import input_pipeline

    batch_size, _ = stage_settings(self.config, progress.stage)
    num_shards = len(self.mesh.devices.flat)
    seed = self.data_seed(progress)
    return ShardedData([
        input_pipeline.train_dataset(self.config, batch_size // num_shards, seed=seed,
                                     shard=shard, num_shards=num_shards)
        for shard in self.shards], self.shards, num_shards)

  # -- checkpoints -------------------------------------------------------------

  def data_state_dir(self, step: int) -> pathlib.Path:
    return self.workdir / "data_state" / str(step)

  def save(self, state: TrainState, progress: checkpoints.Progress, data: ShardedData) -> None:
    step = int(state.step)
    data.save(self.data_state_dir(step))
    self.checkpoints.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), progress=ocp.args.JsonSave(dataclasses.asdict(progress))))
    # The data positions of checkpoints Orbax no longer keeps are useless; process 0
    # removes them (the others may still be writing the current step's).
    if jax.process_index() == 0:
      kept = {str(s) for s in self.checkpoints.all_steps()} | {str(step)}
      for old in self.data_state_dir(step).parent.iterdir():
        if old.name not in kept:
          shutil.rmtree(old, ignore_errors=True)

  def restore(self, manager: ocp.CheckpointManager, step: int, target: TrainState):
    abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, target)
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), progress=ocp.args.JsonRestore()))
    return restored["state"], checkpoints.Progress(**restored["progress"])

  # -- validation and logging --------------------------------------------------

  def evaluate(self, state: TrainState, stage: int) -> dict[str, float]:
    """Validation loss ('loss') and pooled SDR per source ('sdr/<source>') on the
    validation split. With several datasets (config.data.data_dir), each one's as
    '<name>/loss' and '<name>/sdr/<source>', and 'loss' and 'sdr/<source>' weight-
    averaged: as if each dataset's tiles counted by its sampling weight (loss: the
    weighted mean of the datasets' losses; SDR: of their mean energies), so that the
    datasets' sizes do not decide early stopping, their weights do."""
    from waveunet_jax import input_pipeline

    datasets = input_pipeline.data_dirs(self.config)
    totals = {d.name: self.validation_sums(state, stage, d.path) for d in datasets}
    if len(datasets) == 1:
      return self.validation_metrics(totals[datasets[0].name])
    weighted = {key: sum(d.weight * totals[d.name][key] / totals[d.name]["count"]
                         for d in datasets) for key in ("loss_sum", "signal", "noise")}
    metrics = self.validation_metrics({**weighted, "count": 1.0})
    for d in datasets:
      own = self.validation_metrics(totals[d.name])
      metrics.update({f"{d.name}/{key}": value for key, value in own.items()})
    return metrics

  def validation_metrics(self, totals: dict[str, Any]) -> dict[str, float]:
    metrics = {"loss": float(totals["loss_sum"] / totals["count"])}
    for name, energy, noise in zip(self.model.sources, totals["signal"], totals["noise"]):
      metrics[f"sdr/{name}"] = float(10 * np.log10((energy + 1e-10) / (noise + 1e-10)))
    return metrics

  def validation_sums(self, state: TrainState, stage: int, data_dir: str) -> dict[str, np.ndarray]:
    """`eval_step`'s sums over every validation tile of one dataset."""
    from waveunet_jax import input_pipeline

    batch_size, _ = stage_settings(self.config, stage)
    num_shards = len(self.mesh.devices.flat)
    per_device = batch_size // num_shards
    streams = [iter(input_pipeline.as_numpy(input_pipeline.eval_dataset(
        self.config, per_device, shard=shard, num_shards=num_shards, data_dir=data_dir)))
        for shard in self.shards]
    # Shares may differ in tiles: a device (or a process) that has run out joins in
    # with weight-0 batches until every device of every process has.
    empty = {"mix": np.zeros((per_device, self.lengths.input_length, self.model.num_channels),
                             np.float32),
             "sources": np.zeros((per_device, self.model.num_sources, self.lengths.output_length,
                                  self.model.num_channels), np.float32),
             "weight": np.zeros((per_device,), np.float32)}
    totals = None
    while True:
      batches = [next(stream, None) for stream in streams]
      more = any(b is not None for b in batches)
      if jax.process_count() > 1:
        more = bool(np.any(multihost_utils.process_allgather(np.array(more))))
      if not more:
        break
      batches = [empty if b is None else b for b in batches]
      sums = self.eval_step(state, self.global_batch(batches))
      totals = sums if totals is None else jax.tree_util.tree_map(jnp.add, totals, sums)
    if totals is None:
      raise TrainingError(f"the validation split of {data_dir} is empty: prepare the data "
                          "with some validation tracks (--valid_tracks)")
    return jax.device_get(totals)

  def write(self, step: int, scalars: dict[str, float]) -> None:
    if self.writer is None:
      return
    import tensorflow as tf

    with self.writer.as_default(step=step):
      for name, value in scalars.items():
        tf.summary.scalar(name, value)
    self.writer.flush()

  def listen(self, step: int, state: TrainState) -> None:
    """Audio and spectrograms of a validation excerpt to TensorBoard (`listening`),
    where process 0 writes; the excerpt is read and its forward pass compiled once."""
    if self.writer is None:
      return
    from waveunet_jax import listening

    if self.listening is None:
      model = self.model
      predict = jax.jit(lambda variables, mix: model.apply(variables, mix, train=False))
      self.listening = listening.Listening(self.config, model.sources, self.lengths.offset,
                                           self.lengths.output_length, predict)
    variables = listening.local_copy({"params": state.params,
                                      "batch_stats": state.batch_stats})
    with self.writer.as_default():
      self.listening.write(step, variables)
    self.writer.flush()

  # -- the run -----------------------------------------------------------------

  def run(self, callback: Callable[[int, dict[str, float]], None] | None = None) -> TrainState:
    """Trains to the end, or raises Interrupted after saving the step a signal stopped."""
    with StopOnSignal() as self.stop:
      return self._run(callback)

  def stop_agreed(self, step: int) -> bool:
    """Whether every process stops after `step`: at once with one process; with
    several, all must stop at the same step, so they agree only at log boundaries
    (where the loop waits for the device anyway)."""
    self.stop.announce()
    if jax.process_count() == 1:
      return self.stop.signum is not None
    if step % self.config.log_every_steps:
      return False
    wanted = multihost_utils.process_allgather(np.int32(self.stop.signum is not None))
    return bool(np.any(wanted))

  def _run(self, callback: Callable[[int, dict[str, float]], None] | None) -> TrainState:
    config = self.config
    state, tx = self.new_state(0)
    progress = checkpoints.Progress()
    latest = self.checkpoints.latest_step()
    if latest is not None:
      # The stage decides the optimiser (its learning rate), so read progress first.
      progress = checkpoints.read_progress(self.workdir)
      state, tx = self.new_state(progress.stage)
      state, progress = self.restore(self.checkpoints, latest, state)
      logging.info("resuming at step %d, stage %d", latest, progress.stage)
    if progress.done:
      logging.info("training finished before (step %d); nothing to do", int(state.step))
      return state
    self.compile_steps(tx)
    data = self.train_data(progress)
    if latest is not None:
      positions = self.data_state_dir(latest)
      restored = data.can_restore(positions) and data.restore(positions)
      if jax.process_count() > 1:  # all restore, or all start anew
        restored = bool(np.all(multihost_utils.process_allgather(np.int32(restored))))
      if not restored:
        if data.can_restore(positions):
          why = "do not fit this run's datasets (config.data.data_dir names others)"
        else:
          saved_as = sorted({p.name.rsplit("_of_", 1)[-1] for p in positions.glob("shard_*_of_*")})
          why = (f"were saved for {' or '.join(saved_as) or 'no'} device(s), and this run has "
                 f"{data.num_shards}")
        logging.warning("step %d's data positions %s: the parameters and the optimiser resume "
                        "exactly, the training data start a new random order here", latest, why)
        progress.data_start_step = latest
        data = self.train_data(progress)

    batch_size, learning_rate = stage_settings(config, progress.stage)
    audio_per_step = batch_size * self.lengths.output_length / config.data.sample_rate
    step = saved = int(state.step)
    window_loss, window_start, window_steps = jnp.zeros(()), time.perf_counter(), 0
    bar = None  # the steps to the next log line, on a terminal
    while step < config.num_train_steps:
      if bar is None:
        bar = console.progress(min(config.log_every_steps - step % config.log_every_steps,
                                   config.num_train_steps - step),
                               f"step {step + 1}", unit="step")
      state, metrics = self.train_step(state, self.global_batch(next(data)))
      step += 1
      bar.update()
      window_loss, window_steps = window_loss + metrics["loss"], window_steps + 1
      if step % config.log_every_steps == 0 or step % config.checkpoint_every_steps == 0:
        bar.close()
        bar = None
        loss = float(window_loss) / window_steps
        if not np.isfinite(loss):
          raise TrainingError(
              f"the training loss is {loss} at step {step}: stopping. The last good checkpoint "
              f"(step {self.checkpoints.latest_step()}) is in {self.workdir / 'checkpoints'}; "
              "lower config.optim.learning_rate or set config.optim.grad_clip_norm")
        seconds = time.perf_counter() - window_start
        # The rate of this step: the stage's optimiser counts from the stage's start.
        rate = float(learning_rate_schedule(config, learning_rate)(
            step - 1 - progress.stage_start_step))
        scalars = {"train/loss": loss, "train/learning_rate": rate,
                   "train/steps_per_second": window_steps / seconds,
                   "train/audio_seconds_per_second": window_steps * audio_per_step / seconds}
        logging.info("step %d (stage %d): loss %.5f, %.2f steps/s, %.1f audio s/s", step,
                     progress.stage, loss, scalars["train/steps_per_second"],
                     scalars["train/audio_seconds_per_second"])
        self.write(step, scalars)
        if callback:
          callback(step, scalars)
        window_loss, window_start, window_steps = jnp.zeros(()), time.perf_counter(), 0

      stage_over = False
      if step % config.eval_every_steps == 0:
        results = self.evaluate(state, progress.stage)
        logging.info("step %d validation: %s", step,
                     ", ".join(f"{k} {v:.4f}" for k, v in results.items()))
        self.write(step, {f"valid/{k}": v for k, v in results.items()})
        self.listen(step, state)
        if callback:
          callback(step, {f"valid/{k}": v for k, v in results.items()})
        if results["loss"] < progress.best_loss:
          progress.best_loss, progress.best_step, progress.bad_validations = results["loss"], step, 0
          self.best.save(step, args=ocp.args.Composite(
              state=ocp.args.StandardSave(state),
              progress=ocp.args.JsonSave(dataclasses.asdict(progress))))
        else:
          progress.bad_validations += 1
        stage_over = progress.bad_validations >= config.patience

      if stage_over and (progress.stage == 1 or not config.fine_tune.enabled):
        progress.done = True
        self.save(state, progress, data)
        logging.info("no improvement in %d validations: training done at step %d",
                     config.patience, step)
        break
      if stage_over:
        # The paper's second stage: from the best parameters, new batch size and rate.
        self.best.wait_until_finished()
        best_state, _ = self.restore(self.best, progress.best_step, state)
        progress = dataclasses.replace(progress, stage=1, stage_start_step=step,
                                       bad_validations=0)
        state, tx = self.new_state(1, best_state.params, best_state.batch_stats, step)
        self.compile_steps(tx)
        data = self.train_data(progress)
        batch_size, learning_rate = stage_settings(config, 1)
        audio_per_step = batch_size * self.lengths.output_length / config.data.sample_rate
        logging.info("step %d: fine-tune stage from the best step %d (batch %d, lr %g)",
                     step, progress.best_step, batch_size, learning_rate)
        self.save(state, progress, data)
        saved = step
      elif step % config.checkpoint_every_steps == 0 or step == config.num_train_steps:
        self.save(state, progress, data)
        saved = step
      if self.stop_agreed(step) and step < config.num_train_steps:
        if bar is not None:
          bar.close()
        if saved != step:
          self.save(state, progress, data)
        self.checkpoints.wait_until_finished()
        self.best.wait_until_finished()
        raise Interrupted(step, self.stop.signum or signal.SIGTERM)
    if bar is not None:
      bar.close()
    self.checkpoints.wait_until_finished()
    self.best.wait_until_finished()
    return state

  def close(self) -> None:
    self.checkpoints.wait_until_finished()
    self.best.wait_until_finished()
    self.checkpoints.close()
    self.best.close()


def connect(coordinator_address: str | None = None, num_processes: int | None = None,
            process_id: int | None = None, heartbeat_timeout: int = 100,
            coordinator_timeout: int = 300) -> None:
  """Joins this process to the others of a multi-process run (`jax.distributed`),
  before anything uses JAX. With no arguments, JAX detects the cluster (Cloud TPU,
  SLURM, Open MPI); otherwise all three are needed. A process that stays silent for
  `heartbeat_timeout` seconds (killed, crashed, its host gone) ends the others' run,
  instead of leaving them waiting in a collective forever.

  Named flags are checked here first, each refused in one line: JAX itself indexes a
  malformed address (IndexError), crashes the interpreter when process 0's port is
  taken, and aborts one that finds no coordinator within `coordinator_timeout`
  seconds. So process 0 binds the port once itself, and the others wait for the
  coordinator's port to answer before JAX connects to it."""
  named = (coordinator_address, num_processes, process_id)
  if any(v is not None for v in named) and not all(v is not None for v in named):
    raise TrainingError("--coordinator_address, --num_processes and --process_id go together: "
                        "give all three (or none, on a cluster JAX detects)")
  if num_processes is not None and not 0 <= process_id < num_processes:
    raise TrainingError(f"--process_id={process_id} is not in [0, --num_processes="
                        f"{num_processes})")
  if coordinator_address is not None:
    host, port = _coordinator(coordinator_address)
    if process_id == 0:
      _check_port_free(coordinator_address, port)
    else:
      _wait_for_coordinator(coordinator_address, host, port, coordinator_timeout)
  # Collectives between CPU devices of different processes (tests, CPU clusters);
  # TPUs and GPUs have their own.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  try:
    jax.distributed.initialize(coordinator_address, num_processes, process_id,
                               initialization_timeout=coordinator_timeout,
                               heartbeat_timeout_seconds=heartbeat_timeout)
  except ValueError as e:  # nothing detected, or given values JAX refuses
    if coordinator_address is None:
      raise TrainingError("--distributed: JAX detected no cluster to join (Cloud TPU, SLURM, "
                          "Open MPI); elsewhere give --coordinator_address, --num_processes "
                          "and --process_id") from None
    raise TrainingError(f"cannot join the run's processes: {e}") from None
  except RuntimeError as e:  # e.g. no coordinator at the address within the timeout
    message = str(e).splitlines()[0] if str(e) else type(e).__name__
    raise TrainingError(f"cannot join the run's processes ({message}): process 0 must run "
                        "at --coordinator_address, reachable from every process") from None


def _coordinator(address: str) -> tuple[str, int]:
  """(host, port) of --coordinator_address=HOST:PORT (HOST may be `[IPv6]`), or a
  TrainingError naming the flag; the host must resolve, as every process dials it."""
  host, _, port = address.rpartition(":")
  host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
  if not host or not (port.isascii() and port.isdigit()) or not 1 <= int(port) <= 65535:
    raise TrainingError(f"--coordinator_address={address}: not HOST:PORT with a port from 1 "
                        "to 65535 (e.g. node0:8476); name process 0's host and a free port")
  try:
    socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
  except (socket.gaierror, UnicodeError) as e:
    raise TrainingError(f"--coordinator_address={address}: cannot resolve the host {host!r} "
                        f"({getattr(e, 'strerror', None) or e}); name process 0's host") from None
  return host, int(port)


def _check_port_free(address: str, port: int) -> None:
  """Raises TrainingError unless process 0 can bind `port` as JAX's coordinator will:
  on every address (`[::]`, IPv4 too; `0.0.0.0` where this host has no IPv6), with
  SO_REUSEADDR as gRPC sets it. Skipped when JAX_COORDINATOR_BIND_ADDRESS tells JAX to
  bind elsewhere."""
  if "JAX_COORDINATOR_BIND_ADDRESS" in os.environ:
    return
  for family, host in ((socket.AF_INET6, "::"), (socket.AF_INET, "0.0.0.0")):
    try:
      s = socket.socket(family)
    except OSError:  # no such address family here
      continue
    with s:
      s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
      if family == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
      try:
        s.bind((host, port))
        return
      except OSError as e:
        if e.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):  # IPv6 off: as gRPC, try IPv4
          continue
        hint = {errno.EADDRINUSE: "; another program or run uses it?",
                errno.EACCES: "; a port below 1024 needs root"}.get(e.errno, "")
        raise TrainingError(f"--coordinator_address={address}: process 0 cannot listen on "
                            f"port {port} ({e.strerror}{hint}); choose a free port, the "
                            "same for every process") from None


def _wait_for_coordinator(address: str, host: str, port: int, timeout: int) -> None:
  """Returns once the coordinator's port accepts a connection, or raises TrainingError
  after `timeout` seconds (JAX would abort the interpreter instead)."""
  logging.info("waiting up to %d s (--coordinator_timeout) for the coordinator, process 0, "
               "at %s", timeout, address)
  deadline = time.monotonic() + timeout
  while True:
    left = deadline - time.monotonic()
    try:
      with socket.create_connection((host, port), timeout=max(min(left, 5.0), 0.1)):
        return
    except OSError:
      if left <= 0:
        break
      time.sleep(min(0.5, max(left, 0)))
  raise TrainingError(f"--coordinator_address={address}: no coordinator answered within "
                      f"{timeout} s (--coordinator_timeout); start process 0 (it listens "
                      "there), or check the address and that this host can reach the port")


def check_same_run(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> None:
  """Raises TrainingError, on every process, unless all processes were started with
  the same config and workdir (a run whose hosts disagree would hang or diverge)."""
  if jax.process_count() == 1:
    return
  mine = json.dumps({"workdir": str(workdir), "config": json.loads(config.to_json_best_effort())},
                    sort_keys=True).encode()
  digests = multihost_utils.process_allgather(
      np.frombuffer(hashlib.sha256(mine).digest(), np.uint8))
  others = [i for i, d in enumerate(digests) if not np.array_equal(d, digests[0])]
  if not others:
    return
  # Process 0's run to every process, which names what differs from its own.
  length = int(np.max(multihost_utils.process_allgather(np.int64(len(mine)))))
  padded = np.zeros(length, np.uint8)
  padded[:len(mine)] = np.frombuffer(mine, np.uint8)
  first = json.loads(bytes(np.asarray(multihost_utils.broadcast_one_to_all(padded))).rstrip(b"\0"))
  what = "start every process with the same --config, --config.* overrides and --workdir"
  if jax.process_index() == 0:
    raise TrainingError(f"process(es) {', '.join(map(str, others))} of {jax.process_count()} "
                        f"were started with another config or --workdir than this one; {what}")
  if jax.process_index() not in others:
    raise TrainingError(f"process(es) {', '.join(map(str, others))} of {jax.process_count()} "
                        f"were started with another config or --workdir than process 0; {what}")
  fields = [f"config.{name} ({json.dumps(old)} on process 0, {json.dumps(new)} here)"
            for name, old, new in checkpoints.config_differences(
                ml_collections.ConfigDict(first["config"]), config, may_change=())]
  if first["workdir"] != str(workdir):
    fields.append(f"--workdir ({first['workdir']} on process 0, {workdir} here)")
  raise TrainingError(f"process {jax.process_index()} was started with another run than "
                      f"process 0: {', '.join(fields[:4])} differ; {what}")


def check_batch_size(batch_size: int, field: str) -> None:
  devices, processes = jax.device_count(), jax.process_count()
  if batch_size % devices:
    raise TrainingError(f"{field}={batch_size} does not divide across the {devices} devices; "
                        f"use a multiple of {devices}")
  if batch_size % processes:
    raise TrainingError(f"{field}={batch_size} does not divide across the {processes} "
                        "processes")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | os.PathLike, *,
                       callback: Callable[[int, dict[str, float]], None] | None = None
                       ) -> TrainState:
  """Trains `config` in `workdir`, resuming from its checkpoints if there are any.

  `callback(step, scalars)` is called with the logged metrics (a notebook hook).
  A workdir that holds a run of another config is refused (checkpoints.WorkdirError)
  before anything in it changes; a start that fails leaves no workdir it created behind.
  SIGINT or SIGTERM stops the run cleanly after the current step with a checkpoint
  (raises Interrupted); a second one raises KeyboardInterrupt at once.
  """
  workdir = checkpoints.workdir_path(workdir)
  from waveunet_jax import input_pipeline

  check_same_run(config, workdir)  # first: until they agree, processes may not wait on each other
  created = not workdir.exists()
  try:
    # Check what can be checked before anything slow, and before writing anything.
    models.from_config(config)
    stages = ("config.batch_size", "config.fine_tune.batch_size")
    for stage, field in enumerate(stages[:2 if config.fine_tune.enabled else 1]):
      check_batch_size(stage_settings(config, stage)[0], field)
    checkpoints.check_resumable(config, workdir)
    config = ensure_data(config, workdir)
    input_pipeline.load_builders(config)  # the data is there, before compiling anything
    workdir.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(config, workdir)
  except BaseException:
    # Nothing of a failed start stays behind in a workdir it made (a half-written
    # synthetic corpus included); a workdir that was there keeps what it had.
    if created and jax.process_index() == 0:
      shutil.rmtree(workdir, ignore_errors=True)
    raise
  # The run starts: only now does the workdir describe it.
  checkpoints.save_config(config, workdir, trainer.started_from)
  try:
    return trainer.run(callback)
  finally:
    trainer.close()

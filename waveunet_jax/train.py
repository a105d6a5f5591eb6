"""Training: the train state, a data-parallel jitted step, the paper's schedule, checkpoints.

`train_and_evaluate(config, workdir)` is the whole job; `main.py` only parses flags.

* State: `TrainState` (step, params, batch_stats, opt_state, rng, and the parameters'
  average, ema_params, where config.optim.ema_decay keeps one), one pytree,
  replicated over a 1-D device mesh of every device of every process; batches are
  sharded on its `data` axis, so BatchNorm statistics are global-batch ones. Each
  device has its own input stream (`input_pipeline`: shard d of D), so the run is
  the same whether its D devices sit in one process or in several.
* Several processes (hosts): `distributed.connect` joins them; every process runs the
  same command, and `distributed.check_same_run` refuses to start if their configs or
  workdirs differ. Process 0 alone writes config.json, TensorBoard and the synthetic
  corpus (`default_data`); Orbax checkpoints are written and read by all together.
* Optimiser (`optim.py`): Adam after Keras-style L2 on `config.optim.l2_mask`, clipping,
  the schedule, `config.optim.trainable`; the average of the parameters, updated in the
  train step after each optimiser update, is what validation, best/ and inference use
  (`TrainState.inference_params`).
* Loss (`Loss`, config.loss): MSE (the paper's) or L1 on the loss's crop, optionally
  plus a multi-resolution STFT term; validation is always MSE.
* Fine-tuning: `config.init_from` starts a new run from another run's parameters (its
  average, where it kept one) and BatchNorm statistics (`checkpoints.Start`), with a
  fresh optimiser at step 0.
* Data: one prepared dataset, or several mixed by weight (`config.data.data_dir`,
  see `input_pipeline`), each validated and logged on its own as well. Training batches
  are drawn on the devices (`device_data`) or read by tf.data (`input_pipeline`), as
  `config.data.pipeline` and the devices' memory decide (`Trainer.train_data`).
* Schedule (the paper's): validate every `eval_every_steps`; a stage ends after
  `patience` validations without improvement; then the fine-tune stage restarts from
  the best parameters with its own batch size and learning rate and a fresh optimiser.
* Checkpoints: `checkpoints/` every `checkpoint_every_steps` (asynchronous) and
  `best/` at each new best validation loss; each holds the state and the schedule's
  progress, and the data iterator's position (`input_pipeline.ShardedData`; the device
  sampler needs none: its batch of step n depends on the seed and n alone) is saved
  beside them, so re-running the same command resumes exactly where the run stopped.
  The workdir (its names, checkpoints, config.json, resumption) is
  `checkpoints.Workdir`'s.
* Stopping: SIGINT (Ctrl-C) or SIGTERM (a preempted VM) ends the run after the current
  step with a checkpoint of that step (`signals.Interrupted`); a second one quits at once.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import signal
import time
from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from jax.experimental import multihost_utils

from waveunet_jax import (checkpoints, console, default_data, device_data, distributed, models,
                          optim, parallel, signals)
from waveunet_jax.checkpoints import TrainingError  # training's error, raised there too


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  rng: jax.Array  # raw uint32 key data, folded with the step where randomness is needed
  # The exponential moving average of `params` (config.optim.ema_decay), or None where
  # none is kept: its checkpoints are then those of runs from before it existed.
  ema_params: Any = None

  @property
  def inference_params(self) -> Any:
    """The parameters validation, best/ and separation use: the average where one is
    kept."""
    return self.params if self.ema_params is None else self.ema_params


# --------------------------------------------------------------------------- #
# Model, optimiser, loss.
# --------------------------------------------------------------------------- #


def stage_settings(config: ml_collections.ConfigDict, stage: int) -> tuple[int, float]:
  """(global batch size, learning rate) of a stage."""
  if stage == 0:
    return config.batch_size, config.optim.learning_rate
  return config.fine_tune.batch_size, config.fine_tune.learning_rate


def loss_crop(config: ml_collections.ConfigDict, output_length: int) -> tuple[int, int]:
  """(start, length) of the output samples the loss sees."""
  central = config.loss.central_length or output_length
  if not 0 < central <= output_length:
    raise models.ConfigError(f"config.loss.central_length: {central} must be between 1 and "
                             f"the output length {output_length}")
  return (output_length - central) // 2, central


LOSS_KINDS = ("mse", "l1")


@dataclasses.dataclass(frozen=True)
class Loss:
  """config.loss: the training loss of estimates and targets [B, S, T_out, C] float32,
  on the output samples of `crop` (`loss_crop`): `kind`, 'mse' (the paper's) or 'l1',
  averaged over every sample of every source, plus `stft_weight` times the
  multi-resolution STFT loss there (`stft_loss`, at `fft_sizes`), all times `scale`.
  (Static, hashable: jitted steps take it as an argument.)"""

  crop: tuple[int, int]
  scale: float = 1.0
  kind: str = "mse"
  stft_weight: float = 0.0
  fft_sizes: tuple[int, ...] = ()

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict, output_length: int) -> Loss:
    """The loss of `config` at `output_length` output samples; ConfigError naming the
    field that cannot work (an STFT frame longer than the samples the loss sees among
    them: the term is refused rather than silently dropped)."""
    loss = config.loss
    crop = loss_crop(config, output_length)
    if loss.kind not in LOSS_KINDS:
      raise models.ConfigError(f"config.loss.kind: unknown value {loss.kind!r}; choose "
                               f"{' or '.join(repr(k) for k in LOSS_KINDS)}")
    if not loss.stft_weight >= 0:
      raise models.ConfigError(f"config.loss.stft_weight={loss.stft_weight}: must be >= 0 "
                               "(0: no STFT term)")
    fft_sizes = tuple(int(n) for n in loss.stft_fft_sizes) if loss.stft_weight else ()
    if loss.stft_weight and not fft_sizes:
      raise models.ConfigError("config.loss.stft_fft_sizes is empty: name at least one FFT "
                               "size, or set config.loss.stft_weight=0")
    for n in fft_sizes:
      if not 4 <= n <= crop[1]:
        raise models.ConfigError(
            f"config.loss.stft_fft_sizes: {n} does not fit the {crop[1]} output samples the "
            "loss sees (config.data.output_length, config.loss.central_length); use FFT "
            f"sizes from 4 to {crop[1]}")
    return cls(crop, float(loss.scale), loss.kind, float(loss.stft_weight), fft_sizes)

  def cropped(self, x: jax.Array) -> jax.Array:
    """The samples the loss sees of [B, S, T_out, C]."""
    start, length = self.crop
    return x[:, :, start:start + length]

  def __call__(self, estimates: jax.Array, targets: jax.Array) -> jax.Array:
    """The scalar loss of a batch (every example alike)."""
    estimates, targets = self.cropped(estimates), self.cropped(targets)
    error = estimates - targets
    loss = jnp.mean(error ** 2) if self.kind == "mse" else jnp.mean(jnp.abs(error))
    if self.stft_weight:
      loss = loss + self.stft_weight * stft_loss(estimates, targets, self.fft_sizes)
    return self.scale * loss


# Parallel WaveGAN's floor of the squared magnitude: the log of a silent bin is finite.
POWER_FLOOR = 1e-7


def stft_magnitudes(signals: jax.Array, fft_size: int) -> jax.Array:
  """|STFT| of signals [..., T] -> [..., frames, fft_size // 2 + 1] float32: periodic
  Hann windows of `fft_size` samples every `fft_size // 4`, only frames wholly inside
  the signal (no padding: the edges count less than in torch.stft's centred frames),
  the magnitude floored at sqrt(POWER_FLOOR)."""
  hop = max(fft_size // 4, 1)
  frames = 1 + (signals.shape[-1] - fft_size) // hop
  index = hop * np.arange(frames)[:, None] + np.arange(fft_size)[None, :]
  window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(fft_size) / fft_size)
  spectrum = jnp.fft.rfft(signals.astype(jnp.float32)[..., index] * window, axis=-1)
  return jnp.sqrt(jnp.maximum(jnp.real(spectrum) ** 2 + jnp.imag(spectrum) ** 2, POWER_FLOOR))


def stft_loss(estimates: jax.Array, targets: jax.Array, fft_sizes: tuple[int, ...]) -> jax.Array:
  """The multi-resolution STFT loss of Parallel WaveGAN (Yamamoto et al. 2020), Demucs's
  auxiliary loss, on [B, S, T, C] (each source and channel its own signal): at each FFT
  size, the spectral convergence ||T| - |E||_F / ||T||_F over the whole batch plus the
  mean absolute difference of log magnitudes; averaged over the sizes."""
  estimates, targets = (jnp.moveaxis(x, 2, -1) for x in (estimates, targets))  # time last

  def norm(x):  # floored: no NaN gradient where estimates equal targets
    return jnp.sqrt(jnp.maximum(jnp.sum(x ** 2), 1e-20))

  total = 0.0
  for n in fft_sizes:
    e, t = stft_magnitudes(estimates, n), stft_magnitudes(targets, n)
    total += norm(t - e) / norm(t) + jnp.mean(jnp.abs(jnp.log(t) - jnp.log(e)))
  return total / len(fft_sizes)


def create_state(config: ml_collections.ConfigDict, model: models.WaveUNet,
                 tx: optax.GradientTransformation) -> TrainState:
  rng = jax.random.PRNGKey(config.seed)
  shortest = jnp.zeros((1, models.lengths(model, 1).input_length, model.num_channels))
  variables = jax.jit(model.init)(jax.random.fold_in(rng, 0), shortest)
  params = variables["params"]
  ema = jax.tree_util.tree_map(jnp.copy, params) if optim.ema_decay(config) else None
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    batch_stats=variables.get("batch_stats", {}),
                    opt_state=tx.init(params), rng=rng, ema_params=ema)


def stage_optimizer(config: ml_collections.ConfigDict, stage: int,
                    params: Any) -> optax.GradientTransformation:
  """The optimiser of `stage` (0: main, 1: fine-tune): its learning rate, the config's
  decay, clipping and trainable parts (`optim.make_optimizer`)."""
  _, learning_rate = stage_settings(config, stage)
  return optim.make_optimizer(config, learning_rate, params)


def fresh_state(config: ml_collections.ConfigDict, tx: optax.GradientTransformation,
                init: TrainState, params: Any = None, batch_stats: Any = None,
                step: int = 0) -> TrainState:
  """A state at `step` with `tx`'s fresh optimiser state: `init`'s parameters and
  BatchNorm statistics (`create_state`'s), or the given ones; the average of the
  parameters, where the config keeps one, starts from them: a copy of them, as in
  `create_state`, since the train step donates its state and one buffer may not be
  donated twice. Traceable: under `jax.eval_shape` it gives the state's shapes without
  allocating it."""
  if params is None:
    params, batch_stats = init.params, init.batch_stats
  ema = jax.tree_util.tree_map(jnp.copy, params) if optim.ema_decay(config) else None
  return TrainState(step=jnp.asarray(step, jnp.int32), params=params, batch_stats=batch_stats,
                    opt_state=tx.init(params), rng=init.rng, ema_params=ema)


def initial_state(config: ml_collections.ConfigDict, model: models.WaveUNet,
                  stage: int = 0) -> tuple[TrainState, optax.GradientTransformation]:
  """(state, optimiser) a fresh run of `stage` starts from, on the default device: what
  a benchmark that runs the train step without a workdir needs (`Trainer.new_state` is
  the same state, laid out on the run's mesh)."""
  init = create_state(config, model, optax.identity())
  tx = stage_optimizer(config, stage, init.params)
  return fresh_state(config, tx, init), tx


def abstract_state(config: ml_collections.ConfigDict, model: models.WaveUNet,
                   layout: parallel.DataParallel,
                   stage: int = 0) -> tuple[TrainState, optax.GradientTransformation]:
  """`initial_state` in shapes only (`jax.ShapeDtypeStruct`s replicated on `layout`,
  nothing allocated), and the optimiser: what compiling the train step for a device
  one does not have (a TPU topology, a GPU's memory analysis) or for its FLOP count
  needs."""
  init = jax.eval_shape(lambda: create_state(config, model, optax.identity()))
  tx = stage_optimizer(config, stage, init.params)
  state = jax.eval_shape(functools.partial(fresh_state, config, tx), init)
  return jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=layout.replicated), state), tx


def abstract_batch(model: models.WaveUNet, output_length: int, layout: parallel.DataParallel,
                   batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
  """A global training batch as the train step takes it, in shapes only, sharded on
  `layout`: mix [B, T_in, C], sources [B, S, T_out, C], float32."""
  size = models.lengths(model, output_length)
  c, s = model.num_channels, model.num_sources
  return {"mix": jax.ShapeDtypeStruct((batch_size, size.input_length, c), jnp.float32,
                                      sharding=layout.sharded),
          "sources": jax.ShapeDtypeStruct((batch_size, s, size.output_length, c), jnp.float32,
                                          sharding=layout.sharded)}


def train_step(state: TrainState, batch: dict[str, jax.Array], *, model: models.WaveUNet,
               tx: optax.GradientTransformation, loss: Loss,
               ema_decay: float = 0.0) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimiser step on a (global) batch, on `loss` (config.loss); then, where the
  state keeps an average of the parameters, its update with `ema_decay`."""

  def loss_fn(params):
    variables = {"params": params, "batch_stats": state.batch_stats}
    estimates, updates = model.apply(variables, batch["mix"], train=True,
                                     mutable=["batch_stats"])
    return loss(estimates, batch["sources"]), updates

  (value, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  changes, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, changes)
  ema = state.ema_params
  if ema is not None:
    ema = optim.update_ema(ema, params, optim.ema_decay_at(ema_decay, state.step))
  state = state.replace(step=state.step + 1, params=params,
                        batch_stats=updates.get("batch_stats", state.batch_stats),
                        opt_state=opt_state, ema_params=ema)
  return state, {"loss": value, "grad_norm": optax.tree_utils.tree_norm(grads)}


def eval_step(state: TrainState, batch: dict[str, jax.Array], *, model: models.WaveUNet,
              loss: Loss) -> dict[str, jax.Array]:
  """Weighted sums for the validation loss and the per-source SDR (energy of the
  targets over energy of the errors, pooled over the whole validation set).

  The validation loss is always `loss.scale` x MSE on the loss's crop, whatever
  config.loss.kind and STFT term train: so valid/loss compares across runs of any loss
  (the SDR's error energy is the same MSE), and early stopping and best/ follow it.
  The network is the state's `inference_params` (the average, where one is kept) with
  the running BatchNorm statistics."""
  variables = {"params": state.inference_params, "batch_stats": state.batch_stats}
  estimates = loss.cropped(model.apply(variables, batch["mix"], train=False))
  targets = loss.cropped(batch["sources"])
  error = (estimates - targets) ** 2
  weight = batch["weight"]
  return {
      "loss_sum": loss.scale * jnp.sum(weight * jnp.mean(error, axis=(1, 2, 3))),
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
  static = dict(model=model, loss=Loss.from_config(config, lengths.output_length))
  train = jax.jit(functools.partial(train_step, tx=tx, ema_decay=optim.ema_decay(config),
                                    **static),
                  in_shardings=(layout.replicated, layout.sharded),
                  out_shardings=(layout.replicated, layout.replicated), donate_argnums=0)
  evaluate = jax.jit(functools.partial(eval_step, **static),
                     in_shardings=(layout.replicated, layout.sharded),
                     out_shardings=layout.replicated)
  return train, evaluate


# --------------------------------------------------------------------------- #
# The loop.
# --------------------------------------------------------------------------- #


class Trainer:
  """Holds what one run needs: its workdir, mesh, model, jitted steps, metrics writer.

  `start` is where the run starts (`checkpoints.Workdir.start`), asked of the workdir
  here if not given."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: checkpoints.Workdir,
               start: checkpoints.Start | None = None):
    self.config = config
    self.workdir = workdir
    self.model = models.from_config(config)
    self.lengths = models.lengths(self.model, config.data.output_length)
    Loss.from_config(config, self.lengths.output_length)  # a loss that cannot be fails here
    self.layout = parallel.data_parallel()
    # Device d of the mesh reads data shard d; these are this process's.
    self.local_devices = [d for d in self.layout.mesh.devices.flat
                          if d.process_index == jax.process_index()]
    self.shards = [int(np.flatnonzero(self.layout.mesh.devices.flat == d)[0])
                   for d in self.local_devices]
    self.init = create_state(config, self.model, optax.identity())
    optim.trainable_mask(config, self.init.params)  # a pattern that selects nothing fails here
    start = workdir.start(config) if start is None else start
    params, batch_stats = start.variables(config, self.init.params, self.init.batch_stats)
    # (No average here: `new_state` starts each stage's from its first parameters.)
    self.init = self.init.replace(params=params, batch_stats=batch_stats, ema_params=None)
    self.started_from = start.started_from  # for config.json (checkpoints.STARTED_FROM)
    workdir.open(config.keep_checkpoints)
    self.train_step = self.eval_step = None  # jitted for a stage's optimiser: compile_steps
    self.stop = signals.StopOnSignal()  # active while `run` runs
    self.writer = self.listening = None  # TensorBoard, on process 0; its audio, once needed
    if jax.process_index() == 0:
      import tensorflow as tf

      self.writer = tf.summary.create_file_writer(str(workdir.tensorboard_dir))

  # -- state and steps ---------------------------------------------------------

  def new_state(self, stage: int, params=None, batch_stats=None, step=0) -> tuple[TrainState, Any]:
    """A state for `stage`: fresh, or from given parameters with a fresh optimiser; the
    average of the parameters, if kept, starts from them."""
    tx = stage_optimizer(self.config, stage, self.init.params)
    state = fresh_state(self.config, tx, self.init, params, batch_stats, step)
    # Copies: the train step donates its state, and self.init must outlive it.
    state = jax.tree_util.tree_map(jnp.copy, state)
    return jax.device_put(state, self.layout.replicated), tx

  def compile_steps(self, tx) -> None:
    self.train_step, self.eval_step = jit_steps(self.config, self.model, tx, self.layout)

  def global_batch(self, per_device: list[dict[str, np.ndarray]]) -> dict[str, jax.Array]:
    """One batch per local device (in `self.local_devices` order) -> the global batch,
    device d's rows at the d-th place."""
    def stack(*parts):
      shape = (parts[0].shape[0] * self.layout.size,) + parts[0].shape[1:]
      on_devices = [jax.device_put(p, d) for p, d in zip(parts, self.local_devices)]
      return jax.make_array_from_single_device_arrays(shape, self.layout.sharded, on_devices)

    return jax.tree_util.tree_map(stack, *per_device)

  def data_seed(self, progress: checkpoints.Progress) -> int:
    """The seed of the data order: per stage, and anew where the order restarted."""
    from waveunet_jax import input_pipeline

    return input_pipeline.derived_seed(self.config.seed, progress.stage, progress.data_start_step)

  def train_data(self, progress: checkpoints.Progress, state: TrainState):
    """The training batches of the stage and data order of `progress`: sampled on the
    devices (`device_data.DeviceSampler`) or this process's devices' tf.data streams
    (`input_pipeline.ShardedData`), as config.data.pipeline and the memory decide
    (`device_data.choose`; `state`: the stage's, to size the compiled step)."""
    from waveunet_jax import prepare

    batch_size, _ = stage_settings(self.config, progress.stage)
    if device_data.choose(self.config, lambda: self.data_fit(state, batch_size)) == "tfdata":
      return self.tfdata_streams(progress)
    num_shards = self.layout.size
    shares = [device_data.read_share(self.config, shard, num_shards) for shard in self.shards]
    return device_data.DeviceSampler(self.config.data, self.layout, prepare.layout_for(self.config),
                                     shares, self.shards, batch_size=batch_size,
                                     seed=self.data_seed(progress))

  def tfdata_streams(self, progress: checkpoints.Progress):
    """This process's devices' tf.data streams (`input_pipeline.ShardedData`) for the
    stage and data order of `progress`."""
    from waveunet_jax import input_pipeline

    batch_size, _ = stage_settings(self.config, progress.stage)
    num_shards = self.layout.size
    return input_pipeline.ShardedData([
        input_pipeline.train_dataset(self.config, batch_size // num_shards,
                                     seed=self.data_seed(progress), shard=shard,
                                     num_shards=num_shards)
        for shard in self.shards], self.shards, num_shards)

  def data_fit(self, state: TrainState, batch_size: int):
    """Whether the device sampler's windows fit beside the train step (compiled here
    for its memory analysis; the training loop's first call then finds it compiled)."""
    def spec(*shape):
      return jax.ShapeDtypeStruct(shape, jnp.float32, sharding=self.layout.sharded)

    lengths, model = self.lengths, self.model
    batch = {"mix": spec(batch_size, lengths.input_length, model.num_channels),
             "sources": spec(batch_size, model.num_sources, lengths.output_length,
                             model.num_channels)}
    compiled = self.train_step.lower(state, batch).compile()
    capacity = min(device_data.device_capacity(d) for d in self.local_devices)
    if jax.process_count() > 1:  # every process decides alike: by the smallest device
      mib = multihost_utils.process_allgather(np.float32(capacity / 2**20))  # JAX: 32 bits
      capacity = int(np.min(mib) * 2**20)
    return device_data.Fit(device_data.share_bytes(self.config, self.layout.size),
                           device_data.step_bytes(compiled), capacity)

  def batch(self, data, step: int) -> dict[str, jax.Array]:
    """The global batch that trains step `step + 1`."""
    if isinstance(data, device_data.DeviceSampler):
      return data.batch(step)
    return self.global_batch(next(data))

  # -- validation and logging --------------------------------------------------

  def validate(self, state: TrainState, stage: int) -> dict[str, float]:
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
    num_shards = self.layout.size
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
    variables = listening.local_copy({"params": state.inference_params,
                                      "batch_stats": state.batch_stats})
    with self.writer.as_default():
      self.listening.write(step, variables)
    self.writer.flush()

  # -- the run -----------------------------------------------------------------

  def run(self, callback: Callable[[int, dict[str, float]], None] | None = None) -> TrainState:
    """Trains to the end, or raises Interrupted after saving the step a signal stopped."""
    with self.stop:
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
    latest = self.workdir.latest_step()
    if latest is not None:
      # The stage decides the optimiser (its learning rate), so read progress first.
      progress = self.workdir.read_progress()
      state, tx = self.new_state(progress.stage)
      state, progress = self.workdir.restore(latest, state)
      logging.info("resuming at step %d, stage %d", latest, progress.stage)
    if progress.done:
      logging.info("training finished before (step %d); nothing to do", int(state.step))
      return state
    self.compile_steps(tx)
    data = self.train_data(progress, state)
    if latest is not None and isinstance(data, device_data.DeviceSampler):
      if not device_data.sampled_by_device(self.workdir.data_state_dir(latest)):
        logging.info("step %d was trained on tf.data's batches; from here the devices draw "
                     "them (the batch of each step from the seed and the step alone)", latest)
    elif latest is not None:
      positions = self.workdir.data_state_dir(latest)
      if device_data.sampled_by_device(positions):
        reason = ("were not saved: the devices drew the batches (config.data.pipeline="
                  "'device'), and tf.data cannot continue their order")
        restored = False
      else:
        reason = data.why_not_restored(positions)
        restored = data.can_restore(positions) and data.restore(positions)
      if jax.process_count() > 1:  # all restore, or all start anew
        restored = bool(np.all(multihost_utils.process_allgather(np.int32(restored))))
      if not restored:
        logging.warning("step %d's data positions %s: the parameters and the optimiser resume "
                        "exactly, the training data start a new random order here", latest,
                        reason)
        progress.data_start_step = latest
        data = self.tfdata_streams(progress)  # tf.data still: chosen above

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
      state, metrics = self.train_step(state, self.batch(data, step))
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
              f"(step {self.workdir.latest_step()}) is in {self.workdir.checkpoints_dir}; "
              "lower config.optim.learning_rate or set config.optim.grad_clip_norm")
        seconds = time.perf_counter() - window_start
        # The rate of this step: the stage's optimiser counts from the stage's start.
        rate = float(optim.learning_rate_schedule(config, learning_rate)(
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
        results = self.validate(state, progress.stage)
        logging.info("step %d validation: %s", step,
                     ", ".join(f"{k} {v:.4f}" for k, v in results.items()))
        self.write(step, {f"valid/{k}": v for k, v in results.items()})
        self.listen(step, state)
        if callback:
          callback(step, {f"valid/{k}": v for k, v in results.items()})
        if results["loss"] < progress.best_loss:
          progress.best_loss, progress.best_step, progress.bad_validations = results["loss"], step, 0
          self.workdir.save_best(step, state, progress)
        else:
          progress.bad_validations += 1
        stage_over = progress.bad_validations >= config.patience

      if stage_over and (progress.stage == 1 or not config.fine_tune.enabled):
        progress.done = True
        self.workdir.save(state, progress, data)
        logging.info("no improvement in %d validations: training done at step %d",
                     config.patience, step)
        break
      if stage_over:
        # The paper's second stage: from the best parameters, new batch size and rate
        # (the average's, where one is kept: it is what validation chose; the stage's
        # average starts from them too).
        best_state, _ = self.workdir.restore(progress.best_step, state, best=True)
        progress = dataclasses.replace(progress, stage=1, stage_start_step=step,
                                       bad_validations=0)
        state, tx = self.new_state(1, best_state.inference_params, best_state.batch_stats,
                                   step)
        self.compile_steps(tx)
        data = self.train_data(progress, state)
        batch_size, learning_rate = stage_settings(config, 1)
        audio_per_step = batch_size * self.lengths.output_length / config.data.sample_rate
        logging.info("step %d: fine-tune stage from the best step %d (batch %d, lr %g)",
                     step, progress.best_step, batch_size, learning_rate)
        self.workdir.save(state, progress, data)
        saved = step
      elif step % config.checkpoint_every_steps == 0 or step == config.num_train_steps:
        self.workdir.save(state, progress, data)
        saved = step
      if self.stop_agreed(step) and step < config.num_train_steps:
        if bar is not None:
          bar.close()
        if saved != step:
          self.workdir.save(state, progress, data)
        self.workdir.wait_until_finished()
        raise signals.Interrupted(step, self.stop.signum or signal.SIGTERM)
    if bar is not None:
      bar.close()
    self.workdir.wait_until_finished()
    return state

  def close(self) -> None:
    self.workdir.close()


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
  (raises signals.Interrupted); a second one raises KeyboardInterrupt at once.
  """
  workdir = checkpoints.Workdir(workdir)
  from waveunet_jax import input_pipeline

  # First: until they agree, processes may not wait on each other.
  distributed.check_same_run(config, workdir.path)
  with workdir.removed_if_start_fails():
    # Check what can be checked before anything slow, and before writing anything.
    model = models.from_config(config)
    Loss.from_config(config, models.lengths(model, config.data.output_length).output_length)
    optim.ema_decay(config)
    stages = ("config.batch_size", "config.fine_tune.batch_size")
    for stage, field in enumerate(stages[:2 if config.fine_tune.enabled else 1]):
      check_batch_size(stage_settings(config, stage)[0], field)
    device_data.check_pipeline(config)
    start = workdir.start(config)
    config = default_data.ensure_data(config, workdir)
    input_pipeline.load_builders(config)  # the data is there, before compiling anything
    trainer = Trainer(config, workdir, start)
  # The run starts: only now does the workdir describe it.
  workdir.save_config(config, trainer.started_from)
  try:
    return trainer.run(callback)
  finally:
    trainer.close()

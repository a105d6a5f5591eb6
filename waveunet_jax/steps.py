"""The step math of training, without TensorFlow: the train state, the loss, the state
constructors and the jitted data-parallel train and eval steps.

`train.Trainer` runs `jit_steps`; `flops` and the benchmarks compile the same functions
(`initial_state`, `abstract_state`, `abstract_batch`).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from waveunet_jax import models, optim, parallel


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
    if not 0 <= loss.stft_weight < math.inf:
      raise models.ConfigError(f"config.loss.stft_weight={loss.stft_weight}: must be a finite "
                               "number >= 0 (0: no STFT term)")
    sizes = loss.stft_fft_sizes
    if isinstance(sizes, (str, int)) or not all(
        isinstance(n, int) and not isinstance(n, bool) for n in sizes):
      raise models.ConfigError(f"config.loss.stft_fft_sizes={sizes!r}: must be a tuple of whole "
                               "numbers of samples, e.g. '(512, 1024, 2048)'")
    fft_sizes = tuple(sizes) if loss.stft_weight else ()
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
  a benchmark that runs the train step without a workdir needs (`train.Trainer.new_state`
  is the same state, laid out on the run's mesh)."""
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
              tx: optax.GradientTransformation, layout: parallel.DataParallel, *,
              loss: Loss | None = None):
  """The jitted train and eval steps of a run, laid out data-parallel on `layout`:
  state replicated, batches sharded, the train step donating its state. Training
  runs these (with its `loss`, else the config's); the compile-only accelerator checks
  lower the same functions."""
  if loss is None:
    loss = Loss.from_config(config, models.lengths(model, config.data.output_length).output_length)
  static = dict(model=model, loss=loss)
  train = jax.jit(functools.partial(train_step, tx=tx, ema_decay=optim.ema_decay(config),
                                    **static),
                  in_shardings=(layout.replicated, layout.sharded),
                  out_shardings=(layout.replicated, layout.replicated), donate_argnums=0)
  evaluate = jax.jit(functools.partial(eval_step, **static),
                     in_shardings=(layout.replicated, layout.sharded),
                     out_shardings=layout.replicated)
  return train, evaluate

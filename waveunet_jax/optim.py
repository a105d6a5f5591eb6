"""The optimiser of a training stage: Adam (AMSGrad for the seed's config) after L2
with Keras semantics (loss += weight_decay * sum(w^2), i.e. 2 * weight_decay * w added to
the gradient) on the parameters whose path matches `config.optim.l2_mask`, optional
global-norm clipping, the learning-rate schedule, and only on the parameters
`config.optim.trainable` selects, if set (the others frozen, with no optimiser state).

And the exponential moving average of the parameters that `config.optim.ema_decay`
asks for (`ema_decay`, `update_ema`); the train state holds it (`steps.TrainState`).
"""

from __future__ import annotations

import re
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from waveunet_jax import models


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


def ema_decay(config: ml_collections.ConfigDict) -> float:
  """config.optim.ema_decay: 0 (no average kept) or a decay in (0, 1)."""
  decay = config.optim.ema_decay
  if not 0 <= decay < 1:
    raise models.ConfigError(f"config.optim.ema_decay={decay}: use 0 (off) or a decay in "
                             "(0, 1), e.g. 0.999")
  return float(decay)


def ema_decay_at(decay: float, step: jax.Array) -> jax.Array:
  """The decay of the update after step `step` (the state's step before it): `decay`,
  warmed up as min(decay, (1 + step) / (10 + step)) (TensorFlow's
  ExponentialMovingAverage with num_updates), so that early in a run the average
  follows the parameters instead of staying near their random start for ~1/(1 - decay)
  steps."""
  step = jnp.asarray(step, jnp.float32)
  return jnp.minimum(decay, (1 + step) / (10 + step))


def update_ema(ema: Any, params: Any, decay: float | jax.Array) -> Any:
  """The average after an optimiser step: decay * ema + (1 - decay) * params (the
  parameters after the step)."""
  return jax.tree_util.tree_map(lambda e, p: decay * e + (1 - decay) * p, ema, params)

"""Training: the step, data parallelism, L2, the schedule, resumption, the CLI."""

import functools
import logging
import os
import pathlib
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from experiments import deep
from helpers import TINY_OUTPUT, TINY_RATE, tiny_data_config, tiny_schedule
from waveunet_jax import models, optim, parallel, train
from waveunet_jax import workdir as workdir_lib
from waveunet_jax import steps as train_steps

ROOT = pathlib.Path(__file__).resolve().parent.parent


def tiny_config(**model):
  config = tiny_schedule(tiny_data_config(TINY_RATE, TINY_OUTPUT, **model), 30, 10,
                         log_every=5, fine_tune_batch_size=8)
  config.optim.learning_rate = 1e-3
  return config


def fixed_batch(model, batch_size=4, seed=0):
  """Sources: a few sines and clicks per source; the mix is their sum."""
  size = models.lengths(model, 1000)
  rng = np.random.default_rng(seed)
  t = np.arange(size.input_length) / 8000
  sources = np.zeros((batch_size, model.num_sources, size.input_length, model.num_channels),
                     np.float32)
  for b in range(batch_size):
    for s in range(model.num_sources):
      f = rng.uniform(80, 1000)
      sources[b, s] = 0.3 * np.sin(2 * np.pi * f * t + rng.uniform(0, 6))[:, None]
  crop = slice(size.offset, size.offset + size.output_length)
  return {"mix": sources.sum(axis=1), "sources": sources[:, :, crop]}


def step_fn(config, model, tx):
  output_length = models.lengths(model, config.data.output_length).output_length
  return functools.partial(train_steps.train_step, model=model, tx=tx,
                           loss=train_steps.Loss.from_config(config, output_length),
                           ema_decay=optim.ema_decay(config))


def test_a_few_dozen_steps_halve_the_loss_on_one_batch():
  config = tiny_config()
  model = models.WaveUNet(**config.model)
  tx = optim.make_optimizer(config, 3e-3, train_steps.create_state(config, model, optax.identity()).params)
  state = train_steps.create_state(config, model, tx)
  batch = fixed_batch(model)
  step = jax.jit(step_fn(config, model, tx))
  losses = []
  for _ in range(40):
    state, metrics = step(state, batch)
    losses.append(float(metrics["loss"]))
  assert losses[-1] < 0.5 * losses[0], losses
  assert int(state.step) == 40


# --------------------------------------------------------------------------- #
# The loss options (train_steps.Loss): values on known inputs, refusals, a few steps each.
# --------------------------------------------------------------------------- #


def sine(length, period, amplitude=1.0):
  return amplitude * np.sin(2 * np.pi * np.arange(length) / period)


def test_mse_and_l1_of_a_sine_against_silence_count_the_crop_alone():
  n = 64  # 4 whole periods of n samples from sample 20; outside, errors the loss ignores
  targets = np.full((1, 1, 300, 1), 5.0, np.float32)
  targets[0, 0, 20:20 + 4 * n, 0] = sine(4 * n, n, 0.5)
  zeros = np.zeros_like(targets)
  assert float(train_steps.Loss((20, 4 * n), scale=3.0)(zeros, targets)) == pytest.approx(
      3 * 0.5 ** 2 / 2, rel=1e-6)
  # The mean of |sin| over whole periods of n samples: 2 cot(pi / n) / n (-> 2 / pi).
  l1 = train_steps.Loss((20, 4 * n), scale=3.0, kind="l1")
  assert float(l1(zeros, targets)) == pytest.approx(3 * 0.5 * 2 / np.tan(np.pi / n) / n,
                                                    rel=1e-6)


def test_stft_loss_of_a_sine_against_silence_by_hand():
  n, k, amplitude = 64, 8, 0.5  # a sine at bin k of every frame of n samples
  targets = sine(256, n / k, amplitude).astype(np.float32)[None, None, :, None]
  # The periodic Hann window is 1/2 - (e^{+} + e^{-}) / 4 of the bin frequency: bin k
  # holds amplitude n / 4, bins k +- 1 amplitude n / 8, every other bin nothing, which
  # the floor raises to e; silence is e in every bin.
  e, bins = np.sqrt(train_steps.POWER_FLOOR), n // 2 + 1
  peak, side = amplitude * n / 4, amplitude * n / 8
  convergence = (np.sqrt((peak - e) ** 2 + 2 * (side - e) ** 2)
                 / np.sqrt(peak ** 2 + 2 * side ** 2 + (bins - 3) * e ** 2))
  log_magnitude = (np.log(peak / e) + 2 * np.log(side / e)) / bins
  loss = train_steps.stft_loss(np.zeros_like(targets), targets, (n,))
  assert float(loss) == pytest.approx(convergence + log_magnitude, rel=1e-5)
  assert float(train_steps.stft_loss(targets, targets, (n,))) < 1e-10


def numpy_stft_loss(estimates, targets, fft_sizes):
  """train_steps.stft_loss again, in float64 numpy: frames by sliding windows, numpy's FFT."""
  def magnitudes(x, n):
    frames = np.lib.stride_tricks.sliding_window_view(
        np.moveaxis(x, 2, -1).astype(np.float64), n, axis=-1)[..., ::n // 4, :]
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n) / n)
    return np.sqrt(np.maximum(np.abs(np.fft.rfft(frames * window, axis=-1)) ** 2, 1e-7))

  total = 0.0
  for n in fft_sizes:
    e, t = magnitudes(estimates, n), magnitudes(targets, n)
    total += np.linalg.norm(t - e) / np.linalg.norm(t) + np.mean(np.abs(np.log(t) - np.log(e)))
  return total / len(fft_sizes)


def test_l1_plus_stft_on_the_crop_equals_numpy_s():
  rng = np.random.default_rng(0)
  estimates, targets = (rng.uniform(-0.5, 0.5, (3, 2, 260, 2)).astype(np.float32)
                        for _ in range(2))
  loss = train_steps.Loss((30, 200), scale=2.0, kind="l1", stft_weight=0.5, fft_sizes=(32, 64, 200))
  crop = slice(30, 230)
  expected = 2.0 * (np.mean(np.abs(estimates - targets)[:, :, crop])
                    + 0.5 * numpy_stft_loss(estimates[:, :, crop], targets[:, :, crop],
                                            (32, 64, 200)))
  assert float(loss(estimates, targets)) == pytest.approx(expected, rel=1e-5)


def test_loss_options_that_cannot_work_are_refused_naming_the_field():
  config = tiny_config()
  assert train_steps.Loss.from_config(config, 1000) == train_steps.Loss((0, 1000))  # the paper's
  config.loss.central_length = 500
  config.loss.stft_weight = 0.1
  with pytest.raises(models.ConfigError, match=r"^config.loss.stft_fft_sizes: 512 does not fit "
                     r"the 500 output samples the loss sees \(config.data.output_length, "
                     r"config.loss.central_length\); use FFT sizes from 4 to 500$"):
    train_steps.Loss.from_config(config, 1000)
  config.loss.stft_fft_sizes = (128, 256)
  assert train_steps.Loss.from_config(config, 1000).fft_sizes == (128, 256)
  config.loss.kind = "l2"
  with pytest.raises(models.ConfigError, match="config.loss.kind: unknown value 'l2'; choose "
                     "'mse' or 'l1'"):
    train_steps.Loss.from_config(config, 1000)


TRAINING_OPTIONS = {
    "l1": {"loss.kind": "l1"},
    "mse+stft": {"loss.stft_weight": 1.0, "loss.stft_fft_sizes": (64, 128, 256)},
    "l1+stft": {"loss.kind": "l1", "loss.stft_weight": 0.1, "loss.stft_fft_sizes": (128,)},
    "ema": {"optim.ema_decay": 0.99},
}


@pytest.mark.parametrize("option", sorted(TRAINING_OPTIONS))
def test_each_training_option_trains_a_few_steps(option):
  config = tiny_config()
  for name, value in TRAINING_OPTIONS[option].items():
    group, field = name.split(".")
    config[group][field] = value
  model = models.WaveUNet(**config.model)
  init = train_steps.create_state(config, model, optax.identity())
  tx = optim.make_optimizer(config, 3e-3, init.params)
  state = init.replace(opt_state=tx.init(init.params))
  step = jax.jit(step_fn(config, model, tx))
  losses = []
  for _ in range(8):
    state, metrics = step(state, fixed_batch(model))
    losses.append(float(metrics["loss"]))
  assert np.all(np.isfinite(losses)) and losses[-1] < losses[0], losses
  assert all(np.all(np.isfinite(p)) for p in jax.tree_util.tree_leaves(state))


# --------------------------------------------------------------------------- #
# The average of the parameters (config.optim.ema_decay).
# --------------------------------------------------------------------------- #


def test_the_parameters_average_after_k_steps_is_its_closed_form():
  config = tiny_config(normalization="batchnorm")
  config.optim.ema_decay = decay = 0.8
  model = models.WaveUNet(**config.model)
  init = train_steps.create_state(config, model, optax.identity())
  tx = optim.make_optimizer(config, 3e-3, init.params)
  state = init.replace(opt_state=tx.init(init.params))
  step, batch = jax.jit(step_fn(config, model, tx)), fixed_batch(model)
  trajectory = [jax.device_get(state.params)]  # p_0: where the average starts
  for _ in range(5):
    state, _ = step(state, batch)
    trajectory.append(jax.device_get(state.params))
  # Each update's decay is warmed up: min(decay, (1 + i) / (10 + i)) after step i.
  decays = [min(decay, (1 + i) / (10 + i)) for i in range(len(trajectory) - 1)]
  assert decays[0] == 0.1 and decays[-1] < decay

  def average(*p):
    ema = np.float64(p[0])
    for d, params in zip(decays, p[1:]):
      ema = d * ema + (1 - d) * np.float64(params)
    return ema

  expected = jax.tree_util.tree_map(average, *trajectory)
  for got, want in zip(jax.tree_util.tree_leaves(state.ema_params),
                       jax.tree_util.tree_leaves(expected)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
  # Validation sees the average (with the running BatchNorm statistics), not params.
  loss = train_steps.Loss.from_config(config, models.lengths(model, 1000).output_length)
  evaluate = jax.jit(functools.partial(train_steps.eval_step, model=model, loss=loss))
  batch["weight"] = np.ones(4, np.float32)
  averaged = state.replace(params=state.ema_params, ema_params=None)
  assert evaluate(state, batch)["loss_sum"] == evaluate(averaged, batch)["loss_sum"]
  assert evaluate(state, batch)["loss_sum"] != evaluate(state.replace(ema_params=None),
                                                        batch)["loss_sum"]
  # Off: no average in the state, nothing in its checkpoints.
  config.optim.ema_decay = 0.0
  assert train_steps.create_state(config, model, optax.identity()).ema_params is None
  config.optim.ema_decay = 1.0
  with pytest.raises(models.ConfigError, match=r"^config.optim.ema_decay=1.0: use 0 \(off\) or "
                     r"a decay in \(0, 1\), e.g. 0.999$"):
    optim.ema_decay(config)


@pytest.mark.parametrize("normalization", ["none", "batchnorm"])
def test_step_on_four_devices_equals_one_device(normalization):
  assert jax.device_count() == 4, "conftest forces 4 CPU devices"
  config = tiny_config(normalization=normalization, padding="same")
  config.optim.weight_decay = 0.01
  model = models.WaveUNet(**config.model)
  init = train_steps.create_state(config, model, optax.identity())
  tx = optim.make_optimizer(config, 1e-3, init.params)
  state = init.replace(opt_state=tx.init(init.params))
  batch = fixed_batch(model, batch_size=8)
  results = []
  for devices in (jax.devices()[:1], jax.devices()):
    mesh = Mesh(np.array(devices), ("data",))
    replicated = NamedSharding(mesh, PartitionSpec())
    sharded = NamedSharding(mesh, PartitionSpec("data"))
    step = jax.jit(step_fn(config, model, tx), in_shardings=(replicated, sharded),
                   out_shardings=(replicated, replicated))
    s = jax.device_put(state, replicated)
    for _ in range(2):
      s, metrics = step(s, jax.device_put(batch, sharded))
    results.append(jax.device_get((s.params, s.batch_stats, metrics["loss"])))
  for one, four in zip(jax.tree_util.tree_leaves(results[0]), jax.tree_util.tree_leaves(results[1])):
    np.testing.assert_allclose(one, four, rtol=2e-5, atol=2e-6)


def test_l2_changes_only_the_masked_kernels():
  config = tiny_config(normalization="batchnorm", upsampling="learned")
  config.optim.weight_decay = 0.01
  model = models.WaveUNet(**config.model)
  params = train_steps.create_state(config, model, optax.identity()).params
  mask = optim.path_mask(params, config.optim.l2_mask)
  flat = {"/".join(k.key for k in path): m
          for path, m in jax.tree_util.tree_leaves_with_path(mask)}
  assert flat["down_0/conv/kernel"] and flat["up_2/conv/kernel"] and flat["bottleneck/conv/kernel"]
  assert not flat["output/kernel"] and not flat["output/bias"]
  assert not flat["down_0/norm/scale"] and not flat["upsample_0/weights"]
  # With zero gradients Adam moves nothing; only the L2 term moves parameters.
  tx = optim.make_optimizer(config, 1e-3, params)
  zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
  updates, _ = tx.update(zeros, tx.init(params), params)
  for path, update in jax.tree_util.tree_leaves_with_path(updates):
    name = "/".join(k.key for k in path)
    assert bool(np.any(update != 0)) == flat[name], name


def test_bfloat16_compute_keeps_float32_parameters():
  config = tiny_config(dtype="bfloat16")
  model = models.WaveUNet(**config.model)
  tx = optim.make_optimizer(config, 1e-3, train_steps.create_state(config, model, optax.identity()).params)
  state = train_steps.create_state(config, model, tx)
  state, metrics = jax.jit(step_fn(config, model, tx))(state, fixed_batch(model))
  assert np.isfinite(float(metrics["loss"]))
  assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(state.params))


def test_the_train_step_compiled_on_shapes_alone_runs_the_state_training_starts_from():
  """train_steps.abstract_state/abstract_batch (what the TPU, GPU and FLOP compiles use) are
  the state and batch training feeds its step: the step compiled on them alone takes
  the real ones (BatchNorm statistics and the parameters' average included), at the
  fine-tune stage's learning rate."""
  config = tiny_config(normalization="batchnorm")
  config.optim.ema_decay = 0.9
  config.fine_tune.learning_rate = 3e-3
  model = models.WaveUNet(**config.model)
  layout = parallel.data_parallel(jax.devices()[:1])
  shapes, abstract_tx = train_steps.abstract_state(config, model, layout, stage=1)
  state, _ = train_steps.initial_state(config, model, stage=1)
  assert shapes.ema_params is not None and shapes.batch_stats
  assert jax.tree_util.tree_structure(shapes) == jax.tree_util.tree_structure(state)
  for shape, value in zip(jax.tree_util.tree_leaves(shapes), jax.tree_util.tree_leaves(state)):
    assert (shape.shape, shape.dtype) == (value.shape, value.dtype)
  batch = fixed_batch(model, batch_size=4)
  batch_shapes = train_steps.abstract_batch(model, 1000, layout, 4)
  assert {k: (v.shape, v.dtype) for k, v in batch_shapes.items()} == {
      k: (v.shape, v.dtype) for k, v in batch.items()}

  step, _ = train_steps.jit_steps(config, model, abstract_tx, layout)
  before = jax.tree_util.tree_map(np.asarray, state.params)
  after, metrics = step.lower(shapes, batch_shapes).compile()(state, batch)
  assert np.isfinite(float(metrics["loss"])) and int(after.step) == 1
  # Adam's first step moves a parameter with a gradient by about the learning rate:
  # the fine-tune stage's (3e-3), not the main stage's (1e-3).
  moved = max(float(np.max(np.abs(np.asarray(a) - b))) for a, b in zip(
      jax.tree_util.tree_leaves(after.params), jax.tree_util.tree_leaves(before)))
  assert 2e-3 < moved < 4e-3


def test_seed_config_trains_at_a_tiny_size():
  """deep.py:seed's own training (its learning rate, Adam with Keras' epsilon, Keras
  L2 0.01 on the U-Net kernels, 100 x MSE on a central crop) on a 4-level, narrow
  version of its network: a few dozen steps on one batch bring the loss down."""
  config = deep.get_config("seed")
  assert train_steps.loss_crop(config, 16384 * 14) == (80000, 69376)
  levels = 4
  config.model.update(features=tuple(4 * (i + 1) for i in range(levels)),
                      bottleneck_features=4 * (levels + 1), down_kernel_sizes=(15,) * levels,
                      up_kernel_sizes=(5,) * levels, downsampling_factors=(2,) * levels)
  model = models.from_config(config)
  batch = fixed_batch(model)  # same padding: 1008 samples in and out
  config.data.output_length = batch["mix"].shape[1]
  config.loss.central_length = config.data.output_length // 3
  init = train_steps.create_state(config, model, optax.identity())
  tx = optim.make_optimizer(config, config.optim.learning_rate, init.params)
  state = init.replace(opt_state=tx.init(init.params))
  step = jax.jit(step_fn(config, model, tx))
  losses = []
  for _ in range(40):
    state, metrics = step(state, batch)
    losses.append(float(metrics["loss"]))
  assert np.all(np.isfinite(losses))
  # At the seed's 1e-4 the loss falls by about a quarter in 40 steps (7.8 to 6.1).
  assert losses[-1] < 0.85 * losses[0], losses

@pytest.fixture
def data_dir(tiny_data_dir):
  return tiny_data_dir


class Killed(Exception):
  pass


def train_stopped_at(config, workdir, step: int) -> None:
  """Trains in `workdir` until `step` has been logged, then stops it with an exception, as
  a crash would (no checkpoint of its own)."""
  def kill(logged, _):
    if logged == step:
      raise Killed

  with pytest.raises(Killed):
    train.train_and_evaluate(config, workdir, callback=kill)


def params_of(state):
  return jax.device_get(state.params)


@pytest.mark.parametrize("pipeline", ["tfdata", "device"])
def test_interrupted_run_resumes_to_the_same_parameters(data_dir, tmp_path, pipeline):
  config = tiny_config()
  config.data.data_dir = data_dir
  config.data.pipeline = pipeline
  config.patience = 100
  reference = params_of(train.train_and_evaluate(config, tmp_path / "straight"))
  train_stopped_at(config, tmp_path / "resumed", 15)  # between the checkpoints of 10 and 20
  assert sorted(os.listdir(tmp_path / "resumed" / "checkpoints")) == ["10"]
  resumed = params_of(train.train_and_evaluate(config, tmp_path / "resumed"))
  for a, b in zip(jax.tree_util.tree_leaves(reference), jax.tree_util.tree_leaves(resumed)):
    np.testing.assert_array_equal(a, b)
  # A finished run re-run does nothing more.
  again = params_of(train.train_and_evaluate(config, tmp_path / "resumed"))
  for a, b in zip(jax.tree_util.tree_leaves(reference), jax.tree_util.tree_leaves(again)):
    np.testing.assert_array_equal(a, b)


def test_the_average_resumes_exactly_and_is_what_inference_loads(data_dir, tmp_path):
  config = tiny_schedule(tiny_data_config(TINY_RATE, TINY_OUTPUT, data_dir), 6, 3,
                         log_every=1, eval_every=6, patience=100)
  config.data.pipeline, config.optim.learning_rate, config.optim.ema_decay = "device", 1e-3, 0.9
  straight = train.train_and_evaluate(config, tmp_path / "straight")
  train_stopped_at(config, tmp_path / "resumed", 4)  # between the checkpoints of 3 and 6
  assert sorted(os.listdir(tmp_path / "resumed" / "checkpoints")) == ["3"]
  resumed = train.train_and_evaluate(config, tmp_path / "resumed")
  for a, b in zip(jax.tree_util.tree_leaves(jax.device_get((straight.params, straight.ema_params))),
                  jax.tree_util.tree_leaves(jax.device_get((resumed.params, resumed.ema_params)))):
    np.testing.assert_array_equal(a, b)
  # Separation, evaluation, export and init_from load the average.
  trained = workdir_lib.load_for_inference(tmp_path / "resumed", "latest")
  assert trained.step == 6
  pairs = list(zip(jax.tree_util.tree_leaves(trained.variables["params"]),
                   jax.tree_util.tree_leaves(jax.device_get(resumed.ema_params)),
                   jax.tree_util.tree_leaves(jax.device_get(resumed.params))))
  for loaded, average, _ in pairs:
    np.testing.assert_array_equal(loaded, average)
  assert any(not np.array_equal(average, params) for _, average, params in pairs)


def test_a_resumed_run_may_change_its_sampler_saying_what_happens(data_dir, tmp_path, caplog):
  caplog.set_level(logging.INFO, logger="absl")
  config = tiny_schedule(tiny_data_config(TINY_RATE, TINY_OUTPUT, data_dir), 2, 1,
                         patience=100)
  for first, then in (("tfdata", "device"), ("device", "tfdata")):
    workdir = tmp_path / first
    config.data.pipeline, config.num_train_steps = first, 1
    train.train_and_evaluate(config, workdir)
    config.data.pipeline, config.num_train_steps = then, 2
    caplog.clear()
    assert int(train.train_and_evaluate(config, workdir).step) == 2
    if then == "device":
      assert "step 1 was trained on tf.data's batches; from here the devices draw them" \
          in caplog.text
    else:
      assert ("step 1's data positions were not saved: the devices drew the batches "
              "(config.data.pipeline='device'), and tf.data cannot continue their order") \
          in caplog.text
      assert workdir_lib.read_progress(workdir).data_start_step == 1


def test_device_data_that_do_not_fit_are_refused_or_left_to_tf_data(data_dir, tmp_path,
                                                                     monkeypatch, caplog):
  from waveunet_jax.data import device as device_data
  from waveunet_jax.data import records

  caplog.set_level(logging.INFO, logger="absl")
  monkeypatch.setattr(device_data, "device_capacity", lambda device: 2**10)
  config = tiny_schedule(tiny_data_config(TINY_RATE, TINY_OUTPUT, data_dir), 1)
  config.data.pipeline = "device"
  with pytest.raises(records.DataError, match=r"config.data.pipeline='device': the training "
                     r"data do not fit on the devices \(.* of training windows per device "
                     r"\+ .* for the train step, against 80% of the 1.0 KiB a device holds\)"):
    train.train_and_evaluate(config, tmp_path / "device")
  config.data.pipeline = "auto"
  train.train_and_evaluate(config, tmp_path / "auto")
  assert "training data: tf.data (config.data.pipeline='auto'; it does not fit" in caplog.text


@pytest.mark.parametrize("ema_decay", [0.0, 0.9], ids=["", "average"])
def test_early_stopping_then_fine_tune_stage(data_dir, tmp_path, monkeypatch, ema_decay):
  """Validation losses scripted per step: the stage logic alone decides the rest. With
  an average of the parameters, validation judges it, and the fine-tune stage starts
  from the best one, as its parameters and its average."""
  config = tiny_config()
  config.optim.ema_decay = ema_decay
  config.data.data_dir = data_dir
  config.patience = 1
  config.eval_every_steps = 5
  config.checkpoint_every_steps = 5
  config.num_train_steps = 200
  config.optim.schedule, config.optim.warmup_steps = "warmup_cosine", 10
  script = {5: 1.0, 10: 0.9, 15: 0.95, 20: 0.85, 25: 0.86}
  evaluated, fine_tune_params = {}, []

  def validate(self, state, stage):
    step = int(state.step)
    evaluated[step] = (stage, jax.device_get(state.inference_params))
    return {"loss": script[step]}

  original_new_state = train.Trainer.new_state

  def new_state(self, stage, params=None, *args, **kwargs):
    state, tx = original_new_state(self, stage, params, *args, **kwargs)
    if stage == 1:
      fine_tune_params.append(jax.device_get(state.params))
      assert (state.ema_params is None) == (ema_decay == 0)
      if ema_decay:
        for a, b in zip(*map(jax.tree_util.tree_leaves, (state.params, state.ema_params))):
          np.testing.assert_array_equal(a, b)
    return state, tx

  monkeypatch.setattr(train.Trainer, "validate", validate)
  monkeypatch.setattr(train.Trainer, "new_state", new_state)
  rates = {}
  train.train_and_evaluate(config, tmp_path, callback=lambda step, s: rates.setdefault(
      step, s.get("train/learning_rate")))
  # 15 did not improve on 10: the fine-tune stage starts from step 10's parameters;
  # 25 did not improve on 20: done.
  assert {step: stage for step, (stage, _) in evaluated.items()} == {
      5: 0, 10: 0, 15: 0, 20: 1, 25: 1}
  for a, b in zip(jax.tree_util.tree_leaves(fine_tune_params[0]),
                  jax.tree_util.tree_leaves(evaluated[10][1])):
    np.testing.assert_array_equal(a, b)
  # The logged rate is the schedule's at the stage's own step count (the fine-tune
  # stage starts its warm-up again after step 15).
  schedule = lambda rate: optax.warmup_cosine_decay_schedule(0.0, rate, 10, 200)
  assert rates[5] == pytest.approx(float(schedule(config.optim.learning_rate)(4)))
  assert rates[15] == pytest.approx(float(schedule(config.optim.learning_rate)(14)))
  assert rates[20] == pytest.approx(float(schedule(config.fine_tune.learning_rate)(4)))
  progress = workdir_lib.read_progress(tmp_path)
  assert progress.done and progress.stage == 1 and progress.stage_start_step == 15
  assert (progress.best_step, progress.best_loss) == (20, 0.85)
  assert sorted(os.listdir(tmp_path / "best")) == ["20"]
  # Re-running a finished run does nothing.
  train.train_and_evaluate(config, tmp_path)
  assert max(evaluated) == 25


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(data_dir, tmp_path, monkeypatch):
  config = tiny_config()
  config.data.data_dir = data_dir
  original = train_steps.train_step

  def poisoned(state, batch, **kwargs):
    state, metrics = original(state, batch, **kwargs)
    bad = jnp.where(state.step > 12, jnp.nan, 0.0)
    return state, {**metrics, "loss": metrics["loss"] + bad}

  monkeypatch.setattr(train_steps, "train_step", poisoned)
  with pytest.raises(train.TrainingError, match="loss is nan at step 15.*step 10"):
    train.train_and_evaluate(config, tmp_path)
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["10"]


def run_main(*args, timeout=600, env=None):
  return subprocess.run([sys.executable, "-m", "waveunet_jax.main", *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=timeout, env=env)


# The console of a run: this project's log lines ("HH:MM:SS ..."), and the closing lines.
OUR_LINE = re.compile(r"\d\d:\d\d:\d\d (warning: )?\S|done: |  \S")


def test_smoke_command_end_to_end_with_an_override(tmp_path):
  workdir = tmp_path / "smoke"
  # As on a fresh machine: JAX probes for TPUs and GPUs, TensorFlow logs at its level.
  fresh = {k: v for k, v in os.environ.items()
           if k not in ("JAX_PLATFORMS", "TF_CPP_MIN_LOG_LEVEL")}
  # TensorFlow's oneDNN path (on by default on recent Intel CPUs) logs "E0000 ...
  # util.cc:131] oneDNN supports DT_INT16 only on platforms with AVX-512" at the first
  # tf.data op on a CPU without AVX-512: forced on, so that this CPU has its chance to.
  fresh["TF_ENABLE_ONEDNN_OPTS"] = "1"
  result = run_main("--config=experiments/shallow.py:smoke", f"--workdir={workdir}",
                    "--config.model.bottleneck_features=40", "--config.num_train_steps=10",
                    "--config.eval_every_steps=5", "--config.checkpoint_every_steps=5",
                    "--config.data.synthetic_tracks=2", "--config.data.synthetic_seconds=6",
                    env=fresh)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "synthetic corpus" in result.stderr
  chatter = [line for line in (result.stderr + result.stdout).splitlines()
             if not OUR_LINE.match(line)]
  assert not chatter, "\n".join(chatter)
  assert "warning" not in result.stderr
  assert result.stdout.startswith(f"done: checkpoints and TensorBoard logs are in {workdir}")
  assert f"-m waveunet_jax.separate --workdir={workdir} " in result.stdout
  assert sorted(os.listdir(workdir / "checkpoints")) == ["10", "5"]
  assert os.listdir(workdir / "best")
  assert any(p.name.startswith("events.out.tfevents") for p in (workdir / "tensorboard").iterdir())
  config, variables, _ = workdir_lib.load_for_inference(workdir, "latest")
  assert config.model.bottleneck_features == 40
  assert variables["params"]["bottleneck"]["conv"]["kernel"].shape[-1] == 40
  assert "batch_stats" in variables

  # What users do next: separate a song with the trained model, in Python and the CLI.
  from waveunet_jax import separate
  from waveunet_jax.separation import jax_engine

  song = 0.3 * np.random.default_rng(0).standard_normal((44100 + 17, 2)).astype(np.float32)
  separator = jax_engine.separator_from_workdir(workdir, "best", window_seconds=2.0)
  stems = separator.separate(song, 44100)
  assert set(stems) == {"vocals", "accompaniment"}
  assert all(stem.shape == song.shape for stem in stems.values())
  import soundfile

  soundfile.write(tmp_path / "song.wav", song, 44100)
  # Trained on 4 devices, separated on 1.
  one_device = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
  result = subprocess.run([sys.executable, "-m", "waveunet_jax.separate", f"--workdir={workdir}",
                           "--window_seconds=2", str(tmp_path / "song.wav"),
                           f"--output_dir={tmp_path / 'out'}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, env=one_device)
  assert result.returncode == 0, result.stderr[-2000:]
  vocals, rate = soundfile.read(tmp_path / "out" / "song" / "vocals.wav")
  assert rate == 44100 and vocals.shape == song.shape
  # A checkpoint that is not there: a one-line error and no output.
  with pytest.raises(separate.SeparationError, match="no such checkpoint"):
    jax_engine.separator_from_workdir(workdir, "999")
  result = subprocess.run([sys.executable, "-m", "waveunet_jax.separate", f"--workdir={workdir}",
                           "--checkpoint=999", str(tmp_path / "song.wav"),
                           f"--output_dir={tmp_path / 'out999'}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode != 0
  assert result.stderr.strip().splitlines()[-1].startswith("error: --checkpoint=999: no such")
  assert not (tmp_path / "out999").exists()


@pytest.mark.parametrize("args,message", [
    (["--config=experiments/nope.py"], "error: --config=experiments/nope.py: no such file"),
    (["--config=experiments/shallow.py", "--config.model.colour=red"], "colour"),
    (["--config=experiments/shallow.py:smoke", "--config.data.data_dir=/nonexistent"],
     "run python -m waveunet_jax.prepare"),
    (["--config=experiments/shallow.py:smoke", "--config.batch_size=6"],
     "config.batch_size=6 does not divide across the 4 devices"),
    (["--config=experiments/shallow.py:smoke", "--config.loss.stft_weight=inf"],
     "config.loss.stft_weight=inf: must be a finite number"),
    (["--config=experiments/shallow.py:smoke", "--config.loss.stft_fft_sizes=abc"],
     "must be a tuple of whole numbers of samples"),
])
def test_cli_errors_are_one_line(tmp_path, args, message):
  result = run_main(*args, f"--workdir={tmp_path}", timeout=300)
  assert result.returncode != 0
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("error: ") and message in last, result.stderr[-2000:]
  assert "Traceback" not in result.stderr


@pytest.mark.parametrize("field,value,message", [
    ("loss.stft_weight", float("inf"), "config.loss.stft_weight=inf: must be a finite number"),
    ("loss.stft_weight", float("nan"), "config.loss.stft_weight=nan: must be a finite number"),
    ("optim.learning_rate", float("inf"), "config.optim.learning_rate=inf: must be a finite"),
    ("data.gain_range", (0.5, float("nan")), "config.data.gain_range=(0.5, nan): must be"),
    ("loss.stft_fft_sizes", (512.7,), "config.loss.stft_fft_sizes=(512.7,): must be a tuple of "
     "whole numbers"),
])
def test_numbers_that_cannot_work_are_refused_before_the_workdir_is_made(tmp_path, field, value,
                                                                         message):
  config = tiny_data_config(TINY_RATE, TINY_OUTPUT)
  section, name = field.split(".")
  with config.unlocked():
    config[section][name] = value
  with pytest.raises(models.ConfigError, match=re.escape(message)):
    train.train_and_evaluate(config, tmp_path / "run")
  assert not (tmp_path / "run").exists()

"""The JAX engine (`jax_engine.py`): its default windows and its batch over devices."""

import jax
import numpy as np
import pytest

from helpers import SEPARATOR_RATE as RATE
from helpers import SHORT, model_and_variables, noise
from waveunet_jax import models, separate
from waveunet_jax.separation import jax_engine


def test_default_window_for_the_paper_m4():
  from experiments import deep

  config = deep.get_config("M4")
  model = models.WaveUNet(**config.model)
  t = jax_engine.tiling(model, config.data.sample_rate)
  assert t.input_length == models.lengths(model, t.hop).input_length
  assert 25 <= t.hop / config.data.sample_rate <= 31
  assert t.recomputed_share == pytest.approx(0.165, abs=0.001)  # as the module says
  # A bigger batch shrinks the windows to stay within the memory bound.
  big = jax_engine.tiling(model, config.data.sample_rate, batch_size=8)
  assert 8 * big.input_length * jax_engine.activation_bytes_per_sample(model) \
      <= jax_engine.WINDOW_MEMORY_BYTES
  with pytest.raises(ValueError, match="overlap"):
    jax_engine.tiling(model, config.data.sample_rate, overlap=0.7)


def test_the_jax_engine_splits_its_batch_over_every_local_device():
  model, variables = model_and_variables("valid", "direct")
  devices = jax.local_devices()
  assert len(devices) == 4  # conftest's virtual CPU devices
  every = jax_engine.JaxEngine(model, variables, RATE, window_seconds=SHORT)
  one = jax_engine.JaxEngine(model, variables, RATE, window_seconds=SHORT, devices=devices[:1])
  assert (every.batch_size, one.batch_size) == (4, 1)
  windows = noise(4 * every.tiling.input_length, peak=0.5).reshape(
      4, every.tiling.input_length, 2)
  out = every.forward(windows)
  assert {shard.device for shard in out.addressable_shards} == set(devices)
  np.testing.assert_allclose(np.asarray(out), np.concatenate(
      [np.asarray(one.forward(w[None])) for w in windows]), rtol=0, atol=1e-6)
  # A batch that does not divide is padded; a whole song is the same on any devices.
  odd = jax_engine.JaxEngine(model, variables, RATE, window_seconds=SHORT, batch_size=3)
  mix = noise(5000, peak=0.5, seed=3)
  a = separate.Separator(odd).separate(mix, RATE)
  b = separate.Separator(one).separate(mix, RATE)
  for name in a:
    np.testing.assert_allclose(a[name], b[name], rtol=0, atol=1e-6)

"""The device sampler (`device_data`): its statistics, shown by sampling many batches
with fixed seeds (crop positions, gains, swaps, remixing, polarity, dataset shares), its
determinism per (seed, step, device), and the choice between it and tf.data.
Training with it (resume after kill -9, several processes) is tested with training."""

import logging

import jax
import ml_collections
import numpy as np
import pytest

from waveunet_jax import parallel
from waveunet_jax.data import device as device_data
from waveunet_jax.data import builder as builder_lib
from waveunet_jax.data import records

# Two sources, stereo; crops of 40 samples whose central 20 are the targets.
LAYOUT = records.Layout(("accompaniment", "vocals"), 8000, 2, 40, 20)


def data_config(*augmentations, gain_range=(0.7, 1.0), remix_probability=0.5):
  return ml_collections.ConfigDict({"augmentations": augmentations, "gain_range": gain_range,
                                    "remix_probability": remix_probability})


def position_track(length: int, marker: int = 0) -> np.ndarray:
  """A track [S, N, C] float whose sample t is (t + 1) / 32768 in every source, and
  `marker` / 32768 in channel 1: a crop's first target sample says where it starts."""
  t = (np.arange(length) + 1) / records.AUDIO_SCALE
  track = np.stack([np.stack([t, np.full(length, marker / records.AUDIO_SCALE)], -1)] * 2)
  return track.astype(np.float32)


def windows_of(track: np.ndarray):
  cut = list(builder_lib.track_windows(records.to_int16(track), LAYOUT))
  return (np.stack([w["sources"] for w in cut]), np.array([w["num_starts"] for w in cut]))


def sample(share: device_data.Share, data, *, batches: int, batch_size: int = 64):
  """`batches` batches from `share` with keys 0, 1, ... (jitted once)."""
  draw = jax.jit(lambda key: device_data.crops_and_batch(
      share.windows, share.num_starts, np.cumsum(share.probability), key,
      batch_size=batch_size, layout=LAYOUT, data=data))
  out = [jax.device_get(draw(jax.random.key(i))) for i in range(batches)]
  return {k: np.concatenate([b[k] for b in out]) for k in out[0]}


def starts_of(batch) -> np.ndarray:
  """Each example's crop start in its track, from its first target sample (source 0)."""
  return np.rint(batch["sources"][:, 0, 0, 0] * records.AUDIO_SCALE).astype(int) - 1


def test_crops_start_uniformly_over_every_allowed_start_of_every_track():
  # Two tracks of different lengths, each cut into several windows (the last short).
  long, short = windows_of(position_track(700, marker=1)), windows_of(position_track(260, 2))
  assert len(long[1]) > 2 and long[1][-1] < long[1][0]
  share = device_data.Share.of([np.concatenate([long[0], short[0]])],
                               [np.concatenate([long[1], short[1]])], [1.0])
  batch = sample(share, data_config(), batches=200)
  starts, track = starts_of(batch), np.rint(batch["sources"][:, 0, 0, 1] * 32768).astype(int)
  allowed = {1: 700 - 20 + 1, 2: 260 - 20 + 1}
  # Tracks drawn by their numbers of starts, each start alike (its targets are the
  # track's samples s ... s + 19), and every start reachable.
  assert abs(np.mean(track == 1) - allowed[1] / sum(allowed.values())) < 0.02
  for t, count in allowed.items():
    mine = starts[track == t]
    assert mine.min() == 0 and mine.max() == count - 1
    histogram = np.histogram(mine, bins=10, range=(0, count))[0]
    assert np.all(np.abs(histogram / histogram.mean() - 1) < 0.15), histogram
  # Inputs are the targets with the context around them; the mix is their sum.
  np.testing.assert_array_equal(batch["mix"][:, LAYOUT.offset:LAYOUT.offset + 20],
                                batch["sources"].sum(axis=1))


def test_datasets_are_drawn_by_their_weights():
  first, second = windows_of(position_track(300, marker=1)), windows_of(position_track(900, 2))
  share = device_data.Share.of([first[0], second[0]], [first[1], second[1]], [0.7, 0.3])
  batch = sample(share, data_config(), batches=100)
  marker = np.rint(batch["sources"][:, 0, 0, 1] * 32768).astype(int)
  assert abs(np.mean(marker == 1) - 0.7) < 0.03  # by weight, not by size (1:3)


def constant_share(left: float, right: float) -> device_data.Share:
  track = np.zeros((2, 400, 2), np.float32)
  track[..., 0], track[..., 1] = left, right
  return device_data.Share.of(*zip(windows_of(track)), [1.0])


def test_gains_are_uniform_in_their_range_per_source_and_example():
  batch = sample(constant_share(0.5, 0.25), data_config("gain", gain_range=(0.6, 0.9)),
                 batches=50)
  gains = batch["sources"][:, :, 0, 0] / 0.5  # [examples, sources]
  assert gains.min() >= 0.6 and gains.max() <= 0.9
  assert abs(gains.mean() - 0.75) < 0.01 and abs(gains.std() - 0.3 / np.sqrt(12)) < 0.01
  assert abs(np.corrcoef(gains[:, 0], gains[:, 1])[0, 1]) < 0.1  # sources apart
  np.testing.assert_allclose(batch["sources"][..., 1] / batch["sources"][..., 0], 0.5, rtol=1e-5)


def test_half_the_examples_swap_left_and_right_all_sources_alike():
  batch = sample(constant_share(0.5, 0.25), data_config("channel_swap"), batches=50)
  swapped = batch["sources"][:, :, 0, 0] == np.float32(0.25)
  assert np.all(swapped[:, 0] == swapped[:, 1])
  assert abs(swapped[:, 0].mean() - 0.5) < 0.03


def test_remixing_takes_sources_from_other_examples_at_its_probability():
  batch = sample(device_data.Share.of(*zip(windows_of(position_track(3000))), [1.0]),
                 data_config("remix", remix_probability=0.4), batches=100, batch_size=16)
  starts = np.rint(batch["sources"][:, :, 0, 0] * 32768).astype(int)
  moved = starts[:, 1] != starts[:, 0]  # source 1 from another crop than source 0
  # Either source is replaced by another example's with p, that example being this
  # one with 1/16: they differ with 1 - (1 - p(1 - 1/16))^2.
  replaced = 0.4 * (1 - 1 / 16)
  assert abs(moved.mean() - (1 - (1 - replaced) ** 2)) < 0.03
  np.testing.assert_array_equal(batch["mix"][:, LAYOUT.offset:LAYOUT.offset + 20],
                                batch["sources"].sum(axis=1))


def test_half_the_sources_flip_polarity_each_on_its_own():
  batch = sample(constant_share(0.5, 0.25), data_config("polarity"), batches=50)
  signs = np.sign(batch["sources"][:, :, :, 0])  # [examples, sources, samples]
  assert np.all(signs == signs[:, :, :1])  # a whole source flips
  flipped = signs[:, :, 0] < 0
  assert abs(flipped.mean() - 0.5) < 0.03
  assert abs(np.corrcoef(flipped[:, 0], flipped[:, 1])[0, 1]) < 0.1  # sources apart
  np.testing.assert_array_equal(np.abs(batch["sources"][..., 1]), np.float32(0.25))
  np.testing.assert_array_equal(batch["mix"][:, LAYOUT.offset:LAYOUT.offset + 20],
                                batch["sources"].sum(axis=1))


def test_both_samplers_know_the_same_augmentations():
  from waveunet_jax.data import tfdata

  assert list(tfdata.AUGMENTATIONS) == list(device_data.AUGMENTATIONS)


def test_unknown_augmentation_is_refused():
  with pytest.raises(ValueError, match="unknown augmentation 'pitch'"):
    sample(constant_share(0.1, 0.1), data_config("pitch"), batches=1)


def sampler(seed: int, *, batch_size: int = 8) -> device_data.DeviceSampler:
  """A sampler on the 4 devices whose device d holds a track of 200 + 100 d samples
  marked d."""
  layout = parallel.data_parallel()
  shares = [device_data.Share.of(*zip(windows_of(position_track(200 + 100 * d, marker=d))),
                                 [1.0]) for d in range(layout.size)]
  return device_data.DeviceSampler(data_config(), layout, LAYOUT, shares, range(layout.size),
                                   batch_size=batch_size, seed=seed)


def test_the_batch_of_a_step_depends_on_the_seed_the_step_and_the_device_alone():
  assert jax.device_count() == 4
  a, b = sampler(7), sampler(7)
  first = jax.device_get(a.batch(10))
  for key, value in jax.device_get(b.batch(10)).items():
    np.testing.assert_array_equal(value, first[key])
  assert first["mix"].shape == (8, 40, 2) and first["sources"].shape == (8, 2, 20, 2)
  assert a.batch(10)["mix"].sharding == parallel.data_parallel().sharded
  assert not np.array_equal(jax.device_get(a.batch(11))["mix"], first["mix"])
  assert not np.array_equal(jax.device_get(sampler(8).batch(10))["mix"], first["mix"])
  # Device d's rows (2 per device) come from its own share: the track marked d.
  many = [jax.device_get(a.batch(step))["sources"] for step in range(20)]
  for d in range(4):
    rows = np.concatenate([m[2 * d:2 * d + 2] for m in many])
    np.testing.assert_array_equal(np.rint(rows[..., 1] * 32768), d)
    assert starts_of({"sources": rows}).max() <= 200 + 100 * d - 20


def test_the_choice_between_the_device_and_tf_data(caplog):
  caplog.set_level(logging.INFO, logger="absl")
  config = ml_collections.ConfigDict({"data": {"pipeline": "auto"}})
  small = lambda: device_data.Fit(share=2**20, step=2**29, capacity=2**31)
  large = lambda: device_data.Fit(share=3 * 2**30, step=2**29, capacity=2**32)
  assert device_data.choose(config, small) == "device"
  assert "sampled on the devices (config.data.pipeline='auto'): 1.0 MiB of training " \
         "windows per device + 512.0 MiB for the train step, against 80% of the 2.00 GiB" \
         in caplog.text
  assert device_data.choose(config, large) == "tfdata"
  assert "tf.data (config.data.pipeline='auto'; it does not fit on the devices: 3.00 GiB" \
         in caplog.text
  config.data.pipeline = "device"
  with pytest.raises(records.DataError, match=r"^config.data.pipeline='device': the training "
                     r"data do not fit on the devices \(3.00 GiB of training windows per "
                     r"device \+ 512.0 MiB for the train step, against 80% of the 4.00 GiB a "
                     r"device holds\); use config.data.pipeline='tfdata'"):
    device_data.choose(config, large)
  config.data.pipeline = "tfdata"
  assert device_data.choose(config, lambda: pytest.fail("tf.data needs no fit")) == "tfdata"
  config.data.pipeline = "gpu"
  with pytest.raises(records.DataError, match="config.data.pipeline='gpu': choose from auto, "
                     "device, tfdata"):
    device_data.choose(config, small)


def test_a_device_s_capacity_on_a_cpu_is_the_machine_s_memory_over_its_devices():
  import os

  memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
  assert device_data.device_capacity(jax.devices()[0]) == memory // 4

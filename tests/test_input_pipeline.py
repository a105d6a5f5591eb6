"""Prepared windows -> tf.data batches (`input_pipeline`): shapes, seeds, shares,
augmentations, and the training streams' saved positions (`DataIterator`,
`ShardedData`)."""

import numpy as np
import pytest
import tensorflow as tf

from helpers import TINY_OUTPUT, TINY_RATE, tiny_data_config
from waveunet_jax.data import builder as builder_lib
from waveunet_jax.data import tfdata
from waveunet_jax.data import records
from waveunet_jax.data import generator

RATE = 16000  # the tiny configs' model rate: every track is resampled from 44.1 kHz


def tiny_config(data_dir=None, **model):
  return tiny_data_config(RATE, 3000, data_dir, **model)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  corpus = tmp_path_factory.mktemp("corpus")
  generator.write_corpus(corpus, num_train=3, num_test=1, seconds=6, seed=0)
  data_dir = tmp_path_factory.mktemp("data")
  valid = sorted(p.name for p in (corpus / "train").iterdir())[:1]
  config = tiny_config(data_dir)
  builder_lib.prepare(config, corpus, data_dir, wav=True, valid_tracks=valid)
  return config


def first(ds):
  return next(iter(tfdata.as_numpy(ds)))


def test_pipeline_shapes_dtypes_and_mix_is_sum_of_targets(prepared):
  config = prepared
  config.data.augmentations = ("gain", "channel_swap", "remix")
  layout = records.layout_for(config)
  batch = first(tfdata.train_dataset(config, 3, seed=0))
  assert batch["mix"].shape == (3, layout.input_length, 2)
  assert batch["sources"].shape == (3, 2, layout.output_length, 2)
  assert batch["mix"].dtype == batch["sources"].dtype == np.float32
  central = batch["mix"][:, layout.offset:layout.offset + layout.output_length]
  np.testing.assert_allclose(central, batch["sources"].sum(axis=1), atol=1e-6)
  assert np.abs(batch["sources"]).max() > 0.01  # real audio, not padding

  batches = list(tfdata.as_numpy(tfdata.eval_dataset(config, 4)))
  for b in batches:
    assert b["mix"].shape == (4, layout.input_length, 2)
    assert b["weight"].shape == (4,)
  # 6 s at 16 kHz in tiles of output_length, and the last batch padded with weight 0.
  tiles = int(np.ceil(6 * RATE / layout.output_length))
  assert sum(b["weight"].sum() for b in batches) == tiles
  assert np.all(batches[-1]["mix"][batches[-1]["weight"] == 0] == 0)


def test_same_seed_same_batches(prepared):
  config = prepared
  config.data.augmentations = ("gain", "channel_swap", "remix")
  take = lambda seed: [b["mix"] for _, b in zip(range(3), tfdata.as_numpy(
      tfdata.train_dataset(config, 2, seed=seed)))]
  a, b, c = take(1), take(1), take(2)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)
  assert not np.array_equal(a[0], c[0])


def test_processes_read_disjoint_shares(prepared):
  builder, _ = builder_lib.load_builder(prepared)

  def windows(split):
    return {(bytes(x["track"]), int(x["index"]))
            for x in builder.as_dataset(split=split).as_numpy_iterator()}

  shares = [windows(tfdata.tfds.split_for_jax_process(
      "train", process_index=i, process_count=2)) for i in range(2)]
  assert shares[0] and shares[1] and not shares[0] & shares[1]
  assert shares[0] | shares[1] == windows("train")


@pytest.mark.parametrize("name", sorted(tfdata.AUGMENTATIONS))
def test_each_augmentation_eagerly_and_in_dataset_map(name):
  config = tiny_config()
  config.data.remix_probability = 1.0
  rng = np.random.default_rng(0)
  sources = tf.constant(rng.uniform(-0.5, 0.5, (8, 2, 64, 2)).astype(np.float32))
  seed = tf.constant([3, 4])
  augmentation = tfdata.AUGMENTATIONS[name]
  eager = augmentation(sources, seed, config.data).numpy()
  mapped = next(iter(tf.data.Dataset.from_tensors(sources).map(
      lambda s: augmentation(s, seed, config.data)))).numpy()
  np.testing.assert_array_equal(eager, mapped)
  x = sources.numpy()
  if name == "gain":
    ratio = eager / x
    low, high = config.data.gain_range
    assert np.all((ratio > low - 1e-6) & (ratio < high + 1e-6))
    np.testing.assert_allclose(ratio, ratio[:, :, :1, :1] * np.ones_like(ratio), rtol=1e-5)
  elif name == "channel_swap":
    swapped = [np.array_equal(eager[b], x[b, ..., ::-1]) for b in range(8)]
    kept = [np.array_equal(eager[b], x[b]) for b in range(8)]
    assert all(s or k for s, k in zip(swapped, kept)) and any(swapped) and any(kept)
  elif name == "polarity":  # each source of each example as it was or negated
    flipped = np.array([[np.array_equal(eager[b, s], -x[b, s]) for s in range(2)]
                        for b in range(8)])
    kept = np.array([[np.array_equal(eager[b, s], x[b, s]) for s in range(2)] for b in range(8)])
    assert np.all(flipped | kept) and flipped.any() and kept.any()
  else:  # remix: every source comes from some example's same source
    for b in range(8):
      for s in range(2):
        assert any(np.array_equal(eager[b, s], x[o, s]) for o in range(8))
    assert not np.array_equal(eager, x)


def test_polarity_flips_each_source_of_each_example_with_probability_one_half():
  sources = tf.ones((2000, 2, 4, 2))
  flipped = tfdata.AUGMENTATIONS["polarity"](sources, tf.constant([5, 6]),
                                                     tiny_config().data).numpy() < 0
  assert np.all(flipped == flipped[:, :, :1, :1])  # a whole source flips
  flipped = flipped[:, :, 0, 0]
  assert abs(flipped.mean() - 0.5) < 0.03  # as device_data's (tests/test_device_data.py)
  assert abs(np.corrcoef(flipped[:, 0], flipped[:, 1])[0, 1]) < 0.1  # sources apart


def test_unknown_augmentation_names_the_field():
  config = tiny_config()
  config.data.augmentations = ("reverse",)
  with pytest.raises(ValueError, match="config.data.augmentations"):
    tfdata.augment(tf.zeros((1, 2, 8, 2)), tf.constant([0, 0]), config.data)


def test_missing_data_dir_says_what_to_run(tmp_path):
  with pytest.raises(records.DataError, match="config.data.data_dir is not set"):
    tfdata.train_dataset(tiny_config(), 2, seed=0)
  with pytest.raises(records.DataError, match="run python -m waveunet_jax.prepare"):
    tfdata.train_dataset(tiny_config(tmp_path), 2, seed=0)


# --------------------------------------------------------------------------- #
# The training streams' saved positions.
# --------------------------------------------------------------------------- #


def streams(config, shards, num_shards):
  return tfdata.ShardedData(
      [tfdata.train_dataset(config, 2, seed=5, shard=s, num_shards=num_shards)
       for s in shards], shards, num_shards)


def test_saved_positions_resume_each_stream_exactly(tiny_data_dir, tmp_path):
  config = tiny_data_config(TINY_RATE, TINY_OUTPUT, tiny_data_dir)
  data = streams(config, [1, 3], 4)  # a process holding devices 1 and 3 of 4
  for _ in range(2):
    next(data)
  data.save(tmp_path / "position")
  data.save(tmp_path / "position")  # saved again at the same step: replaced
  assert sorted(p.name for p in (tmp_path / "position").iterdir()) == [
      "shard_1_of_4", "shard_3_of_4"]
  assert not [p for p in tmp_path.iterdir() if p.name != "position"]  # no temporary left
  expected = [next(data) for _ in range(3)]
  resumed = streams(config, [1, 3], 4)
  assert resumed.can_restore(tmp_path / "position") and resumed.restore(tmp_path / "position")
  for batches in expected:
    for got, want in zip(next(resumed), batches):
      assert got.keys() == want.keys()
      for key in want:
        np.testing.assert_array_equal(got[key], want[key])
  # Each device's position is its own: another grouping of the devices restores them.
  alone = streams(config, [3], 4)
  assert alone.restore(tmp_path / "position")
  np.testing.assert_array_equal(next(alone)[0]["mix"], expected[0][1]["mix"])
  # Another number of devices cannot, and says why.
  two = streams(config, [0], 2)
  assert not two.can_restore(tmp_path / "position")
  assert two.why_not_restored(tmp_path / "position") == (
      "were saved for 4 device(s), and this run has 2")

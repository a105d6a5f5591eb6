"""Training on one's own data: several datasets mixed by weight, fine-tuning from
another run (init_from), freezing parameters (optim.trainable)."""

import json
import re

import flax
import jax
import numpy as np
import pytest
import soundfile
import tensorflow as tf

from helpers import TINY_OUTPUT, TINY_RATE, tiny_data_config, tiny_schedule
from waveunet_jax import models, optim, train
from waveunet_jax import workdir as workdir_lib
from waveunet_jax.data import builder as builder_lib
from waveunet_jax.data import records
from waveunet_jax.data import tfdata
from waveunet_jax import stems as stems_lib
import optax
from waveunet_jax import steps as train_steps


def tiny_config(data_dir, **model):
  config = tiny_schedule(tiny_data_config(TINY_RATE, TINY_OUTPUT, data_dir, **model), 2)
  config.optim.learning_rate = 1e-3
  return config


@pytest.fixture(scope="module")
def silent_data_dir(tmp_path_factory) -> str:
  """A second dataset of tiny_data_dir's layout whose every sample is 0: its examples
  are told from the first's (sines and noise) by their silence."""
  root = tmp_path_factory.mktemp("silent")
  for name in ("Silent - One", "Silent - Two"):
    folder = root / "train" / name
    folder.mkdir(parents=True)
    for stem in stems_lib.STEMS:
      soundfile.write(folder / f"{stem}.wav", np.zeros((2 * TINY_RATE, 2), np.float32), TINY_RATE)
  data_dir = tmp_path_factory.mktemp("silent_tfds")
  builder_lib.prepare(tiny_config(data_dir), root, data_dir, wav=True, valid_tracks=["Silent - One"])
  return str(data_dir)


def silent_share(config, batches: int, shard: int = 1, num_shards: int = 2) -> float:
  ds = tfdata.train_dataset(config, 8, seed=3, shard=shard, num_shards=num_shards)
  silent = [np.all(b["mix"] == 0, axis=(1, 2)) for b in tfdata.as_numpy(ds.take(batches))]
  return float(np.mean(np.concatenate(silent)))


# --------------------------------------------------------------------------- #
# Several datasets.
# --------------------------------------------------------------------------- #


def test_two_datasets_are_drawn_by_their_weights(tiny_data_dir, silent_data_dir, tmp_path):
  config = tiny_config(f"{tiny_data_dir}:0.7,{silent_data_dir}:0.3")
  datasets = records.data_dirs(config)
  assert [(d.path, d.weight) for d in datasets] == [(tiny_data_dir, 0.7),
                                                    (silent_data_dir, 0.3)]
  assert len({d.name for d in datasets}) == 2
  # 400 examples of device 1 of 2: 30 % silent, within 3.5 standard deviations;
  # the first dataset alone gives none.
  assert silent_share(config, 50) == pytest.approx(0.3, abs=0.08)
  assert silent_share(tiny_config(tiny_data_dir), 50) == 0
  assert silent_share(tiny_config(f"{tiny_data_dir}:1,{silent_data_dir}:3"), 25) == \
      pytest.approx(0.75, abs=0.1)
  # A saved position of the mixed stream resumes it exactly; another mixture cannot
  # take it (training then starts the data anew, as on another number of devices).
  def streams(config):
    return tfdata.ShardedData([tfdata.train_dataset(config, 4, seed=0)], [0], 1)

  mixed = streams(config)
  next(mixed)
  mixed.save(tmp_path / "position")
  expected = [next(mixed)[0]["mix"] for _ in range(3)]
  resumed = streams(config)
  assert resumed.restore(tmp_path / "position")
  for mix in expected:
    np.testing.assert_array_equal(next(resumed)[0]["mix"], mix)
  assert not streams(tiny_config(tiny_data_dir)).restore(tmp_path / "position")


@pytest.mark.parametrize("value,message", [
    ("/a:0.5,,/b", "config.data.data_dir=/a:0.5,,/b: an empty entry; write DIR, or "
     "DIR:WEIGHT,DIR:WEIGHT,... (e.g. /data/musdb:0.7,/data/mine:0.3; a weight left out is 1)"),
    ("/a:0.7,/b:0", "config.data.data_dir=/a:0.7,/b:0: the weight of /b is 0.0; weights must "
     "be finite positive numbers"),
    ("/a:-1,/b", "config.data.data_dir=/a:-1,/b: the weight of /a is -1.0; weights must be "
     "finite positive numbers"),
    ("/a:nan,/b", "config.data.data_dir=/a:nan,/b: the weight of /a is nan; weights must be "
     "finite positive numbers"),
    ("/a:1e309,/b", "config.data.data_dir=/a:1e309,/b: the weight of /a is inf; weights must "
     "be finite positive numbers"),
    ("/a:1e308,/b:1e-308", "config.data.data_dir=/a:1e308,/b:1e-308: the weight of /b is too "
     "small beside the others' to be drawn at all; give weights of comparable sizes"),
    ("/a:0.7,/a:0.3", "config.data.data_dir=/a:0.7,/a:0.3: /a is named twice; name each "
     "dataset once, with its weight"),
    ("/a,/a/", "config.data.data_dir=/a,/a/: /a/ is named twice (/a is the same folder); name "
     "each dataset once, with its weight"),
    ("/a,/b/../a:2", "config.data.data_dir=/a,/b/../a:2: /b/../a is named twice (/a is the "
     "same folder); name each dataset once, with its weight"),
    ("gs://b/x:1,gs://b/x/:2", "config.data.data_dir=gs://b/x:1,gs://b/x/:2: gs://b/x/ is named "
     "twice (gs://b/x is the same folder); name each dataset once, with its weight"),
])
def test_data_dir_errors_name_the_field(value, message):
  with pytest.raises(records.DataError) as error:
    records.data_dirs(tiny_config(value))
  assert str(error.value) == message


def test_data_dir_names_and_weights():
  config = tiny_config("gs://bucket/musdb/tfds:2, /data/mine/tfds ,/x/musdb")
  assert records.data_dirs(config) == [
      records.DataDir("gs://bucket/musdb/tfds", 0.5, "musdb_tfds"),
      records.DataDir("/data/mine/tfds", 0.25, "mine_tfds"),
      records.DataDir("/x/musdb", 0.25, "x_musdb")]
  # Weights whose sum overflows still have usable ratios.
  assert [d.weight for d in records.data_dirs(tiny_config("/a:1e308,/b:1e308,/c:5e307"))
          ] == [0.4, 0.4, 0.2]


def test_a_dataset_of_another_layout_is_refused_by_name(tiny_data_dir, silent_data_dir):
  config = tiny_config(f"{tiny_data_dir}:0.7,{silent_data_dir}:0.3")
  config.data.output_length = 2 * TINY_OUTPUT
  wanted, held = records.layout_for(config).name, records.layout_for(tiny_config(None)).name
  with pytest.raises(records.DataError) as error:
    builder_lib.load_builders(config)
  assert str(error.value) == (
      f"config.data.data_dir: the dataset {tiny_data_dir} holds no dataset {wanted} (the "
      f"sources, rate, channels and lengths of this config; it holds {held}): run python -m "
      f"waveunet_jax.prepare --musdb_root=DIR --data_dir={tiny_data_dir} --config=<this config>")


def test_a_run_over_two_datasets_validates_each(tiny_data_dir, silent_data_dir, tmp_path):
  config = tiny_config(f"{tiny_data_dir}:0.7,{silent_data_dir}:0.3")
  first, second = (d.name for d in records.data_dirs(config))
  logged = {}
  train.train_and_evaluate(config, tmp_path, callback=lambda step, s: logged.update(s))
  sources = config.model.sources
  assert set(logged) >= {f"valid/{name}/{metric}" for name in (first, second)
                         for metric in ["loss"] + [f"sdr/{s}" for s in sources]}
  # The overall loss, which early stopping and best/ follow, is weight-averaged.
  assert logged["valid/loss"] == pytest.approx(
      0.7 * logged[f"valid/{first}/loss"] + 0.3 * logged[f"valid/{second}/loss"], rel=1e-6)
  assert {f"valid/sdr/{s}" for s in sources} <= set(logged)
  tags = {value.tag for path in (tmp_path / "tensorboard").iterdir()
          for event in tf.compat.v1.train.summary_iterator(str(path))
          for value in event.summary.value}
  assert {f"valid/{first}/loss", f"valid/{second}/loss", "valid/loss"} <= tags


# --------------------------------------------------------------------------- #
# Fine-tuning.
# --------------------------------------------------------------------------- #


@pytest.fixture(scope="module")
def source_run(tiny_data_dir, tmp_path_factory):
  """A trained tiny run (2 steps, validated at 2) and its logged validation loss."""
  workdir = tmp_path_factory.mktemp("source_run")
  logged = {}
  train.train_and_evaluate(tiny_config(tiny_data_dir), workdir,
                           callback=lambda step, s: logged.update(s))
  return workdir, logged["valid/loss"]


def flat(tree):
  return flax.traverse_util.flatten_dict(jax.device_get(tree), sep="/")


def test_fine_tuning_starts_from_the_source_parameters(source_run, tiny_data_dir, tmp_path):
  source, source_loss = source_run
  config = tiny_config(tiny_data_dir)
  config.init_from = str(source)  # its best checkpoint
  trainer = train.Trainer(config, workdir_lib.Workdir(tmp_path))
  try:
    state, tx = trainer.new_state(0)
    trainer.compile_steps(tx)
    assert int(state.step) == 0
    assert trainer.validate(state, 0)["loss"] == source_loss
  finally:
    trainer.close()
  assert trainer.started_from == {"workdir": str(source), "checkpoint": "best", "step": 2}


def test_freezing_and_the_record_of_the_start(source_run, tiny_data_dir, tmp_path):
  source, _ = source_run
  config = tiny_config(tiny_data_dir)
  config.init_from = f"{source}:latest"
  config.optim.trainable = r"(up_\d+|output)/.*"
  config.optim.weight_decay = 0.01  # on every conv kernel, frozen ones too if it leaked
  tuned = flat(train.train_and_evaluate(config, tmp_path).params)
  start = flat(workdir_lib.load_for_inference(source, "latest").variables["params"])
  for path, value in tuned.items():
    if path.startswith(("up_", "output")):
      assert not np.array_equal(value, start[path]), path
    else:
      np.testing.assert_array_equal(value, start[path], err_msg=path)
  saved = json.loads((tmp_path / "config.json").read_text())
  assert saved["init_from"] == f"{source}:latest"
  assert saved[workdir_lib.STARTED_FROM] == {"workdir": str(source), "checkpoint": "latest",
                                             "step": 2}
  assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["2"]
  # A resumed run keeps the record, and cannot change init_from.
  workdir_lib.Workdir(tmp_path).save_config(config)
  assert json.loads((tmp_path / "config.json").read_text())[workdir_lib.STARTED_FROM]["step"] == 2
  config.init_from = str(source)
  with pytest.raises(workdir_lib.WorkdirError, match="config.init_from"):
    workdir_lib.Workdir(tmp_path).check_resumable(config)


def test_two_sources_to_four_loads_all_but_the_output_layer(source_run, tiny_data_dir, tmp_path):
  source, _ = source_run
  config = tiny_config(tiny_data_dir, sources=("bass", "drums", "other", "vocals"))
  config.init_from = f"{source}:2"
  trainer = train.Trainer(config, workdir_lib.Workdir(tmp_path))
  trainer.close()
  loaded = flat(trainer.init.params)
  start = flat(workdir_lib.load_for_inference(source, "2").variables["params"])
  fresh = flat(train_steps.create_state(config, trainer.model, optax.identity()).params)
  assert set(loaded) == set(start)
  for path, value in loaded.items():
    np.testing.assert_array_equal(value, (fresh if path.startswith("output/") else start)[path],
                                  err_msg=path)
  assert loaded["output/kernel"].shape[-1] == 3 * config.model.num_channels


@pytest.mark.parametrize("change,message", [
    (dict(features=(4, 6, 10)), "params/bottleneck/conv/kernel has shape (3, 8, 8) there and "
     "(3, 10, 8) here; only the output layer may differ (other config.model.sources): start "
     "from a run of this network"),
    (dict(normalization="batchnorm"), "that run's network has no params/bottleneck/norm/bias "
     "(shape (8,) here); only the output layer may differ"),
])
def test_another_network_is_refused_naming_the_parameter(source_run, tiny_data_dir, tmp_path,
                                                         change, message):
  source, _ = source_run
  config = tiny_config(tiny_data_dir, **change)
  config.init_from = str(source)
  with pytest.raises(workdir_lib.WorkdirError) as error:
    train.train_and_evaluate(config, tmp_path / "new")
  assert str(error.value).startswith(f"config.init_from={source}: {message}")
  assert "\n" not in str(error.value)
  assert not (tmp_path / "new").exists()


def test_init_from_and_trainable_errors(source_run, tiny_data_dir, tmp_path):
  source, _ = source_run
  config = tiny_config(tiny_data_dir)
  for init_from, message in (
      (str(tmp_path / "nothing"), f"no training workdir at {tmp_path / 'nothing'} (no "
       "config.json); name a workdir, optionally with :best, :latest or :STEP"),
      (f"{source}:7", f"no such checkpoint in {source / 'checkpoints'} (steps: [2])")):
    config.init_from = init_from
    with pytest.raises(workdir_lib.WorkdirError) as error:
      train.train_and_evaluate(config, tmp_path / "new")
    assert str(error.value) == f"config.init_from={init_from}: {message}"
  config.init_from = None
  params = train_steps.create_state(config, models.WaveUNet(**config.model),
                              optax.identity()).params
  for pattern, message in (("up_(", "not a regular expression"),
                           ("decoder/.*", "matches no parameter")):
    config.optim.trainable = pattern
    with pytest.raises(models.ConfigError,
                       match=re.escape(f"config.optim.trainable={pattern}: {message}")):
      optim.make_optimizer(config, 1e-3, params)
  assert not (tmp_path / "new").exists()

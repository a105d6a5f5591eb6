"""The training workdir (`workdir_lib.Workdir`): its names, saving and restoring a run,
the resume check and where a run starts (config.init_from)."""

import dataclasses
import json
import logging
import os
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import TINY_OUTPUT, TINY_RATE, tiny_data_config, tiny_schedule
from waveunet_jax import workdir as workdir_lib


def tiny_config():
  return tiny_schedule(tiny_data_config(TINY_RATE, TINY_OUTPUT), 10, log_every=5,
                       patience=100, fine_tune_batch_size=8)


@flax.struct.dataclass
class State:
  step: jax.Array
  params: dict
  batch_stats: dict


@flax.struct.dataclass
class AveragedState:
  """State with a field added since, None when its option is off (as
  train.TrainState.ema_params)."""
  step: jax.Array
  params: dict
  batch_stats: dict
  ema_params: Any = None


def state_at(step: int, scale: float = 1.0) -> State:
  return State(step=jnp.asarray(step, jnp.int32),
               params={"output": {"kernel": scale * jnp.arange(6.0).reshape(1, 3, 2)},
                       "down_0": {"conv": {"kernel": scale * jnp.ones((5, 2, 4))}}},
               batch_stats={"down_0": {"norm": {"mean": scale * jnp.full((4,), 0.5)}}})


class Positions:
  """Stands in for input_pipeline.ShardedData: writes a file naming its step."""

  def __init__(self, step):
    self.step = step

  def save(self, directory):
    directory.mkdir(parents=True)
    (directory / "position").write_text(str(self.step))


def test_a_relative_workdir_and_its_names(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  workdir = workdir_lib.Workdir("runs/m4")
  assert workdir.path == tmp_path / "runs" / "m4" == workdir_lib.workdir_path("runs/m4")
  names = (workdir.config_file, workdir.checkpoints_dir, workdir.best_dir,
           workdir.data_state_dir(20), workdir.tensorboard_dir, workdir.synthetic_corpus,
           workdir.synthetic_data_dir)
  assert [str(p.relative_to(workdir.path)) for p in names] == [
      "config.json", "checkpoints", "best", "data_state/20", "tensorboard", "synthetic_corpus",
      "synthetic_tfds"]
  assert not (tmp_path / "runs").exists()  # naming writes nothing


def test_save_and_restore_round_trip(tmp_path):
  config = tiny_config()
  workdir = workdir_lib.Workdir(tmp_path / "run")
  workdir.open(keep_checkpoints=2)
  try:
    progress = workdir_lib.Progress(best_loss=0.5, best_step=10, bad_validations=1)
    for step in (10, 20, 30):
      workdir.save(state_at(step, scale=step),
                   dataclasses.replace(progress, stage_start_step=step), Positions(step))
    workdir.save_best(10, state_at(10, scale=10), progress)
    workdir.wait_until_finished()
    assert workdir.latest_step() == 30
    # Orbax keeps 2 checkpoints; the data positions of the others go with them.
    assert sorted(os.listdir(workdir.checkpoints_dir)) == ["20", "30"]
    assert sorted(os.listdir(workdir.path / "data_state")) == ["20", "30"]
    assert (workdir.data_state_dir(30) / "position").read_text() == "30"
    restored, saved = workdir.restore(30, state_at(0))
    jax.tree_util.tree_map(np.testing.assert_array_equal, jax.device_get(restored),
                           jax.device_get(state_at(30, scale=30)))
    assert saved == dataclasses.replace(progress, stage_start_step=30)
    best, _ = workdir.restore(10, state_at(0), best=True)
    assert int(best.step) == 10
    assert workdir.read_progress() == saved
  finally:
    workdir.close()
  # The readers read what the workdir wrote.
  workdir.save_config(config)
  assert workdir_lib.read_progress(workdir.path) == saved
  trained = workdir_lib.load_for_inference(workdir.path, "latest")
  assert trained.step == 30 and trained.config.to_dict() == config.to_dict()
  np.testing.assert_array_equal(trained.variables["params"]["output"]["kernel"],
                                30 * np.arange(6.0).reshape(1, 3, 2))
  assert workdir_lib.load_for_inference(workdir.path).step == 10  # best


def test_a_field_that_is_off_keeps_the_checkpoints_of_runs_from_before_it(tmp_path):
  workdir = workdir_lib.Workdir(tmp_path)
  workdir.open(keep_checkpoints=3)
  older = lambda step: state_at(step, scale=step)
  newer = lambda step, ema=None: AveragedState(**dataclasses.asdict(older(step)), ema_params=ema)
  try:
    workdir.save(older(10), workdir_lib.Progress(), Positions(10))  # from before the field
    workdir.save(newer(20), workdir_lib.Progress(), Positions(20))  # its option off
    average = {"output": {"kernel": jnp.full((1, 3, 2), 7.0)},
               "down_0": {"conv": {"kernel": jnp.full((5, 2, 4), 7.0)}}}
    workdir.save(newer(30, average), workdir_lib.Progress(), Positions(30))
    workdir.wait_until_finished()
    # Off: either reads either.
    for step, target in ((10, newer(0)), (20, newer(0)), (20, older(0))):
      restored, _ = workdir.restore(step, target)
      assert type(restored) is type(target)
      jax.tree_util.tree_map(np.testing.assert_array_equal, jax.device_get(restored),
                             jax.device_get(type(target)(**dataclasses.asdict(older(step)))))
    restored, _ = workdir.restore(30, newer(0, jax.tree_util.tree_map(jnp.zeros_like, average)))
    jax.tree_util.tree_map(np.testing.assert_array_equal, jax.device_get(restored.ema_params),
                           jax.device_get(average))
  finally:
    workdir.close()
  # Inference reads the average where there is one, the parameters elsewhere.
  workdir.save_config(tiny_config())
  loaded = workdir_lib.load_for_inference(tmp_path, "30").variables["params"]
  jax.tree_util.tree_map(np.testing.assert_array_equal, loaded, jax.device_get(average))
  loaded = workdir_lib.load_for_inference(tmp_path, "20").variables["params"]
  jax.tree_util.tree_map(np.testing.assert_array_equal, loaded, jax.device_get(older(20).params))


def test_config_json_keeps_where_the_run_started(tmp_path):
  workdir = workdir_lib.Workdir(tmp_path)
  origin = {"workdir": "/runs/a", "checkpoint": "best", "step": 7}
  workdir.save_config(tiny_config(), origin)
  workdir.save_config(tiny_config())  # a resumed run
  assert json.loads(workdir.config_file.read_text())[workdir_lib.STARTED_FROM] == origin
  assert workdir_lib.STARTED_FROM not in workdir_lib.load_config(tmp_path)


def test_an_older_config_json_reads_and_resumes_with_the_fields_added_since(tmp_path):
  from experiments import default

  workdir, config = workdir_lib.Workdir(tmp_path), tiny_config()
  workdir.save_config(config)
  older = json.loads(workdir.config_file.read_text())
  for name in workdir_lib.ADDED_FIELDS:
    group, field = name.split(".")
    del older[group][field]
  workdir.config_file.write_text(json.dumps(older))
  assert workdir_lib.load_config(tmp_path).to_dict() == config.to_dict()
  assert workdir.start(config) == workdir_lib.Start()  # the run resumes
  # Each added field's value there is its default: a run that leaves it resumes.
  defaults = default.get_config()
  for name, value in workdir_lib.ADDED_FIELDS.items():
    group, field = name.split(".")
    assert defaults[group][field] == value, name
  config.loss.kind = "l1"  # another run
  with pytest.raises(workdir_lib.WorkdirError,
                     match=r'config.loss.kind \("mse" in config.json, "l1" now\)'):
    workdir.start(config)


def test_differences_name_every_field_but_the_resumable_ones():
  saved, config = tiny_config(), tiny_config()
  config.num_train_steps, config.data.data_dir = 99, "/elsewhere"
  assert workdir_lib.config_differences(saved, config) == []
  config.data.sample_rate, config.optim.learning_rate = 16000, 3e-4
  assert workdir_lib.config_differences(saved, config) == [
      ("data.sample_rate", 8000, 16000), ("optim.learning_rate", 1e-4, 3e-4)]


def test_the_resume_check(tmp_path):
  workdir = workdir_lib.Workdir(tmp_path)
  other = tiny_config()
  other.model.negative_slope = 0.1
  workdir.check_resumable(other)  # no config.json: any config
  assert workdir.start(other) == workdir_lib.Start()
  workdir.save_config(tiny_config())
  longer = tiny_config()
  longer.num_train_steps = 1000
  assert workdir.start(longer) == workdir_lib.Start()
  with pytest.raises(workdir_lib.WorkdirError) as error:
    workdir.start(other)
  assert str(error.value).startswith(
      f"--workdir={tmp_path} holds a run of another config: config.model.negative_slope (0.2 "
      "in config.json, 0.1 now) differ from its config.json")
  assert os.listdir(tmp_path) == ["config.json"]


@pytest.mark.parametrize("init_from,message", [
    ("{here}", "that is this run's --workdir; a run resumes from its own checkpoints by "
     "itself: name another run's workdir, or none"),
    ("{here}:latest", "that is this run's --workdir"),
    ("{nothing}", "no training workdir at {nothing} (no config.json); name a workdir, "
     "optionally with :best, :latest or :STEP"),
    ("{bare}:7", "no checkpoint in {bare}/checkpoints; train the run first"),
])
def test_init_from_refusals(tmp_path, init_from, message):
  names = {"here": tmp_path / "run", "nothing": tmp_path / "nothing", "bare": tmp_path / "bare"}
  workdir_lib.Workdir(names["bare"]).save_config(tiny_config())
  config = tiny_config()
  config.init_from = init_from.format(**names)
  with pytest.raises(workdir_lib.WorkdirError) as error:
    workdir_lib.Workdir(names["here"]).start(config)
  assert str(error.value).startswith(f"config.init_from={config.init_from}: "
                                     f"{message.format(**names)}")
  assert not names["here"].exists() and os.listdir(names["bare"]) == ["config.json"]


def trained_start(params, sources=("accompaniment", "vocals"), rate=TINY_RATE):
  config = tiny_config()
  config.model.sources, config.data.sample_rate = sources, rate
  trained = workdir_lib.Trained(config, {"params": params}, 5)
  return workdir_lib.Start(trained, {"workdir": "/runs/a", "checkpoint": "best", "step": 5})


def test_init_from_loads_every_parameter_but_a_new_output_layer(caplog):
  # absl's logger itself: an earlier test in this process may have left it at WARNING.
  caplog.set_level(logging.INFO, logger="absl")
  config = tiny_config()
  fresh = {"output": {"kernel": np.zeros((1, 3, 2), np.float32)},
           "down_0": {"kernel": np.zeros((5, 2), np.float32)}}
  theirs = {"output": {"kernel": np.ones((1, 3, 2))}, "down_0": {"kernel": np.ones((5, 2))}}
  params, batch_stats = trained_start(theirs).variables(config, fresh, {})
  assert params["output"]["kernel"].dtype == np.float32 and batch_stats == {}
  assert np.all(params["output"]["kernel"] == 1) and np.all(params["down_0"]["kernel"] == 1)
  # Other sources: the output layer (of another shape there) keeps its fresh values.
  theirs["output"]["kernel"] = np.ones((1, 3, 6))
  params, _ = trained_start(theirs, sources=("bass", "drums", "other", "vocals")).variables(
      config, fresh, {})
  assert np.all(params["output"]["kernel"] == 0) and np.all(params["down_0"]["kernel"] == 1)
  assert "the output layer anew" in caplog.text
  # Nothing to start from: the fresh ones.
  params, batch_stats = workdir_lib.Start().variables(config, fresh, {})
  assert params is fresh and batch_stats == {}


def test_init_from_another_network_is_refused_naming_the_parameter():
  config = tiny_config()
  config.init_from = "/runs/a"
  fresh = {"output": {"kernel": np.zeros((1, 3, 2))}, "down_0": {"kernel": np.zeros((5, 2))}}
  for theirs, message in (
      ({"output": {"kernel": np.ones((1, 3, 2))}, "down_0": {"kernel": np.ones((3, 2))}},
       "params/down_0/kernel has shape (3, 2) there and (5, 2) here"),
      ({"output": {"kernel": np.ones((1, 3, 2))}},
       "that run's network has no params/down_0/kernel (shape (5, 2) here)"),
      ({**fresh, "up_0": {"kernel": np.ones((2,))}},
       "that run's params/up_0/kernel (shape (2,)) is not in this network")):
    with pytest.raises(workdir_lib.WorkdirError) as error:
      trained_start(theirs).variables(config, fresh, {})
    assert str(error.value) == (f"config.init_from=/runs/a: {message}; only the output layer "
                                "may differ (other config.model.sources): start from a run of "
                                "this network")

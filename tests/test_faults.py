"""What happens when... (README): each fault of a training start or run, and what the
user gets: one line, nothing left behind, the workdir still describing its run."""

import json
import os
import pathlib
import shlex
import shutil
import signal
import subprocess
import sys

import chex
import jax
import pytest

from helpers import (TINY_OUTPUT, TINY_RATE, tiny_data_config, tiny_schedule,
                     write_config_file)
from waveunet_jax import signals, train
from waveunet_jax import workdir as workdir_lib
from waveunet_jax.data import builder as builder_lib
from waveunet_jax.data import records
from waveunet_jax.data import generator

ROOT = pathlib.Path(__file__).resolve().parent.parent


def tiny_config(data_dir=None):
  return tiny_schedule(tiny_data_config(TINY_RATE, TINY_OUTPUT, data_dir), 10, log_every=5,
                       patience=100, fine_tune_batch_size=8)


@pytest.fixture
def data_dir(tiny_data_dir):
  return tiny_data_dir


def run_main(*args, timeout=300):
  return subprocess.run([sys.executable, "-m", "waveunet_jax.main", *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=timeout)


def last_line(result) -> str:
  return result.stderr.strip().splitlines()[-1]


# --------------------------------------------------------------------------- #
# A relative --workdir, as the README writes them and training's closing line prints.
# --------------------------------------------------------------------------- #


@pytest.fixture(scope="module")
def trained_run(tiny_data_dir, tmp_path_factory):
  """A folder holding `run/`, a tiny trained run: the programs run from that folder
  with --workdir=run."""
  parent = tmp_path_factory.mktemp("relative")
  config = tiny_config(tiny_data_dir)
  config.num_train_steps = config.eval_every_steps = config.checkpoint_every_steps = 2
  train.train_and_evaluate(config, parent / "run")
  return parent


def run_program(program, *args, cwd):
  return subprocess.run([sys.executable, "-m", f"waveunet_jax.{program}", *args], cwd=cwd,
                        capture_output=True, text=True, timeout=300)


def test_separate_and_export_take_a_relative_workdir(trained_run):
  import numpy as np
  import soundfile as sf

  sf.write(trained_run / "song.wav", np.zeros((4000, 2), np.float32), TINY_RATE)
  result = run_program("separate", "--workdir=run", "song.wav", "--output_dir=out",
                       cwd=trained_run)
  assert result.returncode == 0, result.stderr[-3000:]
  assert sorted(p.name for p in (trained_run / "out" / "song").iterdir()) == [
      "accompaniment.wav", "vocals.wav"]
  result = run_program("export", "--workdir=run", "--format=stablehlo",
                       "--output=m.stablehlo", "--window_seconds=0.5", cwd=trained_run)
  assert result.returncode == 0, result.stderr[-3000:]
  meta = json.loads((trained_run / "m.stablehlo.json").read_text())
  assert meta["source_model"]["workdir"] == str(trained_run / "run")


def test_evaluate_takes_a_relative_workdir(trained_run, musdb_corpus):
  result = run_program("evaluate", "--workdir=run", f"--musdb_root={musdb_corpus}", "--wav",
                       "--tracks=1", "--noreport", "--output_dir=eval", cwd=trained_run)
  assert result.returncode == 0, result.stderr[-3000:]
  summary = json.loads((trained_run / "eval" / "summary.json").read_text())
  assert summary["separator"]["workdir"] == str(trained_run / "run")


def test_init_from_a_relative_workdir(trained_run, tiny_data_dir, monkeypatch):
  monkeypatch.chdir(trained_run)
  config = tiny_config(tiny_data_dir)
  config.num_train_steps = config.eval_every_steps = config.checkpoint_every_steps = 1
  config.init_from = "run:latest"
  train.train_and_evaluate(config, "fine")
  saved = json.loads((trained_run / "fine" / "config.json").read_text())
  assert saved[workdir_lib.STARTED_FROM] == {
      "workdir": str(trained_run / "run"), "checkpoint": "latest", "step": 2}


def test_reading_a_workdir_without_checkpoints_writes_nothing(trained_run, tmp_path):
  from waveunet_jax.separation import jax_engine
  from waveunet_jax.separation import separator

  (tmp_path / "bare").mkdir()
  shutil.copy(trained_run / "run" / "config.json", tmp_path / "bare")
  with pytest.raises(separator.SeparationError,
                     match=r"^--workdir=.*bare: no checkpoint in .*bare/checkpoints; train "):
    jax_engine.JaxEngine.from_workdir(tmp_path / "bare")
  assert os.listdir(tmp_path / "bare") == ["config.json"]


# --------------------------------------------------------------------------- #
# Re-running with another config.
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("field,value,shown", [
    # Same shapes: used to resume silently, config.json then describing another model.
    ("model.negative_slope", 0.1, "config.model.negative_slope (0.2 in config.json, 0.1 now)"),
    # Another network: used to end in Orbax's tree-mismatch traceback.
    ("model.features", (4, 6, 10), "config.model.features ([4, 6, 8] in config.json, "
                                   "[4, 6, 10] now)"),
])
def test_rerun_with_another_config_is_refused_before_touching_the_workdir(
    data_dir, tmp_path, field, value, shown):
  config = tiny_config(data_dir)
  train.train_and_evaluate(config, tmp_path)
  saved = (tmp_path / "config.json").read_bytes()
  other = tiny_config(data_dir)
  group, name = field.split(".")
  other[group][name] = value
  with pytest.raises(workdir_lib.WorkdirError, match="holds a run of another config") as e:
    train.train_and_evaluate(other, tmp_path)
  assert shown in str(e.value) and "\n" not in str(e.value)
  assert (tmp_path / "config.json").read_bytes() == saved
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["10"]


def test_rerun_may_change_the_step_counts_and_resumes(data_dir, tmp_path):
  config = tiny_config(data_dir)
  first = jax.device_get(train.train_and_evaluate(config, tmp_path).params)
  longer = tiny_config(data_dir)
  longer.num_train_steps, longer.log_every_steps, longer.patience = 20, 2, 50
  longer.data.data_dir = data_dir + "/"  # the same dataset, named another way
  resumed = train.train_and_evaluate(longer, tmp_path)
  assert int(resumed.step) == 20
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["10", "20"]
  assert json.loads((tmp_path / "config.json").read_text())["num_train_steps"] == 20
  restored = workdir_lib.load_for_inference(tmp_path, "10")[1]["params"]
  chex.assert_trees_all_equal(restored, first)


def test_cli_rerun_with_another_network_is_one_line_and_keeps_config_json(tmp_path):
  """The issue's case: experiments/deep.py:M1 on a shallow workdir."""
  from experiments import shallow

  workdir_lib.Workdir(tmp_path).save_config(shallow.get_config("smoke"))
  saved = (tmp_path / "config.json").read_bytes()
  result = run_main("--config", "experiments/deep.py:M1", "--workdir", str(tmp_path))
  assert result.returncode == 1, result.stderr[-2000:]
  assert last_line(result).startswith(f"error: --workdir={tmp_path} holds a run of another "
                                      "config: config.model.sources, config.model.num_channels (2 in "
                                      "config.json, 1 now), config.model.features")
  assert "Traceback" not in result.stderr
  assert (tmp_path / "config.json").read_bytes() == saved
  assert os.listdir(tmp_path) == ["config.json"]


# --------------------------------------------------------------------------- #
# Failed starts: one line, whichever way the flags are written, and no workdir.
# --------------------------------------------------------------------------- #

SMOKE = "experiments/shallow.py:smoke"


@pytest.mark.parametrize("args,message", [
    (["--config", "experiments/nope.py"], "error: --config=experiments/nope.py: no such file"),
    (["-config=experiments/nope.py"], "error: --config=experiments/nope.py: no such file"),
    (["--config", "experiments/nope.py:smoke"], "error: --config=experiments/nope.py: no such"),
    (["--config", "experiments/shallow.py:nope"],
     "error: --config=experiments/shallow.py:nope: unknown variant"),
    (["--config", SMOKE, "--config.model.colour", "red"], "check the field names"),
    (["--config", SMOKE, "--config.batch_size=abc"], "--config.batch_size=abc: invalid"),
    (["--config", SMOKE, "--config.seed"], "error: --config.seed: missing value (the next "
                                           "argument is the flag --workdir"),
    (["--config", "--config.seed=1"], "error: --config: missing value"),
    # These pass the flags and fail in training's checks, after importing JAX.
    (["--config", SMOKE, "--config.model.features", "abc"],
     "error: config.model.features: must be a positive integer"),
    (["--config=" + SMOKE, "--config.data.data_dir=/nonexistent"],
     "run python -m waveunet_jax.prepare"),
    # Refused before any dataset is looked at: one used to train on one dataset twice.
    (["--config=" + SMOKE, "--config.data.data_dir=/data/a,/data/a/"],
     "error: config.data.data_dir=/data/a,/data/a/: /data/a/ is named twice (/data/a is the "
     "same folder); name each dataset once, with its weight"),
    (["--config=" + SMOKE, "--config.data.data_dir=/data/a:nan,/data/b"],
     "error: config.data.data_dir=/data/a:nan,/data/b: the weight of /data/a is nan; weights "
     "must be finite positive numbers"),
])
def test_failed_starts_are_one_line_and_leave_no_workdir(tmp_path, args, message):
  workdir = tmp_path / "run"
  result = run_main(*args, "--workdir", str(workdir))
  assert result.returncode != 0
  assert last_line(result).startswith("error: ") and message in last_line(result), \
      result.stderr[-2000:]
  assert "Traceback" not in result.stderr
  assert not workdir.exists()


def test_workdir_flag_without_a_value_is_one_line(tmp_path):
  result = run_main("--workdir", f"--config={SMOKE}")
  assert last_line(result) == f"error: --workdir: missing value (the next argument is the " \
                              f"flag --config={SMOKE})"
  result = run_main(f"--config={SMOKE}", "--workdir=")
  assert last_line(result).startswith("error: --workdir is empty")


def test_a_failed_start_in_python_removes_only_a_workdir_it_made(tmp_path):
  config = tiny_config("/nonexistent")
  with pytest.raises(records.DataError):
    train.train_and_evaluate(config, tmp_path / "new")
  assert not (tmp_path / "new").exists()
  (tmp_path / "old").mkdir()
  (tmp_path / "old" / "notes.txt").write_text("mine")
  with pytest.raises(records.DataError):
    train.train_and_evaluate(config, tmp_path / "old")
  assert os.listdir(tmp_path / "old") == ["notes.txt"]


# --------------------------------------------------------------------------- #
# Ctrl-C and SIGTERM.
# --------------------------------------------------------------------------- #


def test_a_second_signal_raises_at_once_and_handlers_come_back(caplog):
  before = signal.getsignal(signal.SIGINT)
  with signals.StopOnSignal() as stop:
    os.kill(os.getpid(), signal.SIGTERM)
    assert stop.signum == signal.SIGTERM
    # The handler only records: logging from it could interrupt a write to stderr.
    assert not caplog.records
    stop.announce()
    stop.announce()
    assert [r.getMessage() for r in caplog.records] == [
        "SIGTERM: stopping after this step with a checkpoint (again to quit at once, "
        "without saving)"]
    with pytest.raises(KeyboardInterrupt, match="SIGINT again"):
      os.kill(os.getpid(), signal.SIGINT)
  assert signal.getsignal(signal.SIGINT) is before


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_training_with_a_checkpoint_and_the_run_resumes_exactly(
    data_dir, tmp_path, signum):
  config = tiny_config(data_dir)
  config.num_train_steps = 100_000  # a run that only a signal ends
  config.log_every_steps = 1
  config_file = write_config_file(config, tmp_path / "tiny.py")
  workdir = tmp_path / "run"
  command = [sys.executable, "-m", "waveunet_jax.main", f"--config={config_file}",
             "--workdir", str(workdir)]
  process = subprocess.Popen(command, cwd=ROOT, stderr=subprocess.PIPE, text=True)
  lines, sent = [], False
  try:
    for line in process.stderr:  # absl logs to stderr
      lines.append(line)
      if "step 3 (stage 0)" in line:  # mid-run: only a signal ends this one
        process.send_signal(signum)
        sent = True
        break
    lines += process.stderr.readlines()
    process.wait(timeout=120)
  finally:
    process.kill()
  assert sent, ("could not stop training mid-run: it ended before it logged step 3; its "
                "stderr ends: " + "".join(lines[-30:]))
  name = signal.Signals(signum).name
  assert process.returncode == 128 + signum, "".join(lines[-30:])
  assert "Traceback" not in "".join(lines) and "Logging error" not in "".join(lines)
  assert any(f"{name}: stopping after this step with a checkpoint" in line for line in lines)
  stopped = lines[-1].strip()
  assert stopped.startswith("stopped at step ") and f" on {name}, with a checkpoint" in stopped
  step = int(stopped.split()[3])
  assert step >= 3
  assert str(step) in os.listdir(workdir / "checkpoints")
  assert workdir_lib.read_progress(workdir).done is False
  # The printed command resumes; here for 5 more steps (step counts may change).
  resume = shlex.split(stopped.split("; resume with: ", 1)[1])
  assert resume[-4:] == command[-4:]
  result = subprocess.run([*resume, f"--config.num_train_steps={step + 5}"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert f"resuming at step {step}, stage 0" in result.stderr
  if signum == signal.SIGTERM:
    return  # the exact comparison once is enough
  # ... and ends where a run that was never stopped ends.
  config.num_train_steps = step + 5
  straight = train.train_and_evaluate(config, tmp_path / "straight")
  _, resumed, _ = workdir_lib.load_for_inference(workdir, "latest")
  chex.assert_trees_all_equal(resumed["params"], jax.device_get(straight.params))


# --------------------------------------------------------------------------- #
# Preparing tracks too short for one training example.
# --------------------------------------------------------------------------- #


def test_prepare_with_every_track_too_short_says_how_long_they_must_be(tmp_path):
  root = tmp_path / "corpus"
  tracks = generator.write_corpus(root, num_train=2, num_test=0, seconds=1, seed=3)
  config = tiny_data_config(8000, 16000)  # 2 s examples
  with pytest.raises(records.DataError) as e:
    builder_lib.prepare(config, root, tmp_path / "tfds", wav=True, valid_tracks=[tracks[0].name])
  message = str(e.value)
  output_length = 16003  # the network's, for the 16000 asked for
  assert f"examples have {output_length} output samples at 8000 Hz, so tracks must last at " \
         f"least {output_length / 8000:.2f} s, and the longest" in message
  assert message.endswith("lasts 1.00 s. Use longer tracks or a smaller "
                          "config.data.output_length")
  assert not list((tmp_path / "tfds").glob("*/*/incomplete.*"))  # nothing half-written


def stop_once(command, ready, signum, timeout=300) -> tuple[int, str]:
  """Starts `command`, sends `signum` once `ready()` holds (the program is at work),
  -> (exit status, stderr). Fails if the program ended before it could be signalled."""
  import time

  process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
  try:
    deadline = time.monotonic() + timeout
    while not ready() and process.poll() is None and time.monotonic() < deadline:
      time.sleep(0.02)
    assert process.poll() is None, "the program ended before it could be signalled"
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=120)
  finally:
    process.kill()
  return process.returncode, stderr


def test_a_signal_stops_synthetic_with_one_line_and_no_half_written_track(tmp_path):
  out = tmp_path / "corpus"
  written = lambda: out.joinpath("train").is_dir() and any(
      not p.name.startswith(".") for p in out.joinpath("train").iterdir())
  status, stderr = stop_once([sys.executable, "-m", "waveunet_jax.synthetic", str(out),
                              "--tracks=40", "--seconds=20"], written, signal.SIGINT)
  assert status == 130 and "Traceback" not in stderr, stderr
  assert stderr.strip().splitlines()[-1] == (
      "error: interrupted (SIGINT): the tracks finished are kept, nothing half-written is; "
      "re-running the same command writes the rest")
  assert not [p.name for p in out.joinpath("train").iterdir() if p.name.startswith(".")]


def test_a_sigterm_stops_prepare_with_one_line(tmp_path):
  generator.write_corpus(tmp_path / "musdb", num_train=3, num_test=0, seconds=20, seed=3)
  data_dir = tmp_path / "data"
  at_work = lambda: data_dir.is_dir() and any(p.is_file() for p in data_dir.rglob("*"))
  status, stderr = stop_once([sys.executable, "-m", "waveunet_jax.prepare",
                              f"--musdb_root={tmp_path / 'musdb'}", f"--data_dir={data_dir}",
                              "--wav", "--config=experiments/deep.py:M3",
                              "--config.data.output_length=4096"], at_work, signal.SIGTERM)
  assert status == 143 and "Traceback" not in stderr, stderr
  assert stderr.strip().splitlines()[-1].startswith(
      "error: interrupted (SIGTERM): nothing half-written is kept")

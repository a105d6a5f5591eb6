"""Several JAX processes on this machine's CPU, joined by `jax.distributed` with gloo
collectives, as the hosts of a pod are: `python -m waveunet_jax.main` run as 2
processes of 1 device each must train exactly as 1 process of 2 devices, resume each
other's checkpoints, and fail cleanly (a killed process, processes started with
different configs).

Every process runs in its own session and is killed with its children when its test
ends, and by the kernel if pytest itself dies, so no test leaves a process behind.
"""

import contextlib
import logging
import os
import shutil
import tempfile
import pathlib
import signal
import socket
import subprocess
import sys
import time

import chex
import pytest

from helpers import (TINY_OUTPUT, TINY_RATE, tiny_data_config, tiny_schedule,
                     write_config_file)
from waveunet_jax import distributed
from waveunet_jax import workdir as workdir_lib
from waveunet_jax.data import tfdata
from waveunet_jax import train as train_lib

ROOT = pathlib.Path(__file__).resolve().parent.parent
TIMEOUT = 90  # seconds for any one command of these tests
# A run that only a kill or a signal ends, checkpointing every 3 steps.
ENDLESS = ("--config.num_train_steps=100000", "--config.eval_every_steps=100000")


@pytest.fixture(scope="module")
def config_file(tmp_path_factory, tiny_data_dir) -> pathlib.Path:
  config = tiny_schedule(tiny_data_config(TINY_RATE, TINY_OUTPUT, tiny_data_dir), 6, 3,
                         patience=100)
  return write_config_file(config, tmp_path_factory.mktemp("multihost") / "tiny.py")


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def environment(devices: int) -> dict[str, str]:
  return {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu",
          "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices} "
                       "--xla_backend_optimization_level=0"}


# Children get SIGKILL when pytest dies (PR_SET_PDEATHSIG, kept across exec), set by
# util-linux's setpriv: no Python code runs between fork and exec in this
# multithreaded process.
DIE_WITH_PARENT = ["setpriv", "--pdeathsig", "KILL"] if shutil.which("setpriv") else []


@contextlib.contextmanager
def processes(commands: list[list[str]], devices: int):
  """Starts `commands` at once, each in its own session, its stderr into a file (a
  pipe nobody reads while waiting for another process would block it); kills what is
  left at the end."""
  logs = [tempfile.TemporaryFile("w+") for _ in commands]
  started = [subprocess.Popen(DIE_WITH_PARENT + c, cwd=ROOT, env=environment(devices),
                              stdout=subprocess.DEVNULL, stderr=log, text=True,
                              start_new_session=True)
             for c, log in zip(commands, logs)]
  for p, log in zip(started, logs):
    p.log = log
  try:
    yield started
  finally:
    for p in started:
      if p.poll() is None:
        os.killpg(p.pid, signal.SIGKILL)
      p.wait()
      p.log.close()


def finish(started: list[subprocess.Popen], timeout: float = TIMEOUT) -> list[tuple[int, str]]:
  """(exit code, stderr) of each, waiting at most `timeout` for all together."""
  deadline = time.monotonic() + timeout
  results = []
  for p in started:
    try:
      p.wait(timeout=max(deadline - time.monotonic(), 0.1))
    except subprocess.TimeoutExpired:
      p.log.seek(0)
      pytest.fail(f"{p.args} ran past {timeout} s; its stderr ends: {p.log.read()[-2000:]}")
    p.log.seek(0)
    results.append((p.returncode, p.log.read()))
  return results


def training_command(config_file, workdir, *flags: str) -> list[str]:
  return [sys.executable, "-m", "waveunet_jax.main", f"--config={config_file}",
          f"--workdir={workdir}", *flags]


def two_processes(config_file, workdir, *flags: str) -> list[list[str]]:
  """The commands of a run of 2 processes, each given `flags`."""
  port = free_port()
  return [training_command(config_file, workdir, *flags,
                           f"--coordinator_address=localhost:{port}", "--num_processes=2",
                           f"--process_id={i}") for i in range(2)]


def wait_for_checkpoint(workdir: pathlib.Path, step: int, started: list[subprocess.Popen]):
  deadline = time.monotonic() + TIMEOUT
  while not (workdir / "checkpoints" / str(step)).exists():
    assert all(p.poll() is None for p in started), "training ended early"
    assert time.monotonic() < deadline, "no checkpoint in time"
    time.sleep(0.2)


def train(config_file, workdir, num_processes: int, *overrides: str) -> list[str]:
  """Trains with 2 devices: 1 process of 2, or 2 processes of 1. Returns the stderrs."""
  if num_processes == 1:
    commands, devices = [training_command(config_file, workdir, *overrides)], 2
  else:
    commands, devices = two_processes(config_file, workdir, *overrides), 1
  with processes(commands, devices) as started:
    results = finish(started)
  for code, stderr in results:
    assert code == 0, stderr[-3000:]
  return [stderr for _, stderr in results]


def scalars(workdir: pathlib.Path) -> dict[tuple[str, int], float]:
  import tensorflow as tf

  values = {}
  for path in sorted((workdir / "tensorboard").glob("events.out.tfevents.*")):
    for record in tf.data.TFRecordDataset(str(path)):
      event = tf.compat.v1.Event.FromString(record.numpy())
      for value in event.summary.value:
        tensor = tf.make_ndarray(value.tensor)
        if tensor.ndim == 0:  # not audio or images
          values[value.tag, event.step] = float(tensor)
  return values


def parameters(workdir: pathlib.Path, step: int):
  restored = workdir_lib.load_for_inference(workdir, str(step))
  return restored.variables


@pytest.mark.parametrize("pipeline", ["tfdata", "device"])
def test_two_processes_train_as_one_process_of_two_devices_and_resume_each_other(
    tmp_path, tiny_data_dir, caplog, pipeline):
  config = tiny_schedule(tiny_data_config(TINY_RATE, TINY_OUTPUT, tiny_data_dir), 6, 3,
                         patience=100)
  config.data.pipeline = pipeline  # tf.data's streams per device, or the device sampler
  config_file = write_config_file(config, tmp_path / "tiny.py")
  # The validation tiles split unevenly over the 2 devices, so one process runs out of
  # validation batches first and joins in with empty ones until the other is done.
  tiles = [sum(b["weight"].sum() for b in tfdata.as_numpy(tfdata.eval_dataset(
      config, 2, shard=d, num_shards=2))) for d in range(2)]
  assert tiles[0] != tiles[1], tiles

  uninterrupted, one_then_two, two_then_one = (tmp_path / n for n in ("c", "a", "b"))
  train(config_file, uninterrupted, 1)
  train(config_file, one_then_two, 1, "--config.num_train_steps=3")
  logs = train(config_file, two_then_one, 2, "--config.num_train_steps=3")
  # One process writes config.json and TensorBoard; both checkpoints, one step each.
  assert [p.name for p in two_then_one.iterdir() if p.is_file()] == ["config.json"]
  assert len(list((two_then_one / "tensorboard").iterdir())) == 1
  assert all("JAX process" in log for log in logs)
  # tf.data saves each device's stream position; the device sampler needs none.
  assert sorted(p.name for p in (two_then_one / "data_state" / "3").iterdir()) == (
      ["shard_0_of_2", "shard_1_of_2"] if pipeline == "tfdata" else ["device_sampler.json"])
  # After the same steps, 2 processes of 1 device = 1 process of 2 devices, bit for
  # bit: the same batches (a data stream per device), and a 2-way all-reduce is
  # exact in any order (a + b == b + a).
  chex.assert_trees_all_equal(parameters(two_then_one, 3), parameters(one_then_two, 3))
  chex.assert_trees_all_equal(parameters(two_then_one, 3), parameters(uninterrupted, 3))

  # On another number of devices (this process has 4), the state resumes; tf.data's
  # order starts afresh, saying so, the device sampler draws for 4 devices from here.
  four = tmp_path / "four"
  shutil.copytree(one_then_two, four)
  config = workdir_lib.load_config(four)
  config.num_train_steps = 6
  with caplog.at_level(logging.WARNING):
    train_lib.train_and_evaluate(config, four)
  if pipeline == "tfdata":
    assert "saved for 2 device(s), and this run has 4" in caplog.text
    assert workdir_lib.read_progress(four).data_start_step == 3
    assert sorted(p.name for p in (four / "data_state" / "6").iterdir()) == [
        f"shard_{d}_of_4" for d in range(4)]
  else:
    assert "data positions" not in caplog.text
    assert workdir_lib.read_progress(four).data_start_step == 0

  # Each resumes on the other topology, with every device's data position.
  train(config_file, one_then_two, 2)
  train(config_file, two_then_one, 1)
  for workdir in (one_then_two, two_then_one):
    chex.assert_trees_all_equal(parameters(workdir, 6), parameters(uninterrupted, 6))
  reference = scalars(uninterrupted)
  for workdir in (one_then_two, two_then_one):
    logged = scalars(workdir)
    for step in (3, 6):
      for tag in ("valid/loss", "valid/sdr/accompaniment", "train/loss"):
        assert logged[tag, step] == reference[tag, step], (workdir, tag, step)


def test_processes_started_with_different_configs_refuse_to_start(tmp_path, config_file):
  workdir = tmp_path / "run"
  commands = two_processes(config_file, workdir)
  commands[1].append("--config.optim.learning_rate=0.01")
  with processes(commands, 1) as started:
    (code0, err0), (code1, err1) = finish(started, timeout=60)
  assert code0 == code1 == 1
  last = lambda err: err.strip().splitlines()[-1]
  assert last(err1) == (
      "error: process 1 was started with another run than process 0: "
      "config.optim.learning_rate (0.0001 on process 0, 0.01 here) differ; start every "
      "process with the same --config, --config.* overrides and --workdir")
  assert last(err0).startswith("error: process(es) 1 of 2 were started with another config")
  assert not workdir.exists()


@pytest.mark.parametrize("victim", [1, 0])  # 0 is the coordinator
def test_a_killed_process_ends_the_others_run(tmp_path, config_file, victim):
  workdir = tmp_path / "run"
  commands = two_processes(config_file, workdir, *ENDLESS, "--heartbeat_timeout=2")
  with processes(commands, devices=1) as started:
    wait_for_checkpoint(workdir, 3, started)
    os.killpg(started[victim].pid, signal.SIGKILL)
    killed = time.monotonic()
    # The survivor must not wait in a collective forever: it ends within the heartbeat
    # timeout (and some seconds to notice), with a message that says why.
    [(code, stderr)] = finish([started[1 - victim]], timeout=60)
    assert time.monotonic() - killed < 60
  assert code != 0
  assert "another task died" in stderr or "heartbeat" in stderr, stderr[-3000:]


def test_sigterm_on_one_process_stops_all_at_one_step_with_a_checkpoint(tmp_path, config_file):
  workdir = tmp_path / "run"
  with processes(two_processes(config_file, workdir, *ENDLESS), devices=1) as started:
    wait_for_checkpoint(workdir, 3, started)
    started[1].send_signal(signal.SIGTERM)  # a preempted host: only one gets it
    results = finish(started, timeout=60)
  # Both stop after the same step, a log boundary they agree at, with its checkpoint.
  steps = set()
  for code, stderr in results:
    assert code == 128 + signal.SIGTERM, stderr[-3000:]
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("stopped at step ") and "resume with:" in last, last
    steps.add(int(last.split()[3]))
  [step] = steps
  assert step % 3 == 0 and workdir_lib.read_progress(workdir) is not None
  restored = workdir_lib.load_for_inference(workdir, "latest")
  assert restored.step == step


def test_distributed_flags_that_cannot_work_are_one_line(tmp_path, config_file):
  base = training_command(config_file, tmp_path / "run")
  cases = [(["--distributed"], "error: --distributed: JAX detected no cluster to join"),
           (["--coordinator_address=localhost:1", "--num_processes=2"],
            "error: --coordinator_address, --num_processes and --process_id go together"),
           (["--coordinator_address=localhost:1", "--num_processes=2", "--process_id=2"],
            "error: --process_id=2 is not in [0, --num_processes=2)")]
  with processes([base + flags for flags, _ in cases], devices=1) as started:
    results = finish(started, timeout=120)
  for (code, stderr), (_, expected) in zip(results, cases):
    assert code == 1 and stderr.strip().splitlines()[-1].startswith(expected), stderr[-2000:]
  assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("address", ["garbage", "localhost", "localhost:", ":8476", "[::1]",
                                     "localhost:0", "localhost:65536", "localhost:-1",
                                     "localhost:８４７６", "host.invalid:8476"])
def test_a_coordinator_address_that_cannot_work_names_the_flag(address):
  with pytest.raises(distributed.DistributedError, match=r"^--coordinator_address=.*: (not HOST:PORT"
                     r" with a port from 1 to 65535|cannot resolve the host 'host.invalid')"):
    distributed._coordinator(address)
  assert distributed._coordinator("[::1]:8476") == ("::1", 8476)
  assert distributed._coordinator("localhost:65535") == ("localhost", 65535)


def test_coordinator_faults_are_one_line_before_jax_starts(tmp_path, config_file):
  """JAX's own answers were an IndexError, a segfault and, after 300 s, an abort."""
  base = training_command(config_file, tmp_path / "run", "--num_processes=2")
  with socket.socket() as taken:
    taken.bind(("0.0.0.0", 0))
    taken.listen()
    port = taken.getsockname()[1]
    nobody = free_port()
    cases = [(["--coordinator_address=garbage", "--process_id=1"],
              "error: --coordinator_address=garbage: not HOST:PORT with a port from 1 to 65535"),
             ([f"--coordinator_address=localhost:{port}", "--process_id=0"],
              f"error: --coordinator_address=localhost:{port}: process 0 cannot listen on port "
              f"{port} (Address already in use"),
             ([f"--coordinator_address=localhost:{nobody}", "--process_id=1",
               "--coordinator_timeout=5"],
              f"error: --coordinator_address=localhost:{nobody}: no coordinator answered within "
              "5 s (--coordinator_timeout); start process 0")]
    with processes([base + flags for flags, _ in cases], devices=1) as started:
      results = finish(started, timeout=120)
  for (code, stderr), (_, expected) in zip(results, cases):
    assert code == 1 and stderr.strip().splitlines()[-1].startswith(expected), stderr[-2000:]
    assert "Traceback" not in stderr and "Fatal" not in stderr, stderr[-2000:]
  assert (f"waiting up to 5 s (--coordinator_timeout) for the coordinator, process 0, at "
          f"localhost:{nobody}") in results[2][1]
  assert not (tmp_path / "run").exists()

"""kill -9 at seeded random moments of each command, then a re-run: the result must equal
an uninterrupted run's, with no temporary file left behind (the README's contract).

Each command runs as its own process on tiny inputs. A kill lands while the command
works on its outputs: after its first file appears under the output folder, at a
seeded random share of the time the uninterrupted run took from there to its end.
"""

import json
import os
import pathlib
import random
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile as sf

from waveunet_jax.data import generator

pytestmark = pytest.mark.faults

ROOT = pathlib.Path(__file__).resolve().parent.parent
KILLS = 2  # moments per command
SEED = 20261125


def tree(folder: pathlib.Path) -> dict[str, bytes]:
  """Every file below `folder`, by relative path (temporaries included)."""
  return {str(p.relative_to(folder)): p.read_bytes()
          for p in sorted(folder.rglob("*")) if p.is_file()}


def temporaries(folder: pathlib.Path) -> list[str]:
  return [str(p) for p in folder.rglob("*")
          if ".part-" in p.name or p.name.startswith("incomplete.") or "tmp" in p.name]


def run(command: list[str], watch: pathlib.Path, kill_after: float | None = None,
        timeout: float = 240) -> tuple[int, float]:
  """Runs `command`; with `kill_after`, SIGKILLs it that many seconds after the first
  file appears under `watch`. Returns (exit code, seconds from that file to the end)."""
  process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)},
                             start_new_session=True)
  deadline, started = time.monotonic() + timeout, None
  try:
    while process.poll() is None:
      now = time.monotonic()
      assert now < deadline, f"{command} ran past {timeout} s"
      if started is None and watch.exists() and any(p.is_file() for p in watch.rglob("*")):
        started = now
      if started is not None and kill_after is not None and now - started >= kill_after:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        return -9, now - started
      time.sleep(0.01)
  finally:
    if process.poll() is None:
      os.killpg(process.pid, signal.SIGKILL)
      process.wait()
  stderr = process.stderr.read().decode(errors="replace")
  assert process.returncode == 0, stderr
  return 0, time.monotonic() - (started or time.monotonic())


def kill_at_seeded_moments(command, output: pathlib.Path, work: float, name: str,
                           watch: pathlib.Path | None = None) -> None:
  """Kills `command` KILLS times in a row at seeded moments (each run resuming what the
  killed one left), timed from the first file under `watch` (default `output`)."""
  watch = watch or output
  rng = random.Random(f"{SEED}-{name}")
  for kill in range(KILLS):
    fraction = rng.uniform(0.05, 0.6)
    code, _ = run(command, watch, kill_after=fraction * work)
    # The first run must be killed; a resumed one may have too little left to do. `work`
    # was timed on a machine whose load changes (other tests run beside this one): where
    # the run beat its kill, start again from nothing with a kill three times as early.
    for _ in range(3):
      if code == -9 or kill > 0:
        break
      shutil.rmtree(output)
      fraction /= 3
      code, _ = run(command, watch, kill_after=fraction * work)
    assert code == -9 or kill > 0, (
        f"could not kill {name} while it worked: it ended before a kill at "
        f"{fraction * work:.3f} s, four times; give it more work")


def kill_and_rerun(command, output: pathlib.Path, reference: dict[str, bytes], work: float,
                   name: str, compare=None) -> None:
  """Kills `command` at seeded moments (`kill_at_seeded_moments`), then runs it to the
  end: its outputs must equal `reference` and hold no temporary."""
  kill_at_seeded_moments(command, output, work, name)
  assert run(command, output)[0] == 0
  assert not temporaries(output), temporaries(output)
  got = tree(output)
  if compare:
    compare(got, reference)
  else:
    assert got.keys() == reference.keys()
    for path in reference:
      assert got[path] == reference[path], path


# The separate or evaluate program on a tiny model. With PAUSE_MARKER=<path> in its
# environment the second song it separates stops after its first block is written (its
# temporaries on disk): the program touches <path> and waits for a signal, so that a
# test can stop it mid-song on a machine of any speed.
CLI_MODEL = """
import os, pathlib, sys, time
sys.path.insert(0, "tests")
from helpers import tiny_model_config  # on the CPU: the environment conftest.py set is inherited
import jax, numpy as np
from waveunet_jax import evaluate, models, separate
from waveunet_jax.separation import jax_engine

def paused_on_the_second_song(separate_blocks, marker):
  songs = []

  def blocks(*args, **kwargs):
    songs.append(None)
    stems = separate_blocks(*args, **kwargs)
    if len(songs) != 2:
      yield from stems
      return
    yield next(stems)  # written to the temporaries when the next block is asked for
    pathlib.Path(marker).touch()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # short sleeps: a signal may land in any thread
      time.sleep(0.01)
    sys.exit("paused mid-song, but no signal came in 120 s")

  return blocks

def from_workdir(workdir, checkpoint="best", **kwargs):
  model = models.WaveUNet(**tiny_model_config())
  mix = np.zeros((1, models.lengths(model, 1).input_length, 2), np.float32)
  kwargs["window_seconds"] = 0.05  # many windows: the kills land while it works
  separator = jax_engine.separator_from_model(
      model, jax.jit(model.init)(jax.random.key(0), mix), 8000, **kwargs)
  if "PAUSE_MARKER" in os.environ:
    separator.separate_blocks = paused_on_the_second_song(separator.separate_blocks,
                                                          os.environ["PAUSE_MARKER"])
  return separator

jax_engine.separator_from_workdir = from_workdir
(separate if sys.argv.pop(1) == "separate" else evaluate).cli()
"""


def test_separate_survives_kill_9(tmp_path):
  songs = tmp_path / "songs"
  songs.mkdir()
  rng = np.random.default_rng(0)
  for i in range(3):
    sf.write(songs / f"song{i}.wav", rng.uniform(-0.5, 0.5, (20 * 44100, 2)), 44100,
             subtype="PCM_16")
  command = lambda out: [sys.executable, "-c", CLI_MODEL, "separate", "--workdir=RUN",
                         str(songs), f"--output_dir={out}", "--format=flac"]
  _, work = run(command(tmp_path / "reference"), tmp_path / "reference")
  reference = tree(tmp_path / "reference")
  assert len(reference) == 6
  kill_and_rerun(command(tmp_path / "out"), tmp_path / "out", reference, work, "separate")


def test_evaluate_survives_kill_9(tmp_path):
  generator.write_corpus(tmp_path / "musdb", num_train=1, num_test=2, seconds=6, seed=1)
  command = lambda out: [sys.executable, "-c", CLI_MODEL, "evaluate", "--workdir=RUN",
                         f"--musdb_root={tmp_path / 'musdb'}", "--wav", f"--output_dir={out}"]
  _, work = run(command(tmp_path / "reference"), tmp_path / "reference")
  reference = tree(tmp_path / "reference")
  scores = [p for p in reference if p.endswith(".json") and not p.startswith("excerpts")]
  assert len(scores) == 5  # 2 + 2 + summary
  assert "report.html" in reference

  def same_scores(got, reference):
    assert got.keys() == reference.keys()
    for path in reference:
      if path == "report.html":  # names the output folder and the time
        continue
      if path.endswith("summary.json"):  # names the output folder
        a, b = json.loads(got[path]), json.loads(reference[path])
        assert {k: v for k, v in a.items() if k != "musdb_root"} == \
            {k: v for k, v in b.items() if k != "musdb_root"}
      else:
        assert got[path] == reference[path], path

  kill_and_rerun(command(tmp_path / "out"), tmp_path / "out", reference, work, "evaluate",
                 same_scores)


def test_prepare_survives_kill_9(tmp_path):
  generator.write_corpus(tmp_path / "musdb", num_train=4, num_test=1, seconds=20, seed=2)
  valid = sorted(p.name for p in (tmp_path / "musdb" / "train").iterdir())[0]
  command = lambda out: [sys.executable, "-m", "waveunet_jax.prepare",
                         f"--musdb_root={tmp_path / 'musdb'}", f"--data_dir={out}", "--wav",
                         "--config=experiments/deep.py:M3", "--config.data.output_length=4096",
                         f"--valid_tracks={valid}"]
  _, work = run(command(tmp_path / "reference"), tmp_path / "reference")

  def records(files: dict[str, bytes]) -> dict[str, list]:
    """The examples of every TFRecord file, parsed: protobuf serialises a feature map in
    no fixed order, so equal examples need not be equal bytes."""
    import tensorflow as tf

    out = {}
    for path, data in files.items():
      if ".tfrecord" in path:
        (tmp_path / "record").write_bytes(data)
        out[path] = [tf.train.Example.FromString(r.numpy())
                     for r in tf.data.TFRecordDataset(str(tmp_path / "record"))]
    return out

  def same_records(got, reference):
    assert records(got) and records(got) == records(reference)

  kill_and_rerun(command(tmp_path / "out"), tmp_path / "out", tree(tmp_path / "reference"),
                 work, "prepare", same_records)


def test_training_survives_kill_9(tmp_path, tiny_data_dir):
  import chex

  from helpers import (TINY_OUTPUT, TINY_RATE, tiny_data_config, tiny_schedule,
                       write_config_file)
  from waveunet_jax import workdir as workdir_lib

  config = tiny_schedule(tiny_data_config(TINY_RATE, TINY_OUTPUT, tiny_data_dir), 40, 5,
                         eval_every=10, patience=100)
  config.data.pipeline = "device"  # no saved data positions: the batches follow the step
  config_file = write_config_file(config, tmp_path / "tiny.py")
  command = lambda workdir: [sys.executable, "-m", "waveunet_jax.main",
                             f"--config={config_file}", f"--workdir={workdir}"]
  _, work = run(command(tmp_path / "reference"), tmp_path / "reference" / "checkpoints")
  workdir = tmp_path / "run"
  kill_at_seeded_moments(command(workdir), workdir, work, "main", watch=workdir / "checkpoints")
  assert run(command(workdir), workdir / "checkpoints")[0] == 0
  reference = workdir_lib.load_for_inference(tmp_path / "reference", "latest")
  resumed = workdir_lib.load_for_inference(workdir, "latest")
  assert resumed.step == reference.step == 40
  chex.assert_trees_all_equal(resumed.variables, reference.variables)
  assert not temporaries(workdir), temporaries(workdir)


def signal_when_paused(command: list[str], paused: pathlib.Path, signum: int,
                       not_ready=lambda: None) -> tuple[int, str]:
  """Runs `command` (CLI_MODEL's) with PAUSE_MARKER=`paused` and sends it `signum` once
  it has paused in its second song -> (exit status, stderr). The test fails, rather than
  signal at the wrong moment, where the program ends or does not pause within 120 s, or
  `not_ready()` then says why the moment is wrong."""
  process = subprocess.Popen(
      command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
      start_new_session=True,
      env={**os.environ, "PYTHONPATH": str(ROOT), "PAUSE_MARKER": str(paused)})
  deadline = time.monotonic() + 120
  try:
    while not paused.exists():
      if process.poll() is not None:
        pytest.fail("could not stop the program mid-song: it ended (exit "
                    f"{process.returncode}) before pausing in the second song; its stderr "
                    f"ends: {process.stderr.read().decode(errors='replace')[-3000:]}")
      if time.monotonic() > deadline:
        pytest.fail("could not stop the program mid-song: it did not pause in the second "
                    "song within 120 s")
      time.sleep(0.01)
    why = not_ready()
    if why:
      pytest.fail(f"could not stop the program mid-song: paused in the second song, but {why}")
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=60)
  finally:
    if process.poll() is None:
      os.killpg(process.pid, signal.SIGKILL)
      process.wait()
  return process.returncode, stderr.decode(errors="replace")


@pytest.mark.parametrize("clip", ["clamp", "rescale"])
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_separate_stopped_mid_song_says_so_in_one_line_and_leaves_nothing(tmp_path, clip,
                                                                         signum):
  """Ctrl-C (or SIGTERM) while the second song is being separated: the first song's
  stems stay, the second leaves nothing (no temporary, spool or empty folder). The
  program pauses after the second song's first block (CLI_MODEL's PAUSE_MARKER), so the
  signal lands mid-song however fast the machine is."""
  songs = tmp_path / "songs"
  songs.mkdir()
  rng = np.random.default_rng(0)
  for i, seconds in enumerate((5, 20)):  # the second of several blocks
    sf.write(songs / f"song{i}.wav", rng.uniform(-0.5, 0.5, (seconds * 44100, 2)), 44100,
             subtype="PCM_16")
  out = tmp_path / "out"
  returncode, stderr = signal_when_paused(
      [sys.executable, "-c", CLI_MODEL, "separate", "--workdir=RUN", str(songs),
       f"--output_dir={out}", f"--clip={clip}"], tmp_path / "paused", signum,
      not_ready=lambda: None if temporaries(out / "song1") else
      f"{out / 'song1'} holds none of its temporaries")
  assert returncode == 128 + signum, stderr
  assert "Traceback" not in stderr
  assert stderr.strip().splitlines()[-1] == (
      f"error: interrupted ({signal.Signals(signum).name}): nothing written for "
      f"{songs / 'song1.wav'}; the songs finished before it are kept in {out}; re-running "
      "the same command separates the rest")
  assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == [
      "song0", "song0/accompaniment.wav", "song0/vocals.wav"]


def test_evaluate_stopped_mid_song_says_so_in_one_line(tmp_path):
  """SIGTERM while evaluate separates its second track (CLI_MODEL's PAUSE_MARKER): one
  line, exit 143, no traceback; the re-run finishes."""
  generator.write_corpus(tmp_path / "musdb", num_train=1, num_test=2, seconds=6, seed=1)
  out, paused = tmp_path / "out", tmp_path / "paused"
  command = [sys.executable, "-c", CLI_MODEL, "evaluate", "--workdir=RUN",
             f"--musdb_root={tmp_path / 'musdb'}", "--wav", f"--output_dir={out}"]
  returncode, stderr = signal_when_paused(command, paused, signal.SIGTERM)
  assert returncode == 143 and "Traceback" not in stderr, stderr
  assert stderr.strip().splitlines()[-1] == (
      "error: interrupted (SIGTERM): the tracks scored so far are kept in --output_dir; "
      "re-running the same command scores the rest")
  assert run(command, out)[0] == 0

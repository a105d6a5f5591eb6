"""The install choices (setup.cfg's extras) and the programs' console scripts.

The separation-only installs are built fresh, as a user would (`python -m venv`, then
`pip install 'waveunet_jax[onnx]'` or `'[jax]'` from a copy of this checkout), side by
side while the tiny model trains; each must hold what it promises and nothing heavier,
and separate a song: the ONNX one with an export made here, the JAX one with the
trained workdir. Most of the time is pip's (about 1.5 minutes on 2 cores with a warm
pip cache); the test skips where the package index cannot be reached.
"""

import importlib.metadata
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import soundfile

from helpers import install_failed

ROOT = pathlib.Path(__file__).resolve().parent.parent
# What a pip install needs of the checkout (not the tests, notebooks or a .venv).
PACKAGE_FILES = ("setup.cfg", "setup.py", "pyproject.toml", "README.md", "LICENSE",
                 "waveunet_jax", "experiments")
TENSORFLOW = ("tensorflow", "tensorflow-cpu", "tensorflow-gpu", "tensorflow-intel",
              "tensorflow-macos", "intel-tensorflow", "tf-nightly", "tf-nightly-cpu",
              "tensorflow-datasets")
JAX = ("jax", "jaxlib", "flax", "orbax-checkpoint", "optax")
SCRIPTS = ("waveunet-train", "waveunet-prepare", "waveunet-summary", "waveunet-synthetic",
           "waveunet-separate", "waveunet-evaluate", "waveunet-export")
RATE = 22050  # the song's; the model's is 8 kHz, so separation resamples both ways


class Environments:
  """Fresh virtual environments with one install choice each, built in the background
  (`start`); `python(choice)` waits for one."""

  def __init__(self, root: pathlib.Path, choices: tuple[str, ...]):
    self.root, self.processes = root, {}
    source = root / "source"
    source.mkdir()
    for name in PACKAGE_FILES:  # the build writes build/ and *.egg-info beside setup.py
      copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy2
      copy(ROOT / name, source / name, **(
          {"ignore": shutil.ignore_patterns("__pycache__")} if (ROOT / name).is_dir() else {}))
    for choice in choices:
      venv = root / choice
      log = open(root / f"{choice}.log", "w")
      self.processes[choice] = (subprocess.Popen(
          ["bash", "-c", f"set -e; '{sys.executable}' -m venv '{venv}'; '{venv}/bin/pip' "
           f"install -q --no-compile --disable-pip-version-check '{source}[{choice}]'"],
          stdout=log, stderr=subprocess.STDOUT, start_new_session=True), log)

  def python(self, choice: str, timeout: float = 900) -> str:
    process, log = self.processes[choice]
    returncode = process.wait(timeout=timeout)
    log.close()
    output = (self.root / f"{choice}.log").read_text()
    if returncode:
      install_failed(f"pip install '.[{choice}]'", output)
    return str(self.root / choice / "bin" / "python")

  def stop(self) -> None:
    import signal

    for process, log in self.processes.values():
      if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
      log.close()


@pytest.fixture(scope="session")  # as tiny_workdir, so that it starts first
def environments(tmp_path_factory):
  built = Environments(tmp_path_factory.mktemp("installs"), ("onnx", "jax"))
  yield built
  built.stop()


def installed(python: str) -> tuple[set[str], set[str]]:
  """(distributions installed, of jax/tensorflow/onnxruntime the modules importable) in
  the environment of `python`."""
  listing = subprocess.run([python, "-c", (
      "import importlib.metadata as m, importlib.util as u, json; print(json.dumps(["
      "sorted({d.metadata['Name'].lower().replace('_', '-') for d in m.distributions()}),"
      "[n for n in ('jax', 'tensorflow', 'onnxruntime') if u.find_spec(n)]]))")],
      capture_output=True, text=True, check=True, timeout=120).stdout
  distributions, modules = json.loads(listing)
  return set(distributions), set(modules)


def separate(python: str, *args: str, cwd: pathlib.Path) -> subprocess.CompletedProcess:
  return subprocess.run([python, "-m", "waveunet_jax.separate", *args], cwd=cwd,
                        capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def song(tmp_path_factory) -> pathlib.Path:
  folder = tmp_path_factory.mktemp("song")
  audio = np.random.default_rng(7).uniform(-0.4, 0.4, (RATE + 1234, 2)).astype(np.float32)
  soundfile.write(folder / "song.wav", audio, RATE, subtype="FLOAT")
  return folder / "song.wav"


def read_stems(folder: pathlib.Path) -> dict[str, np.ndarray]:
  return {p.stem: soundfile.read(p, dtype="float32")[0] for p in sorted(folder.iterdir())}


def assert_same_stems(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
  assert sorted(got) == sorted(want) == ["accompaniment", "vocals"]
  for name in want:
    assert got[name].shape == want[name].shape
    assert np.abs(got[name] - want[name]).max() < 1e-4, name


def test_onnx_install_separates_an_export_without_jax_or_tensorflow(
    environments, tiny_workdir, song, tmp_path):
  from waveunet_jax import export
  from waveunet_jax.separation import model_formats
  from waveunet_jax.separation import jax_engine
  from waveunet_jax.separation import separator

  model = export.export(jax_engine.JaxEngine.from_workdir(tiny_workdir, window_seconds=0.1),
                        "onnx", tmp_path / "m.onnx")
  python = environments.python("onnx")
  distributions, modules = installed(python)
  assert {"waveunet-jax", "onnxruntime", "av", "soundfile", "soxr"} <= distributions
  assert not distributions & set(TENSORFLOW + JAX), distributions & set(TENSORFLOW + JAX)
  assert modules == {"onnxruntime"}

  result = separate(python, f"--model={model}", str(song), "--output_dir=out",
                    "--format=float", cwd=tmp_path)
  assert result.returncode == 0, result.stderr[-3000:]
  audio, rate = soundfile.read(song, dtype="float32")
  want = separator.Separator(model_formats.load(model)).separate(audio, rate)
  assert_same_stems(read_stems(tmp_path / "out" / "song"), want)

  # What this install cannot do is one line saying what to install.
  result = separate(python, f"--workdir={tiny_workdir}", str(song), "--output_dir=out2",
                    cwd=tmp_path)
  assert result.returncode == 1 and not (tmp_path / "out2").exists()
  assert result.stderr.strip().splitlines() == [
      "error: --workdir needs the jax install (no module named jax): "
      "pip install 'waveunet_jax[jax]'"]
  result = subprocess.run([str(pathlib.Path(python).parent / "waveunet-train"), "--help"],
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 1
  assert result.stderr.strip().splitlines() == [
      "error: training needs the train install (no module named ml_collections): "
      "pip install 'waveunet_jax[train]'"]


def test_jax_install_separates_a_workdir_without_tensorflow(
    environments, tiny_workdir, song, tmp_path):
  from waveunet_jax.separation import jax_engine

  python = environments.python("jax")
  distributions, modules = installed(python)
  assert {"waveunet-jax", "jax", "flax", "orbax-checkpoint", "ml-collections"} <= distributions
  assert not distributions & set(TENSORFLOW), distributions & set(TENSORFLOW)
  assert modules == {"jax"}

  # A relative --workdir, as the README writes it.
  (tmp_path / "runs").symlink_to(tiny_workdir.parent)
  result = separate(python, f"--workdir=runs/{tiny_workdir.name}", "--window_seconds=0.1",
                    str(song), "--output_dir=out", "--format=float", cwd=tmp_path)
  assert result.returncode == 0, result.stderr[-3000:]
  audio, rate = soundfile.read(song, dtype="float32")
  want = jax_engine.separator_from_workdir(tiny_workdir, window_seconds=0.1).separate(audio, rate)
  assert_same_stems(read_stems(tmp_path / "out" / "song"), want)


def test_every_program_has_a_console_script_whose_help_exits_0():
  entry_points = {e.name: e.value for e in importlib.metadata.entry_points(
      group="console_scripts") if e.name.startswith("waveunet-")}
  assert sorted(entry_points) == sorted(SCRIPTS), entry_points
  bin_dir = pathlib.Path(sys.executable).parent
  runs = {name: subprocess.Popen([str(bin_dir / name), "--help"], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True) for name in SCRIPTS}
  for name, process in runs.items():
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, (name, err[-2000:])
    # The program's own docstring and flags, not the script file's (which has none).
    module = entry_points[name].split(":")[0]
    first_line = importlib.import_module(module).__doc__.strip().splitlines()[0]
    assert first_line in out, (name, out[:500])
    assert re.search(r"--(config|workdir|model|musdb_root|tracks)\b", out), (name, out[:2000])

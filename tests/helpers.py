"""What several test files share, so that no test file imports another: the tiny configs,
the prepare tests' tracks, the separator tests' tiny models and songs, a full disk, and
the Colab-like environment of test_notebook.py. The fixtures and hooks stay in
conftest.py, which imports from here what they need.

pytest's default import mode ("prepend") puts tests/, which has no __init__.py, first on
sys.path before it imports conftest.py, so test files say `from helpers import ...`; a
subprocess script run from the checkout's root inserts "tests" first. conftest.py loads
this module in every pytest process: JAX and the package's modules are imported where
used, not at load.
"""

import errno
import functools
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import soundfile

from experiments import default

# --------------------------------------------------------------------------- #
# Tiny configs, built from the real experiment configs.
# --------------------------------------------------------------------------- #

TINY_RATE, TINY_OUTPUT = 8000, 1000  # the layout of conftest's tiny_data_dir


def tiny_model_config(**overrides):
  """A 3-level version of the default (paper M4) model config, as a dict."""
  config = default.get_config().model.to_dict()
  config.update(features=(4, 6, 8), bottleneck_features=8, down_kernel_sizes=(5, 3, 5),
                up_kernel_sizes=(3, 3, 3), bottleneck_kernel_size=3,
                downsampling_factors=(2, 2, 2))
  config.update(overrides)
  return config


def tiny_data_config(sample_rate: int, output_length: int, data_dir=None, **model):
  """The default config with a tiny model, small examples and small shuffle buffers."""
  config = default.get_config()
  config.model.update(tiny_model_config(**model))
  config.data.sample_rate = sample_rate
  config.data.output_length = output_length
  config.data.data_dir = str(data_dir) if data_dir else None
  config.data.crops_per_window = 2
  config.data.window_shuffle_buffer = 4
  config.data.crop_shuffle_buffer = 8
  return config


def tiny_schedule(config, steps, every=None, *, log_every=None, eval_every=None,
                  checkpoint_every=None, patience=None, fine_tune_batch_size=None):
  """`config` set to train a tiny run: global batches of 4, `steps` steps, logged,
  validated and checkpointed every `every` steps (default: once, at the end) unless
  given apart; the fine-tune stage off, or on with batches of `fine_tune_batch_size`;
  early stopping after `patience` validations if given (else the config's)."""
  every = every or steps
  config.batch_size = 4
  config.num_train_steps = steps
  config.log_every_steps = log_every or every
  config.eval_every_steps = eval_every or every
  config.checkpoint_every_steps = checkpoint_every or every
  if patience is not None:
    config.patience = patience
  if fine_tune_batch_size:
    config.fine_tune.batch_size = fine_tune_batch_size
  else:
    config.fine_tune.enabled = False
  return config


def write_config_file(config, path):
  """`config` as a config file for `--config=path` (the command-line programs)."""
  path.write_text("import ml_collections\n\n\ndef get_config():\n"
                  f"  return ml_collections.ConfigDict({config.to_dict()!r})\n")
  return path


def install_failed(command: str, output: str) -> None:
  """A failed `command` (a pip install a test needs): the project's fault, so the test
  fails, unless pip cannot reach the package index at all, where the test skips."""
  probe = subprocess.run([sys.executable, "-m", "pip", "index", "versions", "pip"],
                         capture_output=True, text=True, timeout=300)
  if probe.returncode:
    pytest.skip(f"{command} failed and the package index cannot be reached "
                f"(pip index versions pip: {probe.stderr.strip()[-300:]})")
  pytest.fail(f"{command} failed:\n{output[-3000:]}")


# --------------------------------------------------------------------------- #
# Tracks for prepare (test_prepare.py, test_data.py): written at 44.1 kHz, stored at
# the tiny configs' model rate.
# --------------------------------------------------------------------------- #

DATA_RATE = 16000  # the tiny configs' model rate: every track is resampled from 44.1 kHz


def data_config(data_dir=None, **model):
  """A tiny config at DATA_RATE, with outputs of 3000 samples."""
  return tiny_data_config(DATA_RATE, 3000, data_dir, **model)


def write_track(folder: pathlib.Path, stems: dict, rate: int = 44100, subtype="PCM_16"):
  folder.mkdir(parents=True, exist_ok=True)
  for name, audio in stems.items():
    soundfile.write(folder / f"{name}.wav", audio, rate, subtype=subtype)


def silent_stems(seconds: float, rate: int = 44100):
  from waveunet_jax import stems as stems_lib

  return {s: np.zeros((int(seconds * rate), 2), np.float32) for s in stems_lib.STEMS}


def prepare_tracks(tmp_path, tracks: dict, valid: str, **kwargs):
  from waveunet_jax.data import builder as builder_lib

  root = tmp_path / "musdb"
  for name, stems in tracks.items():
    write_track(root / "train" / name, stems)
  config = data_config(tmp_path / "data", **kwargs)
  builder_lib.prepare(config, root, tmp_path / "data", wav=True, valid_tracks=[valid])
  return config


# --------------------------------------------------------------------------- #
# The separator tests' tiny models and songs (test_separator.py, test_separate.py,
# test_jax_engine.py, test_export.py). Separators are cached so that each window shape
# compiles once per process.
# --------------------------------------------------------------------------- #

SEPARATOR_RATE = 8000  # the tiny models' sample rate
SHORT = 50 / SEPARATOR_RATE  # window_seconds of a few dozen samples: many windows per song


@functools.cache
def random_model(padding="valid", output="difference", channels=2):
  import jax

  from waveunet_jax import models

  model = models.WaveUNet(**tiny_model_config(padding=padding, output=output,
                                              num_channels=channels))
  mix = np.zeros((1, models.lengths(model, 1).input_length, channels), np.float32)
  return model, jax.jit(model.init)(jax.random.key(0), mix)  # jitted: 4x faster on CPU


def model_and_variables(padding="valid", output="difference", channels=2, bias=None):
  """A tiny model with random variables; with `bias`, a pass-through one: the output
  conv's kernel is zero, so every estimated source is tanh(bias) (0 for bias 0) and
  a difference model's last source is the mix minus those."""
  model, variables = random_model(padding, output, channels)
  if bias is not None:
    params = dict(variables["params"])
    params["output"] = {"kernel": np.zeros_like(params["output"]["kernel"]),
                        "bias": np.full_like(params["output"]["bias"], bias)}
    variables = {**variables, "params": params}
  return model, variables


@functools.cache
def separator(padding="valid", output="difference", channels=2, bias=None, **kwargs):
  from waveunet_jax.separation import jax_engine

  model, variables = model_and_variables(padding, output, channels, bias)
  return jax_engine.separator_from_model(model, variables, SEPARATOR_RATE, **kwargs)


def pass_through(padding="valid", **kwargs):
  return separator(padding, bias=0.0, **kwargs)


def noise(length, channels=2, peak=0.9, seed=0):
  return np.random.default_rng(seed).uniform(-peak, peak, (length, channels)).astype(np.float32)


def tones(seconds, rate, channels=2, peak=0.5):
  """Low sines (well inside every rate's band) under a Hann window: no broadband edges."""
  t = np.arange(round(seconds * rate)) / rate
  x = np.stack([np.sin(2 * np.pi * f * t) for f in (220, 330)[:channels]], axis=1)
  return (peak * x * np.hanning(len(t))[:, None]).astype(np.float32)


def round_trip(x, rate):
  """What band-limited resampling to the model's rate and back leaves of `x`."""
  import soxr

  y = soxr.resample(soxr.resample(x, rate, SEPARATOR_RATE, quality="HQ"), SEPARATOR_RATE, rate,
                    quality="HQ")
  return np.pad(y, ((0, max(0, len(x) - len(y))), (0, 0)))[:len(x)]


# --------------------------------------------------------------------------- #
# A full disk (test_audio.py, test_separate.py).
# --------------------------------------------------------------------------- #


class FullDisk:
  """An output container whose file fills the disk: FFmpeg buffers writes and reports
  the failure when the file is closed (as it does on a real full disk, see
  test_audio.py)."""

  def __init__(self, container, path):
    self.container, self.path = container, path

  def __getattr__(self, name):
    return getattr(self.container, name)

  def close(self):
    self.container.close()
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), self.path)


# --------------------------------------------------------------------------- #
# A Colab-like virtual environment for tests/test_notebook.py, built while the other
# tests run (most of it is downloading and unpacking, which leaves the CPUs free);
# conftest.py's hooks start it.
# --------------------------------------------------------------------------- #

# What Colab has before our notebook installs anything: its own TensorFlow (another
# version and distribution than a fresh install of ours gets), matplotlib and a kernel;
# nbclient runs the notebook.
COLAB_PACKAGES = ("tensorflow==2.19.*", "matplotlib", "ipykernel", "nbclient", "nbformat")


def colab_python() -> str:
  """Python 3.12 as on Colab where this machine has it (on the PATH or through pyenv),
  else the Python running the tests."""
  import glob
  import shutil

  candidates = [shutil.which("python3.12"),
                *sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.12*/bin/python3.12")))]
  for python in filter(None, candidates):
    if subprocess.run([python, "--version"], capture_output=True).returncode == 0:
      return python
  return sys.executable


class ColabEnvironment:
  """A virtual environment built in the background, once per test run: `start()` in the
  process that runs pytest (under pytest-xdist, the controller, which learns what its
  workers collected), then `python()` in whichever process runs the test waits for it.
  The build writes its exit status to a file, so a worker can wait for a build it did
  not start; the folder is named in the environment, which the workers inherit."""

  VARIABLE = "WAVEUNET_TEST_COLAB_ENV"

  def __init__(self):
    self.process = self.log = None
    self.owner = False

  @property
  def root(self) -> str:
    return os.environ[self.VARIABLE]

  def make_root(self) -> None:
    """In the process that runs pytest, before any worker starts."""
    import tempfile

    if self.VARIABLE not in os.environ:
      os.environ[self.VARIABLE] = tempfile.mkdtemp(prefix="waveunet-colab-env-")
      self.owner = True

  def start(self) -> None:
    if self.process is not None:
      return
    venv = os.path.join(self.root, "venv")
    pip = f"{venv}/bin/pip install -q --no-compile --disable-pip-version-check"
    packages = " ".join(f"'{p}'" for p in COLAB_PACKAGES)
    status = os.path.join(self.root, "status")
    self.log = open(os.path.join(self.root, "build.log"), "w")
    self.process = subprocess.Popen(
        ["bash", "-c", f"( set -e; '{colab_python()}' -m venv '{venv}'; {pip} {packages} ); "
         f"echo $? > '{status}.part' && mv '{status}.part' '{status}'"],
        stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

  def python(self, timeout: float = 900) -> str:
    """The environment's Python, once built; fails the test with pip's output if not."""
    import time

    if "PYTEST_XDIST_WORKER" not in os.environ:  # else the controller started it
      self.make_root()
      self.start()
    status = os.path.join(self.root, "status")
    deadline = time.monotonic() + timeout
    while not os.path.exists(status):
      if time.monotonic() > deadline:
        pytest.fail(f"the Colab-like environment was not built in {timeout} s")
      time.sleep(1)
    with open(status) as f:
      failed = f.read().strip() != "0"
    if failed:
      with open(os.path.join(self.root, "build.log")) as f:
        pytest.fail(f"building the Colab-like environment failed:\n{f.read()[-3000:]}")
    return os.path.join(self.root, "venv", "bin", "python")

  def stop(self) -> None:
    import shutil
    import signal

    if self.process is not None and self.process.poll() is None:
      os.killpg(self.process.pid, signal.SIGKILL)
      self.process.wait()
    if self.log is not None:
      self.log.close()
    if self.owner:
      shutil.rmtree(self.root, ignore_errors=True)


COLAB_ENVIRONMENT = ColabEnvironment()  # one per process: conftest's hooks and the test share it

"""Shared test helpers: tiny model configs built from the real experiment configs."""

import os

# Tests run on the CPU, with several virtual devices for the data-parallel tests,
# and with XLA's backend optimisations off: it compiles the tests' many small
# programs about 5x faster (parameter initialisation above all), and tests check
# behaviour, not speed. All must be set before jax is imported anywhere.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4 "
                      "--xla_backend_optimization_level=0")
# One persistent compilation cache for this session's processes, every size and compile
# time: the tests start the programs dozens of times on the same tiny configs, and each
# start compiled the same steps again (the kill -9 training test: 74 s without, 50 s
# with). Removed at the end of the session (pytest_sessionfinish).
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  import tempfile

  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="waveunet-test-xla-")
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
  _OWN_CACHE = os.environ["JAX_COMPILATION_CACHE_DIR"]
else:
  _OWN_CACHE = None

import subprocess  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402

from experiments import default  # noqa: E402


def install_failed(command: str, output: str) -> None:
  """A failed `command` (a pip install a test needs): the project's fault, so the test
  fails, unless pip cannot reach the package index at all, where the test skips."""
  probe = subprocess.run([sys.executable, "-m", "pip", "index", "versions", "pip"],
                         capture_output=True, text=True, timeout=300)
  if probe.returncode:
    pytest.skip(f"{command} failed and the package index cannot be reached "
                f"(pip index versions pip: {probe.stderr.strip()[-300:]})")
  pytest.fail(f"{command} failed:\n{output[-3000:]}")


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


@pytest.fixture
def tiny_config():
  return tiny_model_config


TINY_RATE, TINY_OUTPUT = 8000, 1000  # tiny_data_dir's layout


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory) -> str:
  """A synthetic corpus prepared once for tiny_data_config(TINY_RATE, TINY_OUTPUT), for
  every test that trains (the dataset depends only on rate, lengths and sources)."""
  from waveunet_jax.data import builder as builder_lib
  from waveunet_jax.data import generator

  root = tmp_path_factory.mktemp("corpus")
  data_dir = tmp_path_factory.mktemp("tfds")
  tracks = generator.write_corpus(root, num_train=3, num_test=0, seconds=4, seed=1)
  builder_lib.prepare(tiny_data_config(TINY_RATE, TINY_OUTPUT), root, data_dir, wav=True,
                  valid_tracks=[tracks[0].name])
  return str(data_dir)


TINY_RUN_RATE = 8000  # tiny_workdir's sample rate


@pytest.fixture(scope="session")
def tiny_workdir(tmp_path_factory):
  """A training workdir of a tiny two-source model at 8 kHz, trained 3 steps on a
  synthetic corpus of its own (checkpoints at step 3, in checkpoints/ and best/), once
  for the tests that separate or export a trained run; tests only read it."""
  from waveunet_jax import train

  config = tiny_schedule(tiny_data_config(TINY_RUN_RATE, 400), 3)
  config.data.synthetic_tracks, config.data.synthetic_seconds = 2, 3.0
  workdir = tmp_path_factory.mktemp("tiny_run") / "run"
  train.train_and_evaluate(config, workdir)
  return workdir


@pytest.fixture(scope="session")
def musdb_corpus(tmp_path_factory):
  """A MUSDB18-HQ-layout corpus: one training and two 6 s test tracks."""
  from waveunet_jax.data import generator

  root = tmp_path_factory.mktemp("musdb")
  generator.write_corpus(root, num_train=1, num_test=2, seconds=6, seed=0)
  return root


@pytest.fixture(scope="session")
def evaluated(musdb_corpus, tmp_path_factory):
  """(output folder, summary) of a tiny random two-source model at 8 kHz scored on the
  corpus's two test tracks, once for every test of evaluation and of its report
  (museval costs seconds per track); tests copy the folder before changing it."""
  import jax
  import numpy as np

  from waveunet_jax import evaluate, models
  from waveunet_jax.separation import jax_engine

  model = models.WaveUNet(**tiny_model_config())
  assert tuple(model.sources) == ("accompaniment", "vocals")
  mix = np.zeros((1, models.lengths(model, 1).input_length, 2), np.float32)
  variables = jax.jit(model.init)(jax.random.key(0), mix)
  out = tmp_path_factory.mktemp("eval")
  summary = evaluate.evaluate(jax_engine.separator_from_model(model, variables, 8000),
                              musdb_corpus, out, wav=True, split="test")
  return out, summary


# --------------------------------------------------------------------------- #
# A Colab-like virtual environment for tests/test_notebook.py, built while the other
# tests run (most of it is downloading and unpacking, which leaves the CPUs free).
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
  import subprocess
  import sys

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
    import subprocess

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


COLAB_ENVIRONMENT = ColabEnvironment()


def pytest_configure(config):
  if not hasattr(config, "workerinput"):  # the process that runs pytest
    COLAB_ENVIRONMENT.make_root()


def _wants_notebook(names) -> bool:
  return any("test_notebook.py" in name for name in names)


def pytest_collection_finish(session):
  if not hasattr(session.config, "workerinput") and _wants_notebook(
      item.nodeid for item in session.items):
    COLAB_ENVIRONMENT.start()


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_node_collection_finished(node, ids):
  """pytest-xdist's controller: a worker collected `ids` (its workers collect, not it)."""
  if _wants_notebook(ids):
    COLAB_ENVIRONMENT.start()


def pytest_sessionfinish(session, exitstatus):
  import shutil

  COLAB_ENVIRONMENT.stop()
  if _OWN_CACHE:
    shutil.rmtree(_OWN_CACHE, ignore_errors=True)

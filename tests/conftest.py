"""The suite's setup, fixtures and hooks: JAX on 4 virtual CPU devices, one compilation
cache per session, the tiny corpus, training run and scores that many tests read, and
the build of the Colab-like environment. What test files share besides fixtures is in
helpers.py."""

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

import pytest  # noqa: E402

from helpers import (COLAB_ENVIRONMENT, TINY_OUTPUT, TINY_RATE, tiny_data_config,  # noqa: E402
                     tiny_model_config, tiny_schedule)


@pytest.fixture
def tiny_config():
  return tiny_model_config


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
# The Colab-like environment of tests/test_notebook.py (helpers.ColabEnvironment),
# built while the other tests run.
# --------------------------------------------------------------------------- #


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

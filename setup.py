"""Everything about the package is in setup.cfg, except how its extras include each
other and TensorFlow's requirement, which depends on the environment it is installed
into.

The base install separates songs and nothing more; each extra lists its own packages
in setup.cfg, and here gets those of the extras it includes (`INCLUDES`) and, for the
programs that use tf.data or TensorFlow's converters, TensorFlow (`WITH_TENSORFLOW`).

tf.data needs TensorFlow, and TensorFlow is published under several names that all
install the same `tensorflow` package folder: a second one (Colab's `tensorflow` plus
our `tensorflow-cpu`) overwrites the first file by file and breaks both. So:

* where a TensorFlow is installed (Colab, a TPU VM image, a GPU machine), it is kept:
  the requirement names that same distribution, at our lowest version;
* elsewhere: `tensorflow-cpu` on Linux (the CPU build, which leaves the accelerators
  to JAX), `tensorflow` on other systems (where it is the CPU build).

pip builds in an isolated environment, so the target environment's interpreter is
asked in a process without pip's isolation. A wheel built once and cached for another
environment would carry that environment's choice; `pip install -e .` and
`pip install .` build afresh every time.
"""

import os
import subprocess
import sys

from setuptools import setup
from setuptools.config.setupcfg import read_configuration

MIN_VERSION = "2.16"
# Distributions that install the `tensorflow` package folder, the most usual first.
DISTRIBUTIONS = ("tensorflow", "tensorflow-cpu", "tensorflow-gpu", "tensorflow-macos",
                 "tensorflow-intel", "intel-tensorflow", "tf-nightly", "tf-nightly-cpu")
FIND = f"""
import importlib.metadata as metadata
for name in {DISTRIBUTIONS!r}:
  try:
    metadata.version(name)
  except metadata.PackageNotFoundError:
    continue
  print(name)
  break
"""


def installed_tensorflow() -> str | None:
  """The TensorFlow distribution of the environment this installs into, if any."""
  env = {k: v for k, v in os.environ.items()
         if k not in ("PYTHONPATH", "PYTHONNOUSERSITE", "PYTHONHOME")}
  try:
    found = subprocess.run([sys.executable, "-c", FIND], env=env, capture_output=True,
                           text=True, timeout=60, check=True).stdout.strip()
  except (OSError, subprocess.SubprocessError):
    return None
  return found or None


def tensorflow_requirements() -> list[str]:
  name = installed_tensorflow()
  if name:
    return [f"{name}>={MIN_VERSION}"]
  return [f'tensorflow-cpu>={MIN_VERSION}; sys_platform == "linux"',
          f'tensorflow>={MIN_VERSION}; sys_platform != "linux"']


# Extras that include others: training and export run the network on JAX; Cloud TPU
# trains (and the compile check imports the training code); the tests run everything.
INCLUDES = {"train": ("jax",), "export": ("jax",), "tpu": ("train",), "dev": ("train", "export")}
# Extras whose programs import TensorFlow: training (tf.data, TFDS), export (jax2tf).
WITH_TENSORFLOW = ("train", "export")


def extras_require() -> dict[str, list[str]]:
  """setup.cfg's extras, each with the requirements of those it includes and, where
  it needs it, TensorFlow's."""
  own = read_configuration("setup.cfg")["options"]["extras_require"]
  tensorflow = tensorflow_requirements()

  def closure(name: str) -> list[str]:
    found = [r for included in INCLUDES.get(name, ()) for r in closure(included)]
    return found + own[name] + (tensorflow if name in WITH_TENSORFLOW else [])

  return {name: list(dict.fromkeys(closure(name))) for name in own}


setup(extras_require=extras_require())

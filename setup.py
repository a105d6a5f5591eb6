"""Everything about the package is in setup.cfg, except TensorFlow's requirement, which
depends on the environment it is installed into.

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


requires = read_configuration("setup.cfg")["options"]["install_requires"]
setup(install_requires=requires + tensorflow_requirements())

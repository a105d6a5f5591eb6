"""The console of the programs: the libraries' chatter hidden, ours kept, short lines."""

import logging
import os
import subprocess
import sys
import textwrap

from waveunet_jax import console


def record(path: str, level: int, message: str) -> logging.LogRecord:
  return logging.LogRecord("x", level, path, 1, message, None, None)


def test_library_logs_below_their_level_are_dropped_ours_kept():
  keep = console._LibraryChatter().filter
  site = "/venv/lib/python3.11/site-packages"
  assert not keep(record(f"{site}/jax/_src/xla_bridge.py", logging.INFO,
                         "Unable to initialize backend 'tpu'"))
  assert keep(record(f"{site}/jax/_src/xla_bridge.py", logging.WARNING,
                     "An NVIDIA GPU may be present on this machine"))
  assert not keep(record(f"{site}/tensorflow_datasets/core/dataset_builder.py",
                         logging.WARNING, "..."))
  assert not keep(record(f"{site}/orbax/checkpoint/checkpoint_manager.py", logging.INFO, "..."))
  assert keep(record(f"{site}/orbax/checkpoint/checkpoint_manager.py", logging.ERROR, "..."))
  assert keep(record("/repo/waveunet_jax/train.py", logging.INFO, "step 100"))


def test_short_lines_mark_warnings_and_errors():
  short = console._Short()
  assert short.format(record("t.py", logging.INFO, "step 5")).split(" ", 1)[1] == "step 5"
  assert short.format(record("t.py", logging.WARNING, "w")).split(" ", 1)[1] == "warning: w"
  assert short.format(record("t.py", logging.ERROR, "e")).split(" ", 1)[1] == "error: e"


def run_python(code: str, env=None) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                        text=True, timeout=60, env=env)


def test_native_stderr_is_hidden_while_tensorflow_loads_and_shown_if_it_fails():
  result = run_python("""
      import os, sys
      from waveunet_jax import console
      with console._native_stderr_hidden():
        os.write(2, b"I0000 cudart_stub.cc:31] Could not find cuda drivers\\n")
        print("from Python", file=sys.stderr)
      print("after", file=sys.stderr)
      try:
        with console._native_stderr_hidden():
          os.write(2, b"the reason it failed\\n")
          raise ImportError("no")
      except ImportError:
        pass
      """)
  assert result.returncode == 0, result.stderr
  assert result.stderr == "after\nthe reason it failed\n"


def test_a_program_with_verbosity_1_shows_the_libraries_logs():
  quiet = run_python("""
      import sys
      from absl import app, logging
      from waveunet_jax import console
      def main(argv):
        console.setup()
        import jax
        jax.devices()
        logging.info("ours")
      app.run(main)
      """, env={k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"})  # JAX probes
  assert quiet.returncode == 0, quiet.stderr
  assert quiet.stderr.endswith(" ours\n") and "xla_bridge" not in quiet.stderr
  loud = subprocess.run(
      [sys.executable, "-c", "from absl import app, logging\nfrom waveunet_jax import console\n"
       "def main(argv):\n  console.setup()\n  logging.info('ours')\napp.run(main)",
       "--verbosity=1"], capture_output=True, text=True, timeout=60)
  assert loud.returncode == 0, loud.stderr
  assert "] ours" in loud.stderr  # absl's long format

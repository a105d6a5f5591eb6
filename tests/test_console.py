"""The console of the programs: one way to start them (flags, --help), the libraries'
chatter hidden, ours kept, short lines."""

import importlib
import logging
import os
import re
import signal
import subprocess
import sys
import textwrap

import pytest

from waveunet_jax import console, shared_flags


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


NATIVE_LINES = (
    b"E0000 00:00:1796546714.421651    4948 util.cc:131] oneDNN supports DT_INT16 only on "
    b"platforms with AVX-512. Falling back to the default Eigen-based implementation if "
    b"present.\n"
    b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
    b"I0000 00:00:1796546665.077373    4834 cpu_feature_guard.cc:227] This TensorFlow binary "
    b"is optimized to use available CPU instructions in performance-critical operations.\n"
    b"To enable the following instructions: AVX2 FMA, in other operations, rebuild "
    b"TensorFlow with the appropriate compiler flags.\n"
    b"2024-01-01 12:00:00.123456: W tensorflow/core/framework/op_kernel.cc:1816] a warning\n")

# A program that writes native log lines to file descriptor 2 the way TensorFlow's C++
# does after it has loaded: from a thread, after setup(), between Python's own lines.
NATIVE_AFTER_SETUP = f"""
    import os, sys, threading
    from absl import app, logging
    from waveunet_jax import console
    def main(argv):
      console.setup()
      logging.info("ours before")
      thread = threading.Thread(target=os.write, args=(2, {NATIVE_LINES!r}))
      thread.start()
      thread.join()
      os.write(2, b"something else native code says\\n")
      logging.info("ours after")
      print("a Python line", file=sys.stderr)
      if "die" in argv:
        os.write(2, b"F0000 00:00:1796546714.421651    4948 x.cc:1] Check failed: dying\\n")
        os.abort()
    app.run(main)
    """


def test_native_log_lines_written_after_start_up_are_hidden_the_rest_shown():
  result = run_python(NATIVE_AFTER_SETUP)
  assert result.returncode == 0, result.stderr
  lines = [line.split(" ", 1)[1] if line[:2].isdigit() else line
           for line in result.stderr.splitlines()]
  assert sorted(lines) == sorted(["ours before", "something else native code says",
                                  "ours after", "a Python line"]), result.stderr
  # --verbosity=1 shows them all.
  loud = subprocess.run([sys.executable, "-c", textwrap.dedent(NATIVE_AFTER_SETUP),
                         "--verbosity=1"], capture_output=True, timeout=60)
  assert loud.returncode == 0
  assert all(line in loud.stderr.splitlines() for line in NATIVE_LINES.splitlines())


def test_a_dying_process_still_shows_its_fatal_native_line():
  result = subprocess.run([sys.executable, "-c", textwrap.dedent(NATIVE_AFTER_SETUP), "--", "die"],
                          capture_output=True, text=True, timeout=60)
  assert result.returncode != 0
  assert "Check failed: dying" in result.stderr
  assert "oneDNN" not in result.stderr


# --------------------------------------------------------------------------- #
# Start-up: every program through console.run_program, its shared flags defined once.
# --------------------------------------------------------------------------- #

# The shared flags each program takes (its _define_flags), and those it gives its own help.
PROGRAMS = {
    "main": (("config", "workdir"), ("workdir",)),
    "prepare": (("config", "musdb_root", "wav", "valid_tracks"),
                ("config", "musdb_root", "valid_tracks")),
    "summary": (("config",), ()),
    "synthetic": ((), ()),
    "separate": (("workdir", "checkpoint", "output_dir", "stems", "residual_source",
                  "overwrite", "overlap", "window_seconds", "batch_size", "shifts", "flip",
                  "seed"),
                 ("workdir", "output_dir", "overwrite")),
    "evaluate": (("workdir", "checkpoint", "musdb_root", "wav", "valid_tracks", "output_dir",
                  "residual_source", "stems", "shifts", "flip", "seed"),
                 ("musdb_root", "valid_tracks", "output_dir")),
    "export": (("workdir", "checkpoint", "window_seconds", "overlap", "batch_size",
                "overwrite"), ("batch_size", "overwrite")),
}


def flag_help(text: str, name: str) -> str | None:
  """--name's help in absl's --help output, without white space (absl wraps it)."""
  found = re.search(rf"^  --(?:\[no\])?{name}: (.*?)(?=^  --|^\S|\Z)", text, re.M | re.S)
  return None if found is None else "".join(found.group(1).split())


def test_every_program_s_help_comes_from_its_console_entry_with_its_shared_flags():
  # As the console scripts run them: the entry function, from a __main__ without a docstring.
  runs = {name: subprocess.Popen(
      [sys.executable, "-c", f"from waveunet_jax.{name} import cli\ncli()",
       "-h" if name == "synthetic" else "--help"],  # -h as argparse took it
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for name in PROGRAMS}
  shared = set(shared_flags.DEFINITIONS) | {"config"}
  for name, process in runs.items():
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, (name, err[-2000:])
    module = importlib.import_module(f"waveunet_jax.{name}")
    assert module.__doc__.strip().splitlines()[0] in out, (name, out[:500])
    takes, own_help = PROGRAMS[name]
    listed = {flag for flag in shared if flag_help(out, flag) is not None}
    if name == "synthetic":  # its --stems is a switch of its own (MUSDB18 stem files)
      assert flag_help(out, "stems").startswith("writeMUSDB18.stem.mp4"), out
      listed.discard("stems")
      assert flag_help(out, "seed").startswith("corpusseed"), out  # and --seed its corpus's
      listed.discard("seed")
    assert listed == set(takes), (name, out)
    for flag in set(takes) - set(own_help):
      text = (shared_flags.CONFIG_HELP if flag == "config" else
              shared_flags.DEFINITIONS[flag][2])
      assert flag_help(out, flag).startswith("".join(text.split())), (name, flag, out)


def test_a_shared_flag_is_defined_only_by_its_name_and_with_a_help_text():
  with pytest.raises(KeyError, match="no shared flag"):
    shared_flags.define("workdir", "colour")
  with pytest.raises(KeyError, match="no shared flag"):
    shared_flags.define("checkpoint", workdir="Where it is.")
  with pytest.raises(KeyError, match="--output_dir: the program gives its help text"):
    shared_flags.define("output_dir")


# A program as `run_program` starts every one: says it is working, then waits for a signal.
WAITING = """
import time
from waveunet_jax import console

def main(argv):
  print("working", flush=True)
  time.sleep(120)

console.run_program(main, lambda: None, interrupted="re-running the same command does it")
"""


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_ends_any_program_with_one_line(signum):
  """Ctrl-C or SIGTERM during any program's work: one line (which signal, what a re-run
  does), exit 128 + the signal, no traceback: every program gets it from run_program."""
  process = subprocess.Popen([sys.executable, "-c", WAITING], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
  try:
    assert process.stdout.readline() == "working\n"
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=60)
  finally:
    process.kill()
  name = signal.Signals(signum).name
  assert process.returncode == 128 + signum
  assert stderr.strip().splitlines() == [
      f"error: interrupted ({name}): re-running the same command does it"], stderr

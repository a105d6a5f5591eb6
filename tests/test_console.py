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

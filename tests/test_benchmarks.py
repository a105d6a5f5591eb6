"""Every script under benchmarks/ runs, as a user runs it (a subprocess), at smoke size:
a refactor cannot break one silently again (issue 24: four of them stopped at an
AttributeError and nobody saw). The figures mean nothing at this size; the tests check
that each script gets through its real `main` and reports what it should."""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "benchmarks"


def env():
  """The tests' environment (CPU, XLA's quick compiles, the session's compilation
  cache), with one CPU device: the scripts time one device."""
  return {**os.environ, "PYTHONPATH": str(ROOT), "XLA_FLAGS": "--xla_backend_optimization_level=0",
          "PYTHON": sys.executable}  # gpu_check.sh's Python


# Runs scripts one after the other in one process, each through its real `main` as
# `python SCRIPT ARGS...` would (runpy, `__name__ == "__main__"`, the script's folder
# first on sys.path): one start of Python, JAX and TensorFlow for all, which keeps these
# tests to about a minute on 2 cores. Each script defines its absl flags when it runs
# (as the programs do); they are dropped after it, so the next defines its own.
DRIVER = """
import json, os, runpy, sys, time
from absl import flags
for argv in json.loads(sys.argv[1]):
  script, start = argv[0], time.perf_counter()
  sys.argv = argv
  sys.path.insert(0, os.path.dirname(script))
  print("=== " + " ".join(argv), flush=True)
  try:
    runpy.run_path(script, run_name="__main__")
  except SystemExit as e:
    if e.code:
      raise
  finally:
    sys.path.remove(os.path.dirname(script))
    # absl files a script's flags under its path (sys.argv[0]).
    for flag in list(flags.FLAGS.flags_by_module_dict().get(script, [])):
      delattr(flags.FLAGS, flag.name)
  print(f"=== took {time.perf_counter() - start:.0f} s", flush=True)
"""


def run_scripts(*commands, cwd=ROOT) -> dict[str, str]:
  """{script name: its standard output} of `commands` ([script, args...] each)."""
  commands = [[str(BENCHMARKS / c[0]), *c[1:]] for c in commands]
  done = subprocess.run([sys.executable, "-c", DRIVER, json.dumps(commands)], cwd=cwd, env=env(),
                        capture_output=True, text=True, timeout=900)
  assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
  outputs = {}
  for section in ("\n" + done.stdout).split("\n=== ")[1:]:
    if not section.startswith("took"):
      name = pathlib.Path(section.split()[0]).name
      outputs[name] = section
  assert len(outputs) == len(commands), list(outputs)
  return outputs


def test_torch_reference():
  pytest.importorskip("torch", reason="benchmarks/torch_reference.py needs PyTorch, which "
                      "the project does not install (pip install torch, a CPU build)")
  out = run_scripts(["torch_reference.py", "--smoke"])["torch_reference.py"]
  assert "same network" in out and "torch" in out


def test_every_script_and_the_gpu_check(tmp_path):
  """Every script but torch_reference.py (above) at smoke size; then gpu_check.sh --smoke
  on the CPU, whose summary reads run.py's and precision.py's JSON."""
  from waveunet_jax import flops

  sys.path.insert(0, str(BENCHMARKS))
  import common

  gpu_out = tmp_path / "gpu_check"
  gpu_out.mkdir()
  out = run_scripts(
      ["run.py", "--smoke", "--models=experiments/deep.py:M4", "--accelerator_figures", "--max_batch=2",
       f"--json={gpu_out / 'run_smoke.json'}"],
      ["precision.py", "--smoke", f"--json={gpu_out / 'precision.json'}"],
      ["conv_profile.py", "--smoke", "--config=experiments/deep.py:M4"],
      ["input_pipeline.py", "--smoke"],
      ["separate_folder.py", "--smoke", "--shifts=1", "--flip"],
      ["export.py", "--smoke"], cwd=tmp_path)  # from any folder, not only the checkout's

  # run.py: train, the accelerator figures (bfloat16, largest batch), separation model
  # only and end to end, the input pipeline, peak memory of fresh processes.
  r = json.loads((gpu_out / "run_smoke.json").read_text())
  assert r["mode"] == "smoke" and set(r["models"]) == {"deep M4"}
  for name, m in r["models"].items():
    # Utilisation comes from flops.py, the same count on every backend.
    assert m["train"]["step_gflop"] == pytest.approx(
        flops.train_step_flops(common.smoke_config(common.CONFIGS[name]), r["batch"]) / 1e9)
    assert m["train"]["peak_share"] is None  # a CPU has no dense peak in the table
    assert m["gpu"]["bfloat16"]["dtype"] == "bfloat16" and m["gpu"]["largest_batch"] >= 1
    assert m["separate"]["e2e_audio_s_per_s"] > 0 and m["pipeline"]["examples_per_s"] > 0
  assert r["models"]["deep M4"]["memory"]["long"][1] > 0  # MiB of a fresh process
  assert "train: GFLOP/step (flops.py)" in out["run.py"]
  p = json.loads((gpu_out / "precision.json").read_text())["results"][0]
  assert p["steps"] == 3 and p["runs"]["bfloat16"]["finite"]
  assert "all convs" in out["conv_profile.py"] and "whole train" in out["conv_profile.py"]
  # Each sampler alone (shallow, M4), then training with each (M4, small.py).
  alone, training = out["input_pipeline.py"].split("samplers alone")[1].split("\ntraining")
  rows = [line.rsplit(None, 4)[1:] for line in alone.splitlines()  # the rates, not prepare's s
          if line.startswith(("shallow", "deep M4"))]
  assert len(rows) == 2 and all(float(value) > 0 for row in rows for value in row), alone
  rows = [line.rsplit(None, 3)[1:] for line in training.splitlines()
          if line.startswith(("deep M4", "small"))]
  assert len(rows) == 2 and all(float(value) > 0 for row in rows for value in row), training
  folder = out["separate_folder.py"]
  assert "folder (read ahead)" in folder and "--shifts=1 --flip" in folder
  assert "(3 passes, " in folder  # test-time averaging: plain, swapped and negated
  table = [line for line in out["export.py"].splitlines() if line.startswith("| ")]
  assert len(table) == 1 + 7  # header, JAX and six exports

  check_gpu(tmp_path, gpu_out)


def check_gpu(tmp_path, out_dir):
  """gpu_check.sh --smoke on the CPU: every part of the GPU call (compile with both
  autotune settings, train and the largest-batch search, the step fed by the device
  sampler, the profile's trace summary,
  the compilation cache's two starts), and the summary of the JSON in `out_dir`."""
  assert shutil.which("bash") and shutil.which("timeout"), "gpu_check.sh needs bash, timeout"
  done = subprocess.run(
      ["bash", str(BENCHMARKS / "gpu_check.sh"), "--smoke"], cwd=tmp_path, capture_output=True,
      text=True, timeout=600, env={**env(), "OUT": str(out_dir), "MIN_PART_S": "1", "BUDGET_S": "1500",
               "COMPILE_MAX_S": "300", "TRAIN_MAX_S": "300", "PROFILE_MAX_S": "300",
               "CACHE_MAX_S": "300", "SAMPLER_MAX_S": "300"})
  log = done.stdout
  assert done.returncode == 0, log[-3000:]
  parts = [line for line in log.splitlines() if line.startswith("== ") and ": exit " in line]
  assert len(parts) == 7 and all(": exit 0 " in p for p in parts), "\n".join(parts)
  results = [json.loads(line.removeprefix("RESULT ")) for line in log.splitlines()
             if line.startswith("RESULT ")]
  kinds = [r["part"] for r in results]
  assert kinds.count("compile") == 2 and all("compile_s" in r for r in results
                                              if r["part"] == "compile")
  assert {"matmul", "train", "largest", "profile", "cache"} <= set(kinds)
  sampler = next(r for r in results if r["part"] == "sampler")
  assert "error" not in sampler and sampler["device_sampler_steps_per_s"] > 0, sampler
  profile = next(r for r in results if r["part"] == "profile")
  assert profile["events"] > 0 and "conv forward" in profile["share_by_class"]
  starts = [r for r in results if r["part"] == "cache"]
  assert [r["start"] for r in starts] == ["first", "second"] and starts[1]["cache_files"] > 0
  assert "bfloat16 vs float32" in log and "train: GFLOP/step (flops.py)" in log  # summary


def test_ablation(tmp_path):
  """benchmarks/ablation.py at smoke size with one option: the held-out songs, the
  baseline and the option trained and scored through the project's commands, the
  timing for equal training time, the --shifts=2 evaluation, the table."""
  root = tmp_path / "ablation"
  out = run_scripts(["ablation.py", "--smoke", f"--root={root}", "--options=l1",
                     "--timed_steps=1"])["ablation.py"]
  result = json.loads((root / "ablation.json").read_text())
  assert list(result["runs"]) == ["baseline", "l1"]
  relative = result["relative_steps_per_s"]
  assert set(relative) == {"baseline", "l1"} and relative["baseline"] == 1 and relative["l1"] > 0
  assert result["runs"]["l1"]["fields"] == {"loss.kind": "l1"}
  assert all(r["steps"] >= 1 for r in result["runs"].values())
  assert (root / "l1" / "heldout" / "summary.json").exists()
  shifts = result["shifts"]
  assert shifts["plain_s_per_audio_s"] > 0 and shifts["shifts_s_per_audio_s"] > 0
  table = (root / "ablation.md").read_text()
  assert "| baseline | the paper's recipe |" in table and "| l1 | loss.kind=l1 |" in table
  assert table in out.replace("\r", "")


def test_ablation_combines_the_options_that_won():
  sys.path.insert(0, str(BENCHMARKS))
  import ablation

  def result(vocals, accompaniment):
    return {"sdr": {"vocals": {"sisec_median": vocals},
                    "accompaniment": {"sisec_median": accompaniment}}}

  results = {"baseline": result(5.0, 7.0), "l1": result(5.5, 7.0), "stft": result(4.0, 7.5),
             "ema": result(5.2, 6.9), "polarity": result(None, 9.0)}
  # Mean over the sources: 6.0 baseline; l1 6.25 and ema 6.05 win, stft 5.75 does not,
  # and a source without a score (None) wins nothing.
  assert ablation.winners(results, ["l1", "stft", "ema", "polarity"]) == ["l1", "ema"]
  assert ablation.fields_of(["l1", "stft", "polarity"]) == {
      "loss.kind": "l1", "loss.stft_weight": 1.0, "data.augmentations": ("gain", "polarity")}
  assert set(ablation.PAPER) == {f for option in ablation.OPTIONS.values() for f in option}
  # A run sets the paper's recipe, then its options over it.
  assert ablation.recipe([]) == ablation.PAPER
  assert ablation.recipe(["l1"]) == {**ablation.PAPER, "loss.kind": "l1"}
  assert ablation.flag("data.augmentations", ("gain", "polarity")) == \
      "--config.data.augmentations=('gain','polarity',)"


@pytest.mark.parametrize("flag,words", [
    ("--data_dir", "--data_dir: {missing} is not a folder; prepare one"),
    ("--test_root", "--test_root: {missing} has no test/ folder"),
])
def test_ablation_refuses_a_wrong_folder_before_training(tmp_path, flag, words):
  missing = tmp_path / "nowhere"
  root = tmp_path / "ablation"
  done = subprocess.run([sys.executable, str(BENCHMARKS / "ablation.py"), f"--root={root}",
                         "--smoke", f"{flag}={missing}"],
                        capture_output=True, text=True, timeout=300)
  assert done.returncode == 2
  assert words.format(missing=missing) in done.stderr.strip().splitlines()[-1]
  assert not root.exists()  # nothing generated, nothing trained


@pytest.mark.parametrize("argv,words", [
    (["run.py", "--models=experiments/nope.py"],
     "--models=['experiments/nope.py']: experiments/nope.py: no such file (configs live in "
     "experiments/)"),
    (["conv_profile.py", "--config=experiments/deep.py:M9"], "experiments/deep.py:M9"),
    (["separate_folder.py", "--config=shallow"],
     "did you mean experiments/shallow.py?"),
])
def test_a_config_that_does_not_load_is_one_line(argv, words):
  """The scripts take configs as the programs do (PATH[:VARIANT]); one that does not load
  ends the script before any work, with one line naming it."""
  done = subprocess.run([sys.executable, str(BENCHMARKS / argv[0]), *argv[1:]], cwd=ROOT,
                        env=env(), capture_output=True, text=True, timeout=300)
  assert done.returncode == 2, done.stderr[-2000:]
  lines = done.stderr.strip().splitlines()
  assert len(lines) == 1 and words in lines[0], lines

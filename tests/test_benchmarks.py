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
  return {**os.environ, "PYTHONPATH": str(ROOT), "XLA_FLAGS": "--xla_backend_optimization_level=0"}


def run_script(*args, cwd=None) -> str:
  command = ([sys.executable] if str(args[0]).endswith(".py") else []) + [str(a) for a in args]
  done = subprocess.run(command, cwd=cwd or ROOT, env=env(), capture_output=True, text=True,
                        timeout=600)
  assert done.returncode == 0, f"{args[0]} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
  return done.stdout


def test_run_every_part(tmp_path):
  """run.py: train, the accelerator figures (bfloat16, largest batch), separation model
  only and end to end, the input pipeline, peak memory of fresh processes."""
  from waveunet_jax import flops

  sys.path.insert(0, str(BENCHMARKS))
  import run

  out = run_script(BENCHMARKS / "run.py", "--smoke", "--accelerator_figures", "--max_batch=2",
                   f"--json={tmp_path / 'run.json'}")
  r = json.loads((tmp_path / "run.json").read_text())
  assert r["mode"] == "smoke" and set(r["models"]) == set(run.CONFIGS)
  for name, m in r["models"].items():
    # Utilisation comes from flops.py, the same count on every backend.
    assert m["train"]["step_gflop"] == pytest.approx(
        flops.train_step(run.smoke_config(name), r["batch"]) / 1e9)
    assert m["train"]["peak_share"] is None  # a CPU has no dense peak in the table
    assert m["gpu"]["bfloat16"]["dtype"] == "bfloat16" and m["gpu"]["largest_batch"] >= 1
    assert m["separate"]["e2e_audio_s_per_s"] > 0 and m["pipeline"]["examples_per_s"] > 0
  assert r["models"]["deep M4"]["memory"]["long"][1] > 0  # MiB of a fresh process
  assert "train: GFLOP/step (flops.py)" in out


def test_conv_profile():
  out = run_script(BENCHMARKS / "conv_profile.py", "--smoke", "--config=deep M4")
  assert "all convs" in out and "whole train" in out and "of the FLOPs" in out


def test_torch_reference():
  pytest.importorskip("torch", reason="benchmarks/torch_reference.py needs PyTorch, which "
                      "the project does not install (pip install torch, a CPU build)")
  out = run_script(BENCHMARKS / "torch_reference.py", "--smoke")
  assert "same network" in out and "torch" in out


def test_input_pipeline():
  out = run_script(BENCHMARKS / "input_pipeline.py", "--smoke")
  rows = [line.split() for line in out.splitlines() if line.startswith(("shallow", "deep"))]
  assert len(rows) == 2 and all(float(row[-1]) > 0 for row in rows)  # audio s/s


def test_separate_folder():
  out = run_script(BENCHMARKS / "separate_folder.py", "--smoke")
  assert "folder (read ahead)" in out and "one file at a time" in out


def test_export():
  out = run_script(BENCHMARKS / "export.py", "--smoke")
  table = [line for line in out.splitlines() if line.startswith("| ")]
  assert len(table) == 2 + 7  # header, rule, JAX and six exports


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                    reason="gpu_check.sh needs bash and coreutils' timeout")
def test_gpu_check_every_part(tmp_path):
  """gpu_check.sh --smoke on the CPU: every part of the GPU call (compile with both
  autotune settings, train and the largest-batch search, the profile's trace summary,
  the compilation cache's two starts) and, opted in, precision.py and run.py with the
  summary that reads their JSON."""
  out_dir = tmp_path / "out"
  done = subprocess.run(
      ["bash", str(BENCHMARKS / "gpu_check.sh"), "--smoke"], cwd=tmp_path, capture_output=True,
      text=True, timeout=600,
      env={**env(), "OUT": str(out_dir), "RUN_PRECISION": "1", "RUN_RUNPY": "1",
           "RUN_MODELS": "deep M4", "MIN_PART_S": "1", "BUDGET_S": "560"})
  log = done.stdout
  assert done.returncode == 0, log[-3000:]
  parts = [line for line in log.splitlines() if line.startswith("== ") and ": exit " in line]
  assert len(parts) == 8 and all(": exit 0 " in p for p in parts), "\n".join(parts)
  results = [json.loads(line.removeprefix("RESULT ")) for line in log.splitlines()
             if line.startswith("RESULT ")]
  kinds = [r["part"] for r in results]
  assert kinds.count("compile") == 4 and all("compile_s" in r for r in results
                                              if r["part"] == "compile")
  assert {"matmul", "train", "largest", "profile", "cache"} <= set(kinds)
  profile = next(r for r in results if r["part"] == "profile")
  assert profile["events"] > 0 and "conv forward" in profile["share_by_class"]
  starts = [r for r in results if r["part"] == "cache"]
  assert [r["start"] for r in starts] == ["first", "second"] and starts[1]["cache_files"] > 0
  assert "bfloat16 vs float32" in log and "train: GFLOP/step (flops.py)" in log  # summary

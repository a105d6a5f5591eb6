"""benchmarks/tpu_compile.py: the train step compiled for a Cloud TPU topology on this
CPU, with libtpu and no TPU.

libtpu is not in the dev install (setup.cfg says why): the compile test installs the
version jax's own `tpu` extra names into a cached folder of its own and puts it on the
command's PYTHONPATH only, so no other test or program ever loads it. It skips only
where the package index cannot be reached.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import tpu_compile  # noqa: E402

from helpers import install_failed, tiny_data_config, write_config_file  # noqa: E402


def libtpu_requirement() -> str:
  """jax's own pin of libtpu for its `tpu` extra ('libtpu==0.0.42.*')."""
  for requirement in importlib.metadata.requires("jax") or ():
    name, _, marker = requirement.partition(";")
    if name.strip().startswith("libtpu") and "tpu" in marker:
      return name.strip().replace(" ", "")
  pytest.fail("jax's metadata names no libtpu for its tpu extra")


@pytest.fixture(scope="module")
def libtpu_path() -> str:
  """A folder holding libtpu of the installed jax's version, installed once per version
  (pip --target) and kept between runs."""
  requirement = libtpu_requirement()
  cache = pathlib.Path(os.environ.get("XDG_CACHE_HOME", pathlib.Path.home() / ".cache"))
  folder = cache / "waveunet_jax-tests" / re.sub(r"[^A-Za-z0-9.]+", "_", requirement)
  if (folder / "libtpu").is_dir():
    return str(folder)
  partial = folder.with_name(folder.name + ".partial")
  result = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                           "--disable-pip-version-check", "--upgrade", "--target",
                           str(partial), requirement], capture_output=True, text=True,
                          timeout=900)
  if result.returncode:
    install_failed(f"pip install {requirement}", result.stderr)
  partial.replace(folder)
  return str(folder)


def run_command(*args: str, pythonpath: str | None) -> subprocess.CompletedProcess:
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), pythonpath) if p)
  return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "tpu_compile.py"), *args],
                        capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)


def test_compiles_the_train_step_for_a_tpu_topology(libtpu_path, tmp_path):
  # The smoke config's train step takes 7 min to compile on 2 busy cores (libtpu's
  # backend code generation); this 3-level network with BatchNorm, the same step,
  # optimiser and layout, about 40 s.
  config = tiny_data_config(8000, 1024, normalization="batchnorm")
  config.batch_size = 4
  path = write_config_file(config, tmp_path / "tiny.py")
  out = tmp_path / "rows.json"
  result = run_command(f"--configs={path}", "--topologies=v5e:2x2", "--max_compiles=1",
                       "--max_batch=8", f"--json={out}", "--layouts",
                       pythonpath=libtpu_path)
  assert result.returncode == 0, result.stderr[-3000:]
  # libtpu's native warnings (no TPU VM metadata here) are silenced at the source.
  assert result.stderr == ""
  assert "compiled on a CPU with libtpu, not run" in result.stdout
  [row] = json.loads(out.read_text())
  assert (row["chip"], row["chips"], row["hosts"]) == ("TPU v5e", 4, 1)
  assert (row["batch"], row["per_chip_batch"]) == (4, 1)
  assert row["argument_bytes"] > 0 and row["temp_bytes"] > 0
  # The chip's share of the batch is in its arguments: mix [1, T_in, 2] and sources
  # [1, 2, T_out, 2], float32.
  from waveunet_jax import models

  size = models.lengths(models.from_config(config), config.data.output_length)
  assert row["argument_bytes"] >= 4 * (size.input_length * 2 + 2 * size.output_length * 2)
  assert row["total_bytes"] == (row["argument_bytes"] + row["output_bytes"]
                                - row["alias_bytes"] + row["temp_bytes"] + row["code_bytes"])
  assert row["fits"] and row["total_bytes"] < row["hbm_bytes"] == 16 * 2**30
  assert row["tpu_cost_analysis_flops_per_chip"] > 0
  # The project's count for the same per-chip batch; libtpu counts the same convolutions
  # (and a little elementwise work besides).
  from waveunet_jax import flops

  assert row["flops_per_chip"] == flops.train_step_flops(config, 1)
  assert 0.9 < row["tpu_cost_analysis_flops_per_chip"] / row["flops_per_chip"] < 1.5
  # The search: the tiny network fits 16 GiB at any batch up to --max_batch, which one
  # more compile shows.
  assert [c["per_chip_batch"] for c in row["search"]] == [8]
  assert row["search"][0]["total_bytes"] > row["total_bytes"]
  assert (row["largest_fitting_per_chip_batch"], row["smallest_failing_per_chip_batch"]) == (8, None)
  table_row = next(line for line in result.stdout.splitlines() if "v5e:2x2" in line)
  assert "| 4 (1) |" in table_row and "| >= 8 |" in table_row
  # --layouts: the outer level's (4 features) convolutions as libtpu laid them out.
  assert row["outer_conv_layouts"]
  for layout in row["outer_conv_layouts"]:
    assert re.fullmatch(r"f32\[[\d,]*,4\]\{[\d,]+:T\(\d+,128\).*\}", layout), layout
    assert f"  outer level conv: {layout}" in result.stdout


def test_without_libtpu_names_the_install(tmp_path):
  result = run_command("--topologies=v5e:2x2", pythonpath=None)
  if result.returncode == 0 or "needs libtpu" not in result.stderr:
    pytest.skip("libtpu is importable here without the test's folder")
  assert result.returncode == 1
  assert result.stderr.strip().splitlines() == [
      "error: compiling for a TPU needs libtpu (matching jax's version): "
      "pip install 'waveunet_jax[tpu]'"]


@pytest.mark.parametrize("topology, words", [
    ("v9x:2x2", "--topologies: v9x:2x2: unknown TPU generation 'v9x'"),
    ("v5e:2x2x9x", "--topologies: v5e:2x2x9x: libtpu cannot describe it"),
])
def test_a_bad_topology_is_one_line(libtpu_path, topology, words):
  result = run_command("--configs=experiments/small.py", f"--topologies=v5e:2x2,{topology}",
                       pythonpath=libtpu_path)
  assert result.returncode == 1
  [line] = result.stderr.strip().splitlines()
  assert line.startswith(f"error: {words}")
  assert result.stdout == ""  # checked before any compile or table


class LinearMemory:
  """A stand-in for a config on a chip: total bytes = fixed + per_example * batch, of
  which `state` bytes are the donated state (aliased by the output)."""

  def __init__(self, fixed: int, per_example: int, state: int):
    self.fixed, self.per_example, self.state, self.calls = fixed, per_example, state, []

  def compile(self, batch: int) -> tpu_compile.Compiled:
    self.calls.append(batch)
    return tpu_compile.Compiled(batch, 0.0, argument=self.state + 10 * batch,
                                output=self.state, alias=self.state,
                                temp=self.fixed - self.state + (self.per_example - 10) * batch)


@pytest.mark.parametrize("fixed, per_example, hbm, start", [
    (1000, 100, 10_000, 2), (100, 7, 1000, 1), (10, 3, 3000, 64), (5000, 10, 4000, 1)])
def test_largest_fit_finds_the_edge_of_memory(fixed, per_example, hbm, start):
  target = LinearMemory(fixed, per_example, state=fixed // 2)
  first = target.compile(start)
  fit, over, extra = tpu_compile.largest_fit(target, first, hbm, max_compiles=4, max_batch=1024)
  edge = max(0, (hbm - fixed) // per_example)
  assert (fit, over) == (edge, edge + 1)
  assert len(extra) <= 4 and len(set(target.calls)) == len(target.calls)


def test_largest_fit_gives_a_range_when_its_compiles_run_out():
  target = LinearMemory(1000, 100, state=100)  # the batch-free bytes underestimated
  fit, over, extra = tpu_compile.largest_fit(target, target.compile(1), 10_000,
                                             max_compiles=1, max_batch=1024)
  # One compile from the guess at batch 9 (too low, from the underestimate): a range.
  assert [c.per_chip_batch for c in extra] == [9] and (fit, over) == (9, None)
  # A memory that never runs out stops at --max_batch.
  target = LinearMemory(0, 1, state=0)
  assert tpu_compile.largest_fit(target, target.compile(1), 10**9, 3, 16)[:2] == (16, None)


def test_a_row_says_when_the_batch_does_not_divide_the_chips_or_does_not_fit():
  row = {"config": "experiments/shallow.py", "topology": "v5e:4x4", "chips": 16, "hosts": 4,
         "batch": 8, "compiled_batch": 16, "per_chip_batch": 1, "hbm_bytes": 16 * 2**30,
         "argument_bytes": 2**30, "temp_bytes": 3 * 2**30, "total_bytes": 4 * 2**30,
         "refused": None, "largest_fitting_per_chip_batch": 3,
         "smallest_failing_per_chip_batch": 6, "compile_seconds": 61.4,
         "tpu_cost_analysis_flops_per_chip": 2.5e12, "flops_per_chip": 2.4e12}
  assert tpu_compile.format_row(row) == (
      "| shallow.py | v5e:4x4 (16, 4) | 8* -> 16 (1) | 1.00 | 3.00 | 4.00 / 16.00 | 3 to 5 "
      "| 61 | 2.400 / 2.500 |")
  row.update(refused="RESOURCE_EXHAUSTED: ...", largest_fitting_per_chip_batch=0,
             smallest_failing_per_chip_batch=1, compile_seconds=10.0,
             tpu_cost_analysis_flops_per_chip=None)
  assert tpu_compile.format_row(row) == (
      "| shallow.py | v5e:4x4 (16, 4) | 8* -> 16 (1) | - | - | refused / 16.00 | 0 | 10 "
      "| 2.400 / - |")

"""The real train step compiled for Cloud TPU topologies on a machine without a TPU.

  python benchmarks/tpu_compile.py                      # every config, every topology
  python benchmarks/tpu_compile.py --configs=experiments/deep.py:M4 --topologies=v5e:2x2
  python benchmarks/tpu_compile.py --configs=experiments/shallow.py:smoke \\
      --topologies=v5e:2x2 --batch=8 --max_compiles=2 --json=OUT.json

Needs libtpu of the installed jax's version (`pip install 'waveunet_jax[tpu]'`); no
TPU: JAX describes the topology (`jax.experimental.topologies`) and libtpu's compiler
compiles for it on this CPU. Nothing runs; every figure is the compiler's.

What is compiled is what training runs: `train_steps.jit_steps` (the jitted train step,
its donated state replicated and its batch sharded) on `parallel.data_parallel` of the
topology's devices, on the main stage's state (`train_steps.abstract_state`: the state
`train.Trainer.new_state` builds) and a batch (`train_steps.abstract_batch`), all as
`jax.ShapeDtypeStruct`s with their shardings.

Batch: the config's `batch_size` is the global batch, split evenly over the chips
(one JAX device per chip: v4 in its megacore mode, as Cloud TPU runs it; v5p is
megacore by design). Training refuses a batch that does not divide the chip count;
here that row is compiled at the next multiple (the same per-chip batch rounded up)
and marked with `*`. `--batch` replaces the config's global batch.

Printed per config and topology, per chip (the compiled SPMD program is one chip's):
argument bytes (the chip's share of the state and the batch), temporary bytes (XLA's
buffers: activations kept for the backward pass and the like), total = argument +
output - aliased (the donated state) + temporary + the program's code, against the
chip's HBM (`accelerators.CHIPS`); the largest per-chip batch that fits (a compile
that libtpu refuses for memory, or whose total exceeds HBM, does not fit; searched
with at most --max_compiles compiles, so it may be a range); compile time on this
machine; and the FLOP count of one step per chip from the TPU compile's own cost
analysis beside the project's count (`flops.py`) for the same per-chip batch.
`--layouts` adds, under each row, the shapes and TPU layouts of the outer level's
convolutions: which axis libtpu puts on the 128 lanes of its tiles (docs/multi-device.md: *Where a TPU
would leave its matrix unit idle*).

Each compile of a full network takes minutes of CPU (libtpu's code generation): the
whole table is hours on 2 cores.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import pathlib
import re
import sys
import time
from typing import Any

import jax
from absl import flags
from jax.experimental import topologies

from waveunet_jax import accelerators, console, flops, models, parallel
from waveunet_jax import steps as train_steps

import common

FLAGS = flags.FLAGS

CONFIGS = ("experiments/shallow.py", "experiments/deep.py:M4", "experiments/deep.py:M6",
           "experiments/deep.py:M5-HighSR", "experiments/small.py")
# Single-host slices of each generation (4 chips: v4-8, v5litepod-4, v5p-8, v6e-4) and
# one pod slice of 4 hosts (v5litepod-16: 4 hosts of 2x2 chips in one mesh).
TOPOLOGIES = ("v4:2x2x1", "v5e:2x2", "v5p:2x2x1", "v6e:2x2", "v5e:4x4")
# How Cloud TPU runs each generation, where the topology's default differs: v4's two
# TensorCores per chip as one device (megacore).
TOPOLOGY_OPTIONS = {"v4": {"chip_config_name": "megacore"}}
INSTALL = "pip install 'waveunet_jax[tpu]'"


def fail(line: str) -> None:
  sys.exit(f"error: {line}")


def quiet_libtpu() -> None:
  """libtpu, loaded on a host that is no TPU VM, asks for the variables a TPU VM's
  metadata sets (accelerator type, worker hostnames) in native lines on stderr. Only
  attached hardware reads them; the compile-only topologies are described in full by
  name. Set here, in this process only, unless the environment has them."""
  os.environ.setdefault("TPU_ACCELERATOR_TYPE", "v5litepod-4")
  os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
  # libtpu takes a host-wide lock (/tmp/libtpu_lockfile) so that one process owns the
  # chips; compiling owns none, so several of these may run at once.
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")


def check_libtpu() -> None:
  """One line naming the install when libtpu is missing."""
  if importlib.util.find_spec("libtpu") is None:
    fail(f"compiling for a TPU needs libtpu (matching jax's version): {INSTALL}")


def chip_for(topology: str):
  """The `accelerators.Chip` whose `topology_prefix` starts `topology` ('v5e:2x2')."""
  prefix = topology.partition(":")[0]
  for chip in accelerators.CHIPS.values():
    if chip.topology_prefix == prefix:
      return chip
  known = ", ".join(c.topology_prefix for c in accelerators.CHIPS.values() if c.topology_prefix)
  fail(f"--topologies: {topology}: unknown TPU generation {prefix!r}; names look like "
       f"v5e:2x2 or v4:2x2x1 (generations: {known})")


def describe(topology: str) -> list:
  """The compile-only devices of `topology`; a name libtpu rejects ends the program."""
  options = TOPOLOGY_OPTIONS.get(topology.partition(":")[0], {})
  try:
    return topologies.get_topology_desc(platform="tpu", topology_name=topology,
                                        **options).devices
  except jax.errors.JaxRuntimeError as e:
    detail = str(e).splitlines()[0]
    fail(f"--topologies: {topology}: libtpu cannot describe it ({detail}); names look "
         "like v5e:2x2, v5p:2x2x1, v5e:4x4 (chips per side, x, y[, z])")


@dataclasses.dataclass
class Compiled:
  """One compile of the train step: per-chip bytes and FLOPs, or None where libtpu
  refused it for memory."""
  per_chip_batch: int
  seconds: float
  argument: int = 0
  output: int = 0
  alias: int = 0
  temp: int = 0
  code: int = 0
  flops: float | None = None
  refused: str | None = None  # libtpu's reason when the program does not fit
  # The outer level's convolutions as libtpu laid them out: 'f32[32,18431,24]{0,2,1:T(8,128)}'
  outer_layouts: list[str] = dataclasses.field(default_factory=list)

  @property
  def total(self) -> int:
    return self.argument + self.output - self.alias + self.temp + self.code

  def fits(self, hbm: int) -> bool:
    return self.refused is None and self.total <= hbm


class Target:
  """One config on one topology: compiles its train step at any per-chip batch."""

  def __init__(self, config, devices):
    self.config = config
    self.chips = len(devices)
    self.model = models.from_config(config)
    self.layout = parallel.data_parallel(devices)
    self.state, tx = train_steps.abstract_state(config, self.model, self.layout)
    self.step, _ = train_steps.jit_steps(config, self.model, tx, self.layout)

  def compile(self, per_chip_batch: int) -> Compiled:
    batch = train_steps.abstract_batch(self.model, self.config.data.output_length, self.layout,
                                 per_chip_batch * self.chips)
    start = time.perf_counter()
    try:
      compiled = self.step.lower(self.state, batch).compile()
    except jax.errors.JaxRuntimeError as e:
      if "RESOURCE_EXHAUSTED" not in str(e):
        raise
      return Compiled(per_chip_batch, time.perf_counter() - start,
                      refused=str(e).splitlines()[0][:200])
    seconds = time.perf_counter() - start
    memory = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):  # older jax: one dict per program
      cost = cost[0]
    return Compiled(per_chip_batch, seconds, argument=memory.argument_size_in_bytes,
                    output=memory.output_size_in_bytes, alias=memory.alias_size_in_bytes,
                    temp=memory.temp_size_in_bytes,
                    code=memory.generated_code_size_in_bytes,
                    flops=(cost or {}).get("flops"),
                    outer_layouts=outer_layouts(compiled.as_text(), self.model.features[0]))


def outer_layouts(hlo: str, features: int) -> list[str]:
  """The distinct shapes and layouts of the convolutions in `hlo` (a compiled module's
  text) whose last dimension is `features` (the outer level's): in a TPU layout
  '{0,2,1:T(8,128)}' the first dimension listed is the minor one, tiled to 128 lanes,
  the second to 8 sublanes, so it shows which axis fills the matrix unit's lanes."""
  found = re.findall(r"= (\w+\[[\d,]*,%d\]\{[^}]*\}) convolution\(" % features, hlo)
  return sorted(set(found))


def largest_fit(target, first: Compiled, hbm: int, max_compiles: int,
                max_batch: int) -> tuple[int, int | None, list[Compiled]]:
  """(largest per-chip batch known to fit (0: none), smallest known not to (None:
  none found up to max_batch), the extra compiles made), with at most `max_compiles`
  compiles after `first` (`target.compile(per_chip_batch) -> Compiled`). Memory is
  about linear in the batch: each next guess is where the line through the two
  nearest compiles meets the HBM size; from one compile, the line through it and the
  batch-free bytes (the donated state, which the output aliases, and the code). A
  guess is kept strictly between the known fit and non-fit, so the range shrinks."""
  done = {first.per_chip_batch: first}
  extra = []

  def bounds():
    fit = max((b for b, c in done.items() if c.fits(hbm)), default=0)
    over = min((b for b, c in done.items() if not c.fits(hbm)), default=None)
    return fit, over

  while len(extra) < max_compiles:
    fit, over = bounds()
    top = over if over is not None else max_batch + 1
    if fit + 1 >= top:
      break
    measured = sorted((b, c.total) for b, c in done.items() if c.refused is None)
    nearest = sorted(measured, key=lambda m: abs(m[0] - fit))[:2]
    if len(nearest) == 2 and nearest[0][0] != nearest[1][0]:
      (b1, t1), (b2, t2) = sorted(nearest)
      slope = (t2 - t1) / (b2 - b1)
    elif measured:
      b1, t1 = measured[0]
      fixed = done[b1].alias + done[b1].code
      slope = (t1 - fixed) / b1
    else:  # only refusals so far
      b1, t1, slope = 0, 0, 0
    if slope > 0:
      guess = math.floor(b1 + (hbm - t1) / slope)
    else:
      guess = 2 * fit if fit else (over or 2) // 2
    guess = min(max(guess, fit + 1), top - 1)
    compiled = target.compile(guess)
    done[guess] = compiled
    extra.append(compiled)
  fit, over = bounds()
  return fit, over, extra


def gib(n: float) -> str:
  return f"{n / 2**30:.2f}"


def resolve(config_specs: list[str], topologies: list[str]) -> tuple[list, list]:
  """([(spec, config)], [(topology, chip, devices)]): every name checked before the
  first (long) compile."""
  try:
    configs = [(spec, common.load_config(spec, "--configs")) for spec in config_specs]
  except ValueError as e:
    fail(str(e))
  described = [(topology, chip_for(topology), describe(topology)) for topology in topologies]
  return configs, described


def run(configs: list, described: list, batch: int | None, max_compiles: int, max_batch: int,
        report) -> list[dict[str, Any]]:
  rows = []
  for topology, chip, devices in described:
    # A pod slice's hosts: the processes its devices belong to.
    hosts = len({d.process_index for d in devices})
    for spec, config in configs:
      wanted = batch or config.batch_size
      per_chip = math.ceil(wanted / len(devices))
      target = Target(config, devices)
      first = target.compile(per_chip)
      fit, over, extra = largest_fit(target, first, chip.memory_bytes, max_compiles, max_batch)
      row = {
          "config": spec, "topology": topology, "chip": chip.name, "chips": len(devices),
          "hosts": hosts, "batch": wanted, "compiled_batch": per_chip * len(devices),
          "per_chip_batch": per_chip, "hbm_bytes": chip.memory_bytes,
          "argument_bytes": first.argument, "output_bytes": first.output,
          "alias_bytes": first.alias, "temp_bytes": first.temp, "code_bytes": first.code,
          "total_bytes": first.total, "fits": first.fits(chip.memory_bytes),
          "refused": first.refused, "compile_seconds": round(first.seconds, 1),
          "tpu_cost_analysis_flops_per_chip": first.flops,
          # The project's count (the same on every backend), for the same per-chip batch.
          "flops_per_chip": flops.train_step_flops(config, per_chip),
          "largest_fitting_per_chip_batch": fit, "smallest_failing_per_chip_batch": over,
          "outer_conv_layouts": first.outer_layouts,
          "search": [{"per_chip_batch": c.per_chip_batch, "total_bytes": c.total,
                      "refused": c.refused, "compile_seconds": round(c.seconds, 1)}
                     for c in extra],
      }
      rows.append(row)
      report(row)
  return rows


HEADER = ("| config | topology (chips, hosts) | batch (per chip) | argument GiB | temp GiB | "
          "total GiB / HBM | largest per-chip batch that fits | compile s | "
          "TFLOP per step per chip (flops.py / TPU cost analysis) |")


def format_row(row: dict[str, Any]) -> str:
  batch = f"{row['compiled_batch']} ({row['per_chip_batch']})"
  if row["compiled_batch"] != row["batch"]:
    batch = f"{row['batch']}* -> {batch}"
  if row["refused"]:
    memory = ["-", "-", f"refused / {gib(row['hbm_bytes'])}"]
  else:
    memory = [gib(row["argument_bytes"]), gib(row["temp_bytes"]),
              f"{gib(row['total_bytes'])} / {gib(row['hbm_bytes'])}"]
  fit, over = row["largest_fitting_per_chip_batch"], row["smallest_failing_per_chip_batch"]
  if over is None:
    largest = f">= {fit}"
  elif over == fit + 1:
    largest = str(fit)
  else:
    largest = f"{fit} to {over - 1}"
  flops = row["tpu_cost_analysis_flops_per_chip"]
  cells = [row["config"].removeprefix("experiments/"),
           f"{row['topology']} ({row['chips']}, {row['hosts']})", batch, *memory, largest,
           f"{row['compile_seconds']:.0f}", (f"{row['flops_per_chip'] / 1e12:.3f} / "
            + ("-" if flops is None else f"{flops / 1e12:.3f}"))]
  return "| " + " | ".join(cells) + " |"


def _define_flags() -> None:
  flags.DEFINE_list("configs", list(CONFIGS),
                    "comma-separated configs, PATH[:VARIANT] as --config takes them")
  flags.DEFINE_list("topologies", list(TOPOLOGIES),
                    "comma-separated TPU topologies, e.g. v5e:2x2,v4:2x2x1,v5e:4x4")
  flags.DEFINE_integer("batch", None, "global batch to compile (default: each config's "
                       "batch_size)", lower_bound=1)
  flags.DEFINE_integer("max_compiles", 4,
                       "compiles the largest-batch search may add per row (0: none)",
                       lower_bound=0)
  flags.DEFINE_integer("max_batch", 1024, "the largest per-chip batch the search tries",
                       lower_bound=1)
  flags.DEFINE_string("json", None, "also write the rows to this file")
  flags.DEFINE_bool("layouts", False, "under each row, the outer level's convolution layouts")
  for name in ("configs", "topologies"):
    flags.register_validator(name, bool, message="needs at least one name")


def main(argv: list[str]) -> None:
  console.no_arguments(argv)
  quiet_libtpu()
  check_libtpu()
  # The host's own backend: the CPU (a TPU VM's chips are not needed to compile).
  jax.config.update("jax_platforms", "cpu")
  configs, described = resolve(FLAGS.configs, FLAGS.topologies)
  print("compiled on a CPU with libtpu, not run; per chip; GiB = 2^30 bytes", flush=True)
  print(HEADER, flush=True)
  print("|" + "---|" * HEADER.count(" | ") + "---|", flush=True)
  done = []

  def report(row: dict[str, Any]) -> None:
    print(format_row(row) + "".join(f"\n  outer level conv: {layout}"
                                    for layout in row["outer_conv_layouts"] if FLAGS.layouts),
          flush=True)
    done.append(row)
    if FLAGS.json:  # after every row: a long run stopped early keeps what it compiled
      path = pathlib.Path(FLAGS.json)
      partial = path.with_name(path.name + ".partial")
      partial.write_text(json.dumps(done, indent=1))
      partial.replace(path)

  rows = run(configs, described, FLAGS.batch, FLAGS.max_compiles, FLAGS.max_batch, report)
  if any(r["compiled_batch"] != r["batch"] for r in rows):
    print("* the batch does not divide the chips (training refuses it): compiled at the "
          "next multiple", flush=True)


if __name__ == "__main__":
  console.run_program(main, _define_flags, usage_status=2)

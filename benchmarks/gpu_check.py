"""The Python parts of `gpu_check.sh`: one part per call, so the shell can bound each.

  python benchmarks/gpu_check.py compile --config=experiments/shallow.py --batches=2,4,8,16
  python benchmarks/gpu_check.py train --config=experiments/shallow.py --batches=8,16
  python benchmarks/gpu_check.py train --config=experiments/deep.py:M4 --dtype=bfloat16 --batches=16,32,64 --largest=1024
  python benchmarks/gpu_check.py sampler --config=experiments/deep.py:M4 --dtype=bfloat16 --batches=16,32,64
  python benchmarks/gpu_check.py profile --config=experiments/deep.py:M4 --dtype=bfloat16 --batch=16
  python benchmarks/gpu_check.py cache --config=experiments/deep.py:M4 --batch=16 --dir=/tmp/xla_cache

Parts (each prints one JSON object per figure on a line starting `RESULT `, so a
part cut short by its time limit keeps what it printed):

* compile: the train step training runs (`train_steps.jit_steps` on this device) lowered
  on abstract shapes and compiled, never run, per batch: compile seconds and XLA's
  memory analysis (arguments, outputs, temporaries, generated code) against the
  device's memory. The shell runs it once per `--xla_gpu_autotune_level` (XLA_FLAGS
  are read when the backend starts) and greps XLA's log for workspace, autotuning and
  rematerialisation lines.
* train: steps/s of that step per batch (`common.train_figures`: compiled, a warm-up
  step, then --steps timed), its FLOP/s by `flops.py` (never a GPU cost analysis,
  which counts every cuDNN convolution as -1 FLOP), as a share of the chip's dense
  peak (`accelerators.py`) and of this device's measured matmul of the same dtype.
  --largest=N then doubles the batch from the largest given while the compiled
  step's memory analysis fits the device (compile only) up to N, and times the
  largest that fits.
* sampler: steps/s of the step fed by the device sampler (training's default where the
  windows fit: a sampler call, then the step) against the step on one fixed batch, the
  sampler alone, and the host CPU seconds per step, on --windows random windows made
  in memory (no TensorFlow needed).
* profile: a `jax.profiler` trace of --steps steps after a warm-up, summarised from
  the trace file: busy time per class of op (convolution forward, its input and its
  kernel gradient, matmuls, elementwise fusions, copies, other), the idle share of
  the device's timeline, and the top ops by time.
* cache: the same step compiled in two fresh processes that share a persistent
  compilation cache (`jax_compilation_cache_dir`; with it XLA keeps its GPU autotune
  results): the first start compiles and fills the cache, the second should read it.

--smoke runs any part on the tiny networks of `common.smoke_config` (CI runs every part
on the CPU that way: the figures mean nothing there, the code paths are the GPU's,
except that the CPU has no autotuner and no device memory limit).
"""

from __future__ import annotations

import collections
import gzip
import json
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
from absl import app, flags

from waveunet_jax import console, flops, models, parallel
from waveunet_jax import steps as train_steps

import common

FLAGS = flags.FLAGS


def result(**figures) -> dict:
  print("RESULT " + json.dumps(figures), flush=True)
  return figures


def config_for():
  config = common.get_config(FLAGS.config, FLAGS.smoke)
  config.model.dtype = FLAGS.dtype
  return config


def compile_only(config, batch: int):
  """The train step compiled for `batch` on abstract shapes (nothing allocated but
  what compiling needs), and the seconds it took."""
  layout = parallel.data_parallel(jax.local_devices()[:1])
  model = models.from_config(config)
  state, tx = train_steps.abstract_state(config, model, layout)
  batch_shapes = train_steps.abstract_batch(model, config.data.output_length, layout, batch)
  step, _ = train_steps.jit_steps(config, model, tx, layout)
  start = time.perf_counter()
  compiled = step.lower(state, batch_shapes).compile()
  return compiled, time.perf_counter() - start


def memory(compiled) -> dict:
  m = compiled.memory_analysis()
  if m is None:
    return {}
  gib = lambda b: round(b / 2 ** 30, 3)
  total = (m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
           + m.temp_size_in_bytes)
  return {"argument_gib": gib(m.argument_size_in_bytes), "output_gib": gib(m.output_size_in_bytes),
          "alias_gib": gib(m.alias_size_in_bytes), "temp_gib": gib(m.temp_size_in_bytes),
          "code_mib": round(m.generated_code_size_in_bytes / 2 ** 20, 1), "total_gib": gib(total),
          "total_bytes": int(total)}


def part_compile() -> None:
  limit = common.device_memory_limit()
  for batch in batch_sizes():
    config = config_for()
    try:
      compiled, seconds = compile_only(config, batch)
    except Exception as e:  # out of memory while compiling, or autotuning
      result(part="compile", batch=batch, error=f"{type(e).__name__}: {str(e)[:400]}")
      continue
    result(part="compile", config=FLAGS.config, dtype=FLAGS.dtype, batch=batch,
           compile_s=round(seconds, 2), device_limit_gib=limit and round(limit / 2 ** 30, 1),
           xla_flags=os.environ.get("XLA_FLAGS", ""), **memory(compiled))


def timed(config, batch: int, steps: int, matmul: float) -> dict:
  figures = common.train_figures(config, batch, steps)
  return result(part="train", dtype=config.model.dtype, batch=batch,
                steps_per_s=round(figures["steps_per_s"], 3),
                examples_per_s=round(figures["steps_per_s"] * batch, 1),
                compile_s=round(figures["compile_s"], 1),
                tflop_per_example=flops.train_step_flops(config, 1) / 1e12,
                tflop_per_s=round(figures["flops_per_s"] / 1e12, 3),
                of_dense_peak=figures["peak_share"],
                of_measured_matmul=figures["flops_per_s"] / matmul,
                compiled_gib=figures["compiled_bytes"] and round(figures["compiled_bytes"] / 2 ** 30, 2))


def part_train() -> None:
  n, calls = (256, 1) if FLAGS.smoke else common.matmul_size(jax.default_backend() != "cpu")
  matmul = common.matmul_flops(jnp.dtype(FLAGS.dtype), n=n, reps=3, calls=calls)
  result(part="matmul", dtype=FLAGS.dtype, n=n, tflop_per_s=round(matmul / 1e12, 3),
         device=jax.devices()[0].device_kind)
  for batch in batch_sizes():
    try:
      timed(config_for(), batch, FLAGS.steps, matmul)
    except Exception as e:  # XlaRuntimeError: RESOURCE_EXHAUSTED
      result(part="train", batch=batch, error=f"{type(e).__name__}: {str(e)[:400]}")
  if not FLAGS.largest:
    return
  limit = common.device_memory_limit()
  fits, batch = None, max(batch_sizes()) * 2
  while batch <= FLAGS.largest:
    try:
      compiled, seconds = compile_only(config_for(), batch)
      need = memory(compiled).get("total_bytes")
    except Exception as e:
      result(part="largest", batch=batch, fits=False, error=f"{type(e).__name__}: {str(e)[:200]}")
      break
    ok = limit is None or need is None or need <= limit
    result(part="largest", batch=batch, fits=ok, compile_s=round(seconds, 1),
           need_gib=need and round(need / 2 ** 30, 2), limit_gib=limit and round(limit / 2 ** 30, 1))
    if not ok:
      break
    fits, batch = batch, batch * 2
  if fits:
    timed(config_for(), fits, FLAGS.steps, matmul)


# --------------------------------------------------------------------------- #
# The device sampler.
# --------------------------------------------------------------------------- #


def part_sampler() -> None:
  """Steps/s of the train step fed by the device sampler (`device_data.DeviceSampler`,
  as training feeds it: one sampler call, then the step) against the same step on one
  fixed batch, per batch; the sampler alone; and the host CPU seconds per step. The
  windows are random int16 of the config's layout (--windows of them), made here: no
  TensorFlow or prepared data is needed on the GPU host."""
  import numpy as np

  from waveunet_jax.data import device as device_data
  from waveunet_jax.data import records

  config = config_for()
  layout = parallel.data_parallel(jax.local_devices()[:1])
  data_layout = records.layout_for(config)
  rng = np.random.default_rng(0)
  windows = rng.integers(-3000, 3000, (FLAGS.windows, len(data_layout.sources),
                                       data_layout.window_length, data_layout.num_channels),
                         dtype=np.int16)
  share = device_data.Share.of([windows], [np.full(FLAGS.windows, data_layout.hop, np.int32)],
                               [1.0])
  model = models.from_config(config)
  for batch in batch_sizes():
    try:
      sampler = device_data.DeviceSampler(config.data, layout, data_layout, [share], [0],
                                          batch_size=batch, seed=0)
      init, tx = train_steps.initial_state(config, model)
      step, _ = train_steps.jit_steps(config, model, tx, layout)
      fixed = sampler.batch(0)
      figures = {}
      def fresh():  # copies: the step donates its state, and `init` serves every mode
        return jax.device_put(jax.tree_util.tree_map(jnp.copy, init), layout.replicated)

      for mode in ("fixed", "device", "sampler"):
        out = step(fresh(), fixed)[1] if mode != "sampler" else sampler.batch(1)
        jax.block_until_ready(out)  # warm-up: compiles
        state = fresh()
        start, cpu = time.perf_counter(), time.process_time()
        for i in range(FLAGS.steps):
          if mode == "sampler":
            out = sampler.batch(i)
          else:
            state, out = step(state, fixed if mode == "fixed" else sampler.batch(i))
        jax.block_until_ready(out)
        seconds = time.perf_counter() - start
        figures[mode] = (FLAGS.steps / seconds, (time.process_time() - cpu) / FLAGS.steps)
      result(part="sampler", dtype=FLAGS.dtype, batch=batch, windows=FLAGS.windows,
             window_mib=round(share.windows.nbytes / 2 ** 20, 1),
             fixed_steps_per_s=round(figures["fixed"][0], 3),
             device_sampler_steps_per_s=round(figures["device"][0], 3),
             sampler_alone_examples_per_s=round(figures["sampler"][0] * batch, 1),
             host_cpu_s_per_step_fixed=round(figures["fixed"][1], 4),
             host_cpu_s_per_step_device_sampler=round(figures["device"][1], 4))
    except Exception as e:  # XlaRuntimeError: RESOURCE_EXHAUSTED
      result(part="sampler", batch=batch, error=f"{type(e).__name__}: {str(e)[:400]}")


# --------------------------------------------------------------------------- #
# Profile.
# --------------------------------------------------------------------------- #

CLASSES = (  # (class, words of an op's name or HLO that put it there), first match wins
    ("conv grad input", ("convbackwardinput", "dgrad", "bw-input")),
    ("conv grad kernel", ("convbackwardfilter", "wgrad", "bw-filter")),
    ("conv forward", ("convforward", "fprop", "cudnn-conv", "convolution", "conv")),
    ("matmul", ("gemm", "cublas", "dot")),
    ("copies", ("memcpy", "memset", "copy", "transpose")),
    ("elementwise fusions", ("fusion", "loop_", "input_", "reduce", "select", "scatter")),
)


def op_class(event: dict) -> str:
  args = event.get("args") or {}
  text = " ".join(str(x) for x in (event.get("name", ""), args.get("hlo_op", ""),
                                   args.get("long_name", ""), args.get("hlo_category", ""))).lower()
  return next((name for name, words in CLASSES if any(w in text for w in words)), "other")


def summarise_trace(path: pathlib.Path, top: int = 15) -> dict:
  """Busy time per op class, idle share and the top ops of a perfetto trace (JSON):
  the device's lanes where the trace has any (a GPU or TPU; on a GPU its CUDA streams'
  kernels), else the host threads that run XLA's ops (the CPU). Written against the
  CPU's traces; a GPU's lane names are as TensorBoard's profile plugin shows them,
  not yet checked on one."""
  opener = gzip.open if path.suffix == ".gz" else open
  with opener(path, "rt") as f:
    events = json.load(f)
  events = events.get("traceEvents", events) if isinstance(events, dict) else events
  names = {e["pid"]: e.get("args", {}).get("name", "") for e in events
           if e.get("ph") == "M" and e.get("name") == "process_name"}
  device = {pid for pid, name in names.items() if "/device:" in name}
  spans = [e for e in events if e.get("ph") == "X" and "dur" in e
           and (e["pid"] in device if device else True)]
  # A GPU's lanes also hold "XLA Modules" and "XLA Ops" spans over the same time as
  # the kernels: keep the CUDA streams' kernels where the trace names its streams.
  threads = {(e["pid"], e["tid"]): e.get("args", {}).get("name", "") for e in events
             if e.get("ph") == "M" and e.get("name") == "thread_name" and e.get("pid") in device}
  streams = {key for key, name in threads.items() if name.lower().startswith("stream")}
  if streams:
    spans = [e for e in spans if (e["pid"], e["tid"]) in streams]
  if not device:  # the CPU: XLA's ops (named like HLO), not the runtime's bookkeeping
    spans = [e for e in spans if op_class(e) != "other"
             and re.fullmatch(r"[a-z][a-z0-9_\-]*(\.\d+)?", e.get("name", ""))]
  if not spans:
    return {"lanes": "none", "events": 0}
  by_class, by_op = collections.Counter(), collections.Counter()
  for e in spans:
    by_class[op_class(e)] += e["dur"]
    by_op[e["name"][:80]] += e["dur"]
  start = min(e["ts"] for e in spans)
  end = max(e["ts"] + e["dur"] for e in spans)
  busy, cursor = 0.0, start
  for e in sorted(spans, key=lambda e: e["ts"]):  # union of busy intervals
    lo, hi = max(e["ts"], cursor), e["ts"] + e["dur"]
    if hi > lo:
      busy += hi - lo
      cursor = hi
  total = sum(by_class.values())
  return {"lanes": "device" if device else "host", "events": len(spans),
          "span_ms": round((end - start) / 1e3, 3), "idle_share": round(1 - busy / (end - start), 4)
          if end > start else 0.0,
          "busy_ms_by_class": {k: round(v / 1e3, 3) for k, v in by_class.most_common()},
          "share_by_class": {k: round(v / total, 4) for k, v in by_class.most_common()},
          "top_ops_ms": [(name, round(v / 1e3, 3)) for name, v in by_op.most_common(top)]}


def part_profile() -> None:
  config = config_for()
  step, state, batch, _ = common.compiled_train_step(config, FLAGS.batch)
  one_step = common.step_runner(step, state, batch)
  jax.block_until_ready(one_step())  # warm-up
  folder = pathlib.Path(FLAGS.trace_dir or tempfile.mkdtemp(prefix="waveunet-trace-"))
  with jax.profiler.trace(str(folder), create_perfetto_trace=True):
    for _ in range(FLAGS.steps):
      metrics = one_step()
    jax.block_until_ready(metrics)
  traces = sorted(folder.rglob("perfetto_trace.json.gz")) or sorted(folder.rglob("*.trace.json.gz"))
  if not traces:
    result(part="profile", error=f"no trace file under {folder}")
    return
  result(part="profile", config=FLAGS.config, dtype=FLAGS.dtype, batch=FLAGS.batch,
         steps=FLAGS.steps, trace=str(traces[-1]), **summarise_trace(traces[-1]))


# --------------------------------------------------------------------------- #
# Persistent compilation cache.
# --------------------------------------------------------------------------- #


def part_cache() -> None:
  folder = FLAGS.dir or tempfile.mkdtemp(prefix="waveunet-xla-cache-")
  env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": folder,
         "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
         "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}
  child = [sys.executable, __file__, "cache_child", f"--config={FLAGS.config}",
           f"--dtype={FLAGS.dtype}", f"--batch={FLAGS.batch}"] + ["--smoke"] * FLAGS.smoke
  for start in ("first", "second"):
    began = time.perf_counter()
    out = subprocess.run(child, env=env, capture_output=True, text=True, check=True).stdout
    compile_s = json.loads(out.strip().splitlines()[-1].removeprefix("RESULT "))["compile_s"]
    files = sum(1 for p in pathlib.Path(folder).rglob("*") if p.is_file())
    result(part="cache", start=start, compile_s=compile_s,
           process_s=round(time.perf_counter() - began, 1), cache_files=files, cache_dir=folder)


def part_cache_child() -> None:
  _, seconds = compile_only(config_for(), FLAGS.batch)
  result(part="cache_child", compile_s=round(seconds, 2))


PARTS = ("compile", "train", "sampler", "profile", "cache", "cache_child")


def _define_flags() -> None:
  flags.DEFINE_string("config", common.SHALLOW, "the network's config (PATH[:VARIANT])")
  flags.register_validator("config", common.valid_configs)
  flags.DEFINE_enum("dtype", "float32", list(models.DTYPES), "the compute dtype")
  flags.DEFINE_list("batches", ["8", "16"], "comma-separated batch sizes")
  flags.DEFINE_integer("batch", 16, "profile and cache: the batch")
  flags.DEFINE_integer("steps", 10, "timed or traced steps")
  flags.DEFINE_integer("largest", 0,
                       "train: search batches above --batches up to this (0: no search)")
  flags.DEFINE_integer("windows", 64, "sampler: random windows the device holds")
  flags.DEFINE_string("trace_dir", None, "profile: keep the trace here")
  flags.DEFINE_string("dir", None, "cache: the cache folder (default: a new one)")
  flags.DEFINE_bool("smoke", False, "the tiny networks of common.smoke_config (CI)")
  flags.register_validator("batches", lambda values: all(v.isdigit() for v in values),
                           message="comma-separated batch sizes, e.g. 8,16")


def batch_sizes() -> list[int]:
  return [int(b) for b in FLAGS.batches]


def main(argv: list[str]) -> None:
  if len(argv) != 2 or argv[1] not in PARTS:
    raise app.UsageError(f"name one part of {', '.join(PARTS)} (got {' '.join(argv[1:])!r})",
                         exitcode=2)
  {"compile": part_compile, "train": part_train, "sampler": part_sampler,
   "profile": part_profile, "cache": part_cache, "cache_child": part_cache_child}[argv[1]]()


if __name__ == "__main__":
  console.run_program(main, _define_flags, usage_status=2)

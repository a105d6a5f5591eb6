"""Speed and memory of the shallow and the deep (M4) Wave-U-Net on this machine.

  python benchmarks/run.py            # full: ~20 min on 2 CPU cores
  python benchmarks/run.py --quick    # a few minutes: batch 1, fewer steps, short audio
  python benchmarks/run.py --json OUT.json
  python benchmarks/run.py --smoke    # every part on tiny networks: that it runs (CI)

Models are randomly initialised (speed does not depend on training); audio is
synthetic (`generator.make_track`, one 60 s track repeated to the length needed).
Every time is taken after compilation and a warm-up call. The figures:

* matmul FLOP/s: best time of a jitted 4096x4096 @ 4096x4096 float32 matmul, at the
  start and the end of the run; every "% of matmul" below divides by it. It is a
  practical reference, not a bound: XLA:CPU's convolutions can beat its matmul.
* train: steps/s of the jitted train step training runs (`train_steps.jit_steps` on a
  one-device mesh: the config's optimiser, donated state) on random batches of the
  stated size at the config's training lengths (`models.lengths`); audio s/s =
  steps/s x batch x output samples / rate (the whole output, not only the loss's
  central crop); FLOP/s = the step's FLOPs (`flops.train_step_flops`, the same count on
  every backend: never a GPU cost analysis, which counts convolutions as -1) / step
  time, also as a share of the device's dense peak (`accelerators.py`; none on a CPU).
* separate, model only: the Separator's jitted forward (batch 1, default window) on
  one window at the model's rate, timed; audio s/s = song seconds / (windows the
  song needs x time per window), for a 3-minute song (the last window is padded).
  FLOP/s = `flops.forward` of that window / its time. recomputed share:
  `tiling(...).recomputed_share`, the input samples computed again as context.
* separate, end to end: `separate.separate_files` on a 44.1 kHz stereo 16-bit wav
  (3 min; 25 s, one window, with --quick): decode, resample to the model's rate,
  model, resample back, write every source; compile excluded (the compiled forward
  is reused). "end-to-end / model-only": its time over windows x time per window.
* input pipeline: examples/s of `tfdata.train_dataset` (prepared synthetic
  corpus, after a warm-up batch) at the training batch size, and its ratio to what
  the train step consumes (steps/s x batch); > 1 means the pipeline keeps up (it is
  measured alone: in training it shares the cores with the step).
* peak RSS: max resident memory of a fresh process running `separate_files` on a
  5- and a 30-minute wav (1 and 3 with --quick), its own VmHWM; the deep M4 only by
  default (the shallow net separates at ~1.6x real time on 2 cores: --memory_models).
* on a GPU or TPU (or any backend with --accelerator_figures): train FLOP/s in float32 and
  bfloat16 (`config.model.dtype`) as % of the matmul of the same dtype, and the
  largest power-of-two train batch (up to --max_batch) that runs. On an accelerator
  the matmul is 8192^3, timed over 10 calls per repetition (a 4096^3 product alone is
  a fraction of a millisecond there, its dispatch a large share of it). The largest
  batch is searched from a guess (the batch of the train figures' compiled memory,
  scaled to the device's memory limit), doubling while a step runs and halving while
  it does not, so a few compiles instead of one per power of two. On an H200 the search
  ran out of its time limit (benchmarks/README.md, *On a GPU*; `gpu_check.py train --largest`
  searches on compiled memory instead); on a CPU the path runs
  (`--quick --accelerator_figures --max_batch=2`), its figures mean nothing there.

--smoke runs every part on tiny networks (`common.smoke_config`: `shallow.py:smoke` on
8192 samples and a 4-level M4), one step or timing each, 2 s of audio, a 3 s corpus and a few seconds of
peak-memory runs: it checks that the script runs (CI does), its figures mean nothing.

Parts can be left out: --skip_pipeline (needs TensorFlow), --skip_memory (peak RSS
of fresh processes, a CPU figure), --skip_e2e (the end-to-end separation, which needs
soundfile and soxr); --models picks the configs and --train_steps the timed steps.
A GPU machine without TensorFlow runs
`--accelerator_figures --skip_pipeline --skip_memory` (see benchmarks/gpu_check.sh).
"""

from __future__ import annotations

import functools
import json
import pathlib
import subprocess
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from waveunet_jax import console, flops, separate
from waveunet_jax.data import generator

import common

FLAGS = flags.FLAGS
SONG_SECONDS = 180.0


# --------------------------------------------------------------------------- #
# Training.
# --------------------------------------------------------------------------- #


def step_runs(config, batch: int) -> bool:
  """Whether a train step of `batch` compiles and runs; False when it runs out of
  device memory (XlaRuntimeError RESOURCE_EXHAUSTED, at compile or run time)."""
  try:
    step, state, data, _ = common.compiled_train_step(config, batch)
    jax.block_until_ready(step(state, data))
    return True
  except Exception as e:  # XlaRuntimeError: RESOURCE_EXHAUSTED
    if "RESOURCE_EXHAUSTED" not in str(e) and "out of memory" not in str(e).lower():
      raise
    return False


def batch_guess(limit: int, known: dict | None) -> int:
  """A power-of-two batch up to `limit` that should just fit: the device's memory
  limit over the bytes per example of a compiled step (`known`: train_figures of some
  batch; the state's share counts as per-example, so the guess errs low). 1 where the
  backend reports no memory."""
  memory = common.device_memory_limit()
  if not memory or not known or not known.get("compiled_bytes"):
    return 1
  per_example = known["compiled_bytes"] / known["batch"]
  guess = 1
  while guess * 2 <= min(limit, memory / per_example):
    guess *= 2
  return guess


def largest_batch(config, limit: int, known: dict | None = None) -> dict:
  """The largest power-of-two batch up to `limit` whose train step runs (0: none),
  and the batches tried. From `batch_guess`: doubling while a step runs, else halving
  until one does; the same answer as doubling from 1, if memory grows with the batch."""
  guess = batch_guess(limit, known)
  tried = {}

  def runs(batch):
    tried[batch] = step_runs(config, batch)
    return tried[batch]

  if runs(guess):
    fits = guess
    while fits * 2 <= limit and runs(fits * 2):
      fits *= 2
  else:
    fits = guess // 2
    while fits >= 1 and not runs(fits):
      fits //= 2
  return {"largest_batch": fits, "guess": guess,
          "tried": {str(b): ok for b, ok in sorted(tried.items())}}


# --------------------------------------------------------------------------- #
# Separation.
# --------------------------------------------------------------------------- #


def separation_figures(config, reps: int, e2e_seconds: float | None, tmp: pathlib.Path,
                       smoke: bool = False) -> dict:
  """Model-only figures, and end-to-end ones unless `e2e_seconds` is None."""
  sep = common.make_separator(config, smoke)
  t, rate = sep.tiling, config.data.sample_rate
  # Any audio: a window's worth of a synthetic song (at 44.1 kHz, every second sample).
  window = jnp.asarray(np.resize(common.song(min(60.0, 2 * t.input_length / common.FILE_RATE + 1))[::2],
                                 (1, t.input_length, 2)))
  forward = sep.engine._forward.lower(sep.engine.variables, window).compile()
  jax.block_until_ready(forward(sep.engine.variables, window))  # warm-up
  window_s = common.best_time(lambda: forward(sep.engine.variables, window), reps)
  song_windows = lambda seconds: -(-(round(seconds * rate) + t.overlap) // t.hop)
  windows = song_windows(SONG_SECONDS)
  window_flops = flops.forward(sep.engine.model, 1, t.input_length)
  out = {"window_input": t.input_length, "window_kept": t.hop, "window_s": window_s,
         "song_windows": windows, "model_audio_s_per_s": SONG_SECONDS / (windows * window_s),
         "model_flops_per_s": window_flops / window_s, "window_gflop": window_flops / 1e9,
         "model_peak_share": flops.utilisation(window_flops / window_s,
                                               jax.devices()[0].device_kind, config.model.dtype),
         "recomputed_share": t.recomputed_share}
  if e2e_seconds is None:
    return out
  # End to end through the command line's function, with the compiled forward reused.
  sep.engine._forward = forward
  wav = tmp / "song.wav"
  common.write_wav(wav, e2e_seconds)
  start = time.perf_counter()
  separate.separate_files(sep, [wav], tmp / "out", overwrite=True)
  e2e_s = time.perf_counter() - start
  return {**out, "e2e_seconds": e2e_seconds, "e2e_audio_s_per_s": e2e_seconds / e2e_s,
          "e2e_over_model": e2e_s / (song_windows(e2e_seconds) * window_s)}


def child_separate(spec: str, wav: str, out: str, smoke: bool) -> None:
  """Run in a fresh process by `peak_memory`: separates one file, prints its time."""
  sep = common.make_separator(common.get_config(spec, smoke), smoke)
  start = time.perf_counter()
  separate.separate_files(sep, [wav], out, overwrite=True)
  # VmHWM is this process image's own peak: the rusage of a child forked from a big
  # parent also counts the parent's pages from before exec.
  status = pathlib.Path("/proc/self/status").read_text()
  peak_kib = int(next(l for l in status.splitlines() if l.startswith("VmHWM:")).split()[1])
  print(f"{peak_kib / 1024:.1f} {time.perf_counter() - start:.1f}")


def peak_memory(spec: str, minutes: float, tmp: pathlib.Path,
                smoke: bool = False) -> tuple[float, float]:
  """(peak RSS in MiB, seconds) of a fresh process separating `minutes` of audio."""
  wav = tmp / f"memory_{minutes:g}.wav"
  common.write_wav(wav, minutes * 60)
  process = subprocess.Popen([sys.executable, __file__, "--child", spec, str(wav),
                              str(tmp / "memory_out")] + ["--smoke"] * smoke, stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True)
  output = process.stdout.read()
  status = process.wait()
  wav.unlink()
  if status != 0:
    raise RuntimeError(f"separating {minutes} min with {spec} failed (status {status})")
  peak_mib, seconds = output.split()[-2:]
  return float(peak_mib), float(seconds)


# --------------------------------------------------------------------------- #
# Input pipeline.
# --------------------------------------------------------------------------- #


def pipeline_examples_per_s(config, batch_size: int, batches: int, corpus: pathlib.Path,
                            data_dir: pathlib.Path) -> float:
  import logging

  import tensorflow as tf
  import tensorflow_datasets as tfds

  from waveunet_jax.data import tfdata
  from waveunet_jax.data import builder as builder_lib

  tf.config.set_visible_devices([], "GPU")
  tfds.disable_progress_bar()
  logging.getLogger("absl").setLevel(logging.ERROR)
  config.data.data_dir = str(data_dir)
  valid = [p.name for p in sorted((corpus / "train").iterdir())][:1]
  builder_lib.prepare(config, corpus, data_dir, wav=True, valid_tracks=valid)
  iterator = iter(tfdata.as_numpy(tfdata.train_dataset(config, batch_size, seed=0)))
  next(iterator)  # warm-up: opens files, fills shuffle buffers
  start = time.perf_counter()
  for _ in range(batches):
    next(iterator)
  return batches * batch_size / (time.perf_counter() - start)


# --------------------------------------------------------------------------- #
# Table.
# --------------------------------------------------------------------------- #


def table(r: dict) -> str:
  names = list(r["models"])
  m, limit = r["machine"], r["matmul_flops_per_s"]
  pct = lambda x: f"{100 * x / limit:.1f} %"
  rows = [("", names)]

  def row(label, key, fmt):
    values = []
    for n in names:
      value = r["models"][n]
      for k in key.split("."):
        value = value.get(k) if isinstance(value, dict) else None
      values.append("-" if value is None else fmt(value))
    rows.append((label, values))

  tr, sp = "train.", "separate."
  b = r["batch"]
  row("train: batch, timed steps", "train", lambda t: f"{t['batch']}, {t['steps']}")
  row("train: init + compile s", tr + "compile_s", "{:.1f}".format)
  row("train: steps/s", tr + "steps_per_s", "{:.3f}".format)
  row("train: audio s/s", tr + "audio_s_per_s", "{:.2f}".format)
  row("train: GFLOP/step (flops.py)", tr + "step_gflop", "{:.1f}".format)
  row("train: GFLOP/s", tr + "flops_per_s", lambda x: f"{x / 1e9:.1f}")
  row("train: % of matmul", tr + "flops_per_s", pct)
  row("train: % of device dense peak", tr + "peak_share", "{:.1%}".format)
  for dtype in ("float32", "bfloat16"):
    row(f"train {dtype}: TFLOP/s", f"gpu.{dtype}.flops_per_s", lambda x: f"{x / 1e12:.1f}")
    row(f"train {dtype}: % of {dtype} matmul", f"gpu.{dtype}_mfu", "{:.1%}".format)
    row(f"train {dtype}: % of dense peak", f"gpu.{dtype}.peak_share", "{:.1%}".format)
  row("train bfloat16: steps/s over float32's", "gpu.bfloat16_speedup", "{:.2f}x".format)
  row("train: largest batch that runs", "gpu.largest_batch", str)
  row("sep: window in/kept samples", "separate",
      lambda s: f"{s['window_input']}/{s['window_kept']}")
  row("sep: recomputed share", sp + "recomputed_share", "{:.1%}".format)
  row("sep: s per window (model)", sp + "window_s", "{:.2f}".format)
  row(f"sep: model audio s/s ({SONG_SECONDS / 60:g} min)", sp + "model_audio_s_per_s",
      "{:.2f}".format)
  row("sep: model GFLOP/s", sp + "model_flops_per_s", lambda x: f"{x / 1e9:.1f}")
  row("sep: model % of matmul", sp + "model_flops_per_s", pct)
  row("sep: model % of device dense peak", sp + "model_peak_share", "{:.1%}".format)
  row("sep: end-to-end audio s/s", "separate",
      lambda s: f"{s['e2e_audio_s_per_s']:.2f} ({s['e2e_seconds']:g} s wav)")
  row("sep: end-to-end / model-only time", sp + "e2e_over_model", "{:.2f}".format)
  row(f"pipeline: examples/s (batch {b})", "pipeline.examples_per_s", "{:.2f}".format)
  row("pipeline / train consumption", "pipeline.ratio", "{:.1f}x".format)
  for key, label in (("short", "peak RSS short"), ("long", "peak RSS long")):
    row(f"sep: {label} (min: MiB, s)", f"memory.{key}",
        lambda v: f"{v[0]:g}: {v[1]:.0f}, {v[2]:.0f}")
  row("sep: peak RSS long/short", "memory.ratio", "{:.2f}".format)
  width = max(len(label) for label, _ in rows)
  cols = [max(len(v[i]) for _, v in rows) for i in range(len(names))]
  lines = [f"machine: {m['cpu']}, {m['cores']} cores, jax {m['jax']}, backend {m['backend']} "
           f"({m['device']}); mode: {r['mode']}",
           f"matmul {r.get('matmul_n', 4096)}^3 float32: {limit / 1e9:.1f} GFLOP/s"
           + (f"; bfloat16: {r['matmul_bf16_flops_per_s'] / 1e9:.1f}" if "matmul_bf16_flops_per_s" in r else "")]
  lines += [f"{label:<{width}}  " + "  ".join(f"{v:>{c}}" for v, c in zip(values, cols))
            for label, values in rows]
  return "\n".join(lines)


def _define_flags() -> None:
  flags.DEFINE_bool("quick", False, "a few minutes on 2 CPU cores")
  flags.DEFINE_bool("smoke", False, "tiny networks and sizes: that every part runs (CI)")
  flags.DEFINE_string("json", None, "also write the figures to this file")
  flags.DEFINE_list("models", list(common.NETWORKS),
                    "comma-separated configs to measure (PATH[:VARIANT] each)")
  flags.DEFINE_list("memory_models", [common.DEEP_M4],
                    "comma-separated configs for the peak-memory runs")
  flags.DEFINE_bool("accelerator_figures", False,
                    "the GPU figures (bfloat16, largest batch) on any backend")
  flags.DEFINE_integer("max_batch", 1024, "the largest batch the largest-batch search tries")
  flags.DEFINE_integer("train_steps", None,
                       "timed train steps per figure (default: by config and mode)")
  flags.DEFINE_bool("skip_pipeline", False, "leave out the input pipeline (it needs TensorFlow)")
  flags.DEFINE_bool("skip_memory", False, "leave out the peak-memory runs")
  flags.DEFINE_bool("skip_e2e", False,
                    "leave out end-to-end separation (it needs soundfile and soxr)")
  flags.DEFINE_bool("child", False, "internal: the fresh process of a peak-memory run, "
                    "given CONFIG WAV OUTPUT_DIR")
  for name in ("models", "memory_models"):
    flags.register_validator(name, common.valid_configs)


def main(argv: list[str]) -> None:
  if FLAGS.child:
    return child_separate(*argv[1:], smoke=FLAGS.smoke)
  console.no_arguments(argv)
  specs = FLAGS.models
  memory_models = [] if FLAGS.skip_memory else FLAGS.memory_models
  began = time.perf_counter()
  smoke, on_accelerator = FLAGS.smoke, jax.default_backend() != "cpu"  # a GPU or a TPU
  quick = FLAGS.quick or smoke
  accelerator_figures = on_accelerator or FLAGS.accelerator_figures
  batch = (8 if on_accelerator else 1) if quick else (16 if on_accelerator else 2)
  # Timed train steps: the shallow step takes seconds on a CPU, the others a fraction.
  default_steps = lambda spec: (1 if smoke or spec == common.SHALLOW else 3) if quick else (
      3 if spec == common.SHALLOW else 10)
  steps = {spec: FLAGS.train_steps or default_steps(spec) for spec in specs}
  if smoke:
    batch = 1
  reps = 1 if quick else 3
  minutes = (0.05, 0.1) if smoke else (1.0, 3.0) if quick else (5.0, 30.0)
  n, calls = common.matmul_size(on_accelerator)
  if smoke:
    n, calls = 256, 1
  r = {"mode": "smoke" if smoke else "quick" if quick else "full", "machine": common.machine(), "batch": batch, "matmul_n": n,
       "matmul_flops_per_s": common.matmul_flops(n=n, reps=reps + 2, calls=calls), "models": {}}
  if accelerator_figures:
    r["matmul_bf16_flops_per_s"] = common.matmul_flops(jnp.bfloat16, n=n, reps=reps + 1, calls=calls)
  print(f"{r['machine']}; matmul {r['matmul_flops_per_s'] / 1e9:.1f} GFLOP/s", flush=True)
  with tempfile.TemporaryDirectory() as tmp:
    tmp = pathlib.Path(tmp)
    corpus = tmp / "corpus"
    if not FLAGS.skip_pipeline:
      generator.write_corpus(corpus, num_train=3, num_test=0, seconds=3.0 if smoke else 30.0 if quick else 60.0,
                             seed=0)
    for spec in specs:
      name = common.label(spec)
      config_of = functools.partial(common.get_config, spec, smoke)
      out = r["models"][name] = {}
      out["train"] = common.train_figures(config_of(), batch, steps[spec])
      print(name, "train", out["train"], flush=True)
      if accelerator_figures:
        out["gpu"] = {}
        for dtype, limit in (("float32", r["matmul_flops_per_s"]),
                             ("bfloat16", r["matmul_bf16_flops_per_s"])):
          config = config_of()
          if config.model.dtype == dtype:  # the figures just taken
            figures = out["train"]
          else:
            config.model.dtype = dtype
            figures = common.train_figures(config, batch, steps[spec])
          out["gpu"][dtype] = figures
          out["gpu"][f"{dtype}_mfu"] = figures["flops_per_s"] / limit
        out["gpu"]["bfloat16_speedup"] = (out["gpu"]["bfloat16"]["steps_per_s"]
                                          / out["gpu"]["float32"]["steps_per_s"])
        print(name, "bfloat16", out["gpu"]["bfloat16"], flush=True)
        search = largest_batch(config_of(), FLAGS.max_batch, known=out["train"])
        out["gpu"]["largest_batch"] = search.pop("largest_batch")
        out["gpu"]["largest_batch_search"] = search
        print(name, "accelerator", {k: v for k, v in out["gpu"].items()
                                    if k not in ("float32", "bfloat16")}, flush=True)
      e2e_seconds = (None if FLAGS.skip_e2e else 2.0 if smoke else 25.0 if quick
                     else SONG_SECONDS)
      out["separate"] = separation_figures(config_of(), reps, e2e_seconds, tmp, smoke)
      print(name, "separate", out["separate"], flush=True)
    # tf.data last: its threads must not run beside the timings above.
    for spec in [] if FLAGS.skip_pipeline else specs:
      name = common.label(spec)
      out = r["models"][name]
      batches = 2 if smoke else -(-(64 if quick else 256) // batch)
      examples = pipeline_examples_per_s(common.get_config(spec, smoke), batch, batches, corpus,
                                         tmp / "data")
      out["pipeline"] = {"examples_per_s": examples,
                         "ratio": examples / (out["train"]["steps_per_s"] * batch)}
      print(name, "pipeline", out["pipeline"], flush=True)
    for spec in memory_models:
      name = common.label(spec)
      (short, short_s), (long, long_s) = (peak_memory(spec, m, tmp, smoke) for m in minutes)
      r["models"].setdefault(name, {})["memory"] = {
          "short": (minutes[0], short, short_s), "long": (minutes[1], long, long_s),
          "ratio": long / short}
      print(name, "memory", r["models"][name]["memory"], flush=True)
  r["wall_s"] = time.perf_counter() - began
  # Best of both ends of the run: the machine may be shared.
  r["matmul_flops_per_s"] = max(r["matmul_flops_per_s"],
                                common.matmul_flops(n=n, reps=reps + 2, calls=calls))
  if accelerator_figures:  # every "% of matmul" against the same best matmul
    r["matmul_bf16_flops_per_s"] = max(r["matmul_bf16_flops_per_s"], common.matmul_flops(
        jnp.bfloat16, n=n, reps=reps + 1, calls=calls))
    for out in r["models"].values():
      for dtype, key in (("float32", "matmul_flops_per_s"),
                         ("bfloat16", "matmul_bf16_flops_per_s")):
        if dtype in out.get("gpu", {}):
          out["gpu"][f"{dtype}_mfu"] = out["gpu"][dtype]["flops_per_s"] / r[key]
  print(table(r))
  print(f"total {r['wall_s']:.0f} s")
  if FLAGS.json:
    pathlib.Path(FLAGS.json).write_text(json.dumps(r, indent=1))


if __name__ == "__main__":
  console.run_program(main, _define_flags, usage_status=2)

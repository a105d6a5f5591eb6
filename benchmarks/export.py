"""Separation speed and quality per engine: JAX against every export of the same model.

  python benchmarks/export.py --workdir=runs/m4 --musdb_root=corpus --tracks=3
  python benchmarks/export.py                     # deep M4 at random weights: speed only
  python benchmarks/export.py --smoke             # a tiny M4, 2 s of audio: that it runs

Exports the model (a workdir's best checkpoint, or M4 at random weights) to every
format at the separator's default window and batch 1, plus the reduced precisions
(ONNX with int8 weights, LiteRT with float16 weights), then for each engine:

* window: the engine's forward pass on one window, best of --reps, after a warm-up;
* song: `Separator.separate` of the same --seconds of 44.1 kHz stereo audio (the
  first test track's mix with --musdb_root, else a synthetic song), best of --reps;
* with --musdb_root: `evaluate` on the first --tracks test tracks (wav layout), and
  the median SDR of each source (SiSEC) against JAX's.

Every engine runs in this one process, one after the other, on the same windows.
"""

from __future__ import annotations

import pathlib
import tempfile
import time

import numpy as np
from absl import flags

from waveunet_jax import console, evaluate, export
from waveunet_jax.data import tracks as tracks_lib
from waveunet_jax.separation import jax_engine, model_formats, separator

import common

FLAGS = flags.FLAGS

VARIANTS = {  # name: (format, options)
    "ONNX Runtime": ("onnx", {}),
    "ONNX Runtime, int8 weights": ("onnx", {"int8": True}),
    "LiteRT": ("tflite", {}),
    "LiteRT, float16 weights": ("tflite", {"float16": True}),
    "TensorFlow SavedModel": ("saved_model", {}),
    "JAX, StableHLO export": ("stablehlo", {}),
}


def _define_flags() -> None:
  flags.DEFINE_string("workdir", None, "a training workdir (default: M4, random weights)")
  flags.DEFINE_string("musdb_root", None, "a corpus in the MUSDB18-HQ layout, for SDR")
  flags.DEFINE_integer("tracks", 2, "test tracks evaluated with --musdb_root")
  flags.DEFINE_float("seconds", 30.0, "seconds of the song separated")
  flags.DEFINE_integer("reps", 3, "timings per figure, best kept")
  flags.DEFINE_bool("smoke", False,
                    "a tiny network of M4's design (no --workdir), 2 s, one timing")


def main(argv: list[str]) -> None:
  console.no_arguments(argv)
  seconds, reps = (2.0, 1) if FLAGS.smoke else (FLAGS.seconds, FLAGS.reps)
  if FLAGS.workdir:
    from waveunet_jax import workdir as workdir_lib

    engine_jax = jax_engine.JaxEngine.from_workdir(FLAGS.workdir)
    config = workdir_lib.load_config(FLAGS.workdir)
  else:
    config = common.get_config(common.DEEP_M4, FLAGS.smoke)
    engine_jax = common.make_separator(config, FLAGS.smoke).engine
  if FLAGS.musdb_root:
    track = evaluate.tracks_of_split(FLAGS.musdb_root, "test", True)[0]
    stems, rate = tracks_lib.read_stems(track)
    song = sum(stems.values())[:round(seconds * rate)]
    assert rate == 44100
  else:
    song = common.song(seconds)
  t = engine_jax.tiling
  window = np.resize(song[::2], (1, t.input_length, engine_jax.num_channels)).astype(np.float32)
  engines = {"JAX (jit)": engine_jax}
  with tempfile.TemporaryDirectory() as tmp:
    for i, (name, (fmt, options)) in enumerate(VARIANTS.items()):
      suffix = {"onnx": ".onnx", "tflite": ".tflite", "stablehlo": ".stablehlo"}.get(fmt, "")
      path = pathlib.Path(tmp) / f"model{i}{suffix}"
      start = time.perf_counter()
      export.export(engine_jax, fmt, path, config=config, **options)
      size = sum(p.stat().st_size for p in [path, *path.rglob("*")] if p.is_file())
      print(f"exported {name}: {time.perf_counter() - start:.1f} s, {size / 2**20:.1f} MiB",
            flush=True)
      engines[name] = model_formats.load(path)
    results, reference = {}, None
    for name, e in engines.items():
      np.asarray(e.forward(window))  # warm-up (and compilation)
      window_s = common.best_time(lambda: np.asarray(e.forward(window)), reps)
      sep = separator.Separator(e)
      song_s = common.best_time(lambda: sep.separate(song, 44100), reps)
      out = sep.separate(song, 44100)
      reference = reference or out
      diff = max(float(np.abs(out[s] - reference[s]).max()) for s in out)
      sdr = {}
      if FLAGS.musdb_root:
        summary = evaluate.evaluate(sep, FLAGS.musdb_root, pathlib.Path(tmp) / f"eval-{len(results)}",
                                    wav=True, max_tracks=FLAGS.tracks)
        sdr = {s: m["SDR"]["sisec_median"] for s, m in summary["model"].items()}
      results[name] = (window_s, song_s, diff, sdr)
      print(name, results[name], flush=True)
  print(f"\n{len(song) / 44100:.0f} s of 44.1 kHz stereo, windows of {t.input_length} samples "
        f"(batch 1); best of {reps}\n")
  jax_sdr = results["JAX (jit)"][3]
  header = "| engine | window s | song s | audio s/s | max diff to JAX |"
  header += "".join(f" {s} SDR (change) |" for s in jax_sdr)
  print(header)
  print("|---" * (header.count("|") - 1) + "|")
  for name, (window_s, song_s, diff, sdr) in results.items():
    cells = "".join(f" {sdr[s]:.2f} ({sdr[s] - jax_sdr[s]:+.2f}) |" for s in sdr)
    print(f"| {name} | {window_s:.2f} | {song_s:.2f} | {len(song) / 44100 / song_s:.1f} "
          f"| {diff:.1e} |{cells}")


if __name__ == "__main__":
  console.run_program(main, _define_flags, usage_status=2)

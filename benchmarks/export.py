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

import argparse
import pathlib
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import numpy as np  # noqa: E402

import run  # noqa: E402
from waveunet_jax import evaluate, export  # noqa: E402
from waveunet_jax.separation import model_formats  # noqa: E402
from waveunet_jax.separation import jax_engine  # noqa: E402
from waveunet_jax.separation import separator  # noqa: E402
from waveunet_jax.data import tracks as tracks_lib  # noqa: E402

VARIANTS = {  # name: (format, options)
    "ONNX Runtime": ("onnx", {}),
    "ONNX Runtime, int8 weights": ("onnx", {"int8": True}),
    "LiteRT": ("tflite", {}),
    "LiteRT, float16 weights": ("tflite", {"float16": True}),
    "TensorFlow SavedModel": ("saved_model", {}),
    "JAX, StableHLO export": ("stablehlo", {}),
}


def best(fn, reps: int) -> float:
  times = []
  for _ in range(reps):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return min(times)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--workdir", help="a training workdir (default: M4, random weights)")
  parser.add_argument("--musdb_root", help="a corpus in the MUSDB18-HQ layout, for SDR")
  parser.add_argument("--tracks", type=int, default=2)
  parser.add_argument("--seconds", type=float, default=30.0)
  parser.add_argument("--reps", type=int, default=3)
  parser.add_argument("--smoke", action="store_true",
                      help="a tiny network of M4's design (no --workdir), 2 s, one timing")
  args = parser.parse_args()
  if args.smoke:
    args.seconds, args.reps = 2.0, 1
  if args.workdir:
    from waveunet_jax import workdir as workdir_lib

    engine_jax = jax_engine.JaxEngine.from_workdir(args.workdir)
    config = workdir_lib.load_config(args.workdir)
  else:
    config = run.get_config("deep M4", args.smoke)
    engine_jax = run.make_separator(config, args.smoke).engine
  if args.musdb_root:
    track = evaluate.tracks_of_split(args.musdb_root, "test", True)[0]
    stems, rate = tracks_lib.read_stems(track)
    song = sum(stems.values())[:round(args.seconds * rate)]
    assert rate == 44100
  else:
    song = run.song(args.seconds)
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
      window_s = best(lambda: np.asarray(e.forward(window)), args.reps)
      sep = separator.Separator(e)
      song_s = best(lambda: sep.separate(song, 44100), args.reps)
      out = sep.separate(song, 44100)
      reference = reference or out
      diff = max(float(np.abs(out[s] - reference[s]).max()) for s in out)
      sdr = {}
      if args.musdb_root:
        summary = evaluate.evaluate(sep, args.musdb_root, pathlib.Path(tmp) / f"eval-{len(results)}",
                                    wav=True, max_tracks=args.tracks)
        sdr = {s: m["SDR"]["sisec_median"] for s, m in summary["model"].items()}
      results[name] = (window_s, song_s, diff, sdr)
      print(name, results[name], flush=True)
  print(f"\n{len(song) / 44100:.0f} s of 44.1 kHz stereo, windows of {t.input_length} samples "
        f"(batch 1); best of {args.reps}\n")
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
  main()

"""End-to-end against model-only time for separating a folder of songs.

  python benchmarks/separate_folder.py                  # deep M4, 10 songs of 40 to 80 s
  python benchmarks/separate_folder.py --model=shallow --songs=4 --seconds=30
  python benchmarks/separate_folder.py --smoke      # a tiny M4, 2 songs of 1-2 s (CI)
  python benchmarks/separate_folder.py --songs=4 --shifts 1 2 4 [--flip]   # averaging's cost

Writes a folder of 44.1 kHz stereo 16-bit wavs (synthetic audio, random lengths),
then times, with the compiled forward reused (compilation excluded):

* model only: the engine's forward on one default window (best of --reps), times the
  windows each song needs, summed over the songs;
* folder: `separate.separate_files` on the folder, as the command line runs it (the
  next file decoded while the network works on the current one, one progress bar);
* one by one: `separate.separate_files` called once per file (no reading ahead),
* with --shifts N (several values: a row each), and --flip: the folder again with
  test-time averaging on (`separator` module docstring), with the windows its passes
  compute (their delays add some) and its time over the plain folder's,

and prints each time with its ratio to model only. Models are randomly initialised.
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

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import run  # noqa: E402
from waveunet_jax import separate  # noqa: E402


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--model", default="deep M4", choices=list(run.CONFIGS))
  parser.add_argument("--songs", type=int, default=10)
  parser.add_argument("--seconds", type=float, nargs=2, default=(40.0, 80.0),
                      help="shortest and longest song")
  parser.add_argument("--reps", type=int, default=3)
  parser.add_argument("--shifts", type=int, nargs="*", default=[],
                      help="time the folder again with each of these --shifts")
  parser.add_argument("--flip", action="store_true", help="and --flip (a row without "
                      "shifts if --shifts is not given)")
  parser.add_argument("--smoke", action="store_true",
                      help="a tiny network of --model's design, 2 songs of 1 to 2 s, one timing")
  args = parser.parse_args()
  if args.smoke:
    args.songs, args.seconds, args.reps = 2, (1.0, 2.0), 1
  config = run.get_config(args.model, args.smoke)
  sep = run.make_separator(config, args.smoke)
  t, rate = sep.tiling, config.data.sample_rate
  window = jnp.asarray(np.resize(run.song(min(60.0, 2 * t.input_length / run.FILE_RATE + 1))[::2],
                                 (1, t.input_length, 2)))
  forward = sep.engine._forward.lower(sep.engine.variables, window).compile()
  jax.block_until_ready(forward(sep.engine.variables, window))
  window_s = run.best_time(lambda: forward(sep.engine.variables, window), args.reps)
  sep.engine._forward = forward

  lengths = np.random.default_rng(0).uniform(*args.seconds, args.songs)
  with tempfile.TemporaryDirectory() as tmp:
    folder = pathlib.Path(tmp) / "album"
    folder.mkdir()
    model_frames = []
    for i, seconds in enumerate(lengths):
      run.write_wav(folder / f"song{i:02d}.wav", float(seconds))
      model_frames.append(round(round(seconds * run.FILE_RATE) * rate / run.FILE_RATE))
    windows = sum(-(-(n + t.overlap) // t.hop) for n in model_frames)
    model_s = windows * window_s
    start = time.perf_counter()
    separate.separate_files(sep, [folder], pathlib.Path(tmp) / "folder")
    folder_s = time.perf_counter() - start
    start = time.perf_counter()
    for path in sorted(folder.iterdir()):
      separate.separate_files(sep, [path], pathlib.Path(tmp) / "one-by-one")
    single_s = time.perf_counter() - start
    averaged = []  # (flags, seconds, passes, windows they compute)
    for shifts in args.shifts or ([0] if args.flip else []):
      sep_n = separate.Separator(sep.engine, shifts=shifts, flip=args.flip)
      passes = sep_n.passes
      start = time.perf_counter()
      separate.separate_files(sep_n, [folder], pathlib.Path(tmp) / f"shifts{shifts}")
      averaged.append((f"--shifts={shifts}" + " --flip" * args.flip, time.perf_counter() - start,
                       len(passes), sum(-(-(n + p.delay + t.overlap) // t.hop)
                                        for n in model_frames for p in passes)))
  audio_s = float(lengths.sum())
  print(f"{args.model}: {args.songs} songs, {audio_s:.0f} s of 44.1 kHz stereo audio, "
        f"{windows} windows of {t.input_length} samples ({window_s:.3f} s each)")
  for name, seconds in (("model only", model_s), ("folder (read ahead)", folder_s),
                        ("one file at a time", single_s)):
    print(f"  {name:20s} {seconds:7.1f} s  {audio_s / seconds:6.2f} audio s/s  "
          f"{seconds / model_s:5.3f} x model only")
  for name, seconds, passes, computed in averaged:
    print(f"  {name:20s} {seconds:7.1f} s  {audio_s / seconds:6.2f} audio s/s  "
          f"{seconds / model_s:5.3f} x model only  {seconds / folder_s:5.2f} x folder  "
          f"({passes} passes, {computed} windows: {computed / windows:.2f} x)")


if __name__ == "__main__":
  main()

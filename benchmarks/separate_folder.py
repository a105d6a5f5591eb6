"""End-to-end against model-only time for separating a folder of songs.

  python benchmarks/separate_folder.py                  # deep M4, 10 songs of 40 to 80 s
  python benchmarks/separate_folder.py --config=experiments/shallow.py --songs=4 --seconds=30
  python benchmarks/separate_folder.py --smoke      # a tiny M4, 2 songs of 1-2 s (CI)
  python benchmarks/separate_folder.py --songs=4 --shifts=1,2,4 [--flip]   # averaging's cost

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

import pathlib
import re
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from waveunet_jax import console, separate

import common

FLAGS = flags.FLAGS


NUMBER = re.compile(r"\d+(\.\d*)?|\.\d+")


def numbers(values: list[str], count: tuple[int, ...] | None = None) -> bool:
  """absl validator: every value a number (`count`: how many there may be)."""
  return all(NUMBER.fullmatch(v) for v in values) and (count is None or len(values) in count)


def _define_flags() -> None:
  flags.DEFINE_string("config", common.DEEP_M4, "the network's config (PATH[:VARIANT])")
  flags.DEFINE_integer("songs", 10, "songs in the folder")
  flags.DEFINE_list("seconds", ["40", "80"], "shortest and longest song (one value: every "
                    "song that long)")
  flags.DEFINE_integer("reps", 3, "timings of the window, best kept")
  flags.DEFINE_list("shifts", [], "time the folder again with each of these --shifts")
  flags.DEFINE_bool("flip", False, "and --flip (a row without shifts if --shifts is not given)")
  flags.DEFINE_bool("smoke", False,
                    "a tiny network of --config's design, 2 songs of 1 to 2 s, one timing")
  flags.register_validator("config", common.valid_configs)
  flags.register_validator("seconds", lambda v: numbers(v, (1, 2)),
                           message="one or two lengths in seconds, e.g. 40,80")
  flags.register_validator("shifts", lambda v: all(s.isdigit() for s in v),
                           message="whole numbers, e.g. 1,2,4")


def main(argv: list[str]) -> None:
  console.no_arguments(argv)
  if FLAGS.smoke:
    songs, span, reps = 2, (1.0, 2.0), 1
  else:
    songs, reps = FLAGS.songs, FLAGS.reps
    span = (float(FLAGS.seconds[0]), float(FLAGS.seconds[-1]))  # shortest, longest
  config = common.get_config(FLAGS.config, FLAGS.smoke)
  sep = common.make_separator(config, FLAGS.smoke)
  t, rate = sep.tiling, config.data.sample_rate
  window = jnp.asarray(np.resize(common.song(min(60.0, 2 * t.input_length / common.FILE_RATE + 1))[::2],
                                 (1, t.input_length, 2)))
  forward = sep.engine._forward.lower(sep.engine.variables, window).compile()
  jax.block_until_ready(forward(sep.engine.variables, window))
  window_s = common.best_time(lambda: forward(sep.engine.variables, window), reps)
  sep.engine._forward = forward

  lengths = np.random.default_rng(0).uniform(*span, songs)
  with tempfile.TemporaryDirectory() as tmp:
    folder = pathlib.Path(tmp) / "album"
    folder.mkdir()
    model_frames = []
    for i, seconds in enumerate(lengths):
      common.write_wav(folder / f"song{i:02d}.wav", float(seconds))
      model_frames.append(round(round(seconds * common.FILE_RATE) * rate / common.FILE_RATE))
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
    for shifts in [int(n) for n in FLAGS.shifts] or ([0] if FLAGS.flip else []):
      sep_n = separate.Separator(sep.engine, shifts=shifts, flip=FLAGS.flip)
      passes = sep_n.passes
      start = time.perf_counter()
      separate.separate_files(sep_n, [folder], pathlib.Path(tmp) / f"shifts{shifts}")
      averaged.append((f"--shifts={shifts}" + " --flip" * FLAGS.flip, time.perf_counter() - start,
                       len(passes), sum(-(-(n + p.delay + t.overlap) // t.hop)
                                        for n in model_frames for p in passes)))
  audio_s = float(lengths.sum())
  print(f"{common.label(FLAGS.config)}: {songs} songs, {audio_s:.0f} s of 44.1 kHz stereo audio, "
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
  console.run_program(main, _define_flags, usage_status=2)

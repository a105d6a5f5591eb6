"""Training-input throughput: examples/s and audio seconds/s of input_pipeline.

  python benchmarks/input_pipeline.py [--tracks 6 --seconds 60 --batches 30] [--batch 16]
  python benchmarks/input_pipeline.py --smoke     # tiny networks, 2 s tracks: that it runs

Makes a synthetic corpus (MUSDB18-HQ layout, 44.1 kHz), prepares it for the shallow
and the deep (M4) configs at their training lengths, then times training batches
after a warm-up batch. "audio s/s" counts the target (output) audio per second of
wall time, at the model's rate; the training step consumes the same unit. --batch
sets one batch size for both configs, e.g. the 16 of run.py's GPU figures: against
a GPU's steps/s x 16 it says whether the pipeline keeps up (measured on this
machine's cores, not the GPU host's).
"""

import argparse
import pathlib
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import tensorflow as tf  # noqa: E402

import run  # noqa: E402  (benchmarks/run.py: the configs and their tiny versions)
from experiments import deep, shallow  # noqa: E402
from waveunet_jax import input_pipeline, prepare, synthetic  # noqa: E402

# The configs' training batch sizes: the seed's 8 (shallow) and the paper's 16 (deep).
CONFIGS = {"shallow": (shallow.get_config, 8), "deep M4": (lambda: deep.get_config("M4"), 16)}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--tracks", type=int, default=6, help="training tracks to generate")
  parser.add_argument("--seconds", type=float, default=60.0, help="length of each track")
  parser.add_argument("--batches", type=int, default=30, help="batches to time per config")
  parser.add_argument("--batch", type=int, help="batch size for both configs (default: 8 and 16)")
  parser.add_argument("--smoke", action="store_true",
                      help="tiny networks (run.py's), 2 tracks of 3 s, 2 batches of 2")
  args = parser.parse_args()
  if args.smoke:
    args.tracks, args.seconds, args.batches, args.batch = 1, 3.0, 2, 2
  tf.config.set_visible_devices([], "GPU")
  with tempfile.TemporaryDirectory() as tmp:
    root = pathlib.Path(tmp) / "musdb"
    start = time.perf_counter()
    synthetic.write_corpus(root, num_train=args.tracks + 1, num_test=0,
                           seconds=args.seconds, seed=0)
    print(f"corpus: {args.tracks + 1} tracks of {args.seconds:.0f} s in "
          f"{time.perf_counter() - start:.1f} s")
    valid = [p.name for p in sorted((root / "train").iterdir())][:1]
    print(f"{'config':<10} {'batch':>5} {'prepare s':>9} {'examples/s':>10} {'audio s/s':>10}")
    for name, (get_config, batch_size) in CONFIGS.items():
      batch_size = args.batch or batch_size
      config = run.smoke_config(name) if args.smoke else get_config()
      config.data.data_dir = str(pathlib.Path(tmp) / "data")
      start = time.perf_counter()
      prepare.prepare(config, root, config.data.data_dir, wav=True, valid_tracks=valid)
      prepare_seconds = time.perf_counter() - start
      batches = input_pipeline.as_numpy(input_pipeline.train_dataset(config, batch_size, seed=0))
      next(iter(batches))  # warm-up: opens files, fills shuffle buffers
      iterator = iter(batches)
      start = time.perf_counter()
      for _ in range(args.batches):
        batch = next(iterator)
      elapsed = time.perf_counter() - start
      examples = args.batches * batch_size
      audio = examples * batch["sources"].shape[2] / config.data.sample_rate
      print(f"{name:<10} {batch_size:>5} {prepare_seconds:>9.1f} {examples / elapsed:>10.1f} "
            f"{audio / elapsed:>10.1f}")


if __name__ == "__main__":
  main()

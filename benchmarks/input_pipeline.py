"""Training input: examples/s of each sampler alone (tf.data, and the device sampler),
and training steps/s with each, at the same batch.

  python benchmarks/input_pipeline.py [--tracks 6 --seconds 60 --batches 30] [--batch 16]
  python benchmarks/input_pipeline.py --smoke     # tiny networks, 3 s tracks: that it runs

Makes a synthetic corpus (MUSDB18-HQ layout, 44.1 kHz) and prepares it for each config
at its training lengths. Then:

* samplers alone, for the shallow and the deep (M4) configs: training batches of
  `tfdata.train_dataset` (tf.data, as numpy on the host) and of
  `device_data.DeviceSampler` (on the JAX devices, waited for), timed after a warm-up
  batch. "audio s/s" counts the target (output) audio per second of wall time at the
  model's rate: the unit the training step consumes. --batch sets one batch size for
  both configs, e.g. the 16 of run.py's GPU figures.
* training, for M4 and `experiments/small.py`: `--train_steps` steps of the real
  trainer (`train.Trainer`: the same step, batches and loop calls as `main`) with each
  sampler (config.data.pipeline 'tfdata' and 'device') at batch --train_batch, timed
  after a warm-up step, on the JAX devices of this process.

On a CPU the samplers and the train step share the same cores; on a GPU or TPU host
tf.data runs on the host's cores and the device sampler on the accelerator.
"""

import pathlib
import tempfile
import time

import jax
import tensorflow as tf
from absl import flags

from waveunet_jax import console, parallel
from waveunet_jax.data import builder as builder_lib
from waveunet_jax.data import device as device_data
from waveunet_jax.data import generator, records, tfdata

import common

FLAGS = flags.FLAGS

# The samplers' batch sizes: the configs' own, the seed's 8 (shallow) and the paper's 16.
SAMPLED = {common.SHALLOW: 8, common.DEEP_M4: 16}
TRAINED = (common.DEEP_M4, common.SMALL)


def prepared(config, root: pathlib.Path, data_dir: pathlib.Path, valid: list[str]) -> float:
  """Prepares `root` for `config` into `data_dir` (once per layout); seconds taken."""
  config.data.data_dir = str(data_dir)
  start = time.perf_counter()
  builder_lib.prepare(config, root, data_dir, wav=True, valid_tracks=valid)
  return time.perf_counter() - start


def device_sampler(config, batch_size: int) -> device_data.DeviceSampler:
  """The sampler training builds, on every device of this process."""
  layout = parallel.data_parallel()
  shards = list(range(layout.size))
  shares = [device_data.read_share(config, d, layout.size) for d in shards]
  return device_data.DeviceSampler(config.data, layout, records.layout_for(config), shares,
                                   shards, batch_size=batch_size, seed=0)


def sampler_rates(config, batch_size: int, batches: int) -> tuple[float, float]:
  """Examples/s of tf.data and of the device sampler."""
  iterator = iter(tfdata.as_numpy(tfdata.train_dataset(config, batch_size,
                                                                       seed=0)))
  next(iterator)  # warm-up: opens files, fills shuffle buffers
  start = time.perf_counter()
  for _ in range(batches):
    next(iterator)
  tfdata_rate = batches * batch_size / (time.perf_counter() - start)
  sampler = device_sampler(config, batch_size)
  jax.block_until_ready(sampler.batch(0))  # warm-up: compiles
  start = time.perf_counter()
  for step in range(1, batches + 1):
    batch = sampler.batch(step)
  jax.block_until_ready(batch)
  return tfdata_rate, batches * batch_size / (time.perf_counter() - start)


def training_rate(config, pipeline: str, steps: int, workdir: pathlib.Path) -> float:
  """Steps/s of the trainer's loop body (batch, step) with `pipeline`."""
  timed = common.TimedTrainer(config, pipeline, workdir)
  try:
    return timed.steps_per_s(steps)
  finally:
    timed.close()


def _define_flags() -> None:
  flags.DEFINE_integer("tracks", 6, "training tracks to generate")
  flags.DEFINE_float("seconds", 60.0, "length of each track")
  flags.DEFINE_integer("batches", 30, "batches to time per sampler")
  flags.DEFINE_integer("batch", None, "sampler batch for both configs (default: 8 and 16)")
  flags.DEFINE_integer("train_batch", 4, "batch of the training rows")
  flags.DEFINE_integer("train_steps", 5, "steps timed per training row")
  flags.DEFINE_bool("smoke", False, "tiny networks, 2 tracks of 3 s, 2 batches and steps of 2")


def main(argv: list[str]) -> None:
  console.no_arguments(argv)
  if FLAGS.smoke:
    tracks, seconds, batches, batch, train_batch, train_steps = 1, 3.0, 2, 2, 2, 2
  else:
    tracks, seconds, batches, batch = FLAGS.tracks, FLAGS.seconds, FLAGS.batches, FLAGS.batch
    train_batch, train_steps = FLAGS.train_batch, FLAGS.train_steps
  tf.config.set_visible_devices([], "GPU")
  with tempfile.TemporaryDirectory() as tmp:
    tmp = pathlib.Path(tmp)
    root = tmp / "musdb"
    start = time.perf_counter()
    generator.write_corpus(root, num_train=tracks + 1, num_test=0,
                           seconds=seconds, seed=0)
    print(f"corpus: {tracks + 1} tracks of {seconds:.0f} s in "
          f"{time.perf_counter() - start:.1f} s; JAX devices: {jax.device_count()} x "
          f"{jax.devices()[0].device_kind}")
    valid = [p.name for p in sorted((root / "train").iterdir())][:1]
    print("\nsamplers alone (examples/s; output audio s/s)")
    print(f"{'config':<10} {'batch':>5} {'prepare s':>9} {'tf.data':>9} {'device':>9} "
          f"{'tf.data a':>10} {'device a':>10}")
    for spec, batch_size in SAMPLED.items():
      name, batch_size = common.label(spec), batch or batch_size
      config = common.get_config(spec, FLAGS.smoke)
      prepare_seconds = prepared(config, root, tmp / "data", valid)
      tfdata_rate, device = sampler_rates(config, batch_size, batches)
      output_seconds = records.layout_for(config).output_length / config.data.sample_rate
      print(f"{name:<10} {batch_size:>5} {prepare_seconds:>9.1f} {tfdata_rate:>9.1f} {device:>9.1f} "
            f"{tfdata_rate * output_seconds:>10.1f} {device * output_seconds:>10.1f}", flush=True)
    print(f"\ntraining (steps/s at batch {train_batch})")
    print(f"{'config':<10} {'batch':>5} {'tf.data':>9} {'device':>9}")
    for spec in TRAINED:
      name = common.label(spec)
      config = common.get_config(spec, FLAGS.smoke)
      config.batch_size = train_batch
      prepared(config, root, tmp / "data", valid)
      rates = [training_rate(config, pipeline, train_steps, tmp / f"run-{name}-{pipeline}")
               for pipeline in ("tfdata", "device")]
      print(f"{name:<10} {train_batch:>5} {rates[0]:>9.3f} {rates[1]:>9.3f}", flush=True)


if __name__ == "__main__":
  console.run_program(main, _define_flags, usage_status=2)

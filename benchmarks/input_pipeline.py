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

import argparse
import pathlib
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import jax  # noqa: E402
import tensorflow as tf  # noqa: E402

import run  # noqa: E402  (benchmarks/run.py: the configs and their tiny versions)
from experiments import deep, shallow, small  # noqa: E402
from waveunet_jax import parallel, train  # noqa: E402
from waveunet_jax import workdir as workdir_lib  # noqa: E402
from waveunet_jax.data import device as device_data  # noqa: E402
from waveunet_jax.data import tfdata  # noqa: E402
from waveunet_jax.data import builder as builder_lib  # noqa: E402
from waveunet_jax.data import records  # noqa: E402
from waveunet_jax.data import generator  # noqa: E402

CONFIGS = {"shallow": shallow.get_config, "deep M4": lambda: deep.get_config("M4"),
           "small": small.get_config}
# The samplers' batch sizes: the configs' own, the seed's 8 (shallow) and the paper's 16.
SAMPLED = {"shallow": 8, "deep M4": 16}
TRAINED = ("deep M4", "small")


def config_of(name: str, smoke_size: bool):
  """CONFIGS[name], or with --smoke a tiny network of its design (run.py's for shallow
  and M4)."""
  if not smoke_size:
    return CONFIGS[name]()
  if name != "small":
    return run.smoke_config(name)
  config = small.get_config()
  config.model.update(run.smoke_config("deep M4").model.to_dict())
  config.data.output_length = 1024
  return config


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


class TimedTrainer:
  """The real trainer (`train.Trainer`: the same step, batches and loop calls as
  `main`) with `pipeline`, compiled and warmed up, ready to time its loop body."""

  def __init__(self, config, pipeline: str, workdir: pathlib.Path):
    config.data.pipeline = pipeline
    self.trainer = train.Trainer(config, workdir_lib.Workdir(workdir))
    try:
      self.state, tx = self.trainer.new_state(0)
      self.trainer.compile_steps(tx)
      self.data = self.trainer.sampler(workdir_lib.Progress(), self.state)
      self.step = 0
      self.steps_per_s(1)  # warm-up: compiles
    except BaseException:
      self.trainer.close()
      raise

  def steps_per_s(self, steps: int) -> float:
    """Steps/s of the next `steps` steps of the loop body (batch, step)."""
    start = time.perf_counter()
    for _ in range(steps):
      self.state, metrics = self.trainer.train_step(self.state, self.data.batch(self.step))
      self.step += 1
    jax.block_until_ready(metrics)
    return steps / (time.perf_counter() - start)

  def close(self) -> None:
    self.trainer.close()


def training_rate(config, pipeline: str, steps: int, workdir: pathlib.Path) -> float:
  """Steps/s of the trainer's loop body (batch, step) with `pipeline`."""
  timed = TimedTrainer(config, pipeline, workdir)
  try:
    return timed.steps_per_s(steps)
  finally:
    timed.close()


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--tracks", type=int, default=6, help="training tracks to generate")
  parser.add_argument("--seconds", type=float, default=60.0, help="length of each track")
  parser.add_argument("--batches", type=int, default=30, help="batches to time per sampler")
  parser.add_argument("--batch", type=int, help="sampler batch for both configs (default: 8 "
                      "and 16)")
  parser.add_argument("--train_batch", type=int, default=4, help="batch of the training rows")
  parser.add_argument("--train_steps", type=int, default=5, help="steps timed per training row")
  parser.add_argument("--smoke", action="store_true",
                      help="tiny networks, 2 tracks of 3 s, 2 batches and steps of 2")
  args = parser.parse_args()
  if args.smoke:
    args.tracks, args.seconds, args.batches, args.batch = 1, 3.0, 2, 2
    args.train_batch, args.train_steps = 2, 2
  tf.config.set_visible_devices([], "GPU")
  with tempfile.TemporaryDirectory() as tmp:
    tmp = pathlib.Path(tmp)
    root = tmp / "musdb"
    start = time.perf_counter()
    generator.write_corpus(root, num_train=args.tracks + 1, num_test=0,
                           seconds=args.seconds, seed=0)
    print(f"corpus: {args.tracks + 1} tracks of {args.seconds:.0f} s in "
          f"{time.perf_counter() - start:.1f} s; JAX devices: {jax.device_count()} x "
          f"{jax.devices()[0].device_kind}")
    valid = [p.name for p in sorted((root / "train").iterdir())][:1]
    print("\nsamplers alone (examples/s; output audio s/s)")
    print(f"{'config':<10} {'batch':>5} {'prepare s':>9} {'tf.data':>9} {'device':>9} "
          f"{'tf.data a':>10} {'device a':>10}")
    for name, batch_size in SAMPLED.items():
      batch_size = args.batch or batch_size
      config = config_of(name, args.smoke)
      prepare_seconds = prepared(config, root, tmp / "data", valid)
      tfdata_rate, device = sampler_rates(config, batch_size, args.batches)
      seconds = records.layout_for(config).output_length / config.data.sample_rate
      print(f"{name:<10} {batch_size:>5} {prepare_seconds:>9.1f} {tfdata_rate:>9.1f} {device:>9.1f} "
            f"{tfdata_rate * seconds:>10.1f} {device * seconds:>10.1f}", flush=True)
    print(f"\ntraining (steps/s at batch {args.train_batch})")
    print(f"{'config':<10} {'batch':>5} {'tf.data':>9} {'device':>9}")
    for name in TRAINED:
      config = config_of(name, args.smoke)
      config.batch_size = args.train_batch
      prepared(config, root, tmp / "data", valid)
      rates = [training_rate(config, pipeline, args.train_steps, tmp / f"run-{name}-{pipeline}")
               for pipeline in ("tfdata", "device")]
      print(f"{name:<10} {args.train_batch:>5} {rates[0]:>9.3f} {rates[1]:>9.3f}", flush=True)


if __name__ == "__main__":
  main()

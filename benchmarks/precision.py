"""bfloat16 against float32 training: the same steps from the same start.

  python benchmarks/precision.py                 # experiments/shallow.py:smoke, 200 steps
  python benchmarks/precision.py --configs=experiments/shallow.py:smoke,experiments/deep.py:M4 \
      --json=OUT.json
  python benchmarks/precision.py --smoke    # 3 steps, one short track: that it runs (CI)

For each config (`PATH[:VARIANT]` as the programs' --config takes it, e.g.
`experiments/shallow.py:smoke`, `experiments/deep.py:M4`) trains twice,
`config.model.dtype` float32 then bfloat16, from the same initial parameters
(`train_steps.create_state`, the config's seed; parameters stay float32 in both) on
the same batches, with the project's own optimiser and step
(`train_steps.stage_optimizer`, `train_steps.train_step`, the main stage's batch size and learning
rate). Nothing here needs TensorFlow, so it runs on a GPU machine that has none:
batches are not the tf.data pipeline's but the same recipe in numpy, seeded by the
step: tracks from `generator.make_track` at the model's rate, summed into the
config's sources (`stems.combine`) and zero-padded by the context at the edges as
`prepare` does; random crops of the input length; the augmentations of
`config.data.augmentations` (gain, channel_swap, remix, polarity); the mix is the sum of the
augmented sources and the targets their central output samples (`models.lengths`).

Printed per config and dtype: the loss averaged over the first and the last 10 % of
the steps, whether every loss was finite, compile time and steps/s; then bfloat16's
last-10 % loss relative to float32's and the verdict: bfloat16 stays finite and
within --tolerance (10 %) of float32. The exit status is 1 if a verdict fails.
`--json` writes the figures and every step's loss.
"""

from __future__ import annotations

import functools
import json
import math
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import flags

from waveunet_jax import console, models, stems
from waveunet_jax import steps as train_steps
from waveunet_jax.data import generator

import common

FLAGS = flags.FLAGS

DTYPES = ("float32", "bfloat16")


class Batches:
  """Training batches like `input_pipeline.train_dataset`'s, in numpy: `batch(step)`
  depends only on the seed and the step."""

  def __init__(self, config: ml_collections.ConfigDict, batch_size: int, tracks: int,
               seconds: float, seed: int):
    model = models.from_config(config)
    self.size = models.lengths(model, config.data.output_length)
    self.data, self.batch_size, self.seed = config.data, batch_size, seed
    # Long enough for a crop whatever the context.
    seconds = max(seconds, 2 * self.size.input_length / config.data.sample_rate)
    self.tracks = []
    for i in range(tracks):
      track = generator.make_track(seed * 1000 + i, seconds, config.data.sample_rate)
      sources = stems.combine({s: track[s] for s in stems.STEMS}, config.model.sources)
      block = np.stack(list(sources.values()))  # [S, T, 2]
      if model.num_channels == 1:
        block = block.mean(axis=2, keepdims=True)
      pad = self.size.offset
      self.tracks.append(np.pad(block, ((0, 0), (pad, pad), (0, 0))))

  def batch(self, step: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng([self.seed, step])
    n, length = self.batch_size, self.size.input_length
    crops = []
    for t in rng.integers(len(self.tracks), size=n):
      track = self.tracks[t]
      start = rng.integers(track.shape[1] - length + 1)
      crops.append(track[:, start:start + length])
    sources = np.stack(crops)  # [B, S, T_in, C]
    sources = self.augment(sources, rng)
    offset, out = self.size.offset, self.size.output_length
    return {"mix": sources.sum(axis=1),
            "sources": np.ascontiguousarray(sources[:, :, offset:offset + out])}

  def augment(self, sources: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    data = self.data
    b, s = sources.shape[:2]
    for name in data.augmentations:
      if name == "gain":
        low, high = data.gain_range
        sources = sources * rng.uniform(low, high, (b, s, 1, 1)).astype(np.float32)
      elif name == "channel_swap":
        swap = rng.uniform(size=b) < 0.5
        sources = np.where(swap[:, None, None, None], sources[..., ::-1], sources)
      elif name == "remix":
        others = np.stack([sources[rng.permutation(b), i] for i in range(s)], axis=1)
        take = rng.uniform(size=(b, s, 1, 1)) < data.remix_probability
        sources = np.where(take, others, sources)
      elif name == "polarity":
        sources = np.where(rng.uniform(size=(b, s, 1, 1)) < 0.5, -sources, sources)
      else:
        raise ValueError(f"config.data.augmentations: unknown augmentation {name!r}")
    return sources.astype(np.float32)


def train_losses(config: ml_collections.ConfigDict, dtype: str, init: train_steps.TrainState,
                 batches: Batches, steps: int) -> dict:
  """Trains `steps` steps in `dtype` from `init`: every step's loss and the timings."""
  config = ml_collections.ConfigDict(config.to_dict())
  config.model.dtype = dtype
  model = models.from_config(config)
  tx = train_steps.stage_optimizer(config, 0, init.params)
  # Copies: the step donates its state, and `init` serves both dtypes.
  state = jax.tree_util.tree_map(jnp.copy, train_steps.fresh_state(config, tx, init))
  step = jax.jit(functools.partial(
      train_steps.train_step, model=model, tx=tx,
      loss=train_steps.Loss.from_config(config, batches.size.output_length)), donate_argnums=0)
  start = time.perf_counter()
  state, metrics = step(state, batches.batch(0))
  losses = [jax.block_until_ready(metrics["loss"])]
  compile_s = time.perf_counter() - start
  start = time.perf_counter()
  for i in range(1, steps):
    state, metrics = step(state, batches.batch(i))
    losses.append(metrics["loss"])
  losses = np.asarray(jax.device_get(losses), np.float64)
  seconds = time.perf_counter() - start
  tail = max(1, math.ceil(steps / 10))
  finite = bool(np.all(np.isfinite(losses)))
  return {"dtype": dtype, "compile_s": compile_s,
          "steps_per_s": (steps - 1) / seconds if steps > 1 else None,
          "first_loss": float(np.mean(losses[:tail])), "last_loss": float(np.mean(losses[-tail:])),
          "averaged_steps": tail, "finite": finite,
          "first_nonfinite_step": None if finite else int(np.argmin(np.isfinite(losses))),
          "losses": losses.tolist()}


def compare(spec: str, config: ml_collections.ConfigDict, steps: int, batch_size: int | None,
            tracks: int | None, seconds: float | None, seed: int, tolerance: float) -> dict:
  batch_size = batch_size or train_steps.stage_settings(config, 0)[0]
  batches = Batches(config, batch_size, tracks or config.data.synthetic_tracks,
                    seconds or config.data.synthetic_seconds, seed)
  # One start for both: the float32 model's initial state (parameters are float32
  # whatever the compute dtype).
  config.model.dtype = "float32"
  init = train_steps.create_state(config, models.from_config(config), optax.identity())
  runs = {dtype: train_losses(config, dtype, init, batches, steps) for dtype in DTYPES}
  f32, bf16 = runs["float32"]["last_loss"], runs["bfloat16"]["last_loss"]
  gap = (bf16 - f32) / f32 if f32 else float("inf")
  within = (runs["float32"]["finite"] and runs["bfloat16"]["finite"]
            and bool(np.isfinite(gap)) and abs(gap) <= tolerance)
  return {"config": spec, "steps": steps, "batch": batch_size,
          "learning_rate": train_steps.stage_settings(config, 0)[1],
          "input_length": batches.size.input_length, "output_length": batches.size.output_length,
          "sample_rate": config.data.sample_rate, "runs": runs, "bfloat16_gap": gap,
          "tolerance": tolerance, "within_tolerance": within}


def report(result: dict) -> str:
  r = result
  lines = [f"{r['config']}: batch {r['batch']}, {r['steps']} steps, lr {r['learning_rate']:g}, "
           f"input {r['input_length']} / output {r['output_length']} samples at "
           f"{r['sample_rate']} Hz",
           f"  {'dtype':<9} {'first 10 %':>11} {'last 10 %':>11} {'finite':>6} "
           f"{'compile s':>9} {'steps/s':>8}"]
  for run in r["runs"].values():
    rate = "-" if run["steps_per_s"] is None else f"{run['steps_per_s']:.1f}"
    finite = "yes" if run["finite"] else f"no ({run['first_nonfinite_step']})"
    lines.append(f"  {run['dtype']:<9} {run['first_loss']:>11.5f} {run['last_loss']:>11.5f} "
                 f"{finite:>6} {run['compile_s']:>9.1f} {rate:>8}")
  lines.append(f"  bfloat16 vs float32, last 10 % of steps: {r['bfloat16_gap']:+.2%}; finite and "
               f"within {r['tolerance']:.0%}: {'yes' if r['within_tolerance'] else 'NO'}")
  return "\n".join(lines)


def _define_flags() -> None:
  flags.DEFINE_list("configs", ["experiments/shallow.py:smoke"],
                    "comma-separated configs, PATH[:VARIANT] as --config takes them")
  flags.DEFINE_integer("steps", 200, "training steps per dtype", lower_bound=1)
  flags.DEFINE_integer("batch", None, "batch size (default: the config's)")
  flags.DEFINE_integer("tracks", None, "synthetic tracks (default: the config's)")
  flags.DEFINE_float("seconds", None, "track length (default: the config's)")
  flags.DEFINE_integer("seed", 0, "seeds the tracks and the batches")
  flags.DEFINE_float("tolerance", 0.10,
                     "largest |bfloat16 - float32| / float32 of the final loss")
  flags.DEFINE_string("json", None, "also write the figures to this file")
  flags.DEFINE_bool("smoke", False, "3 steps on one short track (default config): that it runs")


def main(argv: list[str]) -> int:
  console.no_arguments(argv)
  steps, tracks, seconds = ((3, 1, 2.0) if FLAGS.smoke else
                            (FLAGS.steps, FLAGS.tracks, FLAGS.seconds))
  try:
    configs = [(spec, common.load_config(spec, "--configs")) for spec in FLAGS.configs]
  except ValueError as e:
    sys.exit(f"error: {e}")
  facts = common.machine()
  out = {"jax": facts["jax"], "backend": facts["backend"], "device": facts["device"],
         "default_matmul_precision": str(jax.config.jax_default_matmul_precision),
         "results": []}
  print(f"jax {out['jax']}, backend {out['backend']} ({out['device']})", flush=True)
  for spec, config in configs:
    result = compare(spec, config, steps, FLAGS.batch, tracks, seconds, FLAGS.seed,
                     FLAGS.tolerance)
    out["results"].append(result)
    print(report(result), flush=True)
    if FLAGS.json:  # after each config, so a run cut short keeps what it measured
      pathlib.Path(FLAGS.json).write_text(json.dumps(out, indent=1))
  return 0 if all(r["within_tolerance"] for r in out["results"]) else 1


if __name__ == "__main__":
  console.run_program(main, _define_flags, usage_status=2)

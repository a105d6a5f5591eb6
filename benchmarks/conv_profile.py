"""Where the time of a training step or a separation window goes: every convolution
of the network timed alone, against the whole compiled computation.

  python benchmarks/conv_profile.py --config=experiments/shallow.py --mode=train --batch=1
  python benchmarks/conv_profile.py --config=experiments/deep.py:M4 --mode=separate
  python benchmarks/conv_profile.py --smoke     # a tiny network: that it runs (CI)

XLA:CPU runs convolutions asynchronously, so its trace (jax.profiler) shows when a
convolution was launched, not how long it ran. This script times each one instead:
it takes the input shape, kernel and padding of every conv of `models.WaveUNet`
(`flops.convs`) at the benchmark's sizes (`common.compiled_train_step`: the config's
training lengths, or the Separator's default window at batch 1), compiles that conv alone, and times it
(`--mode=train` also times its two backward convs: the gradients with respect to the
input and to the kernel). Each line gives milliseconds and GFLOP/s (`flops.py`'s
count: the same multiply-adds for a conv and each of its gradients); the last lines compare the sum over all convs with the whole step or
window, whose remainder is everything else (normalisation, activations, resampling,
concatenation, the loss and the optimiser), and with the machine's matmul.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from absl import flags

from waveunet_jax import console, flops, models
from waveunet_jax.separation import jax_engine

import common

FLAGS = flags.FLAGS


def conv_timings(conv: flops.Conv, train: bool, reps: int) -> list[tuple[float, float]]:
  """[(seconds, flops)] of the conv, and with `train` of its input and kernel gradients
  (each the conv's own multiply-adds)."""
  shape, (kernel,), features = conv.input_shape, conv.kernel_size, conv.output_shape[-1]
  padding = conv.padding
  x, w = jnp.ones(shape), jnp.ones((kernel, shape[-1], features))
  op = lambda x, w: jax.lax.conv_general_dilated(x, w, (1,), padding,
                                                 dimension_numbers=("NWC", "WIO", "NWC"))
  y = jax.eval_shape(op, x, w)
  y = jnp.ones(y.shape)
  parts = [(jax.jit(op), (x, w))]
  if train:
    parts += [(jax.jit(lambda g: jax.vjp(lambda x: op(x, w), x)[1](g)), (y,)),
              (jax.jit(lambda g: jax.vjp(lambda w: op(x, w), w)[1](g)), (y,))]
  out = []
  for fn, args in parts:
    compiled = fn.lower(*args).compile()
    jax.block_until_ready(compiled(*args))
    out.append((common.best_time(lambda: compiled(*args), reps), conv.flops))
  return out


def whole(config, mode: str, batch: int, reps: int) -> tuple[float, float, tuple]:
  """(seconds, flops, input shape) of the compiled train step or separation window."""
  model = models.from_config(config)
  if mode == "train":
    step, state, data, _ = common.compiled_train_step(config, batch)
    one_step = common.step_runner(step, state, data)
    jax.block_until_ready(one_step())
    return common.best_time(one_step, reps), flops.train_step_flops(config, batch), tuple(data["mix"].shape)
  sep = jax_engine.separator_from_model(model, common.init_variables(model), config.data.sample_rate)
  window = jnp.zeros((1, sep.tiling.input_length, model.num_channels))
  forward = sep.engine._forward.lower(sep.engine.variables, window).compile()
  jax.block_until_ready(forward(sep.engine.variables, window))
  return (common.best_time(lambda: forward(sep.engine.variables, window), reps),
          flops.forward(model, 1, sep.tiling.input_length), tuple(window.shape))


def _define_flags() -> None:
  flags.DEFINE_string("config", common.DEEP_M4, "the network's config (PATH[:VARIANT])")
  flags.register_validator("config", common.valid_configs)
  flags.DEFINE_enum("mode", "train", ("train", "separate"), "time a train step or a "
                    "separation window")
  flags.DEFINE_integer("batch", 1, "training batch (train mode)")
  flags.DEFINE_integer("reps", 2, "timings per figure, best kept")
  flags.DEFINE_bool("smoke", False,
                    "a tiny network of the config's design, one timing: that it runs")


def main(argv: list[str]) -> None:
  console.no_arguments(argv)
  reps = 1 if FLAGS.smoke else FLAGS.reps
  config = common.get_config(FLAGS.config, FLAGS.smoke)
  model = models.from_config(config)
  train = FLAGS.mode == "train"
  step_s, step_flops, input_shape = whole(config, FLAGS.mode, FLAGS.batch, reps)
  parts = ("forward", "grad input", "grad kernel") if train else ("forward",)
  print(f"{common.label(FLAGS.config)}, {FLAGS.mode}, input {input_shape}; per conv: ms, GFLOP/s of "
        + ", ".join(parts))
  totals = [[0.0, 0.0] for _ in parts]
  for conv in flops.convs(model, input_shape[0], input_shape[1]):
    timings = conv_timings(conv, train, reps)
    for total, (seconds, count) in zip(totals, timings):
      total[0] += seconds
      total[1] += count
    print(f"  {str(conv.input_shape):>20} k={conv.kernel_size[0]:<3d} -> {conv.output_shape[-1]:<4d}"
          + "".join(f"  {s * 1e3:8.1f} ms {f / s / 1e9:6.1f}" for s, f in timings), flush=True)
  conv_s, conv_flops = sum(t[0] for t in totals), sum(t[1] for t in totals)
  for name, (seconds, count) in zip(parts, totals):
    print(f"{name:>12}: {seconds:7.3f} s  {count / seconds / 1e9:6.1f} GFLOP/s")
  print(f"{'all convs':>12}: {conv_s:7.3f} s  {conv_flops / conv_s / 1e9:6.1f} GFLOP/s, "
        f"{conv_flops / step_flops:.1%} of the FLOPs")
  print(f"{'whole ' + FLAGS.mode:>12}: {step_s:7.3f} s  {step_flops / step_s / 1e9:6.1f} GFLOP/s; "
        f"all convs alone take {conv_s / step_s:.0%} of its time")
  n = 256 if FLAGS.smoke else 4096
  print(f"{'matmul':>12}: {common.matmul_flops(n=n) / 1e9:.1f} GFLOP/s ({n}^3 float32)")


if __name__ == "__main__":
  console.run_program(main, _define_flags, usage_status=2)

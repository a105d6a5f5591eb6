"""Prints what a config's network is: parameters, lengths, receptive field, FLOPs.

  python -m waveunet_jax.summary --config=experiments/deep.py:M5
  python -m waveunet_jax.summary --config=experiments/shallow.py --json

Nothing is computed on real data: parameters come from shape inference and FLOPs
from `flops.forward` (the network's convolutions, the project's one FLOP count) at the
config's training lengths.
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any

from absl import app, flags

from waveunet_jax import console, shared_flags

if TYPE_CHECKING:
  import ml_collections

FLAGS = flags.FLAGS


def _define_flags() -> None:
  # Defined only when run as a program (shared_flags says why).
  shared_flags.define("config")
  flags.DEFINE_bool("json", False, "Print one JSON object instead of a table.")


def count_params(tree: Any) -> int:
  import jax

  return sum(x.size for x in jax.tree_util.tree_leaves(tree))


def summarize(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The figures `summary` prints, as a dict (keys as in the --json output)."""
  import jax
  import jax.numpy as jnp

  from waveunet_jax import flops, models

  model = models.from_config(config)
  if config.data.output_length < 1:
    raise models.ConfigError(
        f"config.data.output_length: must be positive, got {config.data.output_length}")
  size = models.lengths(model, config.data.output_length)
  mix = jax.ShapeDtypeStruct((1, size.input_length, model.num_channels), jnp.float32)
  variables = jax.eval_shape(model.init, jax.random.key(0), mix)
  forward_flops = flops.forward(model, 1, size.input_length)
  rate = config.data.sample_rate
  field = models.receptive_field(model)
  return {
      "params": count_params(variables),
      "trainable_params": count_params(variables["params"]),
      "input_length": size.input_length,
      "output_length": size.output_length,
      "receptive_field": field,
      "flops_per_output_second": forward_flops * rate / size.output_length,
      "sample_rate": rate,
      "num_levels": model.num_levels,
      "sources": list(model.sources),
  }


def format_table(s: dict[str, Any]) -> str:
  rate = s["sample_rate"]
  rows = [
      ("sources", ", ".join(s["sources"])),
      ("levels", s["num_levels"]),
      ("parameters", f"{s['params']:,} ({s['params'] / 1e6:.2f} M)"),
      ("trainable parameters", f"{s['trainable_params']:,}"),
      ("sample rate", f"{rate} Hz"),
      ("input length", f"{s['input_length']:,} samples ({s['input_length'] / rate:.3f} s)"),
      ("output length", f"{s['output_length']:,} samples ({s['output_length'] / rate:.3f} s)"),
      ("receptive field", f"{s['receptive_field']:,} samples ({s['receptive_field'] / rate:.3f} s)"),
      ("FLOPs per output second", f"{s['flops_per_output_second'] / 1e9:.1f} GFLOP"),
  ]
  width = max(len(name) for name, _ in rows)
  return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def main(argv: list[str]) -> None:
  import jax

  from waveunet_jax import models

  jax.config.update("jax_platforms", "cpu")  # shapes and XLA's cost analysis only
  console.no_arguments(argv)
  if FLAGS.config is None:
    raise app.UsageError("--config is required, e.g. --config=experiments/shallow.py")
  try:
    figures = summarize(FLAGS.config)
  except models.ConfigError as e:
    sys.exit(f"error: {e}")
  print(json.dumps(figures) if FLAGS.json else format_table(figures))


def cli() -> None:
  """The program `python -m waveunet_jax.summary` (and the console script
  waveunet-summary)."""
  console.run_program(main, _define_flags, install=("jax", "summary"))


if __name__ == "__main__":
  cli()

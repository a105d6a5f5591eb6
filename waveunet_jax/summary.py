"""Prints what a config's network is: parameters, lengths, receptive field, FLOPs.

  python -m waveunet_jax.summary --config=experiments/deep.py:M5
  python -m waveunet_jax.summary --config=experiments/shallow.py --json

Nothing is computed on real data: parameters come from shape inference and FLOPs
from XLA's cost analysis of the forward pass at the config's training lengths.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from absl import app, flags
from ml_collections import config_flags

import waveunet_jax
from waveunet_jax import console, models

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, optionally with an argument: experiments/deep.py:M1.",
    lock_config=True)
_JSON = flags.DEFINE_bool("json", False, "Print one JSON object instead of a table.")


def count_params(tree: Any) -> int:
  return sum(x.size for x in jax.tree_util.tree_leaves(tree))


def summarize(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The figures `summary` prints, as a dict (keys as in the --json output)."""
  model = models.WaveUNet(**config.model)
  if config.data.output_length < 1:
    raise models.ConfigError(
        f"config.data.output_length: must be positive, got {config.data.output_length}")
  size = models.lengths(model, config.data.output_length)
  mix = jax.ShapeDtypeStruct((1, size.input_length, model.num_channels), jnp.float32)
  variables = jax.eval_shape(model.init, jax.random.key(0), mix)
  forward = jax.jit(lambda v, x: model.apply(v, x, train=False))
  cost = forward.lower(variables, mix).cost_analysis()
  if isinstance(cost, (list, tuple)):  # older jax returns one dict per device
    cost = cost[0]
  rate = config.data.sample_rate
  field = models.receptive_field(model)
  return {
      "params": count_params(variables),
      "trainable_params": count_params(variables["params"]),
      "input_length": size.input_length,
      "output_length": size.output_length,
      "receptive_field": field,
      "flops_per_output_second": cost["flops"] * rate / size.output_length,
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
  console.setup()
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if _CONFIG.value is None:
    raise app.UsageError("--config is required, e.g. --config=experiments/shallow.py")
  try:
    figures = summarize(_CONFIG.value)
  except models.ConfigError as e:
    sys.exit(f"error: {e}")
  print(json.dumps(figures) if _JSON.value else format_table(figures))


if __name__ == "__main__":
  jax.config.update("jax_platforms", "cpu")
  app.run(main, flags_parser=waveunet_jax.parse_flags)

"""`python -m waveunet_jax.summary`: the figures people read before training."""

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from experiments import deep, shallow
from waveunet_jax import summary

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_m4_has_the_paper_lengths():
  figures = summary.summarize(deep.get_config("M4"))
  assert (figures["input_length"], figures["output_length"]) == (147443, 16389)
  assert figures["params"] == figures["trainable_params"]  # no BatchNorm statistics
  # The receptive field lies between the valid-padding context and the input.
  assert 147443 - 16389 + 1 <= figures["receptive_field"] <= 147443


def test_shallow_is_about_forty_million_parameters_and_flops_are_the_convs():
  config = shallow.get_config()
  config.data.output_length = 8192  # FLOPs per second do not depend on it (same padding)
  figures = summary.summarize(config)
  assert 38e6 < figures["trainable_params"] < 46e6
  features = (48, 48, 144, 240, 336, 432, 528)
  # BatchNorm mean and variance of every down and up level and of the bottleneck.
  assert figures["params"] - figures["trainable_params"] == 2 * (2 * sum(features) + 624)
  # By hand: 2 FLOPs per multiply-add of each conv; with same padding a conv of kernel
  # k over n samples has n k - p (p + 1) taps inside the signal (p = (k - 1) / 2), and
  # XLA does not count the padding.
  def conv(n, k, c_in, c_out):
    p = (k - 1) // 2
    return 2 * (n * k - p * (p + 1)) * c_in * c_out

  n = [8192 // 4 ** max(i - 1, 0) for i in range(7)]  # length of level i
  flops = sum(conv(n_i, 31, c_in, c) for n_i, c_in, c in zip(n, (2,) + features[:-1], features))
  flops += conv(n[-1] // 4, 15, 528, 624)
  flops += sum(conv(n_i, 15, c + below, c)
               for n_i, c, below in zip(n, features, features[1:] + (624,)))
  flops += conv(8192, 1, 2 + 48, 2)
  expected = flops * config.data.sample_rate / 8192
  assert expected <= figures["flops_per_output_second"] < 1.05 * expected


def run_summary(*args):
  return subprocess.run([sys.executable, "-m", "waveunet_jax.summary", *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=300)


def test_cli_json_and_table():
  result = run_summary("--config=experiments/deep.py:M5", "--json")
  assert result.returncode == 0, result.stderr
  figures = json.loads(result.stdout)
  for key in ("params", "trainable_params", "input_length", "output_length",
              "receptive_field", "flops_per_output_second"):
    assert key in figures
  assert (figures["input_length"], figures["output_length"]) == (147443, 16389)
  # M5's learned upsampling adds one weight per feature of each level it upsamples.
  m4 = summary.summarize(deep.get_config("M4"))
  assert figures["params"] - m4["params"] == sum(24 * (i + 1) for i in range(1, 13))
  assert np.isfinite(figures["flops_per_output_second"])

  result = run_summary("--config=experiments/shallow.py")
  assert result.returncode == 0, result.stderr
  assert "parameters" in result.stdout and "229,376 samples" in result.stdout


def test_cli_bad_config_is_one_line_naming_the_field():
  result = run_summary("--config=experiments/deep.py", "--config.model.upsampling=cubic")
  assert result.returncode != 0
  assert result.stderr.strip().splitlines() == [
      "error: config.model.upsampling: unknown value 'cubic'; choose one of 'linear', 'learned'"]
  result = run_summary("--config=experiments/deep.py", "--config.data.output_length=0")
  assert result.returncode != 0
  assert "config.data.output_length" in result.stderr


@pytest.mark.parametrize("args,message", [
    (["--config=experiments/nope.py"],
     "error: --config=experiments/nope.py: no such file (configs live in experiments/)"),
    (["--config=experiments/deep.py", "--config.model.colour=red"], "colour"),
])
def test_cli_bad_flags_are_one_line(args, message):
  result = run_summary(*args)
  assert result.returncode != 0
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr


def test_the_small_config_is_m4_narrowed():
  from experiments import small

  config, m4 = small.get_config(), deep.get_config("M4")
  for field in ("padding", "output", "num_channels", "sources", "downsampling", "upsampling"):
    assert config.model[field] == m4.model[field], field
  assert config.data.sample_rate == m4.data.sample_rate == 22050
  assert len(config.model.features) == len(m4.model.features) == 12
  figures = summary.summarize(config)
  assert 1.0e6 < figures["params"] < 1.3e6

"""The FLOP count (flops.py): the analytic count against XLA's CPU cost analysis of the
real train step, and the pieces the analytic count is made of."""

import itertools

import numpy as np
import pytest

from experiments import shallow
from helpers import tiny_data_config
from waveunet_jax import flops, models

# XLA counts the elementwise work too (BatchNorm, activations, interpolation, loss,
# optimiser), which the analytic count leaves out: 2 to 4 % of these narrow test
# configs (under 1 % of the full M4: 68.62 against 68.16 GFLOP per example).
TOLERANCE = 0.05


def shallow_config():
  """shallow.py:smoke (same padding, max pooling, BatchNorm, no conv biases) on 8192
  samples, to compile faster."""
  config = shallow.get_config("smoke")
  config.data.output_length, config.loss.central_length = 8192, 4096
  return config


def valid_config():
  """A 3-level M4-like network (valid padding, decimation, learned upsampling, conv
  biases, difference output), wide enough that the convs dominate as in M4."""
  config = tiny_data_config(8000, 4096, features=(16, 24, 32), bottleneck_features=48)
  config.model.upsampling = "learned"
  return config


@pytest.mark.parametrize("name,get_config", [("shallow", shallow_config), ("valid", valid_config)])
def test_analytic_count_matches_cpu_cost_analysis_of_the_train_step(name, get_config):
  config = get_config()
  analytic = flops.train_step_flops(config, 2)
  counted = flops.cpu_cost_analysis(config, 2)
  assert analytic <= counted <= (1 + TOLERANCE) * analytic, (name, analytic, counted)


def test_forward_matches_cpu_cost_analysis():
  config = shallow_config()
  model = models.from_config(config)
  size = models.lengths(model, config.data.output_length)
  analytic = flops.forward(model, 2, size.input_length)
  counted = flops.cpu_cost_analysis(config, 2, train=False)
  assert analytic <= counted <= (1 + TOLERANCE) * analytic


def test_training_is_three_forwards_less_the_first_convs_input_gradient():
  config = valid_config()
  model = models.from_config(config)
  size = models.lengths(model, config.data.output_length)
  convs = flops.convs(model, 3, size.input_length)
  # The first conv reads the mix, which does not depend on the parameters; all others do.
  assert [c.input_grad for c in convs] == [False] + [True] * (len(convs) - 1)
  assert convs[0].input_shape == (3, size.input_length, 2)
  assert flops.train_step_flops(config, 3) == 3 * flops.forward(model, 3, size.input_length) - convs[0].flops
  # Linear in the batch.
  assert flops.train_step_flops(config, 3) == 3 * flops.train_step_flops(config, 1)


def test_conv_flops_are_the_multiply_adds_on_the_signal():
  config = valid_config()
  model = models.from_config(config)
  size = models.lengths(model, config.data.output_length)
  first = flops.convs(model, 1, size.input_length)[0]
  # Valid padding: every tap is on the signal, 2 K C_in C_out T_out.
  k, t_out = model.down_kernel_sizes[0], size.input_length - model.down_kernel_sizes[0] + 1
  assert first.output_shape == (1, t_out, model.features[0])
  assert first.flops == 2 * k * 2 * model.features[0] * t_out


@pytest.mark.parametrize("n,k,low,stride,dilation", list(itertools.product(
    (1, 4, 9), (1, 3, 5), (0, 1, 2), (1, 2), (1, 2))))
def test_signal_taps_against_brute_force(n, k, low, stride, dilation):
  high = low
  out = (n + low + high - dilation * (k - 1) - 1) // stride + 1
  if out < 1:
    return
  brute = sum(0 <= o * stride + j * dilation - low < n for o in range(out) for j in range(k))
  assert flops._signal_taps(n, out, k, low, stride, dilation) == brute


def test_utilisation_against_the_chips_dense_peaks():
  # H100: dense TF32 494.7 TFLOP/s for float32 networks, bf16 989.
  assert flops.utilisation(494.7e12 / 2, "NVIDIA H100 80GB HBM3", "float32") == pytest.approx(0.5)
  assert flops.utilisation(98.9e12, "NVIDIA H100 80GB HBM3", "bfloat16") == pytest.approx(0.1)
  assert flops.utilisation(1e12, "cpu", "float32") is None
  assert np.isclose(flops.utilisation(197e12, "TPU v5 lite", "bfloat16"), 1.0)

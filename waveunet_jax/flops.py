"""The one FLOP count of a config's network: the same figure on every backend.

Utilisation (achieved FLOP/s over a chip's peak) needs a count of the work that does not
depend on who counts. XLA's cost analysis does not give one: on a GPU it counts every
cuDNN/cuBLAS custom call, i.e. every convolution, as -1 FLOP (jax-ml/jax#22249), so a
GPU's `compiled.cost_analysis()` reports the non-convolution remainder, about 1/300 of
the work. This module owns the count instead, two ways that tests/test_flops.py holds
together: analytic from the layer shapes (`forward`, `train_step_flops`), and XLA's on
the CPU backend (`cpu_cost_analysis`). Every utilisation figure of the project divides
`train_step_flops` or `forward` by the time and by a peak of `accelerators`
(`utilisation`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from waveunet_jax import accelerators, models


@dataclasses.dataclass(frozen=True)
class Conv:
  """One convolution of a forward pass: its shapes and forward FLOPs."""

  input_shape: tuple[int, ...]  # [B, T_in, C_in]
  output_shape: tuple[int, ...]  # [B, T_out, C_out]
  kernel_size: tuple[int, ...]
  padding: tuple[tuple[int, int], ...]  # (low, high) zeros per spatial dimension
  flops: float  # forward: 2 x the multiply-adds on the signal, batch included
  input_grad: bool  # whether training computes its input gradient


def _signal_taps(n: int, out: int, k: int, low_pad: int, stride: int, dilation: int) -> int:
  """(output sample, kernel tap) pairs of one spatial dimension whose input sample lies
  on the signal [0, n), not on padding: the multiply-adds a convolution must do."""
  taps = 0
  for j in range(k):
    # Output o reads input o * stride + j * dilation - low_pad.
    first = max(0, -(-(low_pad - j * dilation) // stride))
    last = min(out - 1, (n - 1 + low_pad - j * dilation) // stride)
    taps += max(0, last - first + 1)
  return taps


def _conv_flops(eqn) -> Conv:
  lhs, rhs = (v.aval for v in eqn.invars[:2])
  out = eqn.outvars[0].aval
  p = eqn.params
  numbers = p["dimension_numbers"]
  lhs_spec, rhs_spec, out_spec = numbers.lhs_spec, numbers.rhs_spec, numbers.out_spec
  if any(d != 1 for d in p["lhs_dilation"]):
    raise NotImplementedError("transposed convolutions (lhs_dilation) are not counted")
  pairs = 1
  for i, (low, _) in enumerate(p["padding"]):
    pairs *= _signal_taps(lhs.shape[lhs_spec[2 + i]], out.shape[out_spec[2 + i]],
                          rhs.shape[rhs_spec[2 + i]], low, p["window_strides"][i],
                          p["rhs_dilation"][i])
  batch, c_out = out.shape[out_spec[0]], out.shape[out_spec[1]]
  c_in_per_group = rhs.shape[rhs_spec[1]]
  flops = 2.0 * batch * pairs * c_in_per_group * c_out // p["batch_group_count"]
  kernel = tuple(rhs.shape[d] for d in rhs_spec[2:])
  padding = tuple(tuple(pair) for pair in p["padding"])
  return Conv(tuple(lhs.shape), tuple(out.shape), kernel, padding, flops, input_grad=False)


def _sub_jaxprs(eqn):
  for value in eqn.params.values():
    for v in value if isinstance(value, (tuple, list)) else (value,):
      jaxpr = getattr(v, "jaxpr", v)
      if hasattr(jaxpr, "eqns"):
        yield jaxpr


def _walk(jaxpr, dependent: set, out: list) -> None:
  """Appends every conv of `jaxpr` to `out`; `dependent` holds the variables that
  depend on the parameters (grows as the walk goes)."""
  depends = lambda v: not hasattr(v, "val") and v in dependent  # literals have .val
  for eqn in jaxpr.eqns:
    inputs = [depends(v) for v in eqn.invars]
    if eqn.primitive.name == "conv_general_dilated":
      out.append(dataclasses.replace(_conv_flops(eqn), input_grad=inputs[0]))
    for sub in _sub_jaxprs(eqn):
      inner = set()
      if len(sub.invars) == len(eqn.invars):
        inner = {s for s, d in zip(sub.invars, inputs) if d}
      elif any(inputs):  # another arity (loops, branches): assume every input depends
        inner = set(sub.invars)
      _walk(sub, inner, out)
    if any(inputs):
      dependent.update(eqn.outvars)


def convs(model: models.WaveUNet, batch: int, input_length: int) -> list[Conv]:
  """Every convolution of `model`'s forward pass (training mode) on a
  `[batch, input_length, channels]` mix, in call order."""
  mix = jax.ShapeDtypeStruct((batch, input_length, model.num_channels), jnp.float32)
  variables = jax.eval_shape(model.init, jax.random.key(0), mix)
  params, rest = variables["params"], {k: v for k, v in variables.items() if k != "params"}

  def apply(params, rest, mix):
    return model.apply({"params": params, **rest}, mix, train=True, mutable=list(rest))

  closed = jax.make_jaxpr(apply)(params, rest, mix)
  n_params = len(jax.tree_util.tree_leaves(params))
  found = []
  _walk(closed.jaxpr, set(closed.jaxpr.invars[:n_params]), found)
  return found


def forward(model: models.WaveUNet, batch: int, input_length: int) -> float:
  """FLOPs of one forward pass (separation, or training's forward half).

  Every convolution of the network (read from the traced forward pass by `convs`, so
  every config and variant is covered) costs 2 FLOP per multiply-add, 2 * C_in * C_out
  per (output sample, kernel tap) pair whose tap falls on the signal, batch included:
  2 K C_in C_out T_out less the taps on same padding's zeros, which XLA does not count
  either (it matters only at the deepest levels, a few samples long). Everything else
  (BatchNorm, LeakyReLU, interpolation, pooling, the loss, the optimiser) is elementwise
  work of O(1) FLOP per activation or parameter against the convs' O(K C); it is left
  out."""
  return sum(c.flops for c in convs(model, batch, input_length))


def train_step_flops(config: Any, batch_size: int) -> float:
  """FLOPs of one training step of `batch_size` examples at the config's training
  lengths: each conv's forward, kernel gradient and (where its input depends on the
  parameters) input gradient, each the same multiply-adds.

  Training is forward + backward, and each conv's backward is its input gradient and
  its kernel gradient, each made of exactly the forward's multiply-adds (the same
  (output, tap) pairs, transposed), so a training step is 3x the forward's convolutions
  (counted as `forward` counts them), less the input gradient of the convs whose input
  does not depend on the parameters (the first conv, on the mix: autodiff never
  computes it). XLA's CPU count of the train step (`cpu_cost_analysis`) is 0.3 %
  (shallow.py) and 0.7 % (deep.py:M4) above this count, up to 4 % for the narrow test
  configs (tests/test_flops.py)."""
  model = models.from_config(config)
  size = models.lengths(model, config.data.output_length)
  return sum(c.flops * (3 if c.input_grad else 2)
             for c in convs(model, batch_size, size.input_length))


def per_example(config: Any) -> dict[str, float]:
  """{'train': FLOPs per training example, 'forward': FLOPs per forward example} at
  the config's training lengths (both scale linearly with the batch)."""
  model = models.from_config(config)
  size = models.lengths(model, config.data.output_length)
  return {"train": train_step_flops(config, 1), "forward": forward(model, 1, size.input_length)}


def cpu_cost_analysis(config: Any, batch_size: int, *, train: bool = True) -> float:
  """XLA's FLOP count of the jitted train step (`steps.jit_steps`) or of the forward
  pass at the config's training lengths, compiled for the CPU backend whatever the
  default backend is (compile only: nothing runs).

  The train step is the function and shardings training runs, on a one-device CPU mesh,
  so this is the true count on a machine whose default backend is a GPU too. It counts
  the elementwise work as well; slow for the full configs (minutes of compiling), hence
  not the figure the benchmarks divide by."""
  from waveunet_jax import parallel
  from waveunet_jax import steps

  cpu = jax.devices("cpu")[:1]
  layout = parallel.data_parallel(cpu)
  model = models.from_config(config)
  with jax.default_device(cpu[0]):
    state, tx = steps.abstract_state(config, model, layout)
  batch = steps.abstract_batch(model, config.data.output_length, layout, batch_size)
  if train:
    step, _ = steps.jit_steps(config, model, tx, layout)
    compiled = step.lower(state, batch).compile()
  else:
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    fn = jax.jit(lambda v, x: model.apply(v, x, train=False))
    compiled = fn.lower(variables, batch["mix"]).compile()
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # older jax: one dict per device
    cost = cost[0]
  return float(cost["flops"])


def utilisation(flops_per_s: float, device_kind: str, dtype: str) -> float | None:
  """`flops_per_s` as a share of the dense peak of the chip `device_kind` names for a
  network computing in `dtype` (`accelerators.peak`); None for a chip not in the table
  (a CPU)."""
  chip = accelerators.find(device_kind)
  peak = chip and accelerators.peak(chip, dtype)
  return flops_per_s / peak if peak else None

"""The same two networks in PyTorch, timed beside ours on this machine: the "other
framework" that the efficiency targets of `benchmarks/run.py` are held against.

  pip install torch   # not a dependency of the project; a CPU build is enough
  python benchmarks/torch_reference.py            # ~10 min on 2 CPU cores
  python benchmarks/torch_reference.py --quick    # batch 1, one timed step
  python benchmarks/torch_reference.py --smoke    # tiny networks: that it runs (CI)
  python benchmarks/torch_reference.py --json OUT.json

For the shallow and the deep (M4) networks it builds the PyTorch network from the
same config, copies the JAX network's initial variables into it and checks that the
two give the same sources (max abs difference < 1e-4, in training and in inference
mode), so the timings below are of one network. Then, in this one process and
alternating JAX and PyTorch so that both see the same machine, it takes the best of
`--reps` timings of:

* train: one optimiser step on a random batch at the config's lengths: forward in
  training mode, `loss.scale` x MSE on the loss's central crop, backward, Adam (or
  AMSGrad) with the config's L2 on the same kernels. JAX: the compiled train step
  (`common.compiled_train_step`). PyTorch: eager, channels-first (its native layout),
  oneDNN convolutions.
* separate: the inference forward of one separation window (batch 1, the
  Separator's default window). JAX: the Separator's compiled forward. PyTorch:
  eval mode under `torch.inference_mode()`.

Both are divided into the same FLOP count (`flops.py`: the network's convolutions,
training 3x the forward's), so each "% of matmul" compares times; the matmul is each
framework's own 4096^3 float32 product, and the table also gives every time as
PyTorch's over ours. PyTorch's OpenMP threads are told not to spin-wait
(`OMP_WAIT_POLICY=PASSIVE`), so that they cannot hold the cores during JAX's timings.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import sys

import numpy as np

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch starts its threads
try:
  import torch
  import torch.nn.functional as F
except ImportError:
  sys.exit("error: benchmarks/torch_reference.py needs PyTorch, which the project does "
           "not install: pip install torch (a CPU build is enough)")

import jax
from absl import flags

from waveunet_jax import console, flops, models
from waveunet_jax import steps as train_steps
from waveunet_jax.separation import jax_engine

import common

FLAGS = flags.FLAGS


class TorchWaveUNet(torch.nn.Module):
  """`models.WaveUNet` for the two benchmarked layouts, channels-first:
  mix `[B, C, T_in]` -> sources `[B, S, C, T_out]`."""

  def __init__(self, model: models.WaveUNet):
    super().__init__()
    if model.upsampling != "linear" or (model.padding == "same") != (model.downsampling == "maxpool"):
      raise NotImplementedError("only valid+decimate and same+maxpool with linear upsampling")
    self.model = model
    same, norm = model.padding == "same", model.normalization == "batchnorm"

    def block(cin: int, cout: int, k: int) -> _Block:
      layers = {"conv": torch.nn.Conv1d(cin, cout, k, padding=(k - 1) // 2 if same else 0,
                                        bias=not norm)}
      if norm:  # PyTorch's momentum weighs the new statistic, flax's the old one.
        layers["norm"] = torch.nn.BatchNorm1d(cout, eps=models.BATCHNORM_EPSILON,
                                              momentum=1.0 - model.batchnorm_momentum)
      return _Block(layers, model.negative_slope)

    features, channels = list(model.features), model.num_channels
    inputs = [channels] + features[:-1]
    self.down = torch.nn.ModuleList(
        block(cin, f, k) for cin, f, k in zip(inputs, features, model.down_kernel_sizes))
    self.bottleneck = block(features[-1], model.bottleneck_features, model.bottleneck_kernel_size)
    below = features[1:] + [model.bottleneck_features]  # channels arriving from below
    self.up = torch.nn.ModuleList(
        block(f + b, f, k) for f, b, k in zip(features, below, model.up_kernel_sizes))
    self.estimated = model.num_sources - (model.output == "difference")
    k = model.output_kernel_size
    self.output = torch.nn.Conv1d(channels + features[0], self.estimated * channels, k,
                                  padding=(k - 1) // 2 if same else 0)

  def upsample(self, x: torch.Tensor, factor: int) -> torch.Tensor:
    if factor == 1:
      return x
    if self.model.padding == "valid":  # coarse sample q at fine position f q, ends kept
      return F.interpolate(x, size=factor * (x.shape[-1] - 1) + 1, mode="linear",
                           align_corners=True)
    return F.interpolate(x, scale_factor=factor, mode="linear", align_corners=False)

  def forward(self, mix: torch.Tensor) -> torch.Tensor:
    m = self.model
    x, skips = mix, []
    for block, factor in zip(self.down, m.downsampling_factors):
      x = block(x)
      skips.append(x)
      if factor > 1:
        x = x[..., ::factor] if m.downsampling == "decimate" else F.max_pool1d(x, factor)
    x = self.bottleneck(x)
    for i in reversed(range(m.num_levels)):
      x = self.upsample(x, m.downsampling_factors[i])
      x = self.up[i](torch.cat([_crop(skips[i], x.shape[-1]), x], dim=1))
    mix = _crop(mix, x.shape[-1])
    x = torch.tanh(self.output(torch.cat([mix, x], dim=1)))
    sources = x.reshape(x.shape[0], self.estimated, m.num_channels, x.shape[-1])
    if m.output == "difference":
      sources = torch.cat([sources, (_crop(mix, x.shape[-1]) - sources.sum(1))[:, None]], dim=1)
    return sources

  def load_flax(self, variables) -> None:
    """Copies flax variables (kernels `[k, in, out]`) into this network."""
    params, stats = variables["params"], variables.get("batch_stats", {})
    tensor = lambda a: torch.from_numpy(np.asarray(a, np.float32).copy())
    with torch.no_grad():
      for name, block in self.named_blocks():
        conv = params[name]["conv"]
        block.conv.weight.copy_(tensor(conv["kernel"]).permute(2, 1, 0))
        if block.conv.bias is not None:
          block.conv.bias.copy_(tensor(conv["bias"]))
        if block.norm is not None:
          block.norm.weight.copy_(tensor(params[name]["norm"]["scale"]))
          block.norm.bias.copy_(tensor(params[name]["norm"]["bias"]))
          block.norm.running_mean.copy_(tensor(stats[name]["norm"]["mean"]))
          block.norm.running_var.copy_(tensor(stats[name]["norm"]["var"]))
      self.output.weight.copy_(tensor(params["output"]["kernel"]).permute(2, 1, 0))
      self.output.bias.copy_(tensor(params["output"]["bias"]))

  def named_blocks(self):
    yield from ((f"down_{i}", b) for i, b in enumerate(self.down))
    yield "bottleneck", self.bottleneck
    yield from ((f"up_{i}", b) for i, b in enumerate(self.up))

  def l2_kernels(self, pattern: str) -> list[torch.nn.Parameter]:
    """The kernels that `pattern` (`config.optim.l2_mask`) selects in the flax tree."""
    regex = re.compile(pattern)
    return [block.conv.weight for name, block in self.named_blocks()
            if regex.fullmatch(f"{name}/conv/kernel")]


class _Block(torch.nn.Module):
  """conv -> [BatchNorm] -> LeakyReLU, as `models.ConvBlock`."""

  def __init__(self, layers: dict, negative_slope: float):
    super().__init__()
    self.conv, self.norm, self.negative_slope = layers["conv"], layers.get("norm"), negative_slope

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    x = self.conv(x)
    if self.norm is not None:
      x = self.norm(x)
    return F.leaky_relu(x, self.negative_slope)


def _crop(x: torch.Tensor, length: int) -> torch.Tensor:
  start = (x.shape[-1] - length) // 2  # the rule of models.centre_crop
  return x[..., start:start + length]


# --------------------------------------------------------------------------- #
# The check that both are one network.
# --------------------------------------------------------------------------- #


def check_same_network(config, variables, net: TorchWaveUNet) -> float:
  """Max abs difference of the sources, inference and training mode, on a short
  random mix; raises if the two networks differ."""
  model = models.from_config(config)
  size = models.lengths(model, 4 * models.total_downsampling(model))
  mix = np.random.default_rng(1).uniform(-.5, .5, (2, size.input_length, model.num_channels))
  mix = mix.astype(np.float32)
  worst = 0.0
  for train in (False, True):
    ours = model.apply(variables, mix, train=train, mutable=["batch_stats"] if train else False)
    ours = np.asarray(ours[0] if train else ours)                  # [B, S, T, C]
    net.train(train)
    with torch.no_grad():
      theirs = net(torch.from_numpy(mix).transpose(1, 2)).permute(0, 1, 3, 2).numpy()
    worst = max(worst, float(np.max(np.abs(ours - theirs))))
  net.train(False)
  if worst > 1e-4:
    raise AssertionError(f"{model.sources}: PyTorch and JAX networks differ by {worst}")
  return worst


# --------------------------------------------------------------------------- #
# Timings.
# --------------------------------------------------------------------------- #


def torch_matmul_flops(n: int = 4096, reps: int = 5) -> float:
  a = torch.randn(n, n)
  a @ a
  return 2 * n ** 3 / common.best_time(lambda: a @ a, reps)


def torch_train_step(config, net: TorchWaveUNet, batch_size: int, crop: tuple[int, int]):
  model, optim = net.model, config.optim
  size = models.lengths(model, config.data.output_length)
  rng = np.random.default_rng(0)
  mix = torch.from_numpy(rng.uniform(-.5, .5, (batch_size, model.num_channels, size.input_length))
                         .astype(np.float32))
  sources = torch.from_numpy(rng.uniform(-.5, .5, (batch_size, model.num_sources,
                                                   model.num_channels, size.output_length))
                             .astype(np.float32))
  decayed = {id(p) for p in net.l2_kernels(optim.l2_mask)}
  groups = [{"params": [p for p in net.parameters() if id(p) in decayed],
             "weight_decay": 2 * optim.weight_decay},  # Keras L2, as optim.make_optimizer
            {"params": [p for p in net.parameters() if id(p) not in decayed], "weight_decay": 0.0}]
  opt = torch.optim.Adam(groups, lr=optim.learning_rate, betas=(optim.b1, optim.b2),
                         eps=optim.eps, amsgrad=optim.amsgrad)
  start, length = crop
  net.train(True)

  def step():
    opt.zero_grad(set_to_none=True)
    error = (net(mix) - sources)[..., start:start + length]
    loss = config.loss.scale * error.pow(2).mean()
    loss.backward()
    opt.step()
    return loss.item()

  return step


def figures(spec: str, quick: bool, reps: int, smoke: bool = False) -> dict:
  config = common.get_config(spec, smoke)
  name = common.label(spec)
  model = models.from_config(config)
  variables = common.init_variables(model)
  net = TorchWaveUNet(model)
  net.load_flax(variables)
  out = {"max_abs_difference": check_same_network(config, variables, net)}
  print(name, "same network, max abs difference", out["max_abs_difference"], flush=True)

  batch = 1 if quick else 2
  jax_step, state, data, size = common.compiled_train_step(config, batch)
  train_flops = flops.train_step_flops(config, batch)
  torch_step = torch_train_step(config, net, batch, train_steps.loss_crop(config, size.output_length))
  jax_train = common.step_runner(jax_step, state, data)
  jax.block_until_ready(jax_train())  # warm-ups
  torch_step()

  sep = jax_engine.separator_from_model(model, variables, config.data.sample_rate)
  window = np.resize(common.song(30.0)[::2], (1, sep.tiling.input_length, model.num_channels))
  window = window.astype(np.float32)
  forward = sep.engine._forward.lower(sep.engine.variables, window).compile()
  sep_flops = flops.forward(model, 1, sep.tiling.input_length)
  window_t = torch.from_numpy(window).transpose(1, 2).contiguous()
  net.eval()

  def torch_forward(module):
    with torch.inference_mode():
      module(window_t)

  variants = {"jax": (jax_train, lambda: jax.block_until_ready(forward(sep.engine.variables, window))),
              "torch": (torch_step, lambda: torch_forward(net))}
  torch_forward(net)
  jax.block_until_ready(forward(sep.engine.variables, window))

  times = {v: {"train": [], "separate": []} for v in variants}
  for _ in range(reps):  # alternate, so a busy moment hits both
    for v, (train_fn, sep_fn) in variants.items():
      net.train(True)
      times[v]["train"].append(common.best_time(train_fn, 1))
      net.eval()
      times[v]["separate"].append(common.best_time(sep_fn, 1))
  out.update({"batch": batch, "train_gflop": train_flops / 1e9, "window_input": sep.tiling.input_length,
              "separate_gflop": sep_flops / 1e9})
  for v in variants:
    t, s = min(times[v]["train"]), min(times[v]["separate"])
    out[v] = {"train_s": t, "train_flops_per_s": train_flops / t,
              "separate_s": s, "separate_flops_per_s": sep_flops / s}
    print(name, v, out[v], flush=True)
  return out


def table(r: dict) -> str:
  lines = [f"machine: {r['machine']['cpu']}, {r['machine']['cores']} cores; jax {jax.__version__}, "
           f"torch {torch.__version__} ({torch.get_num_threads()} threads); mode: {r['mode']}",
           f"matmul 4096^3 float32: jax {r['jax_matmul'] / 1e9:.1f} GFLOP/s, "
           f"torch {r['torch_matmul'] / 1e9:.1f} GFLOP/s"]
  for name, f in r["models"].items():
    lines.append(f"{name}: same network (max abs diff {f['max_abs_difference']:.1e}); "
                 f"train batch {f['batch']}, {f['train_gflop']:.0f} GFLOP/step; separation window "
                 f"{f['window_input']} samples, {f['separate_gflop']:.0f} GFLOP")
    for v in ("jax", "torch"):
      limit = r["jax_matmul"] if v == "jax" else r["torch_matmul"]
      lines.append(
          f"  {v:<14} train {f[v]['train_s']:7.2f} s  {f[v]['train_flops_per_s'] / 1e9:6.1f} GFLOP/s "
          f"({f[v]['train_flops_per_s'] / limit:6.1%} of matmul, x{f[v]['train_s'] / f['jax']['train_s']:.2f})"
          f"   separate {f[v]['separate_s']:6.2f} s  {f[v]['separate_flops_per_s'] / 1e9:6.1f} GFLOP/s "
          f"({f[v]['separate_flops_per_s'] / limit:6.1%}, x{f[v]['separate_s'] / f['jax']['separate_s']:.2f})")
  return "\n".join(lines)


def _define_flags() -> None:
  flags.DEFINE_bool("quick", False, "batch 1, one timing each")
  flags.DEFINE_bool("smoke", False,
                    "as --quick on tiny networks of the same designs: that it runs")
  flags.DEFINE_integer("reps", None, "timings per figure, best kept (default 3, 1 quick)")
  flags.DEFINE_list("models", list(common.NETWORKS), "comma-separated configs (PATH[:VARIANT] each)")
  flags.DEFINE_string("json", None, "also write the figures to this file")
  flags.register_validator("models", common.valid_configs)


def main(argv: list[str]) -> None:
  console.no_arguments(argv)
  quick = FLAGS.quick or FLAGS.smoke
  reps = FLAGS.reps or (1 if quick else 3)
  r = {"mode": "smoke" if FLAGS.smoke else "quick" if quick else "full", "machine": common.machine(),
       "jax_matmul": common.matmul_flops(reps=5), "torch_matmul": torch_matmul_flops(), "models": {}}
  for spec in FLAGS.models:
    r["models"][common.label(spec)] = figures(spec, quick, reps, FLAGS.smoke)
  r["jax_matmul"] = max(r["jax_matmul"], common.matmul_flops(reps=5))
  r["torch_matmul"] = max(r["torch_matmul"], torch_matmul_flops())
  print(table(r))
  if FLAGS.json:
    pathlib.Path(FLAGS.json).write_text(json.dumps(r, indent=1))


if __name__ == "__main__":
  console.run_program(main, _define_flags, usage_status=2)

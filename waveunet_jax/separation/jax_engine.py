"""The JAX engine of the `separator.Separator`: a Flax Wave-U-Net's jitted forward pass
on windows of one shape, the choice of that shape (`tiling`), and a Separator on it in
one call (`separator_from_workdir`, `separator_from_model`).

Windows default to about `DEFAULT_WINDOW_SECONDS` of output at the model's rate, shrunk
if a batch's activations would exceed `WINDOW_MEMORY_BYTES` (by a deliberately high
estimate). For the paper's M4 at 22050 Hz that is windows of 794611 input samples,
663552 kept: 16.5 % of the computed samples are recomputed context
(`Tiling.recomputed_share`), against 89 % with the training length (147443 -> 16389).
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
import pathlib
from typing import Any

import jax
import numpy as np

from waveunet_jax import models, parallel
from waveunet_jax.separation.separator import SeparationError, Separator, Tiling

# Output samples per window (at the model's rate) when `window_seconds` is not given.
DEFAULT_WINDOW_SECONDS = 30.0
# Bound on one batch's activations (estimated) when the window is the default one.
WINDOW_MEMORY_BYTES = 2 << 30
# The longest window asked for by seconds: an hour (a window's activations beyond it
# fit in no device's memory).
MAX_WINDOW_SECONDS = 3600.0


def check_window_seconds(window_seconds: float | None) -> None:
  """ValueError naming --window_seconds unless it is None (the default) or in
  (0, MAX_WINDOW_SECONDS]."""
  if window_seconds is not None and not 0 < window_seconds <= MAX_WINDOW_SECONDS:
    raise ValueError(f"--window_seconds={window_seconds:g}: use a positive number of seconds, "
                     f"at most {MAX_WINDOW_SECONDS:g} (or leave it out)")


def same_padding_margin(model: models.WaveUNet) -> int:
  """Samples dropped at each edge of a same-padding window: the outputs within
  `models.context_reach` of an edge see its zero padding instead of the song."""
  return models.context_reach(model)


def activation_bytes_per_sample(model: models.WaveUNet) -> int:
  """A deliberately high estimate of the forward pass's memory per input sample:
  four float32 tensors as wide as each level's features at its rate (conv output,
  skip, concatenation, up conv). XLA on CPU needs 30 % of it for M4, 70 % for the
  shallow network."""
  floats, rate = 0.0, 1
  for features, factor in zip(model.features, model.downsampling_factors):
    floats += 4 * features / rate
    rate *= factor
  floats += 2 * model.bottleneck_features / rate
  return math.ceil(4 * (floats + model.num_channels * (1 + model.num_sources)))


def tiling(model: models.WaveUNet, sample_rate: int, window_seconds: float | None = None,
           overlap: float = 0.0, batch_size: int = 1) -> Tiling:
  """The windows for `model` (see `separator.Tiling`), asking `models.lengths` for
  every length.

  Args:
    model: the network.
    sample_rate: the model's sample rate (Hz), to turn seconds into samples.
    window_seconds: wanted output per window; None: `DEFAULT_WINDOW_SECONDS`, less if
      `batch_size` windows would need more than `WINDOW_MEMORY_BYTES`.
    overlap: share of a window's output cross-faded with the next window's, in
      [0, 0.5]; rounded to a multiple of the total downsampling.
    batch_size: windows per forward pass (only for the memory bound).
  """
  if not 0.0 <= overlap <= 0.5:
    raise ValueError(f"overlap must be in [0, 0.5], got {overlap}")
  check_window_seconds(window_seconds)
  total = models.total_downsampling(model)
  margin = same_padding_margin(model) if model.padding == "same" else 0
  if window_seconds is None:
    wanted = round(DEFAULT_WINDOW_SECONDS * sample_rate)
    smallest = models.lengths(model, 1)
    context = smallest.input_length - smallest.output_length + 2 * margin
    affordable = WINDOW_MEMORY_BYTES // (batch_size * activation_bytes_per_sample(model))
    wanted = min(wanted, affordable - context - total)  # lengths() rounds up by < total
  else:
    wanted = round(window_seconds * sample_rate)
  size = models.lengths(model, max(wanted, 1) + 2 * margin)
  useful = size.output_length - 2 * margin  # outputs with their full context
  # Whole multiples of the total downsampling, for the kept part and the overlap alike,
  # put every window of every tiling on the same pooling grid of the song.
  whole = useful // total * total
  if whole < total:
    raise ValueError(
        f"--window_seconds={window_seconds}: windows of {size.input_length} samples keep less "
        f"than the total downsampling ({total} samples); use longer windows")
  overlap_length = min(round(overlap * whole / total), whole // total // 2) * total
  keep_start = margin + (useful - whole) // 2
  return Tiling(input_length=size.input_length, hop=whole - overlap_length,
                overlap=overlap_length, keep_start=keep_start,
                pad_left=size.offset + keep_start + overlap_length)


def variables_hash(variables: Any) -> str:
  """SHA-256 of a variables tree: every leaf's path, dtype, shape and bytes."""
  digest = hashlib.sha256()
  for path, leaf in sorted(jax.tree_util.tree_flatten_with_path(variables)[0],
                           key=lambda item: jax.tree_util.keystr(item[0])):
    leaf = np.asarray(leaf)
    digest.update(f"{jax.tree_util.keystr(path)}:{leaf.dtype}:{leaf.shape};".encode())
    digest.update(np.ascontiguousarray(leaf).tobytes())
  return digest.hexdigest()


class JaxEngine:
  """A Flax `models.WaveUNet` on the separator's windows (see `separator.Engine`),
  data-parallel over this process's devices: each forward pass gives every device
  `batch_size / devices` windows (a 4-GPU host separates 4 windows at once).

  Args:
    model: the network.
    variables: its variables (`params`, and `batch_stats` with BatchNorm).
    sample_rate: the rate (Hz) the model works at (`config.data.sample_rate`).
    window_seconds, overlap: see `tiling` (the memory bound is per device).
    batch_size: windows per forward pass (best a multiple of the devices' number: a
      batch is padded to one); None: one per device.
    residual_source: the config's `separation.residual_source` (None: the default rule).
    devices: the devices to use; None: all of this process's (`jax.local_devices()`).
  """

  def __init__(self, model: models.WaveUNet, variables: Any, sample_rate: int, *,
               window_seconds: float | None = None, overlap: float = 0.0,
               batch_size: int | None = None, residual_source: str | None = None,
               devices: list[jax.Device] | None = None):
    devices = list(devices or jax.local_devices())
    batch_size = len(devices) if batch_size is None else batch_size
    if batch_size < 1:
      raise ValueError(f"batch_size must be positive, got {batch_size}")
    self.model = model
    self.sources = tuple(model.sources)
    self.num_channels = model.num_channels
    self.sample_rate = int(sample_rate)
    self.output = model.output
    self.batch_size = batch_size
    self.devices = devices
    self.residual_source = residual_source
    # Each device gets as many windows; a batch that does not divide is padded.
    per_device = -(-batch_size // len(devices))
    self.tiling = tiling(model, self.sample_rate, window_seconds, overlap, per_device)
    self.origin: dict[str, Any] = {}  # where the variables came from (from_workdir)
    layout = parallel.data_parallel(devices)
    replicated, sharded = layout.replicated, layout.sharded
    self.variables = jax.device_put(variables, replicated)
    self._forward = jax.jit(
        lambda variables, windows: model.apply(variables, windows, train=False),
        in_shardings=(replicated, sharded), out_shardings=sharded)

  @classmethod
  def from_workdir(cls, workdir: str | os.PathLike, checkpoint: str = "best",
                   **kwargs) -> JaxEngine:
    """The model of a training workdir at `checkpoint` ('best', 'latest' or a step)."""
    from waveunet_jax import workdir as workdir_lib  # Orbax loads only for this

    try:
      config, variables, step = workdir_lib.load_for_inference(workdir, checkpoint)
    except workdir_lib.WorkdirError as e:  # no such workdir or checkpoint
      raise SeparationError(str(e)) from None
    residual = config.get("separation", {}).get("residual_source")
    engine = cls(models.from_config(config), variables, config.data.sample_rate,
                 residual_source=residual, **kwargs)
    engine.origin = {"workdir": str(pathlib.Path(workdir).resolve()),
                     "checkpoint": str(checkpoint), "step": step}
    return engine

  @functools.cached_property
  def identity(self) -> dict[str, Any]:
    """What evaluation and export record of the model: where it came from and a hash
    of its variables (computed on first use: hashing a model takes a while)."""
    return {"engine": "jax", **self.origin, "params_sha256": variables_hash(self.variables)}

  def forward(self, windows: np.ndarray) -> jax.Array:
    """[batch, input_length, C] -> [batch, S, output_length, C], asynchronously; the
    batch is split over the devices."""
    padding = -len(windows) % len(self.devices)  # a batch that does not divide
    if padding:
      zeros = np.zeros((padding,) + windows.shape[1:], windows.dtype)
      return self._forward(self.variables, np.concatenate([windows, zeros]))[:len(windows)]
    return self._forward(self.variables, windows)


def separator_from_workdir(workdir: str | os.PathLike, checkpoint: str = "best", *,
                           window_seconds: float | None = None, overlap: float = 0.0,
                           batch_size: int | None = None, **kwargs) -> Separator:
  """A `Separator` (`kwargs`: its options) on the model of a training workdir at
  `checkpoint` ('best', 'latest' or a step), on the JAX engine (all local devices;
  `batch_size` None: one window each)."""
  return Separator(JaxEngine.from_workdir(workdir, checkpoint, window_seconds=window_seconds,
                                          overlap=overlap, batch_size=batch_size), **kwargs)


def separator_from_model(model: models.WaveUNet, variables: Any, sample_rate: int, *,
                         window_seconds: float | None = None, overlap: float = 0.0,
                         batch_size: int | None = None, **kwargs) -> Separator:
  """A `Separator` (`kwargs`: its options) on a Flax `models.WaveUNet` and its
  variables, on the JAX engine (all local devices; `batch_size` None: one window each)."""
  return Separator(JaxEngine(model, variables, sample_rate, window_seconds=window_seconds,
                             overlap=overlap, batch_size=batch_size), **kwargs)

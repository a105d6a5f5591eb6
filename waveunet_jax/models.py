"""Wave-U-Net networks (Flax linen) and the one owner of their length arithmetic.

Both networks of the project (the paper's deep one and the seed project's shallow one)
come out of one module, `WaveUNet`, configured by `config.model` (`from_config`; see
`experiments/default.py` for every field). Audio is channels-last: `mix: [B, T_in, C]`
-> `sources: [B, S, T_out, C]`. `lengths()` is the only place that knows which lengths
work, and data, training and separation all ask it; `receptive_field` and
`context_reach` say how far an output sample hears.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

PADDINGS = ("valid", "same")
DOWNSAMPLINGS = ("decimate", "maxpool")
UPSAMPLINGS = ("linear", "learned")
NORMALIZATIONS = ("none", "batchnorm")
OUTPUTS = ("direct", "difference")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}

# Keras' BatchNormalization epsilon, which the seed project trained with.
BATCHNORM_EPSILON = 1e-3


class ConfigError(ValueError):
  """A model config or length that cannot work; the message names the field."""


def check_finite(config: Any, prefix: str = "config") -> None:
  """ConfigError naming the first float field of `config` (or float in a tuple field)
  that is infinite or NaN: no field of this project's configs means anything there."""
  for name, value in config.items():
    field = f"{prefix}.{name}"
    if hasattr(value, "items"):  # a ConfigDict (not a Mapping) or a dict
      check_finite(value, field)
      continue
    for v in value if isinstance(value, (tuple, list)) else (value,):
      if isinstance(v, float) and not math.isfinite(v):
        raise ConfigError(f"{field}={value}: must be a finite number")


@dataclasses.dataclass(frozen=True)
class Lengths:
  """Input and output lengths (samples) of one forward pass.

  `offset` is the index of the input sample that lines up with output sample 0:
  targets for an input window are `window[offset:offset + output_length]`.
  """

  input_length: int
  output_length: int

  @property
  def offset(self) -> int:
    return (self.input_length - self.output_length) // 2


def centre_crop(x: jax.Array, length: int, axis: int = 1) -> jax.Array:
  """Crops `x` to `length` along `axis`, centred; an odd surplus drops the extra
  sample at the end, the same rule as `Lengths.offset`."""
  start = (x.shape[axis] - length) // 2
  if start < 0:
    raise ValueError(f"cannot crop length {x.shape[axis]} to {length}")
  return jax.lax.slice_in_dim(x, start, start + length, axis=axis)


# --------------------------------------------------------------------------- #
# Length arithmetic.
# --------------------------------------------------------------------------- #


def from_config(config: Any) -> WaveUNet:
  """The network a run's config describes: `WaveUNet(**config.model)`. The one place
  that builds a network from a config (training, separation, summary, benchmarks)."""
  return WaveUNet(**config.model)


def _model(model: WaveUNet | Mapping[str, Any]) -> WaveUNet:
  return model if isinstance(model, WaveUNet) else WaveUNet(**model)


def _upsampled_length(n: int, factor: int, padding: str) -> int:
  # Valid mode interpolates between neighbours, end points included: n -> f(n-1)+1.
  return factor * (n - 1) + 1 if padding == "valid" else factor * n


def _downsampled_length(n: int, factor: int, downsampling: str, padding: str) -> int:
  """Length after downsampling by `factor`; raises ConfigError if `n` would drop
  samples, since a dropped sample shifts every later alignment."""
  if padding == "valid" and downsampling == "decimate":
    ok, out = (n - 1) % factor == 0, (n - 1) // factor + 1  # x[::f] keeps both ends
  else:
    ok, out = n % factor == 0, n // factor
  if not ok or out < 1:
    raise ConfigError(f"length {n} does not downsample evenly by {factor}")
  return out


def _pre_downsampling_length(m: int, factor: int, downsampling: str, padding: str) -> int:
  """The length that `_downsampled_length` maps to `m`."""
  if padding == "valid" and downsampling == "decimate":
    return factor * (m - 1) + 1
  return factor * m


def _bottleneck_to_output(model: WaveUNet, bottleneck_output: int) -> int | None:
  """Output length from the bottleneck's output length; None if some layer of the
  up path would be empty."""
  n = bottleneck_output
  for factor, kernel in zip(model.downsampling_factors[::-1], model.up_kernel_sizes[::-1]):
    n = _upsampled_length(n, factor, model.padding)
    n -= _shrink(kernel, model.padding)
    if n < 1:
      return None
  n -= _shrink(model.output_kernel_size, model.padding)
  return n if n >= 1 else None


def _bottleneck_to_input(model: WaveUNet, bottleneck_output: int) -> int:
  n = bottleneck_output + _shrink(model.bottleneck_kernel_size, model.padding)
  for factor, kernel in zip(model.downsampling_factors[::-1], model.down_kernel_sizes[::-1]):
    n = _pre_downsampling_length(n, factor, model.downsampling, model.padding)
    n += _shrink(kernel, model.padding)
  return n


def _shrink(kernel_size: int, padding: str) -> int:
  return kernel_size - 1 if padding == "valid" else 0


def total_downsampling(model: WaveUNet | Mapping[str, Any]) -> int:
  return math.prod(_model(model).downsampling_factors)


def lengths(model: WaveUNet | Mapping[str, Any], output_length: int) -> Lengths:
  """The exact input and output lengths for a wanted output of `output_length`.

  Valid padding (the paper's algorithm): walk up from the wanted output through the
  up path to the smallest bottleneck length that gives at least `output_length`,
  then walk down from it to the exact input and output lengths. For the paper's M4,
  16384 -> input 147443, output 16389. Same padding: input == output, the smallest
  multiple of the total downsampling that is >= `output_length`.

  Args:
    model: a `WaveUNet` or the `config.model` mapping it is built from.
    output_length: the wanted number of output samples, > 0.
  """
  model = _model(model)
  if output_length < 1:
    raise ConfigError(f"wanted output length must be positive, got {output_length}")
  if model.padding == "same":
    total = total_downsampling(model)
    n = -(-output_length // total) * total
    return Lengths(n, n)
  # The output is affine in the bottleneck length b with slope prod(factors), once
  # b is large enough that no layer of the up path is empty.
  smallest = 1
  while _bottleneck_to_output(model, smallest) is None:
    smallest += 1
    if smallest > 1_000_000:
      raise ConfigError("model: no input length gives a non-empty output; "
                        "use fewer levels or smaller kernels")
  slope = total_downsampling(model)
  intercept = _bottleneck_to_output(model, smallest) - slope * smallest
  b = max(smallest, -(-(output_length - intercept) // slope))
  return Lengths(_bottleneck_to_input(model, b), _bottleneck_to_output(model, b))


def output_length_for(model: WaveUNet | Mapping[str, Any], input_length: int) -> int:
  """Output length for an input of `input_length`, walking the network layer by
  layer; raises ConfigError naming the input length if it is not one `lengths()`
  can give (valid padding) or not a multiple of the total downsampling (same)."""
  model = _model(model)
  n = input_length
  try:
    for factor, kernel in zip(model.downsampling_factors, model.down_kernel_sizes):
      n -= _shrink(kernel, model.padding)
      n = _downsampled_length(n, factor, model.downsampling, model.padding)
    n -= _shrink(model.bottleneck_kernel_size, model.padding)
    if n < 1:
      raise ConfigError("the bottleneck is empty")
    out = _bottleneck_to_output(model, n)
    if out is None:
      raise ConfigError("a layer of the up path is empty")
  except ConfigError as e:
    hint = (f"use models.lengths() (e.g. input {lengths(model, max(input_length, 1)).input_length})")
    raise ConfigError(f"input length {input_length} does not fit the network ({e}); {hint}") from None
  return out


def receptive_field(model: WaveUNet | Mapping[str, Any]) -> int:
  """The widest span of input samples that any one output sample depends on.

  Exact and structural: it follows, for every sample of every layer, the first and
  last input sample it can depend on (max pooling depends on its whole window,
  interpolation on both neighbours), over enough output samples to meet every
  phase of the downsampling. With same padding it is measured away from the edges,
  so it can exceed the training input length (the rest is zero padding).
  """
  lo, hi, _ = _interior_dependencies(_model(model))
  return int(np.max(hi - lo + 1))


def context_reach(model: WaveUNet | Mapping[str, Any]) -> int:
  """How far, in input samples, any output sample's dependencies reach from its own
  position, to either side. An output sample at least this far from both ends of a
  same-padding input never sees the zero padding; separation keeps only those."""
  lo, hi, position = _interior_dependencies(_model(model))
  return int(max(np.max(position - lo), np.max(hi - position)))


def _interior_dependencies(model: WaveUNet) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(first, last) input sample of every output sample, and the output sample's own
  position in the input, over an input long enough that (with same padding) some
  outputs are far from the edges and every phase of the downsampling occurs."""
  total = total_downsampling(model)
  if model.padding == "valid":
    size = lengths(model, total)
    lo, hi = _dependency_intervals(model, size.input_length)
    return lo, hi, np.arange(len(lo)) + size.offset
  n = 4 * total
  while True:
    lo, hi = _dependency_intervals(model, n)
    if np.max(hi - lo + 1) * 3 <= n:
      # Drop the outputs within a third of the input of an edge: clipped by padding.
      inside = slice(n // 3, n - n // 3)
      return lo[inside], hi[inside], np.arange(n)[inside]
    n *= 2


def _dependency_intervals(model: WaveUNet, input_length: int) -> tuple[np.ndarray, np.ndarray]:
  """Mirrors WaveUNet.__call__ on index intervals instead of features: `lo[j]` and
  `hi[j]` are the first and last input samples feature sample j depends on. Both
  stay non-decreasing in j, so an op's interval is its first source's `lo` and its
  last source's `hi`. Returns them for the output samples."""
  valid = model.padding == "valid"

  def conv(lo, hi, k):
    if valid:
      return lo[:len(lo) - k + 1], hi[k - 1:]
    j, half = np.arange(len(lo)), (k - 1) // 2
    return lo[np.maximum(j - half, 0)], hi[np.minimum(j + half, len(lo) - 1)]

  def downsample(lo, hi, f):
    m = _downsampled_length(len(lo), f, model.downsampling, model.padding)
    last = 0 if model.downsampling == "decimate" else f - 1
    return lo[::f][:m], hi[last::f][:m]

  def upsample(lo, hi, f):
    first, left_weight = _interpolation_phases(f, model.padding, model.downsampling == "maxpool")
    n = len(lo)
    if valid:
      count, start = n - 1, 0
    else:
      count, start = n, 1
      lo, hi = np.pad(lo, 1, mode="edge"), np.pad(hi, 1, mode="edge")
    q = np.arange(count)[:, None] + start + first[None, :]      # [count, f]
    up_lo = lo[q].reshape(-1)
    up_hi = hi[q + (left_weight < 1.0)[None, :]].reshape(-1)
    if valid:
      up_lo, up_hi = np.append(up_lo, lo[-1]), np.append(up_hi, hi[-1])
    return up_lo, up_hi

  def merge(skip, up):  # concatenation of a centre-cropped skip with `up`
    start = (len(skip[0]) - len(up[0])) // 2
    crop = slice(start, start + len(up[0]))
    return np.minimum(skip[0][crop], up[0]), np.maximum(skip[1][crop], up[1])

  mix = (np.arange(input_length), np.arange(input_length))
  x, skips = mix, []
  for i in range(model.num_levels):
    x = conv(*x, model.down_kernel_sizes[i])
    skips.append(x)
    x = downsample(*x, model.downsampling_factors[i])
  x = conv(*x, model.bottleneck_kernel_size)
  for i in reversed(range(model.num_levels)):
    x = upsample(*x, model.downsampling_factors[i])
    x = conv(*merge(skips[i], x), model.up_kernel_sizes[i])
  return conv(*merge(mix, x), model.output_kernel_size)


# --------------------------------------------------------------------------- #
# Layers.
# --------------------------------------------------------------------------- #


class ConvBlock(nn.Module):
  """conv(k, features) [-> BatchNorm] -> LeakyReLU: [B, T, C] -> [B, T', features].

  The conv has a bias only without normalisation (BatchNorm's offset replaces it).
  """

  features: int
  kernel_size: int
  padding: str
  normalization: str
  batchnorm_momentum: float
  negative_slope: float
  dtype: Any

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    use_norm = self.normalization == "batchnorm"
    x = nn.Conv(self.features, (self.kernel_size,), padding=self.padding.upper(),
                use_bias=not use_norm, kernel_init=nn.initializers.xavier_uniform(),
                dtype=self.dtype, name="conv")(x)
    if use_norm:
      x = nn.BatchNorm(use_running_average=not train, momentum=self.batchnorm_momentum,
                       epsilon=BATCHNORM_EPSILON, dtype=self.dtype, name="norm")(x)
    return nn.leaky_relu(x, self.negative_slope)


def _interpolation_phases(factor: int, padding: str, centred: bool) -> tuple[np.ndarray, np.ndarray]:
  """For each phase r of `factor`: the offset a_r of its left coarse neighbour and
  the weight w_r of that neighbour (see `Upsample`)."""
  centre = 0.5 if (centred and padding == "same") else 0.0
  position = (np.arange(factor) + centre) / factor - centre  # in coarse samples
  first = np.floor(position).astype(int)                     # a_r, in {-1, 0}
  return first, 1.0 - (position - first)


class Upsample(nn.Module):
  """Interpolating upsampling by `factor`: [B, n, C] -> [B, f(n-1)+1, C] (valid) or
  [B, f n, C] (same).

  Output sample f q + r is `w_r * x[q + a_r] + (1 - w_r) * x[q + a_r + 1]`. Valid mode
  (and decimation in same mode) puts coarse sample q at fine position f q, so a_r = 0
  and w_r = 1 - r / f; in valid mode that includes both end points, as the paper's
  align_corners resize. Max pooling puts q at the centre of its window, so same mode
  after max pooling uses half-sample centres. In same mode the ends repeat the edge
  samples. `learned` (paper M5) learns one weight vector per inserted phase,
  `w_r = sigmoid(v_r)`, initialised so the layer starts as linear interpolation
  (the midpoint for factor 2).
  """

  factor: int
  padding: str
  centred: bool
  learned: bool

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    f = self.factor
    if f == 1:
      return x
    n = x.shape[1]
    first, left_weight = _interpolation_phases(f, self.padding, self.centred)
    if self.padding == "valid":
      x_pad, count, start = x, n - 1, 0
    else:
      # Edge padding by one sample, written as slices: ONNX exporters mis-convert
      # jnp.pad's edge mode (it lowers through zero-sized tensors).
      x_pad, count, start = jnp.concatenate([x[:, :1], x, x[:, -1:]], axis=1), n, 1
    interpolated = [i for i in range(f) if left_weight[i] < 1.0]
    if self.learned:
      init_logits = np.log(left_weight[interpolated] / (1.0 - left_weight[interpolated]))
      logits = self.param(
          "weights",
          lambda _, shape: jnp.broadcast_to(jnp.asarray(init_logits, jnp.float32)[:, None], shape),
          (len(interpolated), x.shape[-1]))
      learned = dict(zip(interpolated, jax.nn.sigmoid(logits).astype(x.dtype)))
    phases = []
    for r in range(f):
      lo = jax.lax.slice_in_dim(x_pad, start + first[r], start + first[r] + count, axis=1)
      if r not in interpolated:
        phases.append(lo)
        continue
      hi = jax.lax.slice_in_dim(x_pad, start + first[r] + 1, start + first[r] + 1 + count, axis=1)
      w = learned[r] if self.learned else jnp.asarray(left_weight[r], x.dtype)
      phases.append(w * lo + (1 - w) * hi)
    y = jnp.stack(phases, axis=2).reshape(x.shape[0], count * f, x.shape[-1])
    if self.padding == "valid":
      y = jnp.concatenate([y, x[:, -1:]], axis=1)
    return y


def _downsample(x: jax.Array, factor: int, downsampling: str) -> jax.Array:
  if factor == 1:
    return x
  if downsampling == "decimate":
    return x[:, ::factor]
  return nn.max_pool(x, window_shape=(factor,), strides=(factor,), padding="VALID")


# --------------------------------------------------------------------------- #
# The network.
# --------------------------------------------------------------------------- #


class WaveUNet(nn.Module):
  """Wave-U-Net: mix `[B, T_in, C]` float in [-1, 1] -> sources `[B, S, T_out, C]`
  float32, ordered as `sources`.

  Level i: ConvBlock(features[i], down_kernel_sizes[i]) -> skip i -> downsample by
  downsampling_factors[i]. Bottleneck: ConvBlock(bottleneck_features). Up level i
  (deepest first): Upsample by downsampling_factors[i] -> concatenate [skip i
  cropped to the centre, upsampled] -> ConvBlock(features[i], up_kernel_sizes[i]).
  Output: concatenate [mix cropped to the centre, features] -> conv(output_kernel_size)
  + tanh per source. With `output="difference"` the last source is
  `mix - sum(others)` (unclipped here: separation clips, training must not).

  The concatenation order is the paper's ([skip, upsampled], [mix, features]); the
  seed puts the upsampled features first, which only permutes the next conv's
  input rows and so is the same network. With valid padding `T_out < T_in` and the
  output is centred in the input (`lengths`).

  The project's two networks are two configs of this module:

  * the paper's deep network (Stoller et al. 2018): 12 levels of conv(15) + decimation
    by 2, linear or learned upsampling, conv(5) on the way up, valid ("context")
    convolutions, difference output; and
  * the seed project's shallow network: 7 levels, conv(31) down / conv(15) up, max
    pooling by 4, BatchNorm without conv biases, same padding.
  """

  sources: Sequence[str]
  num_channels: int
  features: Sequence[int]
  bottleneck_features: int
  down_kernel_sizes: Sequence[int]
  up_kernel_sizes: Sequence[int]
  bottleneck_kernel_size: int
  output_kernel_size: int
  downsampling: str
  downsampling_factors: Sequence[int]
  upsampling: str
  padding: str
  normalization: str
  batchnorm_momentum: float
  output: str
  negative_slope: float
  dtype: str

  def __post_init__(self):
    _validate(self)
    super().__post_init__()

  @property
  def num_sources(self) -> int:
    return len(self.sources)

  @property
  def num_levels(self) -> int:
    return len(self.features)

  @nn.compact
  def __call__(self, mix: jax.Array, *, train: bool = False) -> jax.Array:
    if mix.ndim != 3 or mix.shape[-1] != self.num_channels:
      raise ValueError(f"mix must be [batch, time, {self.num_channels}], got {mix.shape}")
    output_length = output_length_for(self, mix.shape[1])
    dtype = DTYPES[self.dtype]
    block = dict(padding=self.padding, normalization=self.normalization,
                 batchnorm_momentum=self.batchnorm_momentum,
                 negative_slope=self.negative_slope, dtype=dtype)

    x = mix.astype(dtype)
    skips = []
    for i in range(self.num_levels):
      x = ConvBlock(self.features[i], self.down_kernel_sizes[i], **block, name=f"down_{i}")(x, train)
      skips.append(x)
      x = _downsample(x, self.downsampling_factors[i], self.downsampling)
    x = ConvBlock(self.bottleneck_features, self.bottleneck_kernel_size, **block,
                  name="bottleneck")(x, train)
    for i in reversed(range(self.num_levels)):
      x = Upsample(self.downsampling_factors[i], self.padding,
                   centred=self.downsampling == "maxpool",
                   learned=self.upsampling == "learned", name=f"upsample_{i}")(x)
      x = jnp.concatenate([centre_crop(skips[i], x.shape[1]), x], axis=-1)
      x = ConvBlock(self.features[i], self.up_kernel_sizes[i], **block, name=f"up_{i}")(x, train)

    mix = centre_crop(mix, x.shape[1])
    x = jnp.concatenate([mix.astype(dtype), x], axis=-1)
    estimated = self.num_sources - (self.output == "difference")
    x = nn.Conv(estimated * self.num_channels, (self.output_kernel_size,),
                padding=self.padding.upper(), kernel_init=nn.initializers.xavier_uniform(),
                dtype=dtype, name="output")(x)
    x = jnp.tanh(x).astype(jnp.float32)
    batch, time = x.shape[:2]
    sources = x.reshape(batch, time, estimated, self.num_channels).transpose(0, 2, 1, 3)
    if self.output == "difference":
      mix = centre_crop(mix, time).astype(jnp.float32)
      last = mix - jnp.sum(sources, axis=1)
      sources = jnp.concatenate([sources, last[:, None]], axis=1)
    assert sources.shape[2] == output_length, (sources.shape, output_length)
    return sources


def _validate(model: WaveUNet) -> None:
  """Raises ConfigError naming the `config.model` field that cannot work."""

  def fail(field: str, message: str):
    raise ConfigError(f"config.model.{field}: {message}")

  def choice(field: str, allowed: Sequence[str]):
    value = getattr(model, field)
    if value not in allowed:
      fail(field, f"unknown value {value!r}; choose one of {', '.join(map(repr, allowed))}")

  for field, allowed in (("padding", PADDINGS), ("downsampling", DOWNSAMPLINGS),
                         ("upsampling", UPSAMPLINGS), ("normalization", NORMALIZATIONS),
                         ("output", OUTPUTS), ("dtype", tuple(DTYPES))):
    choice(field, allowed)

  sources = tuple(model.sources) if not isinstance(model.sources, str) else ()
  if not sources or not all(isinstance(s, str) and s for s in sources):
    fail("sources", f"must be a non-empty sequence of source names, got {model.sources!r}")
  if len(set(sources)) != len(sources):
    fail("sources", f"names must be distinct, got {sources}")
  if model.output == "difference" and len(sources) < 2:
    fail("sources", "difference output needs at least two sources "
         "(the last one is the mix minus the others)")

  def positive_int(field: str, value: Any):
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
      fail(field, f"must be a positive integer, got {value!r}")

  positive_int("num_channels", model.num_channels)
  positive_int("bottleneck_features", model.bottleneck_features)
  levels = len(model.features)
  if levels == 0:
    fail("features", "is empty: the network needs at least one level")
  for field in ("features", "down_kernel_sizes", "up_kernel_sizes", "downsampling_factors"):
    values = getattr(model, field)
    if isinstance(values, (str, int)) or len(values) != levels:
      fail(field, f"needs one value per level ({levels}, as config.model.features), "
           f"got {values!r}")
    for value in values:
      positive_int(field, value)
  for field in ("down_kernel_sizes", "up_kernel_sizes"):
    if any(k % 2 == 0 for k in getattr(model, field)):
      fail(field, f"kernel sizes must be odd so outputs stay centred, got {getattr(model, field)}")
  for field in ("bottleneck_kernel_size", "output_kernel_size"):
    positive_int(field, getattr(model, field))
    if getattr(model, field) % 2 == 0:
      fail(field, f"must be odd so outputs stay centred, got {getattr(model, field)}")
  if not 0.0 <= model.batchnorm_momentum < 1.0:
    fail("batchnorm_momentum", f"must be in [0, 1), got {model.batchnorm_momentum}")

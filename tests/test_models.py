"""The networks and their length arithmetic."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import deep, shallow
from waveunet_jax import models, optim

ALL_CONFIGS = [("deep", v) for v in deep.VARIANTS] + [("shallow", None)]


def get_config(name, variant):
  return deep.get_config(variant) if name == "deep" else shallow.get_config()


def output_shape(model, input_length, batch=1):
  mix = jax.ShapeDtypeStruct((batch, input_length, model.num_channels), jnp.float32)
  out, _ = jax.eval_shape(lambda x: model.init_with_output(jax.random.key(0), x), mix)
  return out.shape


@pytest.mark.parametrize("name,variant", ALL_CONFIGS)
@pytest.mark.parametrize("channels", [1, 2])
def test_output_length_matches_length_arithmetic(name, variant, channels):
  config = get_config(name, variant)
  config.model.num_channels = channels
  model = models.WaveUNet(**config.model)
  for wanted in (1, 1000, config.data.output_length, 44100):
    size = models.lengths(model, wanted)
    assert size.output_length >= wanted
    # Minimal: one bottleneck sample less would not reach `wanted`.
    assert size.output_length - models.total_downsampling(model) < wanted
    assert output_shape(model, size.input_length, batch=2) == (
        2, model.num_sources, size.output_length, channels)
    assert models.output_length_for(model, size.input_length) == size.output_length
    if model.padding == "same":
      assert size.input_length == size.output_length
      assert size.input_length % models.total_downsampling(model) == 0


def test_paper_lengths_for_m4():
  size = models.lengths(deep.get_config("M4").model, 16384)
  assert (size.input_length, size.output_length) == (147443, 16389)
  assert size.offset == (147443 - 16389) // 2


def test_shallow_lengths_are_multiples_of_4096():
  config = shallow.get_config()
  assert models.total_downsampling(config.model) == 4096
  size = models.lengths(config.model, config.data.output_length)
  assert size.input_length == size.output_length == 16384 * 14


def test_input_that_does_not_fit_is_refused(tiny_config):
  model = models.WaveUNet(**tiny_config())
  size = models.lengths(model, 50)
  with pytest.raises(models.ConfigError, match=f"input length {size.input_length + 1}"):
    models.output_length_for(model, size.input_length + 1)
  with pytest.raises(models.ConfigError, match="does not fit"):
    model.init(jax.random.key(0), jnp.zeros((1, size.input_length + 2, 2)))


COMBINATIONS = [
    dict(padding=p, downsampling=d, upsampling=u, normalization=n, output=o)
    for p in models.PADDINGS for d in models.DOWNSAMPLINGS for u in models.UPSAMPLINGS
    for n, o in (("none", "difference"), ("batchnorm", "direct"))
]


@pytest.mark.parametrize("options", COMBINATIONS, ids=lambda o: "-".join(o.values()))
def test_forward_jits_for_every_option(tiny_config, options):
  model = models.WaveUNet(**tiny_config(downsampling_factors=(1, 2, 3), **options))
  size = models.lengths(model, 37)
  mix = jax.random.uniform(jax.random.key(1), (2, size.input_length, 2), minval=-1, maxval=1)
  variables = jax.jit(model.init)(jax.random.key(0), mix)

  @jax.jit
  def forward(variables, mix):
    return model.apply(variables, mix, train=True, mutable=["batch_stats"])

  sources, updates = forward(variables, mix)
  assert sources.shape == (2, 2, size.output_length, 2)
  assert sources.dtype == jnp.float32
  assert np.all(np.isfinite(sources))
  if options["output"] == "direct":
    assert np.all(np.abs(sources) <= 1)  # tanh
  if options["normalization"] == "batchnorm":
    before = jax.tree_util.tree_leaves(variables["batch_stats"])
    after = jax.tree_util.tree_leaves(updates["batch_stats"])
    assert any(not np.allclose(a, b) for a, b in zip(before, after))


def test_full_size_networks_run_jitted():
  for config, wanted in ((deep.get_config("M4"), 16384), (shallow.get_config(), 8192)):
    model = models.WaveUNet(**config.model)
    size = models.lengths(model, wanted)
    mix = 0.1 * jax.random.normal(jax.random.key(1), (1, size.input_length, 2))
    # Parameters do not depend on the length: initialise on the shortest input.
    shortest = jnp.zeros((1, models.lengths(model, 1).input_length, 2))
    variables = jax.jit(model.init)(jax.random.key(0), shortest)
    sources = jax.jit(model.apply)(variables, mix)
    assert sources.shape == (1, 2, size.output_length, 2)
    assert np.all(np.isfinite(sources))


@pytest.mark.parametrize("padding", models.PADDINGS)
@pytest.mark.parametrize("num_sources", [2, 4])
def test_difference_output_sums_to_cropped_mix(tiny_config, padding, num_sources):
  names = ("bass", "drums", "other", "vocals")[-num_sources:]
  model = models.WaveUNet(**tiny_config(padding=padding, sources=names))
  size = models.lengths(model, 40)
  mix = jax.random.uniform(jax.random.key(1), (3, size.input_length, 2), minval=-1, maxval=1)
  variables = jax.jit(model.init)(jax.random.key(0), mix)
  sources = jax.jit(model.apply)(variables, mix)
  assert sources.shape[1] == num_sources
  target = mix[:, size.offset:size.offset + size.output_length]
  np.testing.assert_allclose(sources.sum(axis=1), target, atol=1e-6)
  # The estimated sources are tanh outputs; only the difference one is unbounded.
  assert np.all(np.abs(sources[:, :-1]) <= 1)


def upsample(x, factor, padding, centred=False, learned=False):
  layer = models.Upsample(factor, padding, centred=centred, learned=learned)
  variables = layer.init(jax.random.key(0), x)
  return np.asarray(layer.apply(variables, x)), variables


@pytest.mark.parametrize("factor", [2, 3, 4])
def test_linear_upsampling_keeps_a_ramp_linear(factor):
  n = 9
  ramp = jnp.arange(n, dtype=jnp.float32)[None, :, None] * jnp.array([1.0, -2.0])
  # Valid: end points included, exactly linear everywhere.
  y, _ = upsample(ramp, factor, "valid")
  p = np.arange(factor * (n - 1) + 1)
  np.testing.assert_allclose(y[0], (p / factor)[:, None] * [1.0, -2.0], atol=1e-6)
  # Same after decimation: coarse sample q sits at f q; the right end repeats.
  y, _ = upsample(ramp, factor, "same")
  assert y.shape[1] == factor * n
  p = np.arange(factor * (n - 1) + 1)
  np.testing.assert_allclose(y[0, :len(p)], (p / factor)[:, None] * [1.0, -2.0], atol=1e-6)
  np.testing.assert_allclose(y[0, len(p):], np.broadcast_to(ramp[0, -1], (factor - 1, 2)))
  # Same after max pooling: coarse sample q sits at the centre of its window.
  y, _ = upsample(ramp, factor, "same", centred=True)
  p = np.arange(factor * n)
  inside = (p >= factor / 2) & (p <= factor * (n - 1) + (factor - 1) / 2)
  expected = (p + 0.5) / factor - 0.5
  np.testing.assert_allclose(y[0, inside, 0], expected[inside], atol=1e-6)


@pytest.mark.parametrize("padding", models.PADDINGS)
def test_learned_upsampling_starts_as_the_midpoint_and_learns(padding):
  x = jax.random.normal(jax.random.key(3), (2, 7, 5))
  y, variables = upsample(x, 2, padding, learned=True)
  assert variables["params"]["weights"].shape == (1, 5)
  np.testing.assert_allclose(y[:, 0::2][:, :7], x, atol=1e-6)
  np.testing.assert_allclose(y[:, 1::2][:, :6], (x[:, :-1] + x[:, 1:]) / 2, atol=1e-6)
  layer = models.Upsample(2, padding, centred=False, learned=True)
  grads = jax.grad(lambda v: jnp.sum(layer.apply(v, x) ** 3))(variables)
  assert np.all(grads["params"]["weights"] != 0)


def test_learned_upsampling_in_the_m5_parameter_tree():
  config = deep.get_config("M5")
  model = models.WaveUNet(**config.model)
  shapes = jax.eval_shape(model.init, jax.random.key(0),
                          jax.ShapeDtypeStruct((1, models.lengths(model, 1).input_length, 2),
                                               jnp.float32))
  for i, features in enumerate(config.model.features):
    # Level i upsamples the output of level i + 1 (or the bottleneck).
    below = config.model.features[i + 1] if i + 1 < len(config.model.features) else 312
    assert shapes["params"][f"upsample_{i}"]["weights"].shape == (1, below)


def param_shapes(config, input_length=4096):
  model = models.WaveUNet(**config.model)
  mix = jax.ShapeDtypeStruct((1, models.lengths(model, input_length).input_length,
                              model.num_channels), jnp.float32)
  variables = jax.eval_shape(model.init, jax.random.key(0), mix)
  return jax.tree_util.tree_map(lambda x: x.shape, variables)


def test_shallow_parameter_tree_has_batchnorm_and_no_conv_biases():
  shapes = param_shapes(shallow.get_config())
  params, stats = shapes["params"], shapes["batch_stats"]
  features = (48, 48, 144, 240, 336, 432, 528)
  blocks = [f"down_{i}" for i in range(7)] + ["bottleneck"] + [f"up_{i}" for i in range(7)]
  assert set(params) == set(blocks) | {"output"}
  for block in blocks:
    assert set(params[block]) == {"conv", "norm"}
    assert set(params[block]["conv"]) == {"kernel"}
    assert set(params[block]["norm"]) == {"scale", "bias"}
    assert set(stats[block]["norm"]) == {"mean", "var"}
  assert params["down_0"]["conv"]["kernel"] == (31, 2, 48)
  assert params["down_6"]["conv"]["kernel"] == (31, 432, 528)
  assert params["bottleneck"]["conv"]["kernel"] == (15, 528, 624)
  assert params["up_6"]["conv"]["kernel"] == (15, 528 + 624, 528)
  assert params["up_0"]["conv"]["kernel"] == (15, 48 + 48, 48)
  # Output: [mix, features] -> one estimated stereo source; the other is the difference.
  assert params["output"] == {"kernel": (1, 2 + 48, 2), "bias": (2,)}
  # The seed's count, by hand: convs without biases, BatchNorm scale and offset.
  downs = sum(31 * c_in * c_out for c_in, c_out in zip((2,) + features[:-1], features))
  ups = sum(15 * (c + below) * c for c, below in zip(features, features[1:] + (624,)))
  norms = 2 * (2 * sum(features) + 624)
  trainable = downs + 15 * 528 * 624 + ups + norms + (50 * 2 + 2)
  is_shape = lambda x: isinstance(x, tuple)
  assert sum(np.prod(s) for s in jax.tree_util.tree_leaves(params, is_leaf=is_shape)) == trainable


def test_deep_parameter_tree_has_biases_and_no_normalisation():
  shapes = param_shapes(deep.get_config("M4"))
  assert set(shapes) == {"params"}  # no batch_stats
  params = shapes["params"]
  for i in range(12):
    c = 24 * (i + 1)
    assert params[f"down_{i}"] == {"conv": {"kernel": (15, 2 if i == 0 else c - 24, c),
                                            "bias": (c,)}}
    assert params[f"up_{i}"] == {"conv": {"kernel": (5, c + c + 24, c), "bias": (c,)}}
  assert params["bottleneck"] == {"conv": {"kernel": (15, 288, 312), "bias": (312,)}}
  assert params["output"] == {"kernel": (1, 2 + 24, 2), "bias": (2,)}
  # M6 estimates three stereo sources; M1 (direct, mono) both of its two.
  assert param_shapes(deep.get_config("M6"))["params"]["output"]["kernel"] == (1, 26, 6)
  assert param_shapes(deep.get_config("M1"))["params"]["output"]["kernel"] == (1, 25, 2)


@pytest.mark.parametrize("options", [
    dict(), dict(downsampling="maxpool"), dict(downsampling_factors=(2, 3, 2)),
    dict(padding="same"), dict(padding="same", upsampling="learned"),
])
def test_receptive_field_and_reach_are_the_real_dependencies(tiny_config, options):
  model = models.WaveUNet(**tiny_config(num_channels=1, **options))
  field = models.receptive_field(model)
  size = models.lengths(model, 64 if model.padding == "valid" else 4 * field)
  mix = jax.random.normal(jax.random.key(1), (1, size.input_length, 1))
  variables = jax.jit(model.init)(jax.random.key(0), mix)
  jacobian = jax.jit(jax.jacrev(lambda x: model.apply(variables, x)[0, 0, :, 0]))(mix)[:, 0, :, 0]
  rows = np.asarray(jacobian)
  widest = max(np.ptp(np.nonzero(row)[0]) + 1 for row in rows)
  # How far each output's dependencies reach from its own position, away from edges.
  reach = 0
  for j, row in enumerate(rows):
    first, last = np.nonzero(row)[0][[0, -1]]
    if model.padding == "valid" or (first > 0 and last < len(row) - 1):
      position = j + size.offset
      reach = max(reach, position - first, last - position)
  if model.downsampling == "maxpool":
    # Max pooling's gradient reaches one sample of its window.
    assert widest <= field and reach <= models.context_reach(model)
  else:
    assert widest == field and reach == models.context_reach(model)


@pytest.mark.parametrize("overrides,field", [
    (dict(features=(), down_kernel_sizes=(), up_kernel_sizes=(), downsampling_factors=()),
     "config.model.features"),
    (dict(upsampling="cubic"), "config.model.upsampling"),
    (dict(padding="causal"), "config.model.padding"),
    (dict(down_kernel_sizes=(5, 3)), "config.model.down_kernel_sizes"),
    (dict(up_kernel_sizes=(3, 4, 3)), "config.model.up_kernel_sizes"),
    (dict(downsampling_factors=(2, 0, 2)), "config.model.downsampling_factors"),
    (dict(sources=("vocals",)), "config.model.sources"),
    (dict(sources=("vocals", "vocals")), "config.model.sources"),
    (dict(num_channels=0), "config.model.num_channels"),
    (dict(dtype="float16"), "config.model.dtype"),
])
def test_bad_configs_name_the_field(tiny_config, overrides, field):
  with pytest.raises(models.ConfigError, match=field.replace(".", r"\.")):
    models.WaveUNet(**tiny_config(**overrides))


def test_bad_wanted_length(tiny_config):
  with pytest.raises(models.ConfigError, match="output length must be positive"):
    models.lengths(tiny_config(), 0)


# --------------------------------------------------------------------------- #
# The seed's first network (experiments/deep.py:seed, anleva/Wave-U-Net wave_u_net.py).
# --------------------------------------------------------------------------- #

SEED_LENGTH = 16384 * 14  # the seed's training examples


def test_seed_config_builds_with_same_padding_lengths():
  config = deep.get_config("seed")
  model = models.from_config(config)
  assert (model.padding, model.downsampling, model.upsampling, model.normalization,
          model.output) == ("same", "decimate", "linear", "none", "difference")
  assert model.sources == ("vocals", "accompaniment")
  assert config.data.sample_rate == 16000 and config.data.output_length == SEED_LENGTH
  assert models.total_downsampling(model) == 2 ** 12
  size = models.lengths(model, config.data.output_length)
  assert (size.input_length, size.output_length, size.offset) == (SEED_LENGTH, SEED_LENGTH, 0)
  assert models.output_length_for(model, SEED_LENGTH) == SEED_LENGTH
  assert output_shape(model, SEED_LENGTH) == (1, 2, SEED_LENGTH, 2)
  # The loss sees the central 69376 samples, 80000 in from each end: further than
  # any output sample's dependencies reach, so none of them sees the zero padding.
  assert config.loss.central_length == SEED_LENGTH - 2 * 80000 == 69376
  assert models.context_reach(model) < 80000


def test_seed_parameter_count_from_the_layer_shapes():
  # By hand from the seed's layers: conv(15) down with bias, from 2 channels, 24 * (i+1)
  # features; bridge conv(15, 312); conv(5) up over [upsampled from below, skip i];
  # output conv(1, 2) over [features of level 0, the stereo mix] for the one estimated
  # source (the other is the difference).
  c = [24 * (i + 1) for i in range(12)]
  downs = sum(15 * c_in * c_out + c_out for c_in, c_out in zip([2] + c[:-1], c))
  bridge = 15 * 288 * 312 + 312
  ups = sum(5 * (below + c_i) * c_i + c_i for c_i, below in zip(c, c[1:] + [312]))
  output = 1 * (24 + 2) * 2 + 2
  assert downs + bridge + ups + output == 10_263_390
  config = deep.get_config("seed")
  model = models.from_config(config)
  shapes = jax.eval_shape(model.init, jax.random.key(0),
                          jax.ShapeDtypeStruct((1, 4096, 2), jnp.float32))
  assert set(shapes) == {"params"}  # no BatchNorm statistics
  assert sum(x.size for x in jax.tree_util.tree_leaves(shapes)) == downs + bridge + ups + output
  # Keras L2 falls on the 25 U-Net conv kernels and nothing else.
  mask = optim.path_mask(shapes["params"], config.optim.l2_mask)
  regularised = {"/".join(k.key for k in path)
                 for path, on in jax.tree_util.tree_leaves_with_path(mask) if on}
  assert regularised == ({f"{block}_{i}/conv/kernel" for block in ("down", "up") for i in range(12)}
                         | {"bottleneck/conv/kernel"})
  assert config.optim.weight_decay == 0.01


def keras_upsampling(x: np.ndarray, size: int = 2) -> np.ndarray:
  """A numpy model of the seed's UpSampling1D(size) then AveragePooling1D(size,
  strides=1, padding="same") on [B, n, C]: each sample repeated `size` times, then
  averaged over windows of `size`. Keras' "same" is TensorFlow's SAME: of the size - 1
  padding samples the smaller half goes before, the rest after, and a pool ignores
  the padded positions (it averages the valid samples only)."""
  repeated = np.repeat(x, size, axis=1)
  n, before = repeated.shape[1], (size - 1) // 2
  return np.stack([repeated[:, max(i - before, 0):min(i - before + size, n)].mean(axis=1)
                   for i in range(n)], axis=1)


def test_keras_upsampling_model_keeps_the_last_sample_alone():
  # Measured with tf.keras 3.15 (TensorFlow 2.21) on [1, 4, 9]: the last output is
  # the last input, not its average with a zero.
  x = np.array([1.0, 4.0, 9.0], np.float32)[None, :, None]
  np.testing.assert_array_equal(keras_upsampling(x)[0, :, 0], [1, 2.5, 4, 6.5, 9, 9])


@pytest.fixture(scope="module")
def seed_forward():
  """The seed network (full size) on a random stereo mix of 4096 samples (its
  shortest input): (mix, sources, the intermediate outputs of every layer)."""
  model = models.from_config(deep.get_config("seed"))
  mix = jax.random.uniform(jax.random.key(1), (2, 4096, 2), minval=-1, maxval=1)
  variables = jax.jit(model.init)(jax.random.key(0), mix[:1])
  sources, state = jax.jit(lambda v, x: model.apply(v, x, capture_intermediates=True))(
      variables, mix)
  return np.asarray(mix), np.asarray(sources), jax.device_get(state["intermediates"])


def test_seed_upsampling_is_keras_repeat_then_average(seed_forward):
  _, _, layers = seed_forward
  for i in range(12):
    below = layers[f"up_{i + 1}" if i < 11 else "bottleneck"]["__call__"][0]
    upsampled = layers[f"upsample_{i}"]["__call__"][0]
    assert upsampled.shape[1] == 2 * below.shape[1]
    np.testing.assert_allclose(upsampled, keras_upsampling(below), rtol=1e-6, atol=0)


def test_seed_difference_output_is_exact(seed_forward):
  mix, sources, _ = seed_forward
  assert sources.shape == (2, 2, 4096, 2)
  assert np.all(np.abs(sources[:, 0]) <= 1)  # vocals: tanh
  # accompaniment = mix - vocals, to the bit; the two add up to the mix to rounding.
  np.testing.assert_array_equal(sources[:, 1], mix - sources[:, 0])
  np.testing.assert_allclose(sources.sum(axis=1), mix, atol=1e-6)

"""The Separator: windows, streaming, resampling, channels, the full band and stem
layouts, on the JAX engine (`separator.py`; `test_separate` covers the files and the
command line, `test_engine` the JAX engine's own choices).

Tiny models at a model rate of 8 kHz, from helpers.py (test_separate and test_jax_engine
use them too); separators are cached so that each window shape compiles once per process.
"""

import functools

import jax
import numpy as np
import pytest
import soundfile as sf

from helpers import SEPARATOR_RATE as RATE
from helpers import SHORT, noise, pass_through, round_trip, separator, tiny_model_config, tones
from waveunet_jax import models, separate
from waveunet_jax.separation import jax_engine
from waveunet_jax.separation import separator as separator_lib

# --------------------------------------------------------------------------- #
# Windows.
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("padding", ["valid", "same"])
@pytest.mark.parametrize("overlap", [0.0, 0.3])
def test_pass_through_model_reproduces_awkward_lengths(padding, overlap):
  sep = pass_through(padding, window_seconds=SHORT, overlap=overlap, batch_size=2)
  hop = sep.tiling.hop
  assert hop % models.total_downsampling(sep.engine.model) == 0
  for length in (1, 777, 3 * hop + 13, 4 * hop + 13):  # odd and even window counts
    mix = noise(length, seed=length)
    sources = sep.separate(mix, RATE)
    assert list(sources) == ["accompaniment", "vocals"]
    assert sources["accompaniment"].shape == sources["vocals"].shape == (length, 2)
    assert sources["vocals"].dtype == np.float32
    if overlap:  # a cross-fade of equal samples is exact up to float rounding
      np.testing.assert_allclose(sources["vocals"], mix, rtol=0, atol=1e-6)
      np.testing.assert_allclose(sources["accompaniment"], 0.0, rtol=0, atol=1e-6)
    else:
      np.testing.assert_array_equal(sources["vocals"], mix)
      np.testing.assert_array_equal(sources["accompaniment"], 0.0)


def test_empty_audio_gives_empty_sources():
  sources = pass_through().separate(np.zeros((0, 2), np.float32), RATE)
  assert all(s.shape == (0, 2) for s in sources.values())


@pytest.mark.parametrize("padding", ["valid", "same"])
@pytest.mark.parametrize("overlap", [0.0, 0.3])
def test_one_window_or_many_give_the_same_samples(padding, overlap):
  # Direct output, so that no clipping could hide a difference.
  mix = noise(1500, peak=0.5, seed=1)
  one = separator(padding, "direct", window_seconds=1600 / RATE, overlap=overlap)
  many = separator(padding, "direct", window_seconds=SHORT, overlap=overlap, batch_size=3)
  if not overlap:
    assert one.tiling.hop >= len(mix) > 10 * many.tiling.hop
  a, b = one.separate(mix, RATE), many.separate(mix, RATE)
  for name in a:
    assert np.abs(a[name]).max() > 0.1  # the random model does something
    np.testing.assert_allclose(a[name], b[name], rtol=0, atol=1e-6)


def test_same_padding_keeps_the_centre_of_each_window():
  model = pass_through("same", window_seconds=SHORT).engine.model
  t = jax_engine.tiling(model, RATE, SHORT)
  margin = jax_engine.same_padding_margin(model)
  assert margin >= models.receptive_field(model) // 2
  assert t.keep_start >= margin and t.keep_start + t.hop <= t.input_length - margin
  assert 0 < t.recomputed_share < 1


# --------------------------------------------------------------------------- #
# Streaming, resampling, channels, the difference output.
# --------------------------------------------------------------------------- #


def streamed_in_odd_blocks(sep, mix: np.ndarray, rate: int) -> np.ndarray:
  """`mix` separated as a stream of blocks of 1, 2, 1000, 7, 4096, 3, ... samples."""
  sizes = [1, 2, 1000, 7, 4096, 3]
  cuts = np.cumsum(sizes * (len(mix) // sum(sizes) + 1))
  blocks = np.split(mix, cuts[cuts < len(mix)])
  return np.concatenate(list(sep.separate_blocks(iter(blocks), rate, 2)))


def test_streaming_in_any_blocks_equals_the_whole_array():
  sep = separator(window_seconds=SHORT, batch_size=2)
  rate = 44100
  mix = tones(0.4, rate) + noise(round(0.4 * rate), peak=0.1)
  whole = sep.separate(mix, rate)
  streamed = streamed_in_odd_blocks(sep, mix, rate)
  assert streamed.shape == (len(mix), 2, 2)
  for i, name in enumerate(sep.sources):
    np.testing.assert_allclose(streamed[:, i], whole[name], rtol=0, atol=1e-6)


def test_difference_stems_sum_to_the_input():
  sep = separator(window_seconds=SHORT)
  mix = tones(0.5, RATE, peak=0.3)
  sources = sep.separate(mix, RATE)
  assert np.abs(sources["vocals"]).max() < 1  # the clip did not act
  assert np.abs(sources["accompaniment"]).max() > 0.1
  np.testing.assert_allclose(sum(sources.values()), mix, rtol=0, atol=1e-6)
  # At another rate too, band above the model's Nyquist frequency included.
  for rate in (22050, 44100):
    mix = tones(0.5, rate, peak=0.3) + noise(rate // 2, peak=0.2)
    total = sum(sep.separate(mix, rate).values())
    np.testing.assert_allclose(total, mix, rtol=0, atol=1e-6)
  # Without a residual source the stems are band-limited: about the round trip.
  plain = separate.Separator(sep.engine, residual_source=None)
  total = sum(plain.separate(mix, rate).values())
  np.testing.assert_allclose(total, round_trip(mix, rate), rtol=0, atol=1e-5)
  assert np.abs(total - mix).max() > 0.05


def test_difference_is_clipped_only_where_it_leaves_the_audio_range():
  # Every estimated source is tanh(-0.55) ~ -0.5, so vocals = mix + 0.5.
  mix = np.linspace(-0.9, 0.9, 400, dtype=np.float32)[:, None].repeat(2, axis=1)
  clipped = separator(bias=-0.55, window_seconds=SHORT).separate(mix, RATE)
  exact = separator(bias=-0.55, window_seconds=SHORT, clip_difference=False).separate(mix, RATE)
  inside = mix + 0.5 < 1
  np.testing.assert_array_equal(clipped["vocals"][inside], exact["vocals"][inside])
  np.testing.assert_allclose(sum(clipped.values())[inside], mix[inside], rtol=0, atol=1e-6)
  np.testing.assert_array_equal(clipped["vocals"][~inside], 1.0)
  np.testing.assert_allclose(sum(exact.values()), mix, rtol=0, atol=1e-6)


def test_mono_and_stereo_inputs_into_stereo_and_mono_models():
  mono = noise(300, channels=1)[:, 0]
  sources = pass_through(window_seconds=SHORT).separate(mono, RATE)
  assert sources["vocals"].shape == (300, 1)  # duplicated in, averaged back out
  np.testing.assert_array_equal(sources["vocals"][:, 0], mono)
  stereo = noise(300)
  sources = separator(channels=1, bias=0.0, window_seconds=SHORT).separate(stereo, RATE)
  assert sources["vocals"].shape == (300, 2)  # averaged in, duplicated back out
  np.testing.assert_allclose(sources["vocals"], stereo.mean(axis=1, keepdims=True)
                             .repeat(2, axis=1), rtol=0, atol=1e-7)
  for channels in (3, 4):
    with pytest.raises(separate.SeparationError, match=f"has {channels} channels; the model "
                       "takes 2"):
      pass_through(window_seconds=SHORT).separate(noise(10, channels=channels), RATE)


def band_energy(x, rate, low_hz):
  """Energy of [T, C] above `low_hz`."""
  spectrum = np.abs(np.fft.rfft(x, axis=0)) ** 2
  return spectrum[np.fft.rfftfreq(len(x), 1 / rate) > low_hz].sum()


# The shallow network's design (16 kHz, same padding, max pooling, BatchNorm) and the
# paper's (22.05 kHz, valid padding, decimation), each at a tiny width.
FULL_SIZE_DESIGNS = {
    "shallow": (16000, dict(padding="same", downsampling="maxpool",
                            downsampling_factors=(1, 4, 4), normalization="batchnorm")),
    "M4": (22050, dict()),
}


@pytest.mark.parametrize("design", list(FULL_SIZE_DESIGNS))
def test_full_band_stems_add_up_to_a_44k_file(tmp_path, design):
  model_rate, overrides = FULL_SIZE_DESIGNS[design]
  model = models.WaveUNet(**tiny_model_config(**overrides))
  mix = np.zeros((1, models.lengths(model, 1).input_length, 2), np.float32)
  variables = jax.jit(model.init)(jax.random.key(1), mix)
  sep = jax_engine.separator_from_model(model, variables, model_rate, window_seconds=0.05)
  assert sep.residual_source == "accompaniment"
  rate = 44100
  song = tones(1.5, rate) + noise(round(1.5 * rate), peak=0.3)
  sf.write(tmp_path / "song.wav", song, rate, subtype="FLOAT")
  paths = separate.separate_files(sep, [tmp_path / "song.wav"], tmp_path / "out", fmt="float")
  stems = {p.stem: sf.read(p, dtype="float32", always_2d=True) for p in paths}
  for stem, stem_rate in stems.values():
    assert stem.shape == song.shape and stem_rate == rate
  total = sum(stem for stem, _ in stems.values())
  assert np.abs(total - song).max() < 1e-4
  # The band the model cannot hear is all in the accompaniment; vocals have none of it.
  nyquist = model_rate / 2
  high = band_energy(song, rate, nyquist * 1.05)
  assert band_energy(stems["vocals"][0], rate, nyquist * 1.05) < 1e-6 * high
  assert band_energy(stems["accompaniment"][0], rate, nyquist * 1.05) == pytest.approx(high,
                                                                                       rel=1e-3)


def test_direct_output_residual_gets_the_missing_band_only():
  rate = 44100
  song = tones(0.5, rate) + noise(rate // 2, peak=0.3)
  full = separator("valid", "direct", window_seconds=SHORT)
  plain = separate.Separator(full.engine, residual_source=None)
  a, b = full.separate(song, rate), plain.separate(song, rate)
  np.testing.assert_array_equal(a["vocals"], b["vocals"])
  np.testing.assert_allclose(a["accompaniment"] - b["accompaniment"],
                             song - round_trip(song, rate), rtol=0, atol=1e-5)


def test_residual_source_is_chosen_or_refused():
  sep = separator(window_seconds=SHORT)
  assert separate.Separator(sep.engine, residual_source="vocals").residual_source == "vocals"
  with pytest.raises(separate.SeparationError, match="'piano' is not one of the model's"):
    separate.Separator(sep.engine, residual_source="piano")


FOUR = ("bass", "drums", "other", "vocals")


@functools.cache
def four_source_separator(**kwargs):
  model = models.WaveUNet(**tiny_model_config(sources=FOUR))
  mix = np.zeros((1, models.lengths(model, 1).input_length, 2), np.float32)
  return jax_engine.separator_from_model(model, jax.jit(model.init)(jax.random.key(2), mix),
                                     RATE, **kwargs)


def test_stem_layouts_of_a_four_source_model():
  sep = four_source_separator(window_seconds=SHORT)
  assert sep.residual_source == "other"
  song = noise(2000, peak=0.4) + tones(2000 / 44100, 44100)
  four = sep.separate(song, 44100)
  assert list(four) == list(FOUR)
  np.testing.assert_allclose(sum(four.values()), song, rtol=0, atol=1e-6)
  two = sep.separate(song, 44100, stems=["vocals", "accompaniment"])
  assert list(two) == ["vocals", "accompaniment"]
  np.testing.assert_array_equal(two["vocals"], four["vocals"])
  np.testing.assert_allclose(two["accompaniment"], four["bass"] + four["drums"] + four["other"],
                             rtol=0, atol=1e-6)
  drums = sep.separate(song, 44100, stems=["drums", "no_drums"])
  np.testing.assert_allclose(drums["no_drums"], song - four["drums"], rtol=0, atol=1e-6)
  for bad, reason in ((["piano"], "'piano' is not one of the sources"),
                      (["vocals", "vocals"], "named twice"), ([], "no stems")):
    with pytest.raises(separate.SeparationError, match=reason):
      sep.separate(song, 44100, stems=bad)


def test_upsampling_by_a_large_ratio_streams_in_bounded_blocks():
  mix = noise(300000, peak=0.5)
  blocks = list(pass_through().separate_blocks([mix], separator_lib.MAX_RATE, 2))
  assert sum(len(b) for b in blocks) == len(mix)
  # Without cutting, one 30 s window at 8 kHz came back as 23 M frames at 768 kHz.
  assert max(len(b) for b in blocks) < 2 * separator_lib.RESAMPLED_BLOCK_FRAMES


# --------------------------------------------------------------------------- #
# Test-time averaging (shifts, flip).
# --------------------------------------------------------------------------- #


class FilterEngine:
  """A linear stand-in engine in NumPy (as an exported model's engine is, without JAX):
  each source a fixed two-tap filter of the mix, a difference model's last source the
  mix minus the others. Linear and time-invariant, the same filter on every channel:
  shift-, swap- and sign-equivariant, so test-time averaging must give back its plain
  estimate. Windows keep `hop` samples, `overlap` more cross-faded, with `context`
  samples of real audio on each side."""

  sources = ("accompaniment", "vocals")
  sample_rate = RATE
  batch_size = 2
  residual_source = None

  def __init__(self, output="difference", channels=2, hop=40, overlap=0, context=16):
    self.output, self.num_channels, self.context = output, channels, context
    self.length = hop + overlap  # of the network's output, all of it kept
    self.tiling = separator_lib.Tiling(input_length=self.length + 2 * context, hop=hop,
                                       overlap=overlap, keep_start=0, pad_left=context + overlap)

  def forward(self, windows):
    c, n = self.context, self.length
    now, before = windows[:, c:c + n], windows[:, c - 1:c - 1 + n]
    accompaniment = 0.3 * now + 0.2 * before
    vocals = now - accompaniment if self.output == "difference" else 0.6 * now - 0.1 * before
    return np.stack([accompaniment, vocals], axis=1)


@pytest.mark.parametrize("output", ["difference", "direct"])
@pytest.mark.parametrize("channels, overlap", [(2, 0), (2, 8), (1, 0)])
def test_averaging_a_linear_engine_gives_its_plain_estimate(output, channels, overlap):
  engine = FilterEngine(output, channels, overlap=overlap)
  averaged = separate.Separator(engine, shifts=3, flip=True, seed=1)
  delays = sorted({p.delay for p in averaged.passes})
  assert len(delays) == 3 and 0 < delays[0] and delays[-1] < averaged.max_shift == 20
  flips = [(False, False), (True, False), (False, True)] if channels == 2 else [
      (False, False), (False, True)]  # a mono model: the polarity only
  assert [(p.swap, p.negate) for p in averaged.passes] == flips * 3
  for rate in (RATE, 44100):  # at the model's rate, and through the resamplers
    mix = noise(round(0.1 * rate), peak=0.5, seed=rate)
    plain = separate.Separator(engine).separate(mix, rate)
    got = averaged.separate(mix, rate)
    for name in plain:
      assert np.abs(plain[name]).max() > 0.1
      np.testing.assert_allclose(got[name], plain[name], rtol=0, atol=1e-6)


def nonlinear(output="difference"):
  """The tiny random network (tanh, leaky ReLU, decimation by 8): neither shift- nor
  sign-equivariant."""
  return separator("valid", output, window_seconds=SHORT, batch_size=2).engine


def test_averaging_a_non_linear_network_changes_its_estimate_deterministically():
  engine = nonlinear()
  mix = tones(0.3, 44100, peak=0.4) + noise(round(0.3 * 44100), peak=0.2)
  plain = separate.Separator(engine).separate(mix, 44100)["vocals"]
  for options in (dict(shifts=2), dict(flip=True), dict(shifts=2, flip=True)):
    got = separate.Separator(engine, **options).separate(mix, 44100)["vocals"]
    assert 1e-3 < np.abs(got - plain).max() < np.abs(plain).max(), options
  # The same seed gives the same bytes; another seed other delays and other samples.
  a, b, c = (separate.Separator(engine, shifts=2, flip=True, seed=seed).separate(mix, 44100)
             for seed in (0, 0, 1))
  assert all(a[s].tobytes() == b[s].tobytes() for s in a)
  assert np.abs(a["vocals"] - c["vocals"]).max() > 1e-3


def test_averaged_stems_add_up_to_the_song():
  mix = tones(0.3, 44100, peak=0.3) + noise(round(0.3 * 44100), peak=0.2)
  options = dict(shifts=2, flip=True, seed=3)
  sep = separate.Separator(nonlinear(), **options)
  assert sep.residual_source == "accompaniment"
  np.testing.assert_allclose(sum(sep.separate(mix, 44100).values()), mix, rtol=0, atol=1e-6)
  # Band-limited, each pass's difference output adds up to what the model heard.
  plain = separate.Separator(sep.engine, residual_source=None, **options)
  np.testing.assert_allclose(sum(plain.separate(mix, 44100).values()), round_trip(mix, 44100),
                             rtol=0, atol=1e-5)
  # Direct output: the residual source gets the band the model missed, nothing else.
  full = separate.Separator(nonlinear("direct"), **options)
  a = full.separate(mix, 44100)
  b = separate.Separator(full.engine, residual_source=None, **options).separate(mix, 44100)
  np.testing.assert_array_equal(a["vocals"], b["vocals"])
  np.testing.assert_allclose(a["accompaniment"] - b["accompaniment"],
                             mix - round_trip(mix, 44100), rtol=0, atol=1e-5)


def test_averaged_passes_stream_side_by_side():
  sep = separate.Separator(nonlinear(), shifts=2, flip=True)
  rate = 44100
  mix = tones(0.2, rate) + noise(round(0.2 * rate), peak=0.1)
  whole = sep.separate(mix, rate)
  streamed = streamed_in_odd_blocks(sep, mix, rate)
  for i, name in enumerate(sep.sources):
    np.testing.assert_allclose(streamed[:, i], whole[name], rtol=0, atol=1e-6)
  # The passes read the song together: the first stems come out after a few windows
  # of it (no more than plain separation reads), not after the whole song.
  engine = FilterEngine()
  song = noise(200 * engine.tiling.hop)

  def read_before_the_first_stems(**options):
    read = []

    def blocks():
      for start in range(0, len(song), 10):
        read.append(start + 10)
        yield song[start:start + 10]

    sep = separate.Separator(engine, **options)
    assert len(next(sep.separate_blocks(blocks(), RATE, 2)))
    return read[-1]

  plain = read_before_the_first_stems()
  assert read_before_the_first_stems(shifts=4, flip=True) <= plain < 10 * engine.tiling.hop


def test_averaging_settings_are_checked_and_recorded():
  engine = FilterEngine()
  for options, flag in ((dict(shifts=-1), "--shifts=-1"), (dict(shifts=21), "--shifts=21"),
                        (dict(shifts=1.5), "--shifts=1.5"), (dict(seed=-2), "--seed=-2")):
    with pytest.raises(separate.SeparationError, match=f"^{flag}: use "):
      separate.Separator(engine, **options)
  assert separate.Separator(engine).passes == [separator_lib.Pass()]
  plain = separate.Separator(engine).identity()
  assert not {"shifts", "flip", "seed"} & set(plain)  # earlier scores stay this model's
  averaged = separate.Separator(engine, shifts=2, flip=True, seed=7).identity()
  assert averaged == {**plain, "shifts": 2, "seed": 7, "flip": True}

"""A round trip through the records: tracks prepared (`data/builder.py`), then read back
through the tf.data pipeline, come out where and as they went in. The builder's own
tests are in test_prepare.py, the pipeline's in test_input_pipeline.py."""

import numpy as np
import pytest

from helpers import DATA_RATE, data_config, prepare_tracks, silent_stems
from waveunet_jax.data import builder as builder_lib
from waveunet_jax.data import tfdata
from waveunet_jax.data import records
from waveunet_jax.data import generator


def first(ds):
  return next(iter(tfdata.as_numpy(ds)))


def test_impulse_lands_at_the_same_place_in_mix_and_target(tmp_path):
  # An impulse 0.1 s into the track: its tile is the first, so it also checks the
  # context padding at the track's start.
  stems = silent_stems(2.0)
  stems["vocals"][4410] = 0.9
  config = prepare_tracks(tmp_path, {"A - impulse": stems, "B - silence": silent_stems(2.0)},
                          valid="A - impulse")
  layout = records.layout_for(config)
  batch = first(tfdata.eval_dataset(config, 1))
  vocals = batch["sources"][0, config.model.sources.index("vocals"), :, 0]
  assert np.argmax(np.abs(vocals)) == round(0.1 * DATA_RATE)
  assert np.argmax(np.abs(batch["mix"][0, :, 0])) == layout.offset + round(0.1 * DATA_RATE)
  assert np.abs(batch["sources"][0, config.model.sources.index("accompaniment")]).max() == 0


def test_resampled_sine_keeps_its_frequency(tmp_path):
  t = np.arange(2 * 44100) / 44100
  stems = silent_stems(2.0)
  stems["bass"][:] = 0.5 * np.sin(2 * np.pi * 441.0 * t)[:, None]
  config = prepare_tracks(tmp_path, {"A - sine": stems, "B - silence": silent_stems(2.0)},
                          valid="A - sine", padding="same")
  batch = first(tfdata.eval_dataset(config, 1))
  accompaniment = batch["sources"][0, config.model.sources.index("accompaniment"), :, 0]
  spectrum = np.abs(np.fft.rfft(accompaniment * np.hanning(len(accompaniment))))
  peak = np.argmax(spectrum) * DATA_RATE / len(accompaniment)
  assert abs(peak - 441.0) < DATA_RATE / len(accompaniment)
  # Band-limited: nothing but the sine (and its window's skirt) survives resampling.
  assert np.abs(accompaniment).max() == pytest.approx(0.5, abs=0.01)


def test_stem_files_round_trip(tmp_path):
  root = tmp_path / "stems"
  generator.write_corpus(root, num_train=2, num_test=0, seconds=3, seed=5, stems=True)
  hq = tmp_path / "hq"
  generator.write_corpus(hq, num_train=2, num_test=0, seconds=3, seed=5)
  names = sorted(p.name[:-len(".stem.mp4")] for p in (root / "train").glob("*.stem.mp4"))
  tiles = {}
  for folder, wav in ((root, False), (hq, True)):
    config = data_config(tmp_path / f"data-{wav}")
    builder_lib.prepare(config, folder, tmp_path / f"data-{wav}", wav=wav, valid_tracks=names[:1])
    tiles[wav] = np.concatenate([b["mix"][b["weight"] > 0] for b in tfdata.as_numpy(
        tfdata.eval_dataset(config, 4))])
  # The decoder returns whole AAC frames: up to 1023 samples (at 44.1 kHz) more.
  extra = len(tiles[False]) - len(tiles[True])
  assert 0 <= extra <= 1
  tiles[False] = tiles[False][:len(tiles[True])]
  # AAC is lossy: the decoded stems match the wavs closely, not exactly.
  correlation = np.corrcoef(tiles[True].ravel(), tiles[False].ravel())[0, 1]
  assert correlation > 0.98

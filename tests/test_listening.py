"""TensorBoard media of a training run: audio and spectrograms at each validation."""

import numpy as np

from helpers import TINY_OUTPUT, TINY_RATE, tiny_data_config, tiny_schedule
from waveunet_jax import listening, train


def test_a_tone_is_a_bright_row_of_the_spectrogram():
  rate, frequency = 8000, 1000
  t = np.arange(rate) / rate
  tone = 0.5 * np.sin(2 * np.pi * frequency * t)[:, None].repeat(2, axis=1)
  image = listening.spectrogram_image(tone)
  assert image.dtype == np.uint8 and image.shape == (listening.FFT_SIZE // 2 + 1,
                                                      1 + rate // listening.HOP, 3)
  brightness = image.astype(int).sum(axis=2).mean(axis=1)  # per row, top = high
  row = len(brightness) - 1 - round(frequency / rate * listening.FFT_SIZE)
  assert abs(int(np.argmax(brightness)) - row) <= 1
  assert brightness[row] > 3 * np.median(brightness)


def test_validation_logs_audio_and_spectrograms_of_one_excerpt(tmp_path, tiny_data_dir):
  import tensorflow as tf

  config = tiny_schedule(tiny_data_config(TINY_RATE, TINY_OUTPUT, tiny_data_dir), 4, 2)
  train.train_and_evaluate(config, tmp_path / "run")
  media = {}
  for path in (tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"):
    for record in tf.data.TFRecordDataset(str(path)):
      event = tf.compat.v1.Event.FromString(record.numpy())
      for value in event.summary.value:
        if value.tag.startswith(("listen/", "spectrogram/")):
          media.setdefault(value.tag, []).append((event.step, tf.make_ndarray(value.tensor)))
  sources = config.model.sources
  once = ["mix"] + [f"target/{s}" for s in sources]
  every = [f"estimate/{s}" for s in sources]
  assert sorted(media) == sorted(f"{kind}/{name}" for kind in ("listen", "spectrogram")
                                 for name in once + every)
  for name in once:  # they never change: the first validation only
    assert [step for step, _ in media[f"listen/{name}"]] == [2]
  for name in every:
    assert [step for step, _ in media[f"listen/{name}"]] == [2, 4]
  # The audio is a WAV of the excerpt at the model's rate, as long as the validation
  # set allows (at most EXCERPT_SECONDS).
  import io

  import soundfile as sf

  clip, rate = sf.read(io.BytesIO(media["listen/mix"][0][1][0][0]))
  assert rate == TINY_RATE and clip.shape[1] == 2
  assert 0 < len(clip) <= listening.LISTENING_SECONDS * TINY_RATE + TINY_OUTPUT
  assert np.abs(clip).max() > 0.01
  image = tf.io.decode_png(media["spectrogram/mix"][0][1][2]).numpy()
  assert image.shape[0] == listening.FFT_SIZE // 2 + 1 and image.shape[2] == 3

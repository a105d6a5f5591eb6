"""What training shows in TensorBoard to listen to and look at, besides numbers.

At each validation `Listening.write` logs a fixed excerpt of a validation song (about
`LISTENING_SECONDS`): the network's estimate of each source as audio and as a
spectrogram image (`spectrogram_image`); the mix and the true sources once per run.
The excerpt comes from `batches.TrainingData.validation_excerpt`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

LISTENING_SECONDS = 10.0
FFT_SIZE = 1024
HOP = 256
DYNAMIC_RANGE_DB = 80.0
# Colours from silence to the loudest bin (a dark-to-bright ramp), interpolated.
RAMP = np.array([[0, 0, 4], [40, 11, 84], [101, 21, 110], [159, 42, 99], [212, 72, 66],
                 [245, 125, 21], [250, 193, 39], [252, 255, 164]], np.float32)


def spectrogram(audio: np.ndarray, fft_size: int = FFT_SIZE, hop: int = HOP) -> np.ndarray:
  """[T, C] or [T] float audio -> [fft_size // 2 + 1, frames] dB relative to the
  loudest bin, clipped to -DYNAMIC_RANGE_DB (Hann window): the log magnitude of a
  short-time Fourier transform of the channels' mean, computed here in numpy."""
  mono = audio.mean(axis=1) if audio.ndim == 2 else audio
  mono = np.pad(mono.astype(np.float32), (fft_size // 2, fft_size // 2))
  frames = 1 + max(len(mono) - fft_size, 0) // hop
  index = np.arange(fft_size)[None, :] + hop * np.arange(frames)[:, None]
  power = np.abs(np.fft.rfft(mono[index] * np.hanning(fft_size).astype(np.float32))) ** 2
  decibels = 10 * np.log10(power + 1e-12)
  decibels -= decibels.max()
  return np.maximum(decibels, -DYNAMIC_RANGE_DB).T


def spectrogram_image(audio: np.ndarray) -> np.ndarray:
  """[T, C] audio -> [H, W, 3] uint8: the spectrogram, low frequencies at the bottom."""
  level = 1 + spectrogram(audio)[::-1] / DYNAMIC_RANGE_DB  # [H, W] in [0, 1]
  position = level * (len(RAMP) - 1)
  low = np.clip(np.floor(position).astype(int), 0, len(RAMP) - 2)
  share = (position - low)[..., None]
  return np.round(RAMP[low] * (1 - share) + RAMP[low + 1] * share).astype(np.uint8)


def excerpt_tiles(rate: int, output_length: int) -> int:
  """How many validation tiles of `output_length` samples make the excerpt."""
  return max(1, math.ceil(LISTENING_SECONDS * rate / output_length))


class Listening:
  """The excerpt of one run and its logging. `batch`: the excerpt's first validation
  tiles ('mix', 'sources', 'weight', `excerpt_tiles` of them); `predict(variables,
  mix_tiles)`: the network's jitted forward pass on [tiles, input_length, C].

  The excerpt is the first validation tiles of the (first) prepared dataset
  (`batches.TrainingData.validation_excerpt`): consecutive tiles of one track are
  consecutive stretches of it (hop = output length), so the network's outputs on them
  are the song's. Estimates go under `listen/estimate/<source>` and
  `spectrogram/estimate/<source>`; the mix and the true sources (`listen/mix`,
  `listen/target/<source>` and their spectrograms) never change, so they are logged
  once per run, at its first validation. One excerpt per validation bounds the size:
  for the paper's M4 (22.05 kHz stereo) each estimate is about 0.9 MB of 16-bit
  audio."""

  def __init__(self, batch: dict[str, np.ndarray], sources: tuple[str, ...], rate: int,
               offset: int, output_length: int, predict: Callable[[Any, np.ndarray], Any]):
    real = int(batch["weight"].sum())  # a validation set shorter than the excerpt
    self.mix_tiles = batch["mix"][:real]
    self.mix = self._join(batch["mix"][:real, offset:offset + output_length])
    self.targets = {name: self._join(batch["sources"][:real, s])
                    for s, name in enumerate(sources)}
    self.sources, self.rate, self.predict = sources, rate, predict
    self.logged_references = False

  @staticmethod
  def _join(tiles: np.ndarray) -> np.ndarray:
    """[tiles, T, C] consecutive stretches -> [tiles * T, C]."""
    return tiles.reshape(-1, tiles.shape[-1])

  def estimates(self, variables: Any) -> dict[str, np.ndarray]:
    out = np.asarray(self.predict(variables, self.mix_tiles))  # [tiles, S, T, C]
    return {name: self._join(out[:, s]) for s, name in enumerate(self.sources)}

  def write(self, step: int, variables: Any) -> None:
    """Logs the estimates (and, the first time, the mix and the targets) to the
    default TensorBoard writer at `step`."""
    import tensorflow as tf

    clips = {f"estimate/{name}": x for name, x in self.estimates(variables).items()}
    if not self.logged_references:
      clips = {"mix": self.mix, **{f"target/{n}": x for n, x in self.targets.items()},
               **clips}
      self.logged_references = True
    for name, clip in clips.items():
      clip = np.clip(clip, -1.0, 1.0)
      tf.summary.audio(f"listen/{name}", clip[None], self.rate, step=step, max_outputs=1)
      tf.summary.image(f"spectrogram/{name}", spectrogram_image(clip)[None], step=step,
                       max_outputs=1)


def local_copy(tree: Any) -> Any:
  """A replicated (possibly multi-process) pytree as numpy, for a local forward pass."""
  return jax.tree_util.tree_map(np.asarray, jax.device_get(tree))

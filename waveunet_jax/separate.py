"""Whole-song separation with a Wave-U-Net: Python API and command line.

  python -m waveunet_jax.separate --workdir=runs/m4 song.mp3 album/ --output_dir=separated
  python -m waveunet_jax.separate --workdir=runs/m4 --checkpoint=latest --format=flac song.wav \\
      --output_dir=separated --overwrite

writes `separated/<input stem>/<source>.wav` (or .flac) for every source of the model,
at the input's sample rate, length and channel count. From Python:

  separator = Separator.from_workdir("runs/m4")
  stems = separator.separate(audio, rate)     # audio [T, C] or [T] -> {source: [T, C]}

How a song is cut (`tiling`): the network runs on windows of one fixed shape, in batches
of a fixed size (the last window and the last batch zero-padded), so it compiles once
per `Separator` whatever the songs' lengths. Window k covers the song's output samples
`[k * hop, (k + 1) * hop)`:

* valid padding (the paper's models): each window's input is its output plus the real
  neighbouring audio as context; the song is zero-padded only at its start and end.
* same padding (M1, M2, the shallow network): the network's outputs near a window's
  edges lack context, so windows overlap by a margin of `models.context_reach` on each
  side (`same_padding_margin`: how far any output's dependencies reach), and only the
  centre of each window is kept.
* in both, `hop` is a multiple of the total downsampling, so every window meets the
  song on the same pooling grid: a song separated in one window or in many gives the
  same samples up to float rounding (every kept sample's whole receptive field lies
  inside its window). Outputs past the hop are dropped, or with `overlap` > 0
  cross-faded linearly with the next window's.

Windows default to about `DEFAULT_WINDOW_SECONDS` of output at the model's rate, shrunk
if a batch's activations would exceed `WINDOW_MEMORY_BYTES` (by a deliberately high
estimate). For the paper's M4 at 22050 Hz that is windows of 794611 input samples,
663552 kept: 16.5 % of the computed samples are recomputed context
(`Tiling.recomputed_share`), against 89 % with the training length (147443 -> 16389).

Streaming: audio flows through as blocks (file -> channels -> resampler -> windows ->
network -> overlap-add -> resampler -> file), so memory does not grow with the song.
Resampling to the model's rate and back is band-limited and chunked (`soxr`, quality
HQ); the output is trimmed or zero-padded to exactly the input's length.

Channels: a mono input into a stereo model is duplicated and its sources averaged back
to mono; a stereo input into a mono model is averaged and its sources duplicated back
to stereo; any other mismatch is an error naming the file.

Difference output: as in the paper, the last (difference) source is clipped to
[-1, 1] when separating. The clip changes nothing unless mix - sum(others) leaves the
audio range, so the stems of a difference model sum to the input exactly (at the
model's rate; up to the resampling round trip otherwise) wherever they fit in a file;
pass `clip_difference=False` to keep the exact sum even then (float output only:
integer formats clip every source to [-1, 1] as they are written).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import types
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging

from waveunet_jax import models

# Output samples per window (at the model's rate) when `window_seconds` is not given.
DEFAULT_WINDOW_SECONDS = 30.0
# Bound on one batch's activations (estimated) when the window is the default one.
WINDOW_MEMORY_BYTES = 2 << 30
# Frames per block read from a file or cut from an array.
BLOCK_FRAMES = 1 << 16
RESAMPLING_QUALITY = "HQ"
SOUNDFILE_EXTENSIONS = (".wav", ".flac", ".ogg", ".aif", ".aiff")
# Anything else is decoded by ffmpeg; these are what a directory input lists.
FFMPEG_EXTENSIONS = (".mp3", ".m4a", ".aac", ".mp4", ".opus", ".wma", ".webm")
# --format: (soundfile format, subtype, file extension).
FORMATS = {
    "wav16": ("WAV", "PCM_16", ".wav"),
    "wav24": ("WAV", "PCM_24", ".wav"),
    "float": ("WAV", "FLOAT", ".wav"),
    "flac": ("FLAC", "PCM_24", ".flac"),
}


class SeparationError(ValueError):
  """Audio that cannot be separated; the message names the file and says why."""


# --------------------------------------------------------------------------- #
# Windows.
# --------------------------------------------------------------------------- #


@dataclasses.dataclass(frozen=True)
class Tiling:
  """How a song is cut into windows. All in samples at the model's rate.

  Window k's network input is `padded[k * hop : k * hop + input_length]`, where
  `padded` is the song after `pad_left` zeros (and zeros after its end). Of the
  network's output for it, `[keep_start, keep_start + hop + overlap)` is kept: the
  first `overlap` samples fade in over the previous window's last `overlap`, which
  fade out. `hop` and `overlap` are multiples of the total downsampling.
  """

  input_length: int
  hop: int
  overlap: int
  keep_start: int
  pad_left: int

  @property
  def recomputed_share(self) -> float:
    """The share of the network's input samples that are not new output: context
    (and margins, and overlap) computed again for every window."""
    return 1.0 - self.hop / self.input_length


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
  """The windows for `model` (see `Tiling`), asking `models.lengths` for every length.

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
        f"window_seconds={window_seconds}: windows of {size.input_length} samples keep less "
        f"than the total downsampling ({total} samples); use longer windows")
  overlap_length = min(round(overlap * whole / total), whole // total // 2) * total
  keep_start = margin + (useful - whole) // 2
  return Tiling(input_length=size.input_length, hop=whole - overlap_length,
                overlap=overlap_length, keep_start=keep_start,
                pad_left=size.offset + keep_start + overlap_length)


# --------------------------------------------------------------------------- #
# The separator.
# --------------------------------------------------------------------------- #


class Separator:
  """Separates whole songs of any length, rate and (mono or stereo) channel count.

  Args:
    model: the network.
    variables: its variables (`params`, and `batch_stats` with BatchNorm).
    sample_rate: the rate (Hz) the model works at (`config.data.sample_rate`).
    window_seconds, overlap: see `tiling`.
    batch_size: windows per forward pass.
    clip_difference: clip a difference output's last source to [-1, 1].
  """

  def __init__(self, model: models.WaveUNet, variables: Any, sample_rate: int, *,
               window_seconds: float | None = None, overlap: float = 0.0,
               batch_size: int = 1, clip_difference: bool = True):
    if batch_size < 1:
      raise ValueError(f"batch_size must be positive, got {batch_size}")
    self.model = model
    self.sample_rate = int(sample_rate)
    self.batch_size = batch_size
    self.tiling = tiling(model, self.sample_rate, window_seconds, overlap, batch_size)
    self.variables = jax.device_put(variables)
    kept = slice(self.tiling.keep_start, self.tiling.keep_start + self.tiling.hop
                 + self.tiling.overlap)
    clip = clip_difference and model.output == "difference"

    def forward(variables, windows):  # [B, I, C] -> kept outputs [B, hop + overlap, S, C]
      sources = model.apply(variables, windows, train=False)[:, :, kept]
      if clip:
        sources = sources.at[:, -1].set(jnp.clip(sources[:, -1], -1.0, 1.0))
      return sources.transpose(0, 2, 1, 3)

    self._forward = jax.jit(forward)

  @classmethod
  def from_workdir(cls, workdir: str | os.PathLike, checkpoint: str = "best",
                   **kwargs) -> Separator:
    """The model of a training workdir at `checkpoint` ('best', 'latest' or a step)."""
    from waveunet_jax import checkpoints  # Orbax loads only for this

    try:
      config, variables = checkpoints.load_for_inference(workdir, checkpoint)
    except checkpoints.WorkdirError as e:  # no such workdir or checkpoint
      raise SeparationError(str(e)) from None
    return cls(models.WaveUNet(**config.model), variables, config.data.sample_rate, **kwargs)

  @property
  def sources(self) -> tuple[str, ...]:
    return tuple(self.model.sources)

  def check_channels(self, channels: int, name: str = "audio") -> None:
    """Raises SeparationError naming `name` if its channels do not fit the model."""
    c = self.model.num_channels
    if not (channels == c or channels == 1 or (channels == 2 and c == 1)):
      raise SeparationError(
          f"{name}: has {channels} channels; the model takes {c} "
          f"({'mono' if c == 1 else 'stereo' if c == 2 else f'{c} channels'}) or mono")

  def separate(self, audio: np.ndarray, rate: int) -> dict[str, np.ndarray]:
    """Separates a whole song held in memory.

    Args:
      audio: [T, C] or [T] float in [-1, 1], at `rate` Hz.
      rate: its sample rate.
    Returns:
      {source: [T, C] float32} at `rate`, in `self.sources` order (C = 1 for [T]).
    """
    audio = np.asarray(audio, np.float32)
    audio = audio[:, None] if audio.ndim == 1 else audio
    if audio.ndim != 2:
      raise SeparationError(f"audio must be [time, channels] or [time], got {audio.shape}")
    blocks = (audio[i:i + BLOCK_FRAMES] for i in range(0, len(audio), BLOCK_FRAMES))
    out = list(self.separate_blocks(blocks, rate, audio.shape[1]))
    out = np.concatenate(out) if out else np.zeros((0, len(self.sources), audio.shape[1]),
                                                   np.float32)
    return {name: out[:, i] for i, name in enumerate(self.sources)}

  def separate_blocks(self, blocks: Iterable[np.ndarray], rate: int, channels: int, *,
                      name: str = "audio") -> Iterator[np.ndarray]:
    """Streams a song: blocks [n, channels] at `rate` in, blocks [n', S, channels]
    float32 at `rate` out, whose lengths add up to exactly the input's. Holds a few
    windows in memory, whatever the song's length."""
    self.check_channels(channels, name)
    if rate < 1:
      raise SeparationError(f"{name}: sample rate must be positive, got {rate}")
    song = types.SimpleNamespace(frames=0)
    x = (self._to_model_channels(np.asarray(b, np.float32).reshape(-1, channels))
         for b in _counted(blocks, song))
    if rate != self.sample_rate:
      x = _resample(x, rate, self.sample_rate, self.model.num_channels)
    y = self._separate_at_model_rate(x)
    if rate != self.sample_rate:
      shape = (len(self.sources), self.model.num_channels)
      y = (b.reshape(-1, *shape) for b in _resample(
          (b.reshape(len(b), -1) for b in y), self.sample_rate, rate, math.prod(shape)))
    y = (self._to_channels(b, channels) for b in y)
    yield from _exact_length(y, song, (len(self.sources), channels))

  def _to_model_channels(self, block: np.ndarray) -> np.ndarray:
    c = self.model.num_channels
    if block.shape[1] == c:
      return block
    if block.shape[1] == 1:
      return np.repeat(block, c, axis=1)
    return block.mean(axis=1, keepdims=True)

  def _to_channels(self, block: np.ndarray, channels: int) -> np.ndarray:
    if block.shape[2] == channels:
      return block
    if channels == 1:  # the average of the stems still sums to the (mono) mix
      return block.mean(axis=2, keepdims=True)
    return np.repeat(block, channels, axis=2)

  def _separate_at_model_rate(self, blocks: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
    """[n, C] blocks -> [n, S, C] blocks of exactly the same total length."""
    t = self.tiling
    song = types.SimpleNamespace(frames=0, done=False)
    weights = np.ones((t.hop + t.overlap, 1, 1), np.float32)
    if t.overlap:
      fade_in = ((np.arange(t.overlap) + 0.5) / t.overlap).astype(np.float32)[:, None, None]
      weights[:t.overlap], weights[t.hop:] = fade_in, 1 - fade_in
    tail, position = None, -t.overlap  # song sample of the next kept output
    for kept in self._forward_windows(self._windows(blocks, song)):
      if t.overlap:
        kept = kept * weights
        if tail is not None:
          kept[:t.overlap] += tail
        tail = kept[t.hop:]
      # Before the input ends no window reaches past it; after, trim at the song's end.
      start = max(0, -position)
      end = min(t.hop, song.frames - position) if song.done else t.hop
      if end > start:
        yield kept[start:end]
      position += t.hop

  def _windows(self, blocks: Iterable[np.ndarray], song: types.SimpleNamespace
               ) -> Iterator[np.ndarray]:
    """The network inputs [I, C], in order: real audio as long as it lasts, then zeros
    until the kept outputs reach the song's end."""
    t = self.tiling
    buffer = np.zeros((t.pad_left, self.model.num_channels), np.float32)
    pending, pending_frames, count = [], 0, 0
    for block in blocks:
      song.frames += len(block)
      # Blocks wait in a list until a window is full: joining each one to the buffer
      # as it came copied the whole window once per block.
      pending.append(block)
      pending_frames += len(block)
      if len(buffer) + pending_frames < t.input_length:
        continue
      buffer, pending, pending_frames = np.concatenate([buffer, *pending]), [], 0
      while len(buffer) >= t.input_length:
        yield buffer[:t.input_length]
        buffer, count = buffer[t.hop:], count + 1
    buffer = np.concatenate([buffer, *pending])
    song.done = True
    needed = -(-(song.frames + t.overlap) // t.hop) if song.frames else 0
    for _ in range(count, needed):
      buffer = np.pad(buffer, ((0, max(0, t.input_length - len(buffer))), (0, 0)))
      yield buffer[:t.input_length]
      buffer = buffer[t.hop:]

  def _forward_windows(self, windows: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
    """Kept outputs [hop + overlap, S, C] per window. One batch computes while the next
    is read and the previous written (jit dispatch is asynchronous)."""
    in_flight = None
    for batch, count in _batches(windows, self.batch_size):
      result = (self._forward(self.variables, batch), count)
      if in_flight is not None:
        yield from _unbatch(*in_flight)
      in_flight = result
    if in_flight is not None:
      yield from _unbatch(*in_flight)


def _batches(windows: Iterable[np.ndarray], size: int) -> Iterator[tuple[np.ndarray, int]]:
  """(stacked batch, number of real windows in it); the last batch is zero-padded."""
  batch = []
  for window in windows:
    batch.append(window)
    if len(batch) == size:
      yield np.stack(batch), size
      batch = []
  if batch:
    yield np.stack(batch + [np.zeros_like(batch[0])] * (size - len(batch))), len(batch)


def _unbatch(outputs: jax.Array, count: int) -> Iterator[np.ndarray]:
  outputs = np.asarray(outputs)
  for i in range(count):
    yield outputs[i]


def _counted(blocks: Iterable[np.ndarray], song: types.SimpleNamespace
             ) -> Iterator[np.ndarray]:
  for block in blocks:
    song.frames += len(block)
    yield block


def _resample(blocks: Iterable[np.ndarray], from_rate: int, to_rate: int,
              channels: int) -> Iterator[np.ndarray]:
  """Band-limited, chunked resampling; soxr compensates its own delay, so the chunks
  join into what resampling the whole signal at once gives."""
  import soxr

  stream = soxr.ResampleStream(from_rate, to_rate, channels, dtype="float32",
                               quality=RESAMPLING_QUALITY)
  for block in blocks:
    out = stream.resample_chunk(np.ascontiguousarray(block, np.float32))
    if len(out):
      yield out
  out = stream.resample_chunk(np.zeros((0, channels), np.float32), last=True)
  if len(out):
    yield out


def _exact_length(blocks: Iterable[np.ndarray], song: types.SimpleNamespace,
                  shape: tuple[int, ...]) -> Iterator[np.ndarray]:
  """Cuts or zero-pads the stream to exactly `song.frames` frames. Never gives out more
  than the input has delivered so far, so the count need not be known in advance."""
  pending, emitted = np.zeros((0, *shape), np.float32), 0
  for block in blocks:
    pending = np.concatenate([pending, block]) if len(pending) else block
    n = min(len(pending), song.frames - emitted)
    if n > 0:
      yield pending[:n]
      pending, emitted = pending[n:], emitted + n
  n = song.frames - emitted  # the input is exhausted: its length is final
  if n > 0:
    yield np.concatenate([pending[:n], np.zeros((n - len(pending[:n]), *shape), np.float32)])


# --------------------------------------------------------------------------- #
# Files.
# --------------------------------------------------------------------------- #


@dataclasses.dataclass
class AudioStream:
  """An open audio file: its rate, channels, frames (an estimate for ffmpeg inputs,
  for progress only) and blocks [n, channels] float32."""

  rate: int
  channels: int
  frames: int
  blocks: Iterator[np.ndarray]


@contextlib.contextmanager
def open_audio(path: str | os.PathLike) -> Iterator[AudioStream]:
  """Opens an audio file for streaming: wav/flac/ogg/aiff with soundfile, anything else
  through ffmpeg. Raises SeparationError (naming the file) for a missing, empty or
  unreadable file; a file that turns out empty or undecodable fails while streaming."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise SeparationError(f"{path}: no such file")
  if path.stat().st_size == 0:
    raise SeparationError(f"{path}: is empty (0 bytes)")
  opener = _open_soundfile if path.suffix.lower() in SOUNDFILE_EXTENSIONS else _open_ffmpeg
  with opener(path) as stream:
    yield stream


@contextlib.contextmanager
def _open_soundfile(path: pathlib.Path) -> Iterator[AudioStream]:
  import soundfile

  try:
    file = soundfile.SoundFile(str(path))
  except Exception as e:  # soundfile raises several types for bad files
    raise SeparationError(f"{path}: cannot read it as audio ({e})") from None
  with file:
    if file.frames == 0:
      raise SeparationError(f"{path}: is empty (no audio samples)")

    def blocks():
      try:
        yield from file.blocks(BLOCK_FRAMES, dtype="float32", always_2d=True)
      except RuntimeError as e:  # libsndfile errors part-way through the file
        raise SeparationError(f"{path}: cannot read it to the end ({e})") from None

    yield AudioStream(file.samplerate, file.channels, file.frames, blocks())


@contextlib.contextmanager
def _open_ffmpeg(path: pathlib.Path) -> Iterator[AudioStream]:
  if shutil.which("ffmpeg") is None or shutil.which("ffprobe") is None:
    raise SeparationError(f"{path}: reading {path.suffix or 'such'} files needs ffmpeg and "
                          "ffprobe (e.g. apt-get install ffmpeg); or convert it to wav or flac")
  probe = subprocess.run(
      ["ffprobe", "-v", "error", "-select_streams", "a:0", "-show_entries",
       "stream=sample_rate,channels:format=duration", "-of", "json", str(path)],
      capture_output=True, text=True, check=False)
  info = json.loads(probe.stdout or "{}") if probe.returncode == 0 else {}
  if not info.get("streams"):
    reason = _last_line(probe.stderr) or "no audio stream"
    raise SeparationError(f"{path}: cannot read it as audio ({reason})")
  rate, channels = int(info["streams"][0]["sample_rate"]), int(info["streams"][0]["channels"])
  duration = float(info.get("format", {}).get("duration") or 0)
  with tempfile.TemporaryFile() as errors:  # a file: a chatty decoder never blocks on it
    process = subprocess.Popen(
        ["ffmpeg", "-v", "error", "-nostdin", "-i", str(path), "-map", "0:a:0",
         "-f", "f32le", "-acodec", "pcm_f32le", "-ac", str(channels), "-ar", str(rate),
         "pipe:1"], stdout=subprocess.PIPE, stderr=errors)

    def blocks():
      frame_bytes, total = 4 * channels, 0
      while data := process.stdout.read(BLOCK_FRAMES * frame_bytes):
        block = np.frombuffer(data[:len(data) // frame_bytes * frame_bytes], "<f4")
        total += len(block) // channels
        yield block.reshape(-1, channels)
      if process.wait() != 0:
        errors.seek(0)
        reason = _last_line(errors.read().decode(errors="replace"))
        raise SeparationError(f"{path}: ffmpeg cannot decode it ({reason})")
      if total == 0:
        raise SeparationError(f"{path}: is empty (no audio samples)")

    try:
      yield AudioStream(rate, channels, round(duration * rate), blocks())
    finally:
      if process.poll() is None:
        process.kill()
      process.stdout.close()
      process.wait()


def _last_line(text: str) -> str:
  lines = [line.strip() for line in text.splitlines() if line.strip()]
  return lines[-1] if lines else ""


def separate_file(separator: Separator, path: str | os.PathLike,
                  output_dir: str | os.PathLike, *, fmt: str = "wav16",
                  overwrite: bool = False, progress: bool = False) -> list[pathlib.Path]:
  """Separates one file into `output_dir/<stem>/<source><ext>`, streaming.

  Each output is written to a hidden temporary name beside it and renamed when the
  whole song is done; on any failure the temporaries (and a folder made for them) are
  removed, so an output is complete or absent. Existing outputs are kept unless
  `overwrite`. Returns the output paths, one per source.
  """
  import soundfile
  import tqdm

  path, output_dir = pathlib.Path(path), pathlib.Path(output_dir)
  file_format, subtype, ext = FORMATS[fmt]
  folder = output_dir / path.stem
  targets = {s: folder / f"{s}{ext}" for s in separator.sources}
  todo = [s for s in separator.sources if overwrite or not targets[s].exists()]
  if not todo:
    logging.info("%s: kept the existing outputs in %s (--overwrite to redo them)", path, folder)
    return list(targets.values())
  with open_audio(path) as audio:
    separator.check_channels(audio.channels, str(path))
    made_folder = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    temps = {s: folder / f".{s}{ext}.part-{os.getpid()}" for s in todo}
    writers, done = [], False
    try:
      for s in todo:
        writers.append(soundfile.SoundFile(str(temps[s]), "w", samplerate=audio.rate,
                                           channels=audio.channels, format=file_format,
                                           subtype=subtype))
      index = [separator.sources.index(s) for s in todo]
      with tqdm.tqdm(total=round(audio.frames / audio.rate, 1), unit="s", desc=path.name,
                     disable=not progress, leave=False) as bar:
        for block in separator.separate_blocks(audio.blocks, audio.rate, audio.channels,
                                               name=str(path)):
          if subtype != "FLOAT":  # integers cannot hold the difference's overshoot
            block = np.clip(block, -1.0, 1.0)
          for writer, i in zip(writers, index):
            writer.write(block[:, i])
          bar.update(round(len(block) / audio.rate, 3))
      for writer in writers:
        writer.close()
      for s in todo:
        os.replace(temps[s], targets[s])
      done = True
    finally:
      if not done:
        for writer in writers:
          writer.close()
        for temp in temps.values():
          temp.unlink(missing_ok=True)
        if made_folder and not any(folder.iterdir()):
          folder.rmdir()
  kept = [s for s in separator.sources if s not in todo]
  logging.info("%s -> %s%s", path, folder, f" (kept existing {', '.join(kept)})" if kept else "")
  return list(targets.values())


def _list_inputs(inputs: Sequence[str | os.PathLike]) -> list[tuple[pathlib.Path, str | None]]:
  """(file, None) for each file to separate, (input, error) for each bad input."""
  listed = []
  for item in map(pathlib.Path, inputs):
    if item.is_dir():
      files = sorted(p for p in item.iterdir() if p.is_file() and not p.name.startswith(".")
                     and p.suffix.lower() in SOUNDFILE_EXTENSIONS + FFMPEG_EXTENSIONS)
      if not files:
        listed.append((item, f"{item}: no audio files in this directory (extensions "
                             f"{' '.join(SOUNDFILE_EXTENSIONS + FFMPEG_EXTENSIONS)})"))
      listed.extend((f, None) for f in files)
    elif item.exists():
      listed.append((item, None))
    else:
      listed.append((item, f"{item}: no such file or directory"))
  return listed


def separate_files(separator: Separator, inputs: Sequence[str | os.PathLike],
                   output_dir: str | os.PathLike, *, fmt: str = "wav16",
                   overwrite: bool = False, progress: bool = False) -> list[pathlib.Path]:
  """The command line's work: separates files, and the audio files of directories.

  A failing input is logged as one line and the others go on; at the end a
  SeparationError lists the failed inputs. Returns the outputs of those that worked.
  """
  if fmt not in FORMATS:
    raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
  outputs, failed, folders = [], [], {}
  for path, error in _list_inputs(inputs):
    if error is None and folders.setdefault(path.stem, path) != path:
      error = (f"{path}: its outputs would go to {pathlib.Path(output_dir) / path.stem}, as "
               f"those of {folders[path.stem]}; separate it into another --output_dir")
    if error is None:
      try:
        outputs += separate_file(separator, path, output_dir, fmt=fmt, overwrite=overwrite,
                                 progress=progress)
        continue
      except SeparationError as e:
        error = str(e)
    logging.error("%s", error)
    failed.append(str(path))
  if failed:
    raise SeparationError(f"{len(failed)} input(s) failed: {', '.join(failed)}")
  return outputs


# --------------------------------------------------------------------------- #
# Command line.
# --------------------------------------------------------------------------- #


def _define_flags() -> None:
  # Defined only when run as a program, so that importing this module next to other
  # command-line modules (which also define --workdir) cannot clash.
  flags.DEFINE_string("workdir", None, "Training workdir of the model.")
  flags.DEFINE_string("checkpoint", "best", "best, latest or a step number.")
  flags.DEFINE_string("output_dir", None, "Outputs go to OUTPUT_DIR/<input stem>/<source>.wav.")
  flags.DEFINE_enum("format", "wav16", list(FORMATS),
                    "wav16, wav24, float (32-bit wav) or flac (24-bit).")
  flags.DEFINE_bool("overwrite", False, "Replace existing outputs.")
  flags.DEFINE_float("overlap", 0.0, "Share of each window cross-faded with the next, in [0, 0.5].")
  flags.DEFINE_float("window_seconds", None, "Output seconds per window (default "
                     f"{DEFAULT_WINDOW_SECONDS:g}, less if it would not fit in memory).")
  flags.DEFINE_integer("batch_size", 1, "Windows per forward pass.")
  flags.mark_flags_as_required(["workdir", "output_dir"])


def main(argv: list[str]) -> None:
  import waveunet_jax

  waveunet_jax.quiet_library_logs()
  inputs, args = argv[1:], flags.FLAGS
  if not inputs:
    raise app.UsageError("give the audio files or directories to separate")
  try:
    separator = Separator.from_workdir(args.workdir, args.checkpoint,
                                       window_seconds=args.window_seconds,
                                       overlap=args.overlap, batch_size=args.batch_size)
  except ValueError as e:  # SeparationError, ConfigError, a bad --overlap
    sys.exit(f"error: {e}")
  try:
    separate_files(separator, inputs, args.output_dir, fmt=args.format,
                   overwrite=args.overwrite, progress=True)
  except SeparationError as e:
    sys.exit(f"error: {e}")


def cli() -> None:
  """The program `python -m waveunet_jax.separate` (and a console script's entry)."""
  _define_flags()
  app.run(main)


if __name__ == "__main__":
  cli()

"""Audio files in and out: the package's one reader and one writer.

Reading: `open_audio` streams any file as float32 blocks [n, channels] (`read_audio`
a whole file, `read_stem_file` a MUSDB18 `.stem.mp4`); writing: `AudioWriter` streams
blocks into any `AUDIO_FORMATS` entry (`write_audio` a whole array, `write_stem_file`
a `.stem.mp4`), complete or not at all. Errors are `AudioError`s whose message names
the file; an output that may not be written where asked (a folder there, the current
folder) is `files.WriteError`'s.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fractions
import os
import pathlib
import re
import shutil
from collections.abc import Iterator

import numpy as np
from absl import logging

from waveunet_jax import files

# Frames per block read from a file.
BLOCK_FRAMES = 1 << 16
SOUNDFILE_EXTENSIONS = (".wav", ".flac", ".ogg", ".aif", ".aiff")
# Anything else is decoded by PyAV; these are what a folder input lists.
AV_EXTENSIONS = (".mp3", ".m4a", ".aac", ".mp4", ".opus", ".wma", ".webm")
AUDIO_EXTENSIONS = SOUNDFILE_EXTENSIONS + AV_EXTENSIONS


@dataclasses.dataclass(frozen=True)
class AudioFormat:
  """An output format: through soundfile (`subtype`), or a PyAV `codec` in a `container`;
  lossy ones at a bitrate."""

  extension: str
  container: str                # soundfile's format, or FFmpeg's muxer
  subtype: str | None = None    # soundfile's subtype
  codec: str | None = None      # FFmpeg's encoder
  lossy: bool = False

  @property
  def clips(self) -> bool:
    """Whether samples beyond [-1, 1] cannot be stored (integer or lossy formats)."""
    return self.subtype != "FLOAT"


AUDIO_FORMATS = {
    "wav16": AudioFormat(".wav", "WAV", subtype="PCM_16"),
    "wav24": AudioFormat(".wav", "WAV", subtype="PCM_24"),
    "float": AudioFormat(".wav", "WAV", subtype="FLOAT"),
    "flac": AudioFormat(".flac", "FLAC", subtype="PCM_24"),
    "mp3": AudioFormat(".mp3", "mp3", codec="libmp3lame", lossy=True),
    # libvorbis inside soundfile: PyAV's FFmpeg has only FFmpeg's own Vorbis encoder,
    # experimental and poor (it garbles a pure tone in the second channel).
    "ogg": AudioFormat(".ogg", "OGG", subtype="VORBIS", lossy=True),
    "m4a": AudioFormat(".m4a", "ipod", codec="aac", lossy=True),
}
DEFAULT_BITRATE = "320k"
# Nominal bitrates (kb/s, 44.1 kHz stereo) of libvorbis's qualities -1, 0, ..., 10;
# soundfile takes a quality, as compression level 1 - quality / 10.
VORBIS_KBPS = (45, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 500)


class AudioError(ValueError):
  """A file that cannot be read or written; the message names it and says why."""


def bits_per_second(bitrate: str) -> int:
  """'320k' -> 320000 (also '320000' and '0.32M'); AudioError if it is none."""
  match = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([kKmM]?)\s*", str(bitrate))
  value = float(match.group(1)) * {"": 1, "k": 1e3, "m": 1e6}[match.group(2).lower()] if match else 0
  if value < 1000:
    raise AudioError(f"bitrate {bitrate!r}: give bits per second, e.g. 192k or 192000")
  return round(value)


def _import_av(what: str):
  """PyAV, or AudioError saying that `what` needs it (it is an install requirement, so
  only a broken environment lacks it). PyAV (the `av` package) brings the FFmpeg
  libraries inside its wheel and runs them in this process: no ffmpeg program is
  needed, and every machine takes the same path."""
  try:
    import av
  except ImportError as e:
    raise AudioError(f"{what} needs PyAV, which cannot be imported ({e}): pip install av") from None
  return av


# --------------------------------------------------------------------------- #
# Reading.
# --------------------------------------------------------------------------- #


@dataclasses.dataclass
class AudioStream:
  """An open audio file: its rate, channels, frames (an estimate for PyAV inputs, for
  progress only) and blocks [n, channels] float32."""

  rate: int
  channels: int
  frames: int
  blocks: Iterator[np.ndarray]


@dataclasses.dataclass(frozen=True)
class AudioInfo:
  rate: int
  channels: int
  frames: int  # an estimate for files that PyAV decodes


def audio_info(path: str | os.PathLike) -> AudioInfo:
  """A file's rate, channels and length from its header, without decoding it."""
  path = _existing(path)
  if _by_soundfile(path):
    import soundfile

    try:
      file = soundfile.SoundFile(str(path))
    except Exception as e:  # soundfile raises several types for bad files
      raise AudioError(f"{path}: cannot read it as audio ({e})") from None
    with file:
      _check_declared_length(file, path)
      return AudioInfo(file.samplerate, file.channels, file.frames)
  with _open_av(path) as stream:  # decodes nothing
    return AudioInfo(stream.rate, stream.channels, stream.frames)


@contextlib.contextmanager
def open_audio(path: str | os.PathLike) -> Iterator[AudioStream]:
  """Opens an audio file for streaming: wav/flac/ogg/aiff with soundfile, anything else
  through PyAV. Raises AudioError (naming the file) for a missing, empty or
  unreadable file; a file that turns out empty or undecodable fails while streaming."""
  path = _existing(path)
  opener = _open_soundfile if _by_soundfile(path) else _open_av
  with opener(path) as stream:
    yield stream


def read_audio(path: str | os.PathLike) -> tuple[np.ndarray, int]:
  """A whole file: float32 [time, channels] and its sample rate."""
  with open_audio(path) as stream:
    blocks = list(stream.blocks)
    return np.concatenate(blocks), stream.rate


def read_stem_file(path: str | os.PathLike, streams: int) -> tuple[np.ndarray, int]:
  """A Native Instruments stem file (MUSDB18's `.stem.mp4`, decoded by PyAV): float32
  [streams, time, channels] of its first `streams` audio streams, cut to the shortest
  of them, and the sample rate. Raises AudioError unless it holds at least `streams`
  audio streams of one channel count."""
  with _open_stem_file(path, streams) as (av, container, chosen):
    channels = {stream.channels for stream in chosen}
    if len(channels) > 1:
      raise AudioError(f"{path}: its streams have different channel counts "
                       f"({', '.join(str(s.channels) for s in chosen)})")
    rate, channels = chosen[0].rate, channels.pop()
    decoded = [[] for _ in chosen]
    for i, block in _decode(av, container, chosen, path):
      decoded[i].append(block)
  parts = [np.concatenate(d) if d else np.zeros((0, channels), np.float32) for d in decoded]
  length = min(len(part) for part in parts)
  audio = np.stack([part[:length] for part in parts])
  for i, stream in enumerate(audio):
    check_finite(stream, 0, rate, f"{path} (stream {i})")
  return audio, rate


def stem_file_channels(path: str | os.PathLike, streams: int) -> list[int]:
  """The channel counts of a stem file's first `streams` streams, from its header."""
  with _open_stem_file(path, streams) as (_, _, chosen):
    return [stream.channels for stream in chosen]


@contextlib.contextmanager
def _open_stem_file(path: str | os.PathLike, streams: int):
  """(av, the open container, its first `streams` audio streams)."""
  path = _existing(path)
  av = _import_av(f"{path}: reading .stem.mp4 files")
  with _open_container(av, path, "as a stem file") as container:
    found = container.streams.audio
    if len(found) < streams:
      raise AudioError(f"{path}: has {len(found)} audio streams; a stem file of this layout "
                       f"has {streams}")
    yield av, container, list(found[:streams])


def check_finite(block: np.ndarray, offset: int, rate: int, name: str) -> None:
  """Raises AudioError naming `name` and the time of the first NaN or infinite sample
  of `block` [n, channels], whose first frame is frame `offset` of the audio: such a
  sample would spread through a whole window of every separated source."""
  finite = np.isfinite(block)
  if finite.all():
    return
  frame, channel = np.argwhere(~finite)[0]
  raise AudioError(
      f"{name}: sample {offset + frame} (at {(offset + frame) / rate:.3f} s, channel "
      f"{channel + 1}) is {block[frame, channel]}: it holds samples that are not numbers "
      "(NaN or infinite); repair it (e.g. replace them by 0) before using it")


def _existing(path: str | os.PathLike) -> pathlib.Path:
  path = pathlib.Path(path)
  if not path.is_file():
    raise AudioError(f"{path}: no such file")
  if path.stat().st_size == 0:
    raise AudioError(f"{path}: is empty (0 bytes)")
  return path


def _by_soundfile(path: pathlib.Path) -> bool:
  return path.suffix.lower() in SOUNDFILE_EXTENSIONS


@contextlib.contextmanager
def _open_soundfile(path: pathlib.Path) -> Iterator[AudioStream]:
  import soundfile

  try:
    file = soundfile.SoundFile(str(path))
  except Exception as e:  # soundfile raises several types for bad files
    raise AudioError(f"{path}: cannot read it as audio ({e})") from None
  with file:
    if file.frames == 0:
      raise AudioError(f"{path}: is empty (no audio samples)")
    declared = _check_declared_length(file, path)

    def blocks():
      total = 0
      try:
        for block in file.blocks(BLOCK_FRAMES, dtype="float32", always_2d=True):
          check_finite(block, total, file.samplerate, str(path))
          total += len(block)
          yield block
      except RuntimeError as e:  # libsndfile errors part-way through the file
        raise AudioError(f"{path}: cannot read it to the end ({e})") from None
      if total < declared:
        raise AudioError(_truncated(path, total, declared))

    yield AudioStream(file.samplerate, file.channels, file.frames, blocks())


def _truncated(path: pathlib.Path, frames: int, declared: int) -> str:
  return (f"{path}: ends after {frames} of the {declared} frames its header declares "
          "(a download or copy cut short?); to use what is there, rewrite it first, e.g. "
          f"ffmpeg -i '{path}' fixed.wav")


def _check_declared_length(file, path: pathlib.Path) -> int:
  """The frames an open soundfile declares; AudioError if it holds fewer."""
  declared = max(file.frames, _declared_frames(file))
  if declared > file.frames:
    raise AudioError(_truncated(path, file.frames, declared))
  return declared


def _declared_frames(file) -> int:
  """The frames a WAV header's data chunk declares (libsndfile itself counts only the
  frames the file holds, and logs the declared size as "data : N (should be M)")."""
  match = re.search(r"^data\s*:\s*(\d+)\s*\(should be", file.extra_info, re.MULTILINE)
  frame_bytes = re.search(r"Block Align\s*:\s*(\d+)", file.extra_info)
  if not (match and frame_bytes and int(frame_bytes.group(1))):
    return 0
  return int(match.group(1)) // int(frame_bytes.group(1))


def _reason(error: Exception) -> str:
  """FFmpeg's words for an error (PyAV's messages repeat the file name)."""
  return getattr(error, "strerror", None) or str(error)


@contextlib.contextmanager
def _open_container(av, path: pathlib.Path, what: str = "as audio"):
  try:
    container = av.open(str(path))
  except (av.FFmpegError, OSError) as e:
    raise AudioError(f"{path}: cannot read it {what} ({_reason(e)})") from None
  with container:
    yield container


@contextlib.contextmanager
def _open_av(path: pathlib.Path) -> Iterator[AudioStream]:
  av = _import_av(f"{path}: reading {path.suffix or 'such'} files")
  with _open_container(av, path) as container:
    if not container.streams.audio:
      raise AudioError(f"{path}: cannot read it as audio (no audio stream)")
    stream = container.streams.audio[0]
    rate, channels = stream.rate, stream.channels
    duration = (container.duration or 0) / av.time_base  # an estimate: from the header

    def blocks():
      total = 0
      for block in _batched(block for _, block in _decode(av, container, [stream], path)):
        check_finite(block, total, rate, str(path))
        total += len(block)
        yield block
      if total == 0:
        raise AudioError(f"{path}: is empty (no audio samples)")
      if total < 0.99 * duration * rate - rate:
        logging.warning("%s: decoded %.2f s of the %.2f s its container declares; the file "
                        "may be cut short", path, total / rate, duration)

    yield AudioStream(rate, channels, round(duration * rate), blocks())


def _batched(parts: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
  """The decoders' small parts [n, channels] joined into blocks of `BLOCK_FRAMES` or
  more frames (the last one fewer)."""
  pending, frames = [], 0
  for part in parts:
    pending.append(part)
    frames += len(part)
    if frames >= BLOCK_FRAMES:
      yield np.concatenate(pending)
      pending, frames = [], 0
  if pending:
    yield np.concatenate(pending)


def _decode(av, container, streams: list, path: pathlib.Path) -> Iterator[tuple[int, np.ndarray]]:
  """(i, float32 [n, channels]) as the decoders give them, for `streams[i]`, each at its
  own rate and channel count. A damaged packet is skipped (with a warning at the end),
  as the ffmpeg program does."""
  index = {stream.index: i for i, stream in enumerate(streams)}
  resamplers = [av.AudioResampler(format="flt", layout=stream.layout, rate=stream.rate)
                for stream in streams]
  skipped = 0
  try:
    for packet in container.demux(streams):
      i = index[packet.stream.index]
      try:
        frames = packet.decode()
      except av.InvalidDataError:
        skipped += 1
        continue
      for frame in frames:
        for out in resamplers[i].resample(frame):
          yield i, out.to_ndarray().reshape(-1, streams[i].channels)
    for i, resampler in enumerate(resamplers):
      for out in resampler.resample(None):
        yield i, out.to_ndarray().reshape(-1, streams[i].channels)
  except (av.FFmpegError, OSError) as e:
    raise AudioError(f"{path}: cannot decode it ({_reason(e)})") from None
  if skipped:
    logging.warning("%s: skipped %d damaged packets", path, skipped)


# --------------------------------------------------------------------------- #
# Writing.
# --------------------------------------------------------------------------- #


class AudioWriter:
  """Streams float32 blocks [n, channels] into `path` in format `fmt` (a `AUDIO_FORMATS`
  key: soundfile for wav, flac and ogg, a PyAV encoder for mp3 and m4a), under a
  temporary name (`files.atomic_path`) until `commit()` renames it into place;
  `discard()` (or an exception in a `with` block) removes it. Formats that cannot hold samples beyond [-1, 1] get them
  clipped, never wrapped round. Any failure, a full disk included, is an AudioError
  (`files.WriteError` where the file may not go) that leaves nothing behind once
  discarded."""

  def __init__(self, path: str | os.PathLike, rate: int, channels: int, fmt: str = "wav16",
               bitrate: str = DEFAULT_BITRATE):
    if fmt not in AUDIO_FORMATS:
      raise AudioError(f"unknown format {fmt!r}; choose one of {', '.join(AUDIO_FORMATS)}")
    self.path, self.format, self.channels = pathlib.Path(path), AUDIO_FORMATS[fmt], channels
    self.clipped, self.peak = 0, 0.0  # samples clipped so far, and the largest of them
    bits = bits_per_second(bitrate) if self.format.lossy else 0
    self._atomic = files.atomic_path(self.path, suffix=self.format.extension)
    self._temp = self._atomic.__enter__()
    self._closed, self._muxer, self._file = False, None, None
    try:
      if self.format.codec:
        self._muxer = _Muxer(self.path, self._temp, self.format, rate, [channels], bits)
      else:
        import soundfile

        options = {"compression_level": _vorbis_level(bits)} if self.format.lossy else {}
        self._file = soundfile.SoundFile(str(self._temp), "w", samplerate=rate,
                                         channels=channels, format=self.format.container,
                                         subtype=self.format.subtype, **options)
    except BaseException as e:
      self._atomic.__exit__(type(e), e, e.__traceback__)
      if isinstance(e, (OSError, RuntimeError)):  # soundfile's errors are RuntimeErrors
        raise AudioError(self._soundfile_error(e)) from None
      raise

  def write(self, block: np.ndarray) -> None:
    block = np.asarray(block, np.float32).reshape(-1, self.channels)
    if self.format.clips:
      magnitude = np.abs(block)
      beyond = int(np.count_nonzero(magnitude > 1.0))
      if beyond:
        self.clipped += beyond
        self.peak = max(self.peak, float(magnitude.max()))
        block = np.clip(block, -1.0, 1.0)
    if self._muxer is not None:
      self._muxer.write(0, block)
      return
    try:
      self._file.write(block)
    except (OSError, RuntimeError) as e:
      raise AudioError(self._soundfile_error(e)) from None

  def _soundfile_error(self, error: Exception) -> str:
    reason = _reason(error)
    # libsndfile says only "System error." when a write fails; a full disk is the
    # usual cause, and the one a user can act on.
    with contextlib.suppress(OSError):
      if "System error" in reason and shutil.disk_usage(self.path.parent).free < 1 << 20:
        reason = "No space left on device"
    return f"{self.path}: cannot write it ({reason})"

  def finish(self) -> None:
    """Completes the file under its temporary name: a full disk fails here at the
    latest. `commit()` then renames it (finishing it first if need be)."""
    if self._closed:
      return
    self._closed = True
    if self._muxer is not None:
      self._muxer.close()
      return
    try:
      self._file.close()
    except (OSError, RuntimeError) as e:
      raise AudioError(self._soundfile_error(e)) from None

  def commit(self) -> pathlib.Path:
    """Finishes the file and renames it into place."""
    try:
      self.finish()
    except BaseException as e:
      self._atomic.__exit__(type(e), e, e.__traceback__)
      raise
    self._atomic.__exit__(None, None, None)
    return self.path

  def discard(self) -> None:
    if self._muxer is not None:
      self._closed = True
      self._muxer.abort()
    with contextlib.suppress(Exception):
      self.finish()
    error = AudioError("discarded")
    self._atomic.__exit__(AudioError, error, None)

  def __enter__(self) -> AudioWriter:
    return self

  def __exit__(self, kind, value, traceback) -> None:
    if kind is None:
      self.commit()
    else:
      self.discard()


def _vorbis_level(bits: int) -> float:
  """soundfile's compression level for libvorbis at about `bits` per second."""
  quality = np.interp(bits / 1000, VORBIS_KBPS, np.arange(-1, len(VORBIS_KBPS) - 1))
  return float(1 - np.clip(quality, 0, 10) / 10)


class _Muxer:
  """PyAV encoders of one `AudioFormat`, a stream per entry of `channels`, into one file
  (`temp`, for errors named `path`). Raises AudioError naming `path` for any failure,
  which FFmpeg may report only at `close()` (a full disk: buffered writes)."""

  def __init__(self, path: pathlib.Path, temp: pathlib.Path, fmt: AudioFormat, rate: int,
               channels: list[int], bits: int, titles: list[str] | None = None):
    av = _import_av(f"{path}: writing {fmt.extension} files")
    self.path, self._av = path, av
    self._rate, self._frames = rate, [0] * len(channels)
    self._container = None
    with self._failures():
      self._container = av.open(str(temp), "w", format=fmt.container)
      self._streams = []
      for i, n in enumerate(channels):
        stream = self._container.add_stream(fmt.codec, rate=rate, layout=f"{n}c")
        stream.bit_rate = bits
        stream.codec_context.format = "fltp"  # both encoders take float: no rounding
        if titles:
          stream.metadata["title"] = titles[i]
        self._streams.append(stream)

  @contextlib.contextmanager
  def _failures(self):
    try:
      yield
    except (self._av.FFmpegError, OSError, ValueError) as e:
      self.abort()
      raise AudioError(f"{self.path}: cannot write it ({_reason(e)})") from None

  def write(self, i: int, block: np.ndarray) -> None:
    """Encodes float32 [n, channels] into stream `i`."""
    if not len(block):
      return
    stream = self._streams[i]
    with self._failures():
      frame = self._av.AudioFrame.from_ndarray(
          np.ascontiguousarray(block, np.float32).reshape(1, -1), format="flt",
          layout=stream.layout.name)
      frame.sample_rate, frame.time_base = self._rate, fractions.Fraction(1, self._rate)
      frame.pts, self._frames[i] = self._frames[i], self._frames[i] + len(block)
      self._container.mux(stream.encode(frame))

  def close(self) -> None:
    """Flushes the encoders and completes the file."""
    with self._failures():
      for stream in self._streams:
        self._container.mux(stream.encode(None))
      container, self._container = self._container, None
      container.close()

  def abort(self) -> None:
    """Closes the file, whatever state it is in (the caller removes it)."""
    container, self._container = self._container, None
    if container is not None:
      with contextlib.suppress(Exception):
        container.close()


class Spool:
  """Float32 frames [n, channels] kept on disk for a second pass, in a hidden file
  beside `path` named as one of its temporaries (a killed run's spool is removed with
  them); removed by `close()`. Any failure, a full disk included, is an AudioError
  naming `path`."""

  def __init__(self, path: str | os.PathLike, channels: int):
    path = pathlib.Path(path)
    self.target = path
    self.path = path.parent / (files.part_name(path, os.getpid()) + ".spool")
    self.channels = channels
    with self._failures():
      path.parent.mkdir(parents=True, exist_ok=True)
      self._file = open(self.path, "w+b")

  @contextlib.contextmanager
  def _failures(self) -> Iterator[None]:
    try:
      yield
    except OSError as e:
      raise AudioError(f"{self.target}: cannot spool it to disk for a second pass "
                       f"({e.strerror or e})") from None

  def write(self, block: np.ndarray) -> None:
    with self._failures():
      self._file.write(np.ascontiguousarray(block, "<f4").tobytes())

  def blocks(self) -> Iterator[np.ndarray]:
    with self._failures():  # what the file still buffers meets a full disk here
      self._file.flush()
      self._file.seek(0)
    frame_bytes = 4 * self.channels
    while data := self._file.read(BLOCK_FRAMES * frame_bytes):
      yield np.frombuffer(data, "<f4").reshape(-1, self.channels)

  def close(self) -> None:
    """Removes the spool (a write that failed in the file's buffer fails no more)."""
    with contextlib.suppress(OSError):
      self._file.close()
    self.path.unlink(missing_ok=True)


def write_audio(path: str | os.PathLike, audio: np.ndarray, rate: int,
                fmt: str = "wav16", bitrate: str = DEFAULT_BITRATE) -> pathlib.Path:
  """Writes a whole array [time, channels] (or [time]), complete or not at all."""
  audio = np.asarray(audio, np.float32)
  audio = audio[:, None] if audio.ndim == 1 else audio
  with AudioWriter(path, rate, audio.shape[1], fmt, bitrate) as writer:
    writer.write(audio)
  return writer.path


STEM_FORMAT = AudioFormat(".stem.mp4", "mp4", codec="aac", lossy=True)


def write_stem_file(path: str | os.PathLike, stems: np.ndarray, rate: int,
                    names: list[str], bitrate: int = 256000) -> pathlib.Path:
  """Writes a Native Instruments stem file (`.stem.mp4`: an AAC stream per stem, in
  the order of `stems` [streams, time, channels], each titled by its entry of
  `names`), complete or not at all."""
  path = pathlib.Path(path)
  stems = np.asarray(stems, np.float32)
  with files.atomic_path(path) as temp:
    muxer = _Muxer(path, temp, STEM_FORMAT, rate, [s.shape[1] for s in stems], bitrate,
                   titles=list(names))
    try:
      for start in range(0, stems.shape[1], BLOCK_FRAMES):  # interleaved, as players read
        for i, stem in enumerate(stems):
          muxer.write(i, stem[start:start + BLOCK_FRAMES])
      muxer.close()
    except BaseException:
      muxer.abort()
      raise
  return path

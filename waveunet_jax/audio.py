"""Audio files in and out: the package's one reader, one writer and one ffmpeg check.

* Reading: `open_audio` streams any file as float32 blocks [n, channels]: wav, flac,
  ogg and aiff through soundfile, anything else (mp3, m4a, ...) decoded by ffmpeg;
  `read_audio` reads a whole file; `read_stem_file` decodes a MUSDB18 `.stem.mp4`
  (stempeg, which drives ffmpeg).
* Writing: `AudioWriter` streams blocks into any `FORMATS` entry (soundfile for the
  lossless ones, an ffmpeg encoder for mp3, ogg and m4a); `write_audio` writes a whole
  array. Every file, text or audio, is written under a hidden temporary name beside
  its target (`atomic_path`) and renamed into place when complete, so a crash or a
  kill never leaves a half-written file under a real name; a re-run removes such
  temporaries left by processes that no longer run (`remove_stale_parts`).
* `require_ffmpeg` is the one check that ffmpeg is there.

Errors are `AudioError`s whose message names the file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import json
import os
import pathlib
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from typing import IO

import numpy as np
from absl import logging

# Frames per block read from a file.
BLOCK_FRAMES = 1 << 16
SOUNDFILE_EXTENSIONS = (".wav", ".flac", ".ogg", ".aif", ".aiff")
# Anything else is decoded by ffmpeg; these are what a folder input lists.
FFMPEG_EXTENSIONS = (".mp3", ".m4a", ".aac", ".mp4", ".opus", ".wma", ".webm")
AUDIO_EXTENSIONS = SOUNDFILE_EXTENSIONS + FFMPEG_EXTENSIONS


@dataclasses.dataclass(frozen=True)
class Format:
  """An output format: lossless through soundfile (`subtype`), or lossy through an
  ffmpeg `codec` at a bitrate."""

  extension: str
  container: str                # soundfile's format, or ffmpeg's muxer
  subtype: str | None = None    # soundfile's subtype (lossless formats)
  codec: str | None = None      # ffmpeg's encoder (lossy formats)

  @property
  def lossy(self) -> bool:
    return self.codec is not None

  @property
  def clips(self) -> bool:
    """Whether samples beyond [-1, 1] cannot be stored (integer or lossy formats)."""
    return self.subtype != "FLOAT"


FORMATS = {
    "wav16": Format(".wav", "WAV", subtype="PCM_16"),
    "wav24": Format(".wav", "WAV", subtype="PCM_24"),
    "float": Format(".wav", "WAV", subtype="FLOAT"),
    "flac": Format(".flac", "FLAC", subtype="PCM_24"),
    "mp3": Format(".mp3", "mp3", codec="libmp3lame"),
    "ogg": Format(".ogg", "ogg", codec="libvorbis"),
    "m4a": Format(".m4a", "ipod", codec="aac"),
}
DEFAULT_BITRATE = "320k"


class AudioError(ValueError):
  """A file that cannot be read or written; the message names it and says why."""


def require_ffmpeg(what: str) -> None:
  """Raises AudioError (saying that `what` needs it) unless ffmpeg and ffprobe are on
  the PATH."""
  if shutil.which("ffmpeg") is None or shutil.which("ffprobe") is None:
    raise AudioError(f"{what} needs ffmpeg and ffprobe: install ffmpeg (e.g. apt-get "
                     "install ffmpeg)")


# --------------------------------------------------------------------------- #
# Complete or absent.
# --------------------------------------------------------------------------- #


def _part_name(path: pathlib.Path, pid: int) -> str:
  return f".{path.name}.part-{pid}"


def remove_stale_parts(path: pathlib.Path) -> None:
  """Removes the temporaries of `path` left by killed processes: those of processes
  that still run (another job writing the same file) are kept."""
  prefix = f".{path.name}.part-"  # `_part_name` without the pid
  if not path.parent.is_dir():
    return
  for part in path.parent.glob(f"{glob.escape(prefix)}*"):
    pid = part.name[len(prefix):].split(".", 1)[0]
    if pid.isdigit() and int(pid) != os.getpid() and not _running(int(pid)):
      _remove(part)


def _running(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # another user's process
    return True
  return True


def _remove(path: pathlib.Path) -> None:
  if path.is_dir() and not path.is_symlink():
    shutil.rmtree(path, ignore_errors=True)
  else:
    path.unlink(missing_ok=True)


def _is_working_folder(path: pathlib.Path) -> bool:
  """Whether `path` is the current folder or one above it."""
  cwd = pathlib.Path.cwd().resolve()
  return path.resolve() in (cwd, *cwd.parents)


def check_target(path: str | os.PathLike,
                 ours: Callable[[pathlib.Path], bool] | None = None) -> None:
  """Raises AudioError unless an output may be written to `path`, replacing only what
  this program wrote there: nothing there, or for a file output (`ours` None) a file,
  or for a folder output a folder that `ours` recognises as its own (or an empty
  one). Never the current folder or one above it."""
  path = pathlib.Path(path)
  if _is_working_folder(path):
    raise AudioError(f"{path}: is the current folder or one above it; name a new file "
                     "or folder for this output")
  if ours is None and path.is_dir():
    raise AudioError(f"{path}: is a folder, where this file output goes; move the folder "
                     "away or choose another name")
  if ours is not None and (path.is_symlink() or path.exists() and not path.is_dir()):
    raise AudioError(f"{path}: is a file or a link, where this folder output goes; move it "
                     "away or choose another name")
  if ours is not None and path.is_dir() and any(path.iterdir()) and not ours(path):
    raise AudioError(f"{path}: is a folder holding what this program did not write there; "
                     "move it away or choose another name")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "", *,
                ours: Callable[[pathlib.Path], bool] | None = None) -> Iterator[pathlib.Path]:
  """Yields a hidden temporary name beside `path` (ending in `suffix`, for tools that
  choose a container by extension); on a clean exit it is renamed to `path`, on an
  exception removed. A file output replaces a file; a folder output (`ours` given:
  whether a folder already at `path` is this program's) replaces only a folder `ours`
  recognises. Anything else at `path` is refused (`check_target`) before and again
  after the work. Stale temporaries of `path` from killed processes are removed first."""
  path = pathlib.Path(path)
  check_target(path, ours)
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
  except OSError as e:  # e.g. a parent that is a regular file
    raise AudioError(f"{path.parent}: cannot create this folder ({e.strerror or e})") from None
  remove_stale_parts(path)
  temp = path.parent / (_part_name(path, os.getpid()) + suffix)
  old = path.parent / (_part_name(path, os.getpid()) + ".old")
  _remove(temp)
  try:
    yield temp
    check_target(path, ours)  # what appeared meanwhile is refused as well
    moved = ours is not None and path.is_dir()
    if moved:  # os.replace cannot replace a folder that is not empty
      os.replace(path, old)
    try:
      os.replace(temp, path)
    except BaseException:
      if moved:
        os.replace(old, path)
      raise
  finally:
    for leftover in (temp, old):
      if leftover.exists() or leftover.is_symlink():
        _remove(leftover)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
  """Writes `text` to `path`, complete or not at all."""
  with atomic_path(path) as temp:
    temp.write_text(text)


# --------------------------------------------------------------------------- #
# Reading.
# --------------------------------------------------------------------------- #


@dataclasses.dataclass
class AudioStream:
  """An open audio file: its rate, channels, frames (an estimate for ffmpeg inputs,
  for progress only) and blocks [n, channels] float32."""

  rate: int
  channels: int
  frames: int
  blocks: Iterator[np.ndarray]


@dataclasses.dataclass(frozen=True)
class AudioInfo:
  rate: int
  channels: int
  frames: int  # an estimate for files that ffmpeg decodes


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
  rate, channels, seconds = _probe(path)
  return AudioInfo(rate, channels, round(seconds * rate))


@contextlib.contextmanager
def open_audio(path: str | os.PathLike) -> Iterator[AudioStream]:
  """Opens an audio file for streaming: wav/flac/ogg/aiff with soundfile, anything else
  through ffmpeg. Raises AudioError (naming the file) for a missing, empty or
  unreadable file; a file that turns out empty or undecodable fails while streaming."""
  path = _existing(path)
  opener = _open_soundfile if _by_soundfile(path) else _open_ffmpeg
  with opener(path) as stream:
    yield stream


def read_audio(path: str | os.PathLike) -> tuple[np.ndarray, int]:
  """A whole file: float32 [time, channels] and its sample rate."""
  with open_audio(path) as stream:
    blocks = list(stream.blocks)
    return np.concatenate(blocks), stream.rate


def read_stem_file(path: str | os.PathLike, streams: int) -> tuple[np.ndarray, int]:
  """A Native Instruments stem file (MUSDB18's `.stem.mp4`): float32
  [streams, time, channels] and the sample rate. Raises AudioError unless it holds at
  least `streams` audio streams."""
  import stempeg

  path, info = _stem_info(path, streams)
  try:
    audio, rate = stempeg.read_stems(str(path), dtype=np.float32, info=info, always_3d=True)
  except Exception as e:  # ffprobe/ffmpeg failures surface as many exception types
    raise AudioError(f"{path}: cannot decode it ({e})") from None
  audio = np.asarray(audio, np.float32)
  for i, stream in enumerate(audio[:streams]):
    check_finite(stream, 0, int(rate), f"{path} (stream {i})")
  return audio, int(rate)


def stem_file_channels(path: str | os.PathLike, streams: int) -> list[int]:
  """The channel counts of a stem file's first `streams` streams, from its header."""
  _, info = _stem_info(path, streams)
  return [info.channels(i) for i in range(streams)]


def _stem_info(path: str | os.PathLike, streams: int):
  path = _existing(path)
  require_ffmpeg(f"{path}: reading .stem.mp4 files")
  import stempeg

  try:
    info = stempeg.Info(str(path))
  except Exception as e:  # ffprobe failures surface as many exception types
    raise AudioError(f"{path}: cannot read it as a stem file ({e})") from None
  if info.nb_audio_streams < streams:
    raise AudioError(f"{path}: has {info.nb_audio_streams} audio streams; a stem file of "
                     f"this layout has {streams}")
  return path, info


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
  import re

  match = re.search(r"^data\s*:\s*(\d+)\s*\(should be", file.extra_info, re.MULTILINE)
  frame_bytes = re.search(r"Block Align\s*:\s*(\d+)", file.extra_info)
  if not (match and frame_bytes and int(frame_bytes.group(1))):
    return 0
  return int(match.group(1)) // int(frame_bytes.group(1))


def _probe(path: pathlib.Path) -> tuple[int, int, float]:
  """(rate, channels, seconds) of the first audio stream, by ffprobe."""
  require_ffmpeg(f"{path}: reading {path.suffix or 'such'} files")
  probe = subprocess.run(
      ["ffprobe", "-v", "error", "-select_streams", "a:0", "-show_entries",
       "stream=sample_rate,channels:format=duration", "-of", "json", str(path)],
      capture_output=True, text=True, check=False)
  info = json.loads(probe.stdout or "{}") if probe.returncode == 0 else {}
  if not info.get("streams"):
    reason = _last_line(probe.stderr) or "no audio stream"
    raise AudioError(f"{path}: cannot read it as audio ({reason})")
  stream = info["streams"][0]
  duration = float(info.get("format", {}).get("duration") or 0)
  return int(stream["sample_rate"]), int(stream["channels"]), duration


@contextlib.contextmanager
def _open_ffmpeg(path: pathlib.Path) -> Iterator[AudioStream]:
  rate, channels, duration = _probe(path)
  with tempfile.TemporaryFile() as errors:  # a file: a chatty decoder never blocks on it
    process = subprocess.Popen(
        ["ffmpeg", "-v", "error", "-nostdin", "-i", str(path), "-map", "0:a:0",
         "-f", "f32le", "-acodec", "pcm_f32le", "-ac", str(channels), "-ar", str(rate),
         "pipe:1"], stdout=subprocess.PIPE, stderr=errors)

    def blocks():
      frame_bytes, total = 4 * channels, 0
      while data := process.stdout.read(BLOCK_FRAMES * frame_bytes):
        block = np.frombuffer(data[:len(data) // frame_bytes * frame_bytes], "<f4")
        block = block.reshape(-1, channels)
        check_finite(block, total, rate, str(path))
        total += len(block)
        yield block
      if process.wait() != 0:
        raise AudioError(f"{path}: ffmpeg cannot decode it ({_read_errors(errors)})")
      if total == 0:
        raise AudioError(f"{path}: is empty (no audio samples)")
      if total < 0.99 * duration * rate - rate:  # the container's duration is an estimate
        logging.warning("%s: decoded %.2f s of the %.2f s its container declares; the file "
                        "may be cut short", path, total / rate, duration)

    try:
      yield AudioStream(rate, channels, round(duration * rate), blocks())
    finally:
      if process.poll() is None:
        process.kill()
      process.stdout.close()
      process.wait()


def _read_errors(errors: IO[bytes]) -> str:
  errors.seek(0)
  return _last_line(errors.read().decode(errors="replace"))


def _last_line(text: str) -> str:
  lines = [line.strip() for line in text.splitlines() if line.strip()]
  return lines[-1] if lines else ""


# --------------------------------------------------------------------------- #
# Writing.
# --------------------------------------------------------------------------- #


class AudioWriter:
  """Streams float32 blocks [n, channels] into `path` in format `fmt` (a `FORMATS`
  key), under a temporary name until `commit()`; `discard()` (or an exception in a
  `with` block) removes it. Formats that cannot hold samples beyond [-1, 1] get them
  clipped, never wrapped round."""

  def __init__(self, path: str | os.PathLike, rate: int, channels: int, fmt: str = "wav16",
               bitrate: str = DEFAULT_BITRATE):
    if fmt not in FORMATS:
      raise AudioError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    self.path, self.format, self.channels = pathlib.Path(path), FORMATS[fmt], channels
    self.clipped, self.peak = 0, 0.0  # samples clipped so far, and the largest of them
    self._atomic = atomic_path(self.path, suffix=self.format.extension)
    self._temp = self._atomic.__enter__()
    self._closed = False
    try:
      if self.format.lossy:
        require_ffmpeg(f"{self.path}: writing {fmt}")
        self._errors = tempfile.TemporaryFile()
        self._process = subprocess.Popen(
            ["ffmpeg", "-v", "error", "-nostdin", "-y", "-f", "f32le", "-ar", str(rate),
             "-ac", str(channels), "-i", "pipe:0", "-codec:a", self.format.codec,
             "-b:a", bitrate, "-f", self.format.container, str(self._temp)],
            stdin=subprocess.PIPE, stderr=self._errors)
      else:
        import soundfile

        self._file = soundfile.SoundFile(str(self._temp), "w", samplerate=rate,
                                         channels=channels, format=self.format.container,
                                         subtype=self.format.subtype)
    except BaseException as e:
      self._atomic.__exit__(type(e), e, e.__traceback__)
      if isinstance(e, OSError):
        raise AudioError(f"{self.path}: cannot write it ({e.strerror or e})") from None
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
    try:
      if self.format.lossy:
        self._process.stdin.write(np.ascontiguousarray(block, "<f4").tobytes())
      else:
        self._file.write(block)
    except (OSError, RuntimeError) as e:
      raise AudioError(f"{self.path}: cannot write it ({self._ffmpeg_error() or e})") from None

  def _ffmpeg_error(self) -> str:
    if not self.format.lossy:
      return ""
    self._process.wait()
    return f"ffmpeg: {_read_errors(self._errors)}"

  def _close(self) -> None:
    if self._closed:
      return
    self._closed = True
    if self.format.lossy:
      with contextlib.suppress(OSError):
        self._process.stdin.close()
      code = self._process.wait()
      error = _read_errors(self._errors)
      self._errors.close()
      if code != 0:
        raise AudioError(f"{self.path}: ffmpeg cannot encode it ({error})")
    else:
      self._file.close()

  def commit(self) -> pathlib.Path:
    """Finishes the file and renames it into place."""
    try:
      self._close()
    except BaseException as e:
      self._atomic.__exit__(type(e), e, e.__traceback__)
      raise
    self._atomic.__exit__(None, None, None)
    return self.path

  def discard(self) -> None:
    with contextlib.suppress(Exception):
      if self.format.lossy and self._process.poll() is None:
        self._process.kill()
      self._close()
    error = AudioError("discarded")
    self._atomic.__exit__(AudioError, error, None)

  def __enter__(self) -> AudioWriter:
    return self

  def __exit__(self, kind, value, traceback) -> None:
    if kind is None:
      self.commit()
    else:
      self.discard()


class Spool:
  """Float32 frames [n, channels] kept on disk for a second pass, in a hidden file
  beside `path` named as one of its temporaries (a killed run's spool is removed with
  them); removed by `close()`."""

  def __init__(self, path: str | os.PathLike, channels: int):
    path = pathlib.Path(path)
    self.path = path.parent / (_part_name(path, os.getpid()) + ".spool")
    self.channels = channels
    try:
      path.parent.mkdir(parents=True, exist_ok=True)
      self._file = open(self.path, "w+b")
    except OSError as e:
      raise AudioError(f"{path}: cannot write beside it ({e.strerror or e})") from None

  def write(self, block: np.ndarray) -> None:
    self._file.write(np.ascontiguousarray(block, "<f4").tobytes())

  def blocks(self) -> Iterator[np.ndarray]:
    self._file.flush()
    self._file.seek(0)
    frame_bytes = 4 * self.channels
    while data := self._file.read(BLOCK_FRAMES * frame_bytes):
      yield np.frombuffer(data, "<f4").reshape(-1, self.channels)

  def close(self) -> None:
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


def write_stem_file(path: str | os.PathLike, stems: np.ndarray, rate: int,
                    names: list[str], bitrate: int = 256000) -> pathlib.Path:
  """Writes a Native Instruments stem file (AAC streams, `.stem.mp4`): `stems`
  [streams, time, channels], complete or not at all."""
  path = pathlib.Path(path)
  require_ffmpeg(f"{path}: writing stem files")
  import stempeg

  # ffmpeg picks the container from the extension, so the temporary name ends in .mp4
  # (and not in .stem.mp4, which a track listing would take for a track).
  with atomic_path(path, suffix=".mp4") as temp:
    stempeg.write_stems(str(temp), stems, sample_rate=rate,
                        writer=stempeg.StreamsWriter(codec="aac", bitrate=bitrate,
                                                     stem_names=names))
  return path

"""Compressed audio in and out through PyAV (and Vorbis through soundfile): round trips,
stem files, and writes that fail (a full disk) leaving nothing behind.

No ffmpeg program is involved: these pass on a machine without one.
"""

import logging
import os
import pathlib
import shutil
import subprocess
import sys
import textwrap

import av
import numpy as np
import pytest

from helpers import FullDisk
from waveunet_jax import audio

ROOT = pathlib.Path(__file__).resolve().parent.parent
RATE = 44100


def music(seconds: float, rate: int = RATE, channels: int = 2, seed: int = 0) -> np.ndarray:
  """Two low tones and some noise: neither periodic nor silent in any channel."""
  t = np.arange(round(seconds * rate)) / rate
  tones = np.stack([0.4 * np.sin(2 * np.pi * f * t) for f in (220, 330)[:channels]], axis=1)
  noise = 0.05 * np.random.default_rng(seed).standard_normal(tones.shape)
  return (tones + noise).astype(np.float32)


def correlations(x: np.ndarray, y: np.ndarray) -> list[float]:
  return [np.corrcoef(x[:, c], y[:len(x), c])[0, 1] for c in range(x.shape[1])]


@pytest.mark.parametrize("fmt, padding", [("mp3", 0), ("ogg", 0), ("m4a", 2048)])
def test_lossy_round_trip_keeps_rate_channels_length_and_waveform(tmp_path, fmt, padding):
  x = music(1.0)
  x[100, 0] = 1.5  # clipped, never wrapped round
  with audio.AudioWriter(tmp_path / f"x{audio.AUDIO_FORMATS[fmt].extension}", RATE, 2, fmt,
                         "128k") as writer:
    for start in range(0, len(x), 10000):  # blocks, as separation writes them
      writer.write(x[start:start + 10000])
  assert (writer.clipped, writer.peak) == (1, 1.5)
  info = audio.audio_info(writer.path)
  assert (info.rate, info.channels) == (RATE, 2)
  y, rate = audio.read_audio(writer.path)
  assert rate == RATE and y.shape[1] == 2
  assert 0 <= len(y) - len(x) <= padding  # AAC: whole 1024-sample frames
  assert min(correlations(x, y)) > 0.98
  assert [p.name for p in tmp_path.iterdir()] == [writer.path.name]


@pytest.mark.parametrize("fmt", ["mp3", "ogg", "m4a"])
def test_bitrate_sets_the_size(tmp_path, fmt):
  x = music(2.0, seed=1)
  sizes = [audio.write_audio(tmp_path / f"{kbps}{audio.AUDIO_FORMATS[fmt].extension}", x, RATE, fmt,
                             f"{kbps}k").stat().st_size for kbps in (64, 256)]
  assert sizes[1] > 2 * sizes[0]


def test_mono_at_a_low_rate(tmp_path):
  x = music(0.5, rate=16000, channels=1)
  for fmt in ("mp3", "m4a"):
    y, rate = audio.read_audio(audio.write_audio(tmp_path / f"m.{fmt}", x, 16000, fmt, "64k"))
    assert rate == 16000 and y.shape[1] == 1 and correlations(x, y)[0] > 0.95


def test_bad_bitrate_is_refused_before_anything_is_written(tmp_path):
  assert audio.bits_per_second("320k") == 320000 and audio.bits_per_second("96000") == 96000
  with pytest.raises(audio.AudioError, match="give bits per second"):
    audio.AudioWriter(tmp_path / "x.mp3", RATE, 2, "mp3", "loud")
  assert not list(tmp_path.iterdir())


def test_a_cut_file_warns_and_a_garbled_one_is_refused(tmp_path, caplog):
  path = audio.write_audio(tmp_path / "x.mp3", music(2.0), RATE, "mp3")
  (tmp_path / "cut.mp3").write_bytes(path.read_bytes()[:path.stat().st_size // 4])
  with caplog.at_level(logging.WARNING):
    y, _ = audio.read_audio(tmp_path / "cut.mp3")
  assert len(y) < RATE and "may be cut short" in caplog.text
  (tmp_path / "garbled.m4a").write_bytes(np.random.default_rng(0).bytes(3000))
  with pytest.raises(audio.AudioError, match=r"garbled.m4a: cannot read it as audio"):
    audio.read_audio(tmp_path / "garbled.m4a")


def test_stem_file_round_trip(tmp_path):
  names = ["mixture", "drums", "vocals"]
  stems = np.stack([music(1.0, rate=22050, seed=i) * (0.5 + 0.2 * i) for i in range(3)])
  path = audio.write_stem_file(tmp_path / "t.stem.mp4", stems, 22050, names, bitrate=128000)
  assert [p.name for p in tmp_path.iterdir()] == ["t.stem.mp4"]
  assert audio.stem_file_channels(path, 3) == [2, 2, 2]
  read, rate = audio.read_stem_file(path, 3)
  assert rate == 22050 and read.shape[0] == 3 and read.shape[2] == 2
  assert 0 <= read.shape[1] - stems.shape[1] <= 2048
  for original, decoded in zip(stems, read):  # each stream in its place
    assert min(correlations(original, decoded)) > 0.98
  with av.open(str(path)) as container:
    assert [s.codec_context.name for s in container.streams] == ["aac"] * 3
    assert [s.metadata.get("name", s.metadata.get("title")) for s in container.streams] == names
  with pytest.raises(audio.AudioError, match="has 3 audio streams; a stem file of this layout "
                     "has 5"):
    audio.read_stem_file(path, 5)


def test_a_full_disk_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
  real_open = av.open

  def open_(path, mode="r", **kwargs):
    container = real_open(path, mode, **kwargs)
    return FullDisk(container, path) if mode == "w" else container

  monkeypatch.setattr(av, "open", open_)
  for fmt in ("mp3", "m4a"):
    with pytest.raises(audio.AudioError) as error:
      audio.write_audio(tmp_path / f"x.{fmt}", music(0.5), RATE, fmt)
    assert str(error.value) == f"{tmp_path / f'x.{fmt}'}: cannot write it (No space left on device)"
  with pytest.raises(audio.AudioError, match=r"t.stem.mp4: cannot write it \(No space left"):
    audio.write_stem_file(tmp_path / "t.stem.mp4", np.stack([music(0.5)] * 5), RATE, list("abcde"))
  assert not list(tmp_path.iterdir())


FULL_DISK = """
import os, sys
import numpy as np
from waveunet_jax import audio
folder = sys.argv[1]
x = np.random.default_rng(0).uniform(-0.5, 0.5, (3 * 44100, 2)).astype(np.float32)
for fmt in ("mp3", "m4a", "ogg", "wav16"):
  try:
    audio.write_audio(f"{folder}/x{audio.AUDIO_FORMATS[fmt].extension}", x, 44100, fmt)
  except audio.AudioError as e:
    print(e)
try:
  audio.write_stem_file(f"{folder}/t.stem.mp4", np.stack([x] * 5), 44100, list("abcde"))
except audio.AudioError as e:
  print(e)
print(os.listdir(folder))
"""


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs util-linux's unshare")
def test_a_real_full_disk(tmp_path):
  """A 64 KiB tmpfs, mounted in a user namespace of our own where the system allows it."""
  mount = tmp_path / "small"
  mount.mkdir()
  script = textwrap.dedent(f"""
      mount -t tmpfs -o size=64k tmpfs {mount} || exit 77
      exec {sys.executable} -c '{FULL_DISK}' {mount}""")
  result = subprocess.run(["unshare", "-r", "-m", "sh", "-c", script], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
  if result.returncode == 77 or "unshare:" in result.stderr:
    pytest.skip(f"cannot mount a small tmpfs here: {result.stderr.strip()}")
  lines = result.stdout.splitlines()
  assert result.returncode == 0 and len(lines) == 6, result.stdout + result.stderr
  for line, name in zip(lines, ["x.mp3", "x.m4a", "x.ogg", "x.wav", "t.stem.mp4"]):
    assert line == f"{mount / name}: cannot write it (No space left on device)", line
  assert lines[-1] == "[]"  # no temporaries left behind

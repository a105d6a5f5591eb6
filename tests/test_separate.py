"""Separating files (`separate.py`): outputs, names, failures, and the command line.
`test_separator` covers the Separator itself, whose tiny models and songs (helpers.py)
these reuse.
"""

import errno
import logging
import os
import pathlib
import re
import shlex
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import soundfile as sf

from helpers import SEPARATOR_RATE as RATE
from helpers import SHORT, FullDisk, noise, pass_through, round_trip, separator, tones
from waveunet_jax import audio, files, separate

ROOT = pathlib.Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------- #
# Files.
# --------------------------------------------------------------------------- #


def outputs_of(out, stem, ext=".wav"):
  return {s: out / stem / f"{s}{ext}" for s in ("accompaniment", "vocals")}


def leftovers(out):
  return list(out.rglob(".*"))


def test_files_keep_their_length_rate_and_channels(tmp_path):
  songs = tmp_path / "songs"
  songs.mkdir()
  sf.write(songs / "mono.wav", tones(1.3, 22050, channels=1), 22050, subtype="PCM_16")
  sf.write(songs / "high.wav", tones(0.7, 48000), 48000, subtype="FLOAT")
  sf.write(tmp_path / "lossless.flac", tones(1.1, 44100), 44100)
  sf.write(tmp_path / "source.wav", tones(1.0, 44100), 44100)
  audio.write_audio(tmp_path / "lossy.mp3", tones(1.0, 44100), 44100, "mp3")
  sf.write(tmp_path / "lossy-decoded.wav", audio.read_audio(tmp_path / "lossy.mp3")[0], 44100,
           subtype="FLOAT")
  (songs / "notes.txt").write_text("not audio: a directory input skips it")
  inputs = {"mono": songs / "mono.wav", "high": songs / "high.wav",
            "lossless": tmp_path / "lossless.flac", "lossy": tmp_path / "lossy-decoded.wav"}
  out = tmp_path / "out"
  written = separate.separate_files(
      pass_through(window_seconds=SHORT), [songs, tmp_path / "lossless.flac",
                                           tmp_path / "lossy.mp3"], out, fmt="float")
  assert len(written) == 8
  for stem, source in inputs.items():
    mix, rate = sf.read(source, dtype="float32", always_2d=True)
    for name, path in outputs_of(out, stem).items():
      assert path in written
      info = sf.info(path)
      assert (info.samplerate, info.frames, info.channels) == (rate, len(mix), mix.shape[1])
    vocals = sf.read(outputs_of(out, stem)["vocals"], dtype="float32", always_2d=True)[0]
    np.testing.assert_allclose(vocals, round_trip(mix, rate), rtol=0, atol=1e-5)
  assert not leftovers(out)


def test_flac_and_integer_outputs(tmp_path):
  sf.write(tmp_path / "loud.wav", noise(500, peak=1.0), RATE, subtype="FLOAT")
  sep = separator(bias=-0.55, window_seconds=SHORT, clip_difference=False)
  for fmt, subtype in (("flac", "PCM_24"), ("wav16", "PCM_16"), ("wav24", "PCM_24")):
    paths = separate.separate_files(sep, [tmp_path / "loud.wav"], tmp_path / fmt, fmt=fmt)
    assert [p.suffix for p in paths] == [".flac" if fmt == "flac" else ".wav"] * 2
    vocals, rate = sf.read(paths[1], dtype="float32")
    assert sf.info(paths[1]).subtype == subtype and rate == RATE
    # Integer files clip, never wrap round: vocals = mix + 0.5 reaches 1.5.
    assert vocals.max() == pytest.approx(1.0, abs=1e-4) and vocals.min() > -0.6


def test_existing_outputs_are_kept_unless_overwrite(tmp_path):
  sf.write(tmp_path / "song.wav", noise(300), RATE)
  sep, out = pass_through(window_seconds=SHORT), tmp_path / "out"
  paths = separate.separate_files(sep, [tmp_path / "song.wav"], out)
  sf.write(paths[1], np.zeros((5, 2)), RATE)  # a stand-in for an earlier result
  assert separate.separate_files(sep, [tmp_path / "song.wav"], out) == paths
  assert sf.info(paths[1]).frames == 5
  paths[0].unlink()  # only the missing source is written
  separate.separate_files(sep, [tmp_path / "song.wav"], out)
  assert sf.info(paths[0]).frames == 300 and sf.info(paths[1]).frames == 5
  separate.separate_files(sep, [tmp_path / "song.wav"], out, overwrite=True)
  assert sf.info(paths[1]).frames == 300
  assert not leftovers(out)


def test_bad_inputs_fail_alone_with_one_line_and_leave_nothing(tmp_path, caplog):
  rng = np.random.default_rng(0)
  (tmp_path / "corrupt.wav").write_bytes(rng.bytes(5000))
  (tmp_path / "garbled.mp3").write_bytes(rng.bytes(5000))
  (tmp_path / "zero.flac").write_bytes(b"")
  sf.write(tmp_path / "empty.wav", np.zeros((0, 2)), RATE)
  sf.write(tmp_path / "four.wav", noise(300, channels=4), RATE)
  sf.write(tmp_path / "good.wav", noise(300), RATE)
  bad = {"corrupt.wav": "cannot read it as audio", "garbled.mp3": "cannot read it as audio",
         "zero.flac": "empty", "empty.wav": "empty", "four.wav": "has 4 channels",
         "missing.wav": "no such file"}
  out = tmp_path / "out"
  with caplog.at_level(logging.ERROR), pytest.raises(separate.SeparationError) as error:
    separate.separate_files(pass_through(window_seconds=SHORT),
                            [tmp_path / n for n in [*bad, "good.wav"]], out)
  assert "6 input(s) failed" in str(error.value)
  messages = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
  assert len(messages) == len(bad)
  for (name, reason), message in zip(bad.items(), messages):
    assert name in message and reason in message and "\n" not in message, message
    assert not (out / pathlib.Path(name).stem).exists()
  assert all(p.is_file() for p in outputs_of(out, "good").values())
  assert not leftovers(out)


def test_failure_while_streaming_leaves_no_partial_output(tmp_path, monkeypatch):
  sf.write(tmp_path / "song.wav", noise(3000), RATE)
  sep = pass_through(window_seconds=SHORT)
  original = separate.Separator.separate_blocks

  def fail_after_a_block(self, *args, **kwargs):
    yield next(original(self, *args, **kwargs))
    raise separate.SeparationError("song.wav: the disk caught fire")

  monkeypatch.setattr(separate.Separator, "separate_blocks", fail_after_a_block)
  out = tmp_path / "out"
  with pytest.raises(separate.SeparationError, match="1 input"):
    separate.separate_files(sep, [tmp_path / "song.wav"], out)
  assert not out.exists() or list(out.iterdir()) == []  # not even the folder
  (out / "song").mkdir(parents=True)
  (out / "song" / "notes.txt").write_text("mine")
  with pytest.raises(separate.SeparationError):
    separate.separate_files(sep, [tmp_path / "song.wav"], out)
  assert [p.name for p in (out / "song").iterdir()] == ["notes.txt"]


def test_inputs_whose_outputs_would_collide_are_refused(tmp_path):
  for folder in ("a", "b"):
    (tmp_path / folder).mkdir()
    sf.write(tmp_path / folder / "song.wav", noise(100), RATE)
  with pytest.raises(separate.SeparationError, match=r"b/song.wav"):
    separate.separate_files(pass_through(window_seconds=SHORT),
                            [tmp_path / "a" / "song.wav", tmp_path / "b"], tmp_path / "out")
  assert (tmp_path / "out" / "song" / "vocals.wav").is_file()


def test_a_folder_gives_the_same_tree_and_every_file_its_own_stems(tmp_path):
  # Files of different lengths, rates and channels, read ahead while the previous one
  # is separated: each must get exactly its own stems.
  album = tmp_path / "album"
  songs = {"a": (noise(900, seed=1), RATE), "cd2/b": (noise(2500, channels=1, seed=2), 11025),
           "cd2/deep/c": (noise(40, seed=3), 22050), "d": (noise(1300, seed=4), 44100)}
  for name, (x, rate) in songs.items():
    (album / name).parent.mkdir(parents=True, exist_ok=True)
    sf.write(album / f"{name}.flac" if name == "d" else album / f"{name}.wav", x, rate,
             subtype="FLOAT" if name != "d" else "PCM_24")
  (album / ".hidden").mkdir()
  sf.write(album / ".hidden" / "skip.wav", noise(10), RATE)
  sep = separator(window_seconds=SHORT)
  out = tmp_path / "out"
  written = separate.separate_files(sep, [album], out, fmt="float",
                                    filename="{track}.{trackext}/{stem}.{ext}")
  assert len(written) == 2 * len(songs)
  assert not (out / ".hidden").exists()
  for name, (x, rate) in songs.items():
    x = sf.read(album / f"{name}.{'flac' if name == 'd' else 'wav'}", dtype="float32",
                always_2d=True)[0]
    expected = sep.separate(x, rate)
    folder = out / f"{name}.{'flac' if name == 'd' else 'wav'}"
    for stem in sep.sources:
      got, got_rate = sf.read(folder / f"{stem}.wav", dtype="float32", always_2d=True)
      assert got_rate == rate
      np.testing.assert_array_equal(got, expected[stem])
  assert not leftovers(out)


def test_lossy_outputs_and_the_filename_template(tmp_path):
  sf.write(tmp_path / "song.wav", tones(1.0, 44100) + noise(44100, peak=0.05), 44100)
  sep = separator(window_seconds=0.1)
  paths = separate.separate_files(sep, [tmp_path / "song.wav"], tmp_path / "out", fmt="mp3",
                                  bitrate="96k", filename="{stem}/{track}.{ext}")
  assert paths == [tmp_path / "out" / s / "song.mp3" for s in sep.sources]
  for path in paths:
    info = audio.audio_info(path)
    assert (info.rate, info.channels) == (44100, 2)
    decoded, _ = audio.read_audio(path)
    assert abs(len(decoded) - 44100) < 1200  # mp3's own framing, no more
  assert not leftovers(tmp_path / "out")
  with pytest.raises(separate.SeparationError, match=r"--bitrate: bitrate '96': give bits per second"):
    separate.separate_files(sep, [tmp_path / "song.wav"], tmp_path / "out", fmt="ogg",
                            bitrate="96")  # bits per second: 96 is a typo, refused once
  for template, reason in (("{track}.{ext}", "use {stem}"), ("{stem}/{album}.{ext}", "{album}"),
                           ("../{stem}.{ext}", "inside --output_dir")):
    with pytest.raises(ValueError, match=re.escape(reason)):
      separate.separate_files(sep, [tmp_path / "song.wav"], tmp_path / "out", filename=template)


def test_non_finite_or_truncated_inputs_are_refused_and_leave_nothing(tmp_path, caplog):
  song = noise(4 * RATE, peak=0.5)
  song[3 * RATE + 17, 0] = np.nan  # one bad sample would ruin a whole window of stems
  song[3 * RATE + 20:3 * RATE + 30] = np.inf
  sf.write(tmp_path / "nan.wav", song, RATE, subtype="FLOAT")
  sf.write(tmp_path / "whole.wav", noise(4 * RATE), RATE, subtype="FLOAT")
  data = (tmp_path / "whole.wav").read_bytes()
  (tmp_path / "cut.wav").write_bytes(data[:len(data) // 2])
  out = tmp_path / "out"
  with caplog.at_level(logging.ERROR), pytest.raises(separate.SeparationError,
                                                     match="2 input"):
    separate.separate_files(pass_through(window_seconds=SHORT),
                            [tmp_path / "nan.wav", tmp_path / "cut.wav"], out)
  errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
  assert errors[0].endswith("nan.wav: sample 24017 (at 3.002 s, channel 1) is nan: it holds "
                            "samples that are not numbers (NaN or infinite); repair it (e.g. "
                            "replace them by 0) before using it")
  assert re.search(r"cut.wav: ends after \d+ of the 32000 frames its header declares", errors[1])
  assert not out.exists() or not any(out.rglob("*"))
  with pytest.raises(separate.SeparationError, match=r"audio: sample 24017 \(at 3.002 s"):
    pass_through(window_seconds=SHORT).separate(song, RATE)


def test_clip_modes_for_stems_beyond_the_audio_range(tmp_path, caplog):
  # Peaks of 5: every estimated source is tanh(-0.55) ~ -0.5, vocals = mix + 0.5 (with
  # the clip of the difference output off) and accompaniment the rest.
  mix = np.linspace(-5, 5, 900, dtype=np.float32)[:, None].repeat(2, axis=1)
  sf.write(tmp_path / "loud.wav", mix, RATE, subtype="FLOAT")
  sep = separator(bias=-0.55, window_seconds=SHORT, clip_difference=False)
  run = lambda fmt, clip: [sf.read(p, dtype="float32")[0] for p in separate.separate_files(
      sep, [tmp_path / "loud.wav"], tmp_path / f"{fmt}-{clip}", fmt=fmt, clip=clip)]
  with caplog.at_level(logging.WARNING):
    exact = run("float", None)  # float output keeps everything by default
    np.testing.assert_allclose(sum(exact), mix, rtol=0, atol=1e-6)
    assert np.abs(exact[1]).max() > 5
    assert "reaches 5.000, beyond the [-1, 1]" in caplog.text
    caplog.clear()
    clamped = run("wav24", None)
    assert max(np.abs(x).max() for x in clamped) == pytest.approx(1.0, abs=1e-4)
    beyond = np.count_nonzero(np.abs(exact[1]) > 1)
    assert f"vocals: {beyond} samples beyond [-1, 1] were clamped (peak 5.5" in caplog.text
    caplog.clear()
    rescaled = run("wav24", "rescale")
    scale = 1 / max(np.abs(x).max() for x in exact)
    assert f"stems scaled by {scale:.4f} together" in caplog.text
    np.testing.assert_allclose(sum(rescaled), mix * scale, rtol=0, atol=1e-5)
  assert not leftovers(tmp_path)
  with pytest.raises(ValueError, match="--clip=none: --format=wav16 cannot hold"):
    run("wav16", "none")


def test_an_unwritable_output_dir_is_one_line(tmp_path):
  sf.write(tmp_path / "song.wav", noise(300), RATE)
  (tmp_path / "file").write_text("a regular file")
  with pytest.raises(separate.SeparationError,
                     match=r"^--output_dir=.*file/out: cannot create this folder \(Not a "
                           r"directory\)$"):
    separate.separate_files(pass_through(window_seconds=SHORT), [tmp_path / "song.wav"],
                            tmp_path / "file" / "out")


class FullDiskFile:
  """A spool file on a full disk: every write fails as the kernel fails it."""

  def __init__(self, file):
    self.file = file

  def __getattr__(self, name):
    return getattr(self.file, name)

  def write(self, data):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.fixture
def full_disk(monkeypatch):
  """A function that, once called, makes every way separation writes meet a full disk:
  libsndfile's writes fail with its "System error." (the disk then has no space
  left), FFmpeg's when the file closes (it buffers them), and the --clip=rescale
  spool's at its first write."""
  import shutil

  import av

  real_av_open, real_disk_usage = av.open, shutil.disk_usage

  def av_open(path, mode="r", **kwargs):
    container = real_av_open(path, mode, **kwargs)
    return FullDisk(container, path) if mode == "w" else container

  def soundfile_write(self, data):
    raise RuntimeError("Error : System error.")

  def fill():
    monkeypatch.setattr(av, "open", av_open)
    monkeypatch.setattr(sf.SoundFile, "write", soundfile_write)
    monkeypatch.setattr(shutil, "disk_usage",
                        lambda path: real_disk_usage(path)._replace(free=0))
    monkeypatch.setattr(audio, "open", lambda *a, **k: FullDiskFile(open(*a, **k)),
                        raising=False)

  return fill


@pytest.mark.parametrize("clip", ["clamp", "rescale"])
def test_a_full_disk_fails_the_song_in_one_line_and_leaves_nothing(tmp_path, caplog,
                                                                   full_disk, clip):
  song = tmp_path / "song.wav"
  sf.write(song, noise(RATE), RATE)
  full_disk()
  for fmt in audio.AUDIO_FORMATS:
    out = tmp_path / fmt
    caplog.clear()
    with caplog.at_level(logging.ERROR), pytest.raises(separate.SeparationError,
                                                       match="1 input"):
      separate.separate_files(pass_through(window_seconds=SHORT), [song], out, fmt=fmt,
                              clip=clip)
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "\n" not in errors[0], errors
    assert errors[0].startswith(f"{out / 'song'}/") and errors[0].endswith(
        "(No space left on device)"), (fmt, errors[0])
    assert not out.exists(), (fmt, clip, list(out.rglob("*")))


FULL_DISK = """
import sys
sys.path.insert(0, "tests")
from helpers import pass_through
from waveunet_jax import audio, separate
mount, song = sys.argv[1:]
for fmt in audio.AUDIO_FORMATS:
  for clip in ("clamp", "rescale"):
    try:
      separate.separate_files(pass_through(window_seconds=0.05), [song],
                              f"{mount}/{fmt}-{clip}", fmt=fmt, clip=clip)
    except separate.SeparationError as e:
      print(fmt, clip, e)
"""


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs util-linux's unshare")
def test_a_real_full_disk_fails_every_format_and_clip_mode(tmp_path):
  """A 64 KiB tmpfs, mounted in a user namespace of our own where the system allows
  it: every format and --clip mode fails the song in one line naming the full disk,
  and leaves nothing on it; the program exits 1."""
  mount = tmp_path / "small"
  mount.mkdir()
  song = tmp_path / "song.wav"
  sf.write(song, noise(5 * 44100, peak=0.5), 44100)
  cli = [sys.executable, "-c", CLI, "--workdir=RUN", "--checkpoint=7", str(song),
         f"--output_dir={mount}/cli", "--clip=rescale"]
  script = textwrap.dedent(f"""
      mount -t tmpfs -o size=64k tmpfs {mount} || exit 77
      {shlex.join([sys.executable, "-c", FULL_DISK, str(mount), str(song)])}
      {shlex.join(cli)}
      echo "exit $?"; ls -A {mount}""")
  result = subprocess.run(["unshare", "-r", "-m", "sh", "-c", script], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
  if result.returncode == 77 or "unshare:" in result.stderr:
    pytest.skip(f"cannot mount a small tmpfs here: {result.stderr.strip()}")
  lines = result.stdout.splitlines()
  assert len(lines) == 2 * len(audio.AUDIO_FORMATS) + 1, result.stdout + result.stderr
  for line in lines[:-1]:
    assert line.endswith("1 input(s) failed: " + str(song)), line
  assert "Traceback" not in result.stderr
  assert result.stderr.count("(No space left on device)") == 2 * len(audio.AUDIO_FORMATS) + 1
  assert result.stderr.strip().splitlines()[-1] == f"error: 1 input(s) failed: {song}"
  assert lines[-1] == "exit 1"  # and `ls -A` of the tmpfs printed nothing


def test_a_rerun_removes_the_temporaries_of_a_killed_run_only(tmp_path):
  sf.write(tmp_path / "song.wav", noise(300), RATE)
  out = tmp_path / "out"
  paths = separate.separate_files(pass_through(window_seconds=SHORT), [tmp_path / "song.wav"],
                                  out)
  dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                        capture_output=True, text=True, check=True).stdout.strip()
  live = str(os.getppid())  # a process that runs: another job writing the same file
  stale = [p.parent / f".{p.name}.part-{dead}" for p in paths] + [
      paths[0].parent / f".{paths[0].name}.part-{dead}.spool"]
  running = paths[1].parent / f".{paths[1].name}.part-{live}"
  for p in stale + [running]:
    p.write_bytes(b"half a song")
  # The outputs exist, so nothing is redone, and the dead run's files go all the same.
  separate.separate_files(pass_through(window_seconds=SHORT), [tmp_path / "song.wav"], out)
  assert not any(p.exists() for p in stale) and running.exists()


def files_under(folder):
  return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize("template", ["{ext:.>2.0}/{ext:.>2.0}/X_{stem}.{ext}",
                                      "{ext:/>1.0}tmp/x/{stem}.{ext}", "{stem:.0}",
                                      "{stem!r}.{ext}", "{stem:x}", "{track}//{stem}.{ext}",
                                      "/{stem}.{ext}", "{track}/../{stem}", "{stem}/"])
def test_filename_templates_that_could_leave_the_output_dir_are_one_line(tmp_path, template):
  sf.write(tmp_path / "song.wav", noise(100), RATE)
  before = files_under(tmp_path)
  with pytest.raises(ValueError, match=r"^--filename=") as error:
    separate.separate_files(pass_through(window_seconds=SHORT), [tmp_path / "song.wav"],
                            tmp_path / "out", filename=template)
  assert "\n" not in str(error.value)
  assert files_under(tmp_path) == before


@pytest.mark.parametrize("name, template", [("noext", "{trackext}/{stem}.{ext}"),
                                            ("...wav", "{track}/{stem}.{ext}"),
                                            ("..wav", "{track}.{stem}/../{stem}.{ext}")])
def test_input_names_that_would_leave_the_output_dir_are_refused(tmp_path, caplog, name,
                                                                 template):
  songs = tmp_path / "songs"
  songs.mkdir()
  sf.write(songs / name, noise(100), RATE, format="WAV")
  before = files_under(tmp_path)
  with caplog.at_level(logging.ERROR), pytest.raises(ValueError):
    separate.separate_files(pass_through(window_seconds=SHORT), [songs / name],
                            songs / "out", filename=template)
  assert files_under(tmp_path) == before


def test_an_output_onto_an_input_or_a_folder_is_refused_before_any_work(tmp_path, caplog):
  sf.write(tmp_path / "vocals.wav", noise(100), RATE)
  sf.write(tmp_path / "song.wav", noise(100, seed=1), RATE)
  (tmp_path / "out" / "vocals").mkdir(parents=True)  # other songs' stems
  (tmp_path / "out" / "vocals" / "other song.wav").write_bytes(b"theirs")
  before = files_under(tmp_path)
  sep = pass_through(window_seconds=SHORT)
  with caplog.at_level(logging.ERROR), pytest.raises(separate.SeparationError,
                                                     match="2 input"):
    separate.separate_files(sep, [tmp_path / "vocals.wav", tmp_path / "song.wav"], tmp_path,
                            filename="{stem}.{ext}", overwrite=True)
  messages = [r.getMessage() for r in caplog.records]
  assert len(messages) == 2 and all("its vocals would overwrite the input" in m and
                                    m.endswith(f"{tmp_path / 'vocals.wav'}; choose another "
                                               "--output_dir or --filename") for m in messages)
  with pytest.raises(separate.SeparationError, match="1 input"):
    separate.separate_files(sep, [tmp_path / "song.wav"], tmp_path / "out",
                            filename="{stem}", overwrite=True)
  assert "out/vocals: is a folder, where this file output goes" in caplog.text
  assert files_under(tmp_path) == before
  with pytest.raises(files.WriteError, match=r"^--output_dir is empty"):
    separate.separate_files(sep, [tmp_path / "song.wav"], "")


def test_an_output_dir_inside_an_input_folder_is_not_separated_again(tmp_path):
  album = tmp_path / "album"
  album.mkdir()
  sf.write(album / "song.wav", noise(100), RATE)
  sep = pass_through(window_seconds=SHORT)
  first = separate.separate_files(sep, [album], album / "stems")
  assert separate.separate_files(sep, [album], album / "stems", overwrite=True) == first
  assert sorted(p.relative_to(album).as_posix() for p in album.rglob("*.wav")) == [
      "song.wav", "stems/song/accompaniment.wav", "stems/song/vocals.wav"]


def test_no_filename_leaves_the_output_dir_or_shares_a_file_or_hits_an_input(tmp_path):
  """Random templates and input names: every output the plan accepts lies inside
  --output_dir, on a file of its own, never on an input."""
  import random

  rng = random.Random(21)
  tokens = ["{track}", "{trackext}", "{stem}", "{ext}", "{stem}", "{track}.{ext}", "..", ".",
            "", "x", "a.b", "{ext:.>2.0}", "{stem!r}", "{stem:.0}", "{ext:/>1.0}", "-",
            " ", "{{stem}}"]
  names = ["song.wav", "...wav", "..wav", ".wav", "noext", "a.b.c", "vocals.wav", "x..wav",
           "accompaniment", "vocals", "{stem}.wav", "..", "."]
  stems = ("accompaniment", "vocals")
  accepted = refused = 0
  for _ in range(400):
    parts = ["".join(rng.choice(tokens) for _ in range(rng.randint(1, 3)))
             for _ in range(rng.randint(1, 3))]
    template = ("/" if rng.random() < 0.1 else "") + "/".join(parts)
    try:
      separate.check_filename(template)
    except ValueError:
      continue
    inputs = tmp_path / "in"
    output_dir = rng.choice([inputs, tmp_path / "out", inputs / "sub" / ".."])
    jobs = [(separate.Job(inputs / rng.choice(["", "cd"]) / rng.choice(names),
                          pathlib.Path(rng.choice(["", "cd"]))), None)
            for _ in range(rng.randint(1, 3))]
    inputs_real = {os.path.realpath(job.path) for job, _ in jobs}
    base = os.path.realpath(output_dir)
    taken = set()
    for job, paths, error in separate.plan_outputs(jobs, output_dir, stems, "wav16", template):
      if error is not None:
        refused += 1
        continue
      accepted += 1
      assert set(paths) == set(stems)
      for path in paths.values():
        real = os.path.realpath(path)
        assert real.startswith(base + os.sep), (template, job, path)
        assert real not in inputs_real and real not in taken, (template, job, path)
        taken.add(real)
  assert accepted > 50 and refused > 20  # both sides were exercised


def test_a_long_file_streams_from_disk_to_disk(tmp_path):
  # Correctness only: 60 s of 44.1 kHz stereo through the default windows; memory and
  # time are measured outside the tests.
  rate = 44100
  t = np.arange(60 * rate) / rate
  mix = 0.4 * np.stack([np.sin(2 * np.pi * 220 * t), np.sin(2 * np.pi * 3 * t)], axis=1)
  sf.write(tmp_path / "long.wav", mix.astype(np.float32), rate, subtype="FLOAT")
  sep = pass_through()  # default windows: 30 s at the model's rate
  assert sep.tiling.hop > 20 * RATE
  (accompaniment, vocals), = [separate.separate_file(sep, tmp_path / "long.wav", tmp_path,
                                                     fmt="float")]
  mix = sf.read(tmp_path / "long.wav", dtype="float32")[0]
  out = sf.read(vocals, dtype="float32")[0]
  assert out.shape == mix.shape
  np.testing.assert_allclose(out, round_trip(mix, rate), rtol=0, atol=1e-5)
  # The full band: the accompaniment is what the 8 kHz model could not hear.
  np.testing.assert_allclose(sf.read(accompaniment, dtype="float32")[0] + out, mix,
                             rtol=0, atol=1e-6)


# --------------------------------------------------------------------------- #
# The command line.
# --------------------------------------------------------------------------- #

CLI = """
import sys
sys.path.insert(0, "tests")
from helpers import tiny_model_config  # on the CPU: the environment conftest.py set is inherited
from waveunet_jax import models, separate
from waveunet_jax.separation import jax_engine
import jax, numpy as np

def from_workdir(workdir, checkpoint="best", **kwargs):
  assert checkpoint == "7", checkpoint
  sources = ("bass", "drums", "other", "vocals") if workdir == "FOUR" else None
  model = models.WaveUNet(**tiny_model_config(**({"sources": sources} if sources else {})))
  variables = jax.jit(model.init)(jax.random.key(0), np.zeros((1, 161, 2), np.float32))
  return jax_engine.separator_from_model(model, variables, 8000, **kwargs)

jax_engine.separator_from_workdir = from_workdir
separate.cli()
"""


def test_cli_goes_on_after_a_bad_input_and_exits_non_zero(tmp_path):
  sf.write(tmp_path / "a.wav", noise(500), RATE)
  sf.write(tmp_path / "b.flac", noise(700, channels=1), 16000)
  result = subprocess.run(
      [sys.executable, "-c", CLI, "--workdir=RUN", "--checkpoint=7", str(tmp_path / "a.wav"),
       str(tmp_path / "nothing.wav"), str(tmp_path / "b.flac"), f"--output_dir={tmp_path}/out",
       "--format=wav24", "--window_seconds=0.01", "--overlap=0.25"],
      cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert result.returncode == 1, result.stderr
  assert "Traceback" not in result.stderr
  missing = tmp_path / "nothing.wav"
  assert result.stderr.strip().splitlines()[-1] == f"error: 1 input(s) failed: {missing}"
  assert f"{missing}: no such file or directory" in result.stderr
  assert sf.info(tmp_path / "out" / "a" / "vocals.wav").frames == 500
  info = sf.info(tmp_path / "out" / "b" / "accompaniment.wav")
  assert (info.frames, info.channels, info.samplerate, info.subtype) == (700, 1, 16000, "PCM_24")


def test_cli_stem_layout_of_a_four_source_model(tmp_path):
  sf.write(tmp_path / "a.wav", noise(500), 44100)
  run = lambda *flags: subprocess.run(
      [sys.executable, "-c", CLI, "--workdir=FOUR", "--checkpoint=7", str(tmp_path / "a.wav"),
       f"--output_dir={tmp_path}/out", "--window_seconds=0.01", *flags],
      cwd=ROOT, capture_output=True, text=True, timeout=120)
  result = run("--stems=vocals,accompaniment", "--format=float")
  assert result.returncode == 0, result.stderr
  assert sorted(p.name for p in (tmp_path / "out" / "a").iterdir()) == [
      "accompaniment.wav", "vocals.wav"]
  total = sum(sf.read(tmp_path / "out" / "a" / f"{s}.wav", dtype="float32")[0]
              for s in ("vocals", "accompaniment"))
  np.testing.assert_allclose(total, sf.read(tmp_path / "a.wav", dtype="float32")[0],
                             rtol=0, atol=1e-6)
  result = run("--stems=vocals,piano")
  assert result.returncode == 1 and "Traceback" not in result.stderr
  assert result.stderr.strip().splitlines()[-1].startswith("error: stems: 'piano' is not one")


def test_cli_missing_workdir_is_one_line(tmp_path):
  sf.write(tmp_path / "a.wav", np.zeros((100, 2), np.float32), 44100)
  result = subprocess.run(
      [sys.executable, "-m", "waveunet_jax.separate", f"--workdir={tmp_path / 'nope'}",
       str(tmp_path / "a.wav"), f"--output_dir={tmp_path / 'out'}"],
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode != 0
  assert result.stderr.strip().splitlines()[-1].startswith("error: --workdir=")
  assert "no config.json" in result.stderr and "Traceback" not in result.stderr
  assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("flag, line", [
    ("--window_seconds=1e12", "error: --window_seconds=1e+12: use a positive number of "
     "seconds, at most 3600 (or leave it out)"),
    ("--batch_size=0", "error: --batch_size=0: must be a positive number of windows (or left "
     "out: one per device, or an exported model's fixed batch)"),
    ("--batch_size=-3", "error: --batch_size=-3: must be a positive number of windows (or left "
     "out: one per device, or an exported model's fixed batch)"),
    ("--shifts=-1", "error: --shifts=-1: use 0 (no test-time shifts) or a whole number of "
     "random shifts up to 20"),
])
def test_cli_flags_that_cannot_work_are_refused_before_the_model_loads(tmp_path, flag, line):
  # --window_seconds=1e12 used to end in an _ArrayMemoryError traceback, --batch_size=0 in
  # the engine's words, without the flag; the workdir does not exist: it is never read.
  sf.write(tmp_path / "a.wav", np.zeros((100, 2), np.float32), 44100)
  result = subprocess.run(
      [sys.executable, "-m", "waveunet_jax.separate", f"--workdir={tmp_path / 'nope'}",
       str(tmp_path / "a.wav"), f"--output_dir={tmp_path / 'out'}", flag],
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
  assert result.stderr.strip().splitlines()[-1] == line
  assert not (tmp_path / "out").exists()


def limited(code: str, gib: float) -> str:
  """`code` run with its address space capped at `gib`: an allocation past it fails at
  once instead of growing until the kernel kills the machine's work."""
  return (f"import resource\nresource.setrlimit(resource.RLIMIT_AS, ({int(gib * (1 << 30))},) * 2)\n"
          + code)


def test_cli_refuses_absurd_sample_rates_in_bounded_memory(tmp_path):
  # A header declaring 1 Hz made 100000 frames a 28-hour song, resampled to the model's
  # rate in blocks of 4 GB (an issue 21 probe grew to 24 GB and was killed).
  sf.write(tmp_path / "one_hz.wav", np.zeros((100000, 2), np.float32), 1)
  sf.write(tmp_path / "huge_rate.wav", np.zeros((1000, 2), np.float32), 10_000_000)
  sf.write(tmp_path / "fine.wav", noise(500), RATE)
  result = subprocess.run(
      [sys.executable, "-c", limited(CLI, 3), "--workdir=RUN", "--checkpoint=7", str(tmp_path),
       f"--output_dir={tmp_path}/out"],
      cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert result.returncode == 1, result.stderr
  assert "Traceback" not in result.stderr
  for name, rate in (("huge_rate", 10_000_000), ("one_hz", 1)):
    assert (f"{tmp_path / name}.wav: its header declares a sample rate of {rate} Hz, outside "
            "the 1000 to 768000 Hz of audio (a damaged header?); rewrite the file at its "
            "true rate") in result.stderr
  assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["fine"]

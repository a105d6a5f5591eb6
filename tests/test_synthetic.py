"""Tests for the synthetic MUSDB-like corpus (waveunet_jax.synthetic).

They check the file layouts and formats, determinism, and that the audio has the musical
properties the corpus promises (song sections without vocals, singing-range pitch,
drum onsets on a regular tempo, low bass, no clipping). CPU only, a few seconds each.
"""
from __future__ import annotations

import filecmp
import os
import pathlib
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from waveunet_jax import audio as audio_io, evaluate
from waveunet_jax.data import generator
from waveunet_jax import stems as stems_lib
from waveunet_jax.data import tracks as tracks_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]
SR = generator.SAMPLE_RATE
SECONDS = 12.0
FILES = ("mixture", "vocals", "drums", "bass", "other")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  root = tmp_path_factory.mktemp("corpus")
  paths = generator.write_corpus(root, num_train=2, num_test=1, seconds=SECONDS, seed=0)
  return root, paths


@pytest.fixture(scope="module")
def tracks():
  """A few tracks long enough to contain an instrumental intro and sung sections."""
  return {seed: generator.make_track(seed, 20.0) for seed in (11, 12, 13)}


def _read(folder: pathlib.Path, name: str) -> np.ndarray:
  return sf.read(str(folder / f"{name}.wav"), dtype="float64")[0]


def _frame_rms(x: np.ndarray, frame: int) -> np.ndarray:
  mono = x.mean(axis=1) if x.ndim == 2 else x
  n = len(mono) // frame * frame
  return np.sqrt(np.mean(mono[:n].reshape(-1, frame) ** 2, axis=1))


# ------------------------------------------------------------------ layout and format
def test_layout_names_and_wav_format(corpus):
  root, paths = corpus
  assert [p.parent.name for p in paths] == ["train", "train", "test"]
  assert sorted(p.name for p in (root / "train").iterdir()) == sorted(p.name for p in paths[:2])
  assert [p.name for p in (root / "test").iterdir()] == [paths[2].name]
  names = [p.name for p in paths]
  assert len(set(names)) == len(names)
  for name in names:
    assert re.fullmatch(r"Synthetic (Test )?Artist \d\d - \w+ \w+", name), name
  for p in paths:
    assert sorted(f.name for f in p.iterdir()) == sorted(f"{k}.wav" for k in FILES)
    for k in FILES:
      info = sf.info(str(p / f"{k}.wav"))
      assert (info.samplerate, info.channels) == (44100, 2)
      assert (info.format, info.subtype) == ("WAV", "PCM_16")
      assert info.frames == int(SECONDS * SR)


def test_mixture_is_sum_of_stems_and_does_not_clip(corpus):
  _, paths = corpus
  lsb = 1 / 32768
  for p in paths:
    mix = _read(p, "mixture")
    stems = sum(_read(p, k) for k in stems_lib.STEMS)
    # each of the five files is rounded to 16 bits independently: at most 2.5 LSB apart
    assert np.max(np.abs(mix - stems)) <= 3 * lsb
    assert np.max(np.abs(mix)) < 0.9
    for k in FILES:  # never at full scale, i.e. nothing was clipped
      assert np.max(np.abs(_read(p, k))) < 1 - lsb
    assert np.sqrt(np.mean(mix ** 2)) > 0.03  # and not nearly silent either


def test_make_track_api():
  out = generator.make_track(5, 3.0)
  assert stems_lib.STEMS == ("vocals", "drums", "bass", "other")
  assert set(out) == set(stems_lib.STEMS) | {"mixture"}
  for x in out.values():
    assert x.dtype == np.float32 and x.shape == (3 * SR, 2)
  np.testing.assert_allclose(out["mixture"], sum(out[k] for k in stems_lib.STEMS), atol=1e-6)
  # stereo: the channels are not identical copies
  assert not np.allclose(out["mixture"][:, 0], out["mixture"][:, 1])
  short = generator.make_track(5, 1.0, sample_rate=22050)
  assert short["vocals"].shape == (22050, 2)


# ------------------------------------------------------------------------ determinism
def test_same_seed_gives_identical_bytes_and_other_seed_differs(corpus, tmp_path):
  root, paths = corpus
  again = generator.write_corpus(tmp_path / "again", 1, 0, SECONDS, seed=0)
  assert again[0].name == paths[0].name
  for k in FILES:
    assert filecmp.cmp(again[0] / f"{k}.wav", paths[0] / f"{k}.wav", shallow=False)
  other = generator.write_corpus(tmp_path / "other", 1, 0, SECONDS, seed=1)
  assert not filecmp.cmp(other[0] / "mixture.wav", paths[0] / "mixture.wav", shallow=False)


def test_different_tracks_are_different_music(corpus):
  _, paths = corpus
  a, b = _read(paths[0], "mixture"), _read(paths[1], "mixture")
  assert abs(np.corrcoef(a[:, 0], b[:, 0])[0, 1]) < 0.3
  plans = [generator.plan_song(seed, 30) for seed in range(8)]
  assert len({(p.bpm, p.tonic, p.minor) for p in plans}) == 8


def test_rerun_skips_complete_tracks_and_repairs_broken_ones(tmp_path):
  paths = generator.write_corpus(tmp_path, 2, 0, 2.0, seed=3)
  stamps = {p: (p / "vocals.wav").stat().st_mtime_ns for p in paths}
  reference = (paths[1] / "bass.wav").read_bytes()
  (paths[1] / "bass.wav").unlink()  # as if damaged
  stale = tmp_path / "train" / f".{paths[0].name}.part-999999"
  stale.mkdir()  # as if left behind by a killed run
  assert generator.write_corpus(tmp_path, 2, 0, 2.0, seed=3) == paths
  assert (paths[0] / "vocals.wav").stat().st_mtime_ns == stamps[paths[0]]  # skipped
  assert (paths[1] / "bass.wav").read_bytes() == reference  # rewritten, identically
  assert sorted(os.listdir(tmp_path / "train")) == sorted(p.name for p in paths)  # no temp left


# ------------------------------------------------------------------- musical content
def test_vocals_rest_in_instrumental_sections_and_sing_in_others(tracks):
  for seed, audio in tracks.items():
    voc = audio["vocals"]
    plan = generator.plan_song(seed, 20.0)
    sections = [s for s in plan.section_times() if s[1] < 20.0]
    assert not sections[0][3], "songs start with an instrumental intro"
    intro_end = sections[0][2]
    # silent until the breath just before the first phrase
    assert np.max(np.abs(voc[: int((intro_end - 0.5) * SR)])) < 1e-4
    rms = _frame_rms(voc, 2205)  # 50 ms frames
    t = (np.arange(len(rms)) + 0.5) * 0.05
    sung = np.zeros(len(rms), bool)
    for _, a, b, vocal in sections:
      if vocal:
        sung |= (t >= a) & (t < b)
    assert sung.mean() > 0.3
    active = rms > rms.max() * 10 ** (-30 / 20)
    assert active[sung].mean() > 0.6, "vocals present most of the time in sung sections"
    assert (~active).mean() > 0.05, "and silent in a part of the track"


def _autocorr_f0(frame: np.ndarray) -> float:
  frame = frame - frame.mean()
  spectrum = np.fft.rfft(frame * np.hanning(len(frame)), 2 * len(frame))
  ac = np.fft.irfft(np.abs(spectrum) ** 2)[: len(frame)]
  lo, hi = SR // 1200, SR // 60
  lag = lo + int(np.argmax(ac[lo:hi]))
  return SR / lag


def test_vocal_pitch_is_in_singing_range_and_moves(tracks):
  for audio in tracks.values():
    voc = audio["vocals"].mean(axis=1)
    rms = _frame_rms(voc, 2048)
    loud = np.nonzero(rms > 0.2 * rms.max())[0]  # sung frames
    f0 = np.array([_autocorr_f0(voc[i * 2048:(i + 1) * 2048]) for i in loud])
    assert len(f0) >= 5
    assert np.mean((f0 > 80) & (f0 < 1000)) > 0.9, f0
    semitones = 12 * np.log2(f0 / np.median(f0))
    assert np.std(semitones) > 1.0, "a melody, not a drone"


def _onset_strength(x: np.ndarray, hop: int) -> np.ndarray:
  """Spectral flux: summed increase of log-magnitude per bin between 1024-sample frames."""
  frames = np.lib.stride_tricks.sliding_window_view(x, 1024)[::hop] * np.hanning(1024)
  mag = np.log1p(100 * np.abs(np.fft.rfft(frames, axis=1)))
  return np.maximum(np.diff(mag, axis=0), 0).sum(axis=1)


def test_drum_onsets_follow_a_regular_tempo(tracks):
  hop = 441  # 10 ms
  for seed, audio in tracks.items():
    plan = generator.plan_song(seed, 20.0)
    flux = _onset_strength(audio["drums"].mean(axis=1), hop)
    peaks = np.nonzero((flux[1:-1] > flux[:-2]) & (flux[1:-1] >= flux[2:])
                       & (flux[1:-1] > flux.mean() + flux.std()))[0] + 1
    assert len(peaks) > 0.4 * 20.0 / plan.beat, "drum hits on most beats"
    # onsets sit on the 16th-note grid (within humanisation and swing)
    onset_t = peaks * hop / SR + 512 / SR  # (frame pair k, k+1 spans up to sample (k+1)*hop+1024)
    grid = plan.beat / 4
    off = (onset_t / grid) % 1
    err = np.minimum(off, 1 - off) * grid
    assert np.mean(err < 0.03 + plan.swing * plan.beat / 2) > 0.75
    # and the pattern repeats strongly every bar
    f = np.convolve(flux - flux.mean(), np.hanning(5), "same")  # tolerate a few ms jitter
    ac = np.correlate(f, f, "full")[len(f) - 1:]
    bar = int(round(4 * plan.beat * SR / hop))
    assert ac[bar - 2:bar + 3].max() > 0.4 * ac[0]


def test_bass_energy_is_low(tracks):
  for audio in tracks.values():
    bass = audio["bass"].mean(axis=1)
    power = np.abs(np.fft.rfft(bass)) ** 2
    freqs = np.fft.rfftfreq(len(bass), 1 / SR)
    assert power[freqs < 300].sum() > 0.9 * power.sum()
    other = np.abs(np.fft.rfft(audio["other"].mean(axis=1))) ** 2
    assert power[freqs < 120].sum() / power.sum() > other[freqs < 120].sum() / other.sum()


def test_vocals_about_as_loud_as_accompaniment(tracks):
  for audio in tracks.values():
    acc = audio["drums"] + audio["bass"] + audio["other"]
    db = 10 * np.log10(np.mean(audio["vocals"] ** 2) / np.mean(acc ** 2))
    assert -10 < db < 6


# ------------------------------------------------------------------- musdb, stem files
@pytest.mark.skipif(shutil.which("ffprobe") is None,
                    reason="musdb.DB probes every file with ffprobe, wav ones too")
def test_wav_layout_reads_with_musdb(corpus):
  evaluate.import_museval()  # musdb, imported as evaluate imports it
  import musdb

  root, paths = corpus
  db = musdb.DB(root=str(root), subsets="train", is_wav=True)
  assert [t.name for t in db] == sorted(p.name for p in paths[:2])
  track = db[0]
  assert track.rate == SR
  expected = _read(root / "train" / track.name, "vocals")
  np.testing.assert_allclose(track.targets["vocals"].audio, expected, atol=1e-4)


def test_stem_files_round_trip(tmp_path):
  seconds = 4.0
  paths = generator.write_corpus(tmp_path, 1, 1, seconds, seed=7, stems=True)
  assert [p.relative_to(tmp_path).parts[0] for p in paths] == ["train", "test"]
  assert all(p.name.endswith(".stem.mp4") and p.is_file() for p in paths)
  assert sorted(os.listdir(tmp_path / "train")) == [paths[0].name]  # no temporary files left
  expected = generator.make_track(generator._track_seed(7, "train", 0), seconds)
  n = int(seconds * SR)
  track = tracks_lib.find_tracks(tmp_path, "train", wav=False)[0]
  assert track.name == paths[0].name[: -len(".stem.mp4")]
  stems, rate = audio_io.read_stem_file(paths[0], len(stems_lib.STEM_FILE_STREAMS))
  assert rate == SR and stems.shape[0] == 5 and stems.shape[2] == 2
  # AAC decodes in whole 1024-sample frames: the track comes back padded to a frame multiple
  assert 0 <= stems.shape[1] - n < 1024
  for i, k in enumerate(stems_lib.STEM_FILE_STREAMS):  # lossy codec: compare waveforms by correlation
    assert np.corrcoef(stems[i, :n].ravel(), expected[k].ravel())[0, 1] > 0.99, k
  read, _ = tracks_lib.read_stems(track)  # MUSDB18's stream order
  assert np.corrcoef(read["vocals"][:n].ravel(), expected["vocals"].ravel())[0, 1] > 0.99
  # a re-run keeps the existing files
  mtime = paths[0].stat().st_mtime_ns
  assert generator.write_corpus(tmp_path, 1, 1, seconds, seed=7, stems=True) == paths
  assert paths[0].stat().st_mtime_ns == mtime


# ----------------------------------------------------------------------- arguments, CLI
@pytest.mark.parametrize("kwargs, message", [
    (dict(num_train=0), "train tracks"), (dict(num_train=-2), "train tracks"),
    (dict(num_test=-1), "test tracks"), (dict(seconds=0.0), "seconds"),
    (dict(seconds=-3.0), "seconds"), (dict(seconds=float("nan")), "seconds"),
    (dict(seed=-1), "seed"),
])
def test_bad_arguments_raise(tmp_path, kwargs, message):
  args = dict(num_train=1, num_test=0, seconds=1.0, seed=0) | kwargs
  with pytest.raises(ValueError, match=message):
    generator.write_corpus(tmp_path, **args)
  with pytest.raises(ValueError):
    generator.make_track(0, 0.0)


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
  env = dict(os.environ if env is None else env)
  env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
  return subprocess.run([sys.executable, "-m", "waveunet_jax.synthetic", *args], cwd=ROOT,
                        env=env, capture_output=True, text=True, timeout=120)


def test_cli_writes_what_it_reports(tmp_path):
  res = _cli(str(tmp_path), "--tracks", "2", "--test_tracks", "1", "--seconds", "1.5",
             "--seed", "4")
  assert res.returncode == 0, res.stderr
  printed = [pathlib.Path(line) for line in res.stdout.splitlines()]
  assert printed == generator.write_corpus(tmp_path, 2, 1, 1.5, seed=4)
  for p in printed:
    assert sf.info(str(p / "mixture.wav")).frames == int(1.5 * SR)


@pytest.mark.parametrize("args, message", [
    (("--tracks", "0"), "positive"), (("--seconds", "-1"), "seconds"),
    (("--test_tracks", "-1"), "test tracks"), (("--tracks", "two"), "invalid int"),
])
def test_cli_bad_arguments(tmp_path, args, message):
  res = _cli(str(tmp_path / "out"), *args)
  assert res.returncode == 2 and message in res.stderr, res.stderr
  assert not (tmp_path / "out").exists()


def test_cli_stems_need_no_ffmpeg_program(tmp_path):
  empty = tmp_path / "empty_path"
  empty.mkdir()
  env = dict(os.environ, PATH=str(empty))  # no ffmpeg to be found: PyAV encodes in-process
  res = _cli(str(tmp_path / "out"), "--stems", "--seconds", "1", "--tracks", "1", "--test_tracks",
             "0", env=env)
  assert res.returncode == 0, res.stderr
  path = pathlib.Path(res.stdout.strip())
  assert path.name.endswith(".stem.mp4")
  assert audio_io.stem_file_channels(path, 5) == [2] * 5

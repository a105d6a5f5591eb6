"""Evaluation on one's own folders: any stems that make the model's sources (vocals +
accompaniment.wav or instrumental.wav), mono stems, the error line of a track that
lacks a source, and --split=valid holding out what `prepare` holds out.

Tracks are 2 s of noise at 8 kHz, written as float wavs (read back exactly); museval
scores each in about 3 s (the model and the mixture baseline).
"""

import json
import logging

import jax
import numpy as np
import pytest
import soundfile

from helpers import tiny_model_config
from waveunet_jax import evaluate, models
from waveunet_jax.separation import jax_engine
from waveunet_jax.data import tracks as tracks_lib

RATE, SECONDS = 8000, 2
SOURCES = ("accompaniment", "vocals")


def noise(seed: int, channels: int) -> np.ndarray:
  """Never silent (museval leaves a frame with a silent source undefined)."""
  rng = np.random.default_rng(seed)
  return rng.uniform(-0.3, 0.3, (RATE * SECONDS, channels)).astype(np.float32)


def write_track(folder, stems: dict) -> None:
  folder.mkdir(parents=True)
  for name, audio in stems.items():
    soundfile.write(folder / f"{name}.wav", audio, RATE, subtype="FLOAT")


class Oracle:
  """A stereo vocals/accompaniment model that knows each track's true sources: its
  estimates are those times 1 + 1e-3 * N(0, 1), so they score about 60 dB only against
  the right references, of the right mix."""

  sources, num_channels = SOURCES, 2

  def __init__(self, tracks: dict):
    self.tracks, self.mixes = tracks, []  # {name: {source: [T, 2]}}
    self.rng = np.random.default_rng(0)

  def separate(self, audio, rate):
    assert rate == RATE
    self.mixes.append(audio)
    for true in self.tracks.values():
      if np.array_equal(audio, true["vocals"] + true["accompaniment"]):
        return {s: x * (1 + 1e-3 * self.rng.standard_normal(x.shape)).astype(np.float32)
                for s, x in true.items()}
    raise AssertionError("separate() called for a mix that is not the sum of a track's stems")


def track_sdr(out, split, name):
  """{source: median SDR over the track's frames} from its museval JSON."""
  targets = json.loads((out / split / f"{name}.json").read_text())["targets"]
  return {t["name"]: evaluate.track_median([f["metrics"]["SDR"] for f in t["frames"]])
          for t in targets}


def test_vocals_and_an_accompaniment_or_instrumental_stem_are_scored(tmp_path):
  root = tmp_path / "mine"
  true = {"A - accompaniment": {"vocals": noise(0, 2), "accompaniment": noise(1, 2)},
          "B - instrumental": {"vocals": noise(2, 2), "accompaniment": noise(3, 2)}}
  write_track(root / "test" / "A - accompaniment", true["A - accompaniment"])
  write_track(root / "test" / "B - instrumental",
              {"vocals": true["B - instrumental"]["vocals"],
               "instrumental": true["B - instrumental"]["accompaniment"]})
  oracle = Oracle(true)
  summary = evaluate.evaluate(oracle, root, tmp_path / "eval", wav=True, report=False)
  assert summary["tracks"] == sorted(true) and summary["failed"] == {}
  assert len(oracle.mixes) == 2
  for name in true:  # each track against its own stems: the accompaniment is the file
    sdr = track_sdr(tmp_path / "eval", "test", name)
    assert sorted(sdr) == sorted(SOURCES) and min(sdr.values()) > 40, (name, sdr)
  for source in SOURCES:
    stats = summary["model"][source]["SDR"]
    assert stats["tracks"] == 2 and stats["frames"] == stats["frames_total"] == 2 * SECONDS
    assert stats["sisec_median"] > 40
    baseline = summary["mixture_baseline"][source]["SDR"]
    assert np.isfinite(baseline["pooled_median"]) and baseline["pooled_median"] < 10


def test_mono_stems_are_scored_as_the_models_stereo(tmp_path, caplog):
  caplog.set_level(logging.INFO)
  root = tmp_path / "mine"
  folder = root / "test" / "M - mono"
  write_track(folder, {"vocals": noise(4, 1), "accompaniment": noise(5, 1)})
  # A tiny random stereo model at 8 kHz, through the real Separator.
  model = models.WaveUNet(**tiny_model_config())
  mix = np.zeros((1, models.lengths(model, 1).input_length, 2), np.float32)
  separator = jax_engine.separator_from_model(
      model, jax.jit(model.init)(jax.random.key(0), mix), RATE)
  assert separator.num_channels == 2
  summary = evaluate.evaluate(separator, root, tmp_path / "eval", wav=True, report=False)
  assert summary["tracks"] == ["M - mono"] and summary["failed"] == {}
  for source in SOURCES:
    stats = summary["model"][source]["SDR"]
    assert stats["frames"] == stats["frames_total"] == SECONDS
    assert all(np.isfinite(stats[s]) for s in ("sisec_median", "pooled_median", "pooled_mean"))
  lines = [r.getMessage() for r in caplog.records if "scored as" in r.getMessage()]
  assert lines == ["track 'M - mono': mono vocals.wav, accompaniment.wav scored as 2 channels "
                   "(each a copy of the mono stem)"]
  # What was scored: both channels a copy of the mono stem, the mix their sum.
  track = tracks_lib.find_tracks(root, "test", True)[0]
  mix, refs, _ = evaluate.read_track(track, SOURCES, 2)
  vocals = noise(4, 1)
  np.testing.assert_array_equal(refs["vocals"], np.repeat(vocals, 2, axis=1))
  np.testing.assert_array_equal(mix, np.repeat(vocals + noise(5, 1), 2, axis=1))
  # A mono model scores an all-mono track in mono; a stereo stem beside a mono one makes
  # the mono one stereo, whatever the model.
  mix, refs, _ = evaluate.read_track(track, SOURCES, 1)
  assert mix.shape == refs["vocals"].shape == (RATE * SECONDS, 1)
  write_track(root / "test" / "N - half", {"vocals": vocals, "accompaniment": noise(5, 2)})
  half = tracks_lib.find_tracks(root, "test", True)[1]
  mix, refs, _ = evaluate.read_track(half, SOURCES, 1)
  np.testing.assert_array_equal(refs["vocals"], np.repeat(vocals, 2, axis=1))
  assert mix.shape == (RATE * SECONDS, 2)


class Unused:
  """A separator that must not be called: every track fails before separation."""

  num_channels = 2

  def __init__(self, sources):
    self.sources = sources

  def separate(self, audio, rate):
    raise AssertionError("a track without its sources' stems was separated")


def test_a_track_without_a_sources_stems_fails_in_one_line(tmp_path, caplog):
  root = tmp_path / "mine"
  no_vocals = root / "test" / "A - no vocals"
  write_track(no_vocals, {"instrumental": noise(0, 2), "piano": noise(1, 2)})
  with pytest.raises(evaluate.EvaluationError, match=r"every track failed \(A - no vocals: "
                     r"each one's error is above\); nothing is scored, no summary written"):
    evaluate.evaluate(Unused(SOURCES), root, tmp_path / "eval", wav=True, report=False)
  line = (f"track 'A - no vocals': no vocals.wav in {no_vocals} (needed for the source "
          "'vocals' of the model's sources; --stems scores others); it has instrumental.wav "
          "(drums + bass + other), piano.wav")
  assert not (tmp_path / "eval" / "summary.json").exists()
  assert any(r.getMessage().endswith(line) and "\n" not in r.getMessage()
             for r in caplog.records if r.levelno == logging.ERROR)
  # Four sources from vocals and an accompaniment stem: its bass cannot be had apart;
  # --stems=vocals,accompaniment scores it.
  root = tmp_path / "two"
  two = root / "test" / "B - two stems"
  write_track(two, {"vocals": noise(2, 2), "accompaniment": noise(3, 2)})
  four = Unused(("bass", "drums", "other", "vocals"))
  caplog.clear()
  with pytest.raises(evaluate.EvaluationError, match="every track failed"):
    evaluate.evaluate(four, root, tmp_path / "eval4", wav=True, report=False)
  line = (f"track 'B - two stems': no bass.wav in {two} (needed for the source 'bass' of the "
          "model's sources; --stems scores others); it has vocals.wav, accompaniment.wav "
          "(drums + bass + other)")
  assert any(r.getMessage().endswith(line) for r in caplog.records if r.levelno == logging.ERROR)
  # An accompaniment stem beside MUSDB18's four would be in the mix and in no reference.
  write_track(root / "test" / "C - five", {s: noise(i, 2) for i, s in enumerate(
      ("vocals", "drums", "bass", "other", "accompaniment"))})
  five = tracks_lib.find_tracks(root, "test", True)[1]
  with pytest.raises(tracks_lib.DataError) as error:
    evaluate.read_track(five, four.sources, needed_for=" of the model's sources")
  assert str(error.value) == (
      f"track 'C - five': {five.path / 'accompaniment.wav'} holds drums + bass + other in one, "
      "which no source can take whole (needed apart for the sources 'bass', 'drums', 'other' "
      "of the model's sources); it has vocals.wav, drums.wav, bass.wav, other.wav, "
      f"accompaniment.wav (drums + bass + other); move it out of {five.path}")


def test_the_valid_split_is_what_prepare_holds_out(tmp_path):
  root = tmp_path / "mine"
  names = [f"Artist {i:02d} - Song" for i in range(12)]
  for i, name in enumerate(names):
    write_track(root / "train" / name, {"vocals": noise(2 * i, 2),
                                         "accompaniment": noise(2 * i + 1, 2)})
  chosen = lambda split: [t.name for t in split]
  # No valid/ and no MUSDB18 track: about 10 % of train/, by a hash of the names, as
  # prepare chooses them (tracks.split_tracks).
  held_out = chosen(tracks_lib.split_tracks(root, True, None)["valid"])
  assert held_out == sorted(tracks_lib.hashed_validation(
      tracks_lib.find_tracks(root, "train", True))) and len(held_out) == 1
  assert chosen(evaluate.tracks_of_split(root, "valid", True)) == held_out
  # And scored: exactly that track.
  true = {name: {"vocals": noise(2 * i, 2), "accompaniment": noise(2 * i + 1, 2)}
          for i, name in enumerate(names)}
  summary = evaluate.evaluate(Oracle(true), root, tmp_path / "eval", wav=True, split="valid",
                              report=False)
  assert summary["split"] == "valid" and summary["tracks"] == held_out
  assert min(track_sdr(tmp_path / "eval", "valid", held_out[0]).values()) > 40
  # --valid_tracks names them; else a valid/ folder holds them.
  assert chosen(evaluate.tracks_of_split(root, "valid", True, names[3:5])) == names[3:5]
  for name in ("Z - one", "Y - two"):
    (root / "valid" / name).mkdir(parents=True)
  assert chosen(evaluate.tracks_of_split(root, "valid", True)) == ["Y - two", "Z - one"] == \
      chosen(tracks_lib.split_tracks(root, True, None)["valid"])

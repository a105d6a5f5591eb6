"""Preparing a dataset (`prepare`, `data/builder.py`): the window layout and the windows,
stems summed into the config's sources, bad tracks named, the validation split, reruns
and the command line. Reading the records back: test_data.py; the pipeline's own tests:
test_input_pipeline.py."""

import logging
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest
import soundfile

from helpers import (DATA_RATE, data_config, prepare_tracks, silent_stems, tiny_data_config,
                     write_track)
from waveunet_jax import models
from waveunet_jax.data import builder as builder_lib
from waveunet_jax.data import records
from waveunet_jax.data import generator
from waveunet_jax import stems as stems_lib
from waveunet_jax.data import tracks as tracks_lib

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  root = tmp_path_factory.mktemp("corpus")
  generator.write_corpus(root, num_train=3, num_test=1, seconds=6, seed=0)
  return root


def test_layout_comes_from_the_length_arithmetic():
  config = data_config()
  layout = records.layout_for(config)
  size = models.lengths(config.model, 3000)
  assert (layout.input_length, layout.output_length) == (size.input_length, size.output_length)
  assert layout.hop % layout.output_length == 0
  assert layout.hop >= records.WINDOW_INPUT_LENGTHS * layout.input_length


def test_windows_hold_every_crop_and_tile():
  layout = records.Layout(("vocals",), DATA_RATE, 1, input_length=101, output_length=31)
  n = 1000
  track = np.arange(1, n + 1, dtype=np.int16).reshape(1, n, 1)
  padded = np.pad(track, ((0, 0), (layout.offset, 10_000), (0, 0)))
  starts, tiles = [], []
  for w in builder_lib.track_windows(track, layout):
    assert w["sources"].shape == (1, layout.window_length, 1)
    for s in range(w["num_starts"]):
      starts.append(w["start"] + s)
      crop = w["sources"][:, s:s + layout.input_length]
      np.testing.assert_array_equal(crop, padded[:, w["start"] + s:][:, :layout.input_length])
    tiles += [w["start"] + j * layout.output_length for j in range(w["num_tiles"])]
  # Every output sample of the track is the target of some crop, and tiles cover it.
  assert starts == list(range(n - layout.output_length + 1))
  assert tiles == list(range(0, n, layout.output_length))


def noise_stems(names, seconds: float, seed: int):
  rng = np.random.default_rng(seed)
  return {name: rng.uniform(-0.2, 0.2, (int(seconds * 44100), 2)).astype(np.float32)
          for name in names}


def read_wavs(folder: pathlib.Path) -> dict:
  return {p.stem: soundfile.read(p, dtype="float32")[0] for p in folder.glob("*.wav")}


def stored_sources(config, split: str, track: str) -> np.ndarray:
  """A track's stored sources, int16 [S, N, C], put back together from its windows
  (N runs on into the zero padding past the track's end)."""
  builder, _ = builder_lib.load_builder(config)
  layout = records.layout_for(config)
  windows = sorted((int(x["index"]), x["sources"])
                   for x in builder.as_dataset(split=split).as_numpy_iterator()
                   if x["track"].decode() == track)
  return np.concatenate([w[:, :layout.hop] for _, w in windows], axis=1)[:, layout.offset:]


@pytest.mark.parametrize("sources", [("accompaniment", "vocals"),
                                     ("vocals", "drums", "bass", "other")])
def test_an_extra_stem_is_accompaniment_and_other(tmp_path, caplog, sources):
  # absl's logger itself: an earlier test in this process may have left it at WARNING.
  caplog.set_level(logging.INFO, logger="absl")
  root = tmp_path / "own"
  # A mixture.wav is never a stem: were it summed, accompaniment would not match below.
  write_track(root / "train" / "A - piano",
              noise_stems(stems_lib.STEMS + ("piano", "mixture"), 1, 0))
  write_track(root / "train" / "B - plain", silent_stems(1.0))
  # At 44.1 kHz nothing is resampled: the stored sources are the sums of the files.
  config = tiny_data_config(44100, 3000, tmp_path / "data", sources=sources)
  builder_lib.prepare(config, root, tmp_path / "data", wav=True, valid_tracks=["B - plain"])
  wavs = read_wavs(root / "train" / "A - piano")
  expected = {**wavs, "other": wavs["other"] + wavs["piano"],
              "accompaniment": wavs["drums"] + wavs["bass"] + wavs["other"] + wavs["piano"]}
  stored = stored_sources(config, "train", "A - piano")
  for i, source in enumerate(sources):
    np.testing.assert_array_equal(stored[i, :44100], records.to_int16(expected[source]))
  assert re.search(r"A - piano: 1.0 s, \d+ windows \(piano counted as other\)", caplog.text)


def test_a_stem_no_source_needs_may_be_missing(tmp_path):
  root = tmp_path / "own"
  folder = root / "train" / "A - no drums"
  write_track(folder, noise_stems(("vocals", "bass"), 1, 0))
  write_track(root / "train" / "B - plain", silent_stems(1.0))
  config = tiny_data_config(44100, 3000, tmp_path / "data")  # accompaniment, vocals
  builder_lib.prepare(config, root, tmp_path / "data", wav=True, valid_tracks=["B - plain"])
  stored = stored_sources(config, "train", "A - no drums")
  bass = read_wavs(folder)["bass"]
  np.testing.assert_array_equal(stored[config.model.sources.index("accompaniment"), :44100],
                                records.to_int16(bass))
  # The four stems need drums.wav.
  config = tiny_data_config(44100, 3000, tmp_path / "data4",
                            sources=("vocals", "drums", "bass", "other"))
  with pytest.raises(records.DataError) as error:
    builder_lib.prepare(config, root, tmp_path / "data4", wav=True, valid_tracks=["B - plain"])
  assert str(error.value) == (f"track 'A - no drums': no drums.wav in {folder} (needed for the "
                              "source 'drums' of config.model.sources); it has vocals.wav, "
                              "bass.wav")


def no_dataset_left(data_dir: pathlib.Path):
  leftovers = [p for p in data_dir.rglob("*") if p.is_file() and "tfrecord" in p.name]
  return not leftovers and not list(data_dir.rglob("incomplete.*"))


@pytest.mark.parametrize("problem,message", [
    ("missing", "no vocals.wav in "),
    ("only_vocals", "no stem but vocals.wav in "),
    ("unequal_length", "different lengths"),
    ("extra_unequal_length", "different lengths"),
    ("unequal_rate", "different sample rates"),
    ("mono", "1 channel"),
    ("not_audio", "cannot read"),
    ("empty_file", "cannot read|is empty"),
    ("nan", "vocals.wav: sample 22050 (at 0.500 s, channel 2) is nan"),
    ("truncated", "vocals.wav: ends after"),
])
def test_bad_tracks_are_named_and_leave_nothing(tmp_path, problem, message):
  good = silent_stems(1.0)
  bad = silent_stems(1.0)
  root = tmp_path / "musdb"
  write_track(root / "train" / "A - good", good)
  folder = root / "train" / "B - bad"
  write_track(folder, bad)
  if problem == "missing":
    (folder / "vocals.wav").unlink()
  elif problem == "only_vocals":  # nothing for the accompaniment
    for stem in ("drums", "bass", "other"):
      (folder / f"{stem}.wav").unlink()
  elif problem == "unequal_length":
    write_track(folder, {"bass": np.zeros((40000, 2), np.float32)})
  elif problem == "extra_unequal_length":
    write_track(folder, {"piano": np.zeros((40000, 2), np.float32)})
  elif problem == "unequal_rate":
    write_track(folder, {"bass": np.zeros((48000, 2), np.float32)}, rate=48000)
  elif problem == "mono":
    write_track(folder, {"other": np.zeros(44100, np.float32)})
  elif problem == "not_audio":
    (folder / "vocals.wav").write_text("this is not a wav file")
  elif problem == "nan":  # one bad sample must not get into the dataset
    vocals = np.zeros((44100, 2), np.float32)
    vocals[22050, 1] = np.nan
    write_track(folder, {"vocals": vocals}, subtype="FLOAT")
  elif problem == "truncated":
    data = (folder / "vocals.wav").read_bytes()
    (folder / "vocals.wav").write_bytes(data[:len(data) // 3])
  else:
    (folder / "vocals.wav").write_bytes(b"")
  data_dir = tmp_path / "data"
  with pytest.raises(records.DataError, match="B - bad") as error:
    builder_lib.prepare(data_config(data_dir), root, data_dir, wav=True, valid_tracks=["A - good"])
  assert any(m in str(error.value) for m in message.split("|")), error.value
  assert no_dataset_left(data_dir)


def test_empty_folder_and_unknown_validation_track(tmp_path):
  (tmp_path / "musdb" / "train").mkdir(parents=True)
  with pytest.raises(records.DataError, match="no tracks found"):
    builder_lib.prepare(data_config(), tmp_path / "musdb", tmp_path / "data", wav=True)
  write_track(tmp_path / "musdb" / "train" / "A - a", silent_stems(1.0))
  with pytest.raises(records.DataError, match="only one training track .* validation needs at "
                     "least 2 tracks there .* or tracks of its own in .*valid/"):
    builder_lib.prepare(data_config(), tmp_path / "musdb", tmp_path / "data", wav=True)
  with pytest.raises(records.DataError, match="--valid_tracks: not in"):
    builder_lib.prepare(data_config(), tmp_path / "musdb", tmp_path / "data", wav=True,
                    valid_tracks=["Nobody - Nothing"])


def names(tracks) -> list:
  return [t.name for t in tracks]


def stored_tracks(config) -> dict:
  builder, _ = builder_lib.load_builder(config)
  return {split: {x["track"].decode() for x in builder.as_dataset(split=split).as_numpy_iterator()}
          for split in builder.info.splits}


def test_prepare_a_folder_of_ones_own_chooses_validation(corpus, tmp_path, caplog):
  caplog.set_level(logging.INFO, logger="absl")
  config = data_config(tmp_path)
  builder_lib.prepare(config, corpus, tmp_path, wav=True)  # no --valid_tracks, no valid/
  train = tracks_lib.find_tracks(corpus, "train", True)
  chosen = tracks_lib.hashed_validation(train)
  assert stored_tracks(config) == {"train": {t.name for t in train} - chosen, "valid": chosen,
                                   "test": set(names(tracks_lib.find_tracks(corpus, "test", True)))}
  assert f"validation: 1 of the 3 tracks of {corpus / 'train'}" in caplog.text


def test_a_valid_folder_is_the_validation_split(tmp_path, caplog):
  caplog.set_level(logging.INFO, logger="absl")
  root = tmp_path / "own"
  for split, name in (("train", "A - a"), ("train", "B - b"), ("valid", "C - c")):
    write_track(root / split / name, silent_stems(1.0))
  config = data_config(tmp_path / "data")
  builder_lib.prepare(config, root, tmp_path / "data", wav=True)
  assert stored_tracks(config) == {"train": {"A - a", "B - b"}, "valid": {"C - c"}}  # no test/
  assert f"validation: the 1 track(s) of {root / 'valid'}/" in caplog.text
  # --valid_tracks still decides.
  splits = tracks_lib.split_tracks(root, True, ["A - a"])
  assert (names(splits["train"]), names(splits["valid"])) == (["B - b"], ["A - a"])
  assert f"the 1 track(s) of {root / 'valid'}/ are not used" in caplog.text
  write_track(root / "valid" / "A - a", silent_stems(1.0))
  with pytest.raises(records.DataError, match="'A - a' is in both train/ and valid/"):
    tracks_lib.split_tracks(root, True, None)


def test_tracks_file_names_folders_and_their_splits(tmp_path, caplog):
  caplog.set_level(logging.INFO, logger="absl")
  songs = tmp_path / "songs"
  for name in ("A - a", "B - b", "C - c", "D - d"):
    write_track(songs / name, silent_stems(1.0))
  listing = tmp_path / "lists" / "tracks.txt"
  listing.parent.mkdir()
  listing.write_text(f"# my songs: folder, then its split\n\n{songs / 'A - a'}\n"
                     "../songs/B - b\ttrain\n  ../songs/C - c   valid\n"
                     f"{songs / 'D - d'} test\n")
  config = data_config(tmp_path / "data")
  builder_lib.prepare(config, None, tmp_path / "data", tracks_file=listing)
  assert stored_tracks(config) == {"train": {"A - a", "B - b"}, "valid": {"C - c"},
                                   "test": {"D - d"}}
  # No line says valid: the same choice as for a folder.
  (songs / "E - test").mkdir()  # a folder whose name ends in a split's name
  listing.write_text("../songs/A - a\n../songs/B - b\n../songs/E - test\n")
  splits = tracks_lib.split_tracks(None, True, None, tracks_file=listing)
  assert names(splits["valid"]) == sorted(tracks_lib.hashed_validation(
      splits["train"] + splits["valid"]))
  assert sorted(names(splits["train"] + splits["valid"])) == ["A - a", "B - b", "E - test"]
  assert f"of the 3 tracks of the train lines of {listing}" in caplog.text


def test_musdb_root_or_tracks_file(tmp_path):
  for root, listing, problem in ((None, None, ""), (tmp_path, tmp_path / "t.txt", ", not both")):
    with pytest.raises(records.DataError) as error:
      builder_lib.prepare(data_config(), root, tmp_path / "data", tracks_file=listing)
    assert str(error.value) == (
        "give --musdb_root=DIR (a folder with train/, and optionally valid/ and test/) or "
        f"--tracks_file=FILE (one track folder per line){problem}")


def test_too_short_track_is_skipped_with_a_log(tmp_path, caplog):
  config = prepare_tracks(tmp_path, {"A - long": silent_stems(1.0),
                                     "B - long": silent_stems(1.0),
                                     "C - short": silent_stems(0.05)}, valid="A - long")
  builder, _ = builder_lib.load_builder(config)
  tracks = {bytes(x["track"]) for x in builder.as_dataset(split="train").as_numpy_iterator()}
  assert tracks == {b"B - long"}
  assert "C - short: skipped" in caplog.text


def test_rerun_is_a_no_op_and_a_killed_run_is_redone(tmp_path):
  tracks = {"A - a": silent_stems(1.0), "B - b": silent_stems(1.0)}
  config = prepare_tracks(tmp_path, tracks, valid="A - a")
  builder, _ = builder_lib.load_builder(config)
  version_dir = pathlib.Path(builder.data_dir)
  stamp = {p: p.stat().st_mtime_ns for p in version_dir.iterdir()}
  builder_lib.prepare(config, tmp_path / "musdb", tmp_path / "data", wav=True, valid_tracks=["A - a"])
  assert {p: p.stat().st_mtime_ns for p in version_dir.iterdir()} == stamp
  # A run killed while writing leaves only an incomplete.* folder: not a dataset.
  killed = version_dir.parent / f"incomplete.KILLED_{version_dir.name}"
  version_dir.rename(killed)
  with pytest.raises(records.DataError, match="run python -m waveunet_jax.prepare"):
    builder_lib.load_builder(config)
  builder_lib.prepare(config, tmp_path / "musdb", tmp_path / "data", wav=True, valid_tracks=["A - a"])
  assert not killed.exists()
  builder, _ = builder_lib.load_builder(config)
  assert builder.info.splits["train"].num_examples == 2  # B's windows


def test_prepare_cli(corpus, tmp_path):
  valid = sorted(p.name for p in (corpus / "train").iterdir())[0]
  command = [sys.executable, "-m", "waveunet_jax.prepare", f"--musdb_root={corpus}",
             f"--data_dir={tmp_path}", "--config=experiments/deep.py:M3",
             "--config.data.output_length=44100", "--wav", f"--valid_tracks={valid}"]
  result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-2000:]
  assert "prepared" in result.stdout and "'valid': " in result.stdout
  assert (" -m waveunet_jax.main --config=experiments/deep.py:M3 "
          f"--config.data.output_length=44100 --workdir=WORKDIR --config.data.data_dir={tmp_path}"
          ) in result.stdout
  other = [f"--data_dir={tmp_path / 'other'}" if c.startswith("--data_dir") else c
           for c in command[:-1]]
  result = subprocess.run(other + ["--valid_tracks=Nobody - Nothing"], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
  assert result.returncode != 0
  assert result.stderr.strip().splitlines()[-1] == (
      "error: --valid_tracks: not in " + str(corpus / "train") + ": Nobody - Nothing")
  # --tracks_file instead of --musdb_root.
  listing = tmp_path / "nope.txt"
  result = subprocess.run([c for c in other if not c.startswith("--musdb_root")]
                          + [f"--tracks_file={listing}"], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
  assert result.stderr.strip().splitlines()[-1] == (
      f"error: --tracks_file={listing}: cannot read it (No such file or directory)")

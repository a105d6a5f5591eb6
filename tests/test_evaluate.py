"""Evaluation with museval: per-track JSON, the mixture baseline, aggregates, resuming, errors.

museval's BSSEval v4 costs about 3 s per track and set of sources whatever the track's
length (it solves for 512-tap filters), so the tests score two short tracks with
two-source models once, and later tests reuse those scores through resuming.
"""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from helpers import tiny_model_config
from waveunet_jax import evaluate, models
from waveunet_jax.separation import jax_engine
from waveunet_jax import stems as stems_lib
from waveunet_jax.data import tracks as tracks_lib

ROOT = pathlib.Path(__file__).resolve().parent.parent
SOURCES = ("accompaniment", "vocals")  # the default (paper M4) config's
NAN = float("nan")


class Stub:
  """A separator: the true sources of a mix of `tracks` (times 1 + `noise` * N(0, 1)),
  counting its calls; or, without tracks, one that must not be called."""

  def __init__(self, sources=SOURCES, tracks=(), noise=1e-3):
    self.sources, self.calls, self.known = sources, 0, []
    for track in tracks:
      stems, _ = tracks_lib.read_stems(track)
      self.known.append((sum(stems[s] for s in stems_lib.STEMS),
                         evaluate.references(stems, sources)))
    self.rng, self.noise = np.random.default_rng(0), noise

  def separate(self, audio, rate):
    self.calls += 1
    for mix, refs in self.known:
      if mix.shape == audio.shape and np.allclose(mix, audio):
        return {s: x * (1 + self.noise * self.rng.standard_normal(x.shape)).astype(np.float32)
                for s, x in refs.items()}
    raise AssertionError("separate() called for an unknown mix")


def frames(path, source, metric):
  targets = {t["name"]: t for t in json.loads(path.read_text())["targets"]}
  return np.array([f["metrics"][metric] for f in targets[source]["frames"]], np.float64)


def copy_outputs(evaluated, tmp_path):
  out = tmp_path / "eval"
  shutil.copytree(evaluated[0], out)
  return out


# --------------------------------------------------------------------------- #
# A model and the baseline, end to end.
# --------------------------------------------------------------------------- #


def test_writes_museval_json_and_both_aggregates(musdb_corpus, evaluated):
  out, summary = evaluated
  names = [t.name for t in tracks_lib.find_tracks(musdb_corpus, "test", True)]
  assert summary == json.loads((out / "summary.json").read_text())
  assert summary["tracks"] == names and summary["failed"] == {}
  import jsonschema
  museval = evaluate.import_museval()  # also where no ffmpeg program is installed

  schema = json.loads((pathlib.Path(museval.__file__).parent / "musdb.schema.json").read_text())
  baseline = out / "mixture-baseline" / "test"
  for key, folder in (("model", out / "test"), ("mixture_baseline", baseline)):
    assert sorted(p.name for p in folder.iterdir()) == sorted(f"{n}.json" for n in names)
    for name in names:
      data = json.loads((folder / f"{name}.json").read_text())
      jsonschema.validate(data, schema)  # museval's own per-track format
      assert [t["name"] for t in data["targets"]] == list(SOURCES)
      assert all(len(t["frames"]) == 6 for t in data["targets"])  # 6 s in 1 s frames
    for source in SOURCES:
      for metric in evaluate.METRICS:
        stats = summary[key][source][metric]
        # By hand from the files: median of per-track medians, and of all frames.
        per_track = [frames(folder / f"{n}.json", source, metric) for n in names]
        pooled = np.concatenate(per_track)
        assert stats["sisec_median"] == pytest.approx(
            np.nanmedian([np.nanmedian(x) for x in per_track]), abs=1e-4)
        assert stats["pooled_median"] == pytest.approx(np.nanmedian(pooled), abs=1e-4)
        assert stats["pooled_mean"] == pytest.approx(np.nanmean(pooled), abs=1e-4)
        assert stats["tracks"] == 2 and stats["frames"] == np.isfinite(pooled).sum()
        assert stats["frames_total"] == 12
      assert all(np.isfinite(summary[key][source]["SDR"][s])
                 for s in ("sisec_median", "pooled_median", "pooled_mad", "pooled_mean"))
  # The unprocessed mix is a poor vocals estimate in these tracks' quiet vocal intros.
  assert summary["mixture_baseline"]["vocals"]["SDR"]["pooled_median"] < 0
  table = (out / "summary.md").read_text()
  assert "## Model" in table and "## Mixture baseline" in table
  assert table.count("| vocals | SDR |") == 2 and "| 2 | " in table
  assert not [p for p in out.rglob(".*")]  # no temporaries left behind


def test_oracle_scores_high_and_only_missing_results_are_computed(musdb_corpus, evaluated,
                                                                   tmp_path):
  out = copy_outputs(evaluated, tmp_path)
  tracks = tracks_lib.find_tracks(musdb_corpus, "test", True)
  (out / "test" / f"{tracks[0].name}.json").unlink()
  baseline = out / "mixture-baseline" / "test" / f"{tracks[0].name}.json"
  before = baseline.read_text()
  # The true stems with errors 60 dB down: exactly true stems score +inf, which museval's
  # JSON stores as NaN (and aggregates skip).
  oracle = Stub(tracks=tracks[:1])
  summary = evaluate.evaluate(oracle, musdb_corpus, out, wav=True, split="test", max_tracks=1)
  assert oracle.calls == 1 and baseline.read_text() == before
  assert summary["tracks"] == [tracks[0].name]
  for source in SOURCES:
    assert summary["model"][source]["SDR"]["sisec_median"] > 40
    assert summary["model"][source]["SDR"]["pooled_median"] > 40
  # (This track's vocals rest for 4 s: the mix is a near perfect accompaniment there.)
  assert summary["mixture_baseline"]["vocals"]["SDR"]["pooled_median"] < 0


def same_model(summary):
  """An `identity` method giving what the evaluated model recorded."""
  return lambda: {k: v for k, v in summary["separator"].items() if k != "stems"}


def test_a_second_run_separates_nothing(musdb_corpus, evaluated, tmp_path):
  out = copy_outputs(evaluated, tmp_path)
  (out / evaluate.REPORT).unlink()
  stub = Stub()
  stub.identity = same_model(evaluated[1])
  assert evaluate.evaluate(stub, musdb_corpus, out, wav=True, split="test") == evaluated[1]
  assert stub.calls == 0
  # The report is written again, and plays the excerpts the first run kept; one that
  # has gone is left out.
  players = lambda: (out / evaluate.REPORT).read_text().count("<audio controls")
  assert players() == 2 * (1 + len(SOURCES))
  next((out / evaluate.EXCERPTS).rglob("vocals.*")).unlink()
  evaluate.evaluate(stub, musdb_corpus, out, wav=True, split="test")
  assert players() == 2 * (1 + len(SOURCES)) - 1 and stub.calls == 0


def test_scores_of_another_model_are_never_reported_as_this_ones(musdb_corpus, evaluated, tmp_path):
  out = copy_outputs(evaluated, tmp_path)
  recorded = evaluated[1]["separator"]
  assert recorded["engine"] == "jax" and len(recorded["params_sha256"]) == 64
  assert recorded["residual_source"] == "accompaniment"
  before = {p: p.read_bytes() for p in out.rglob("*.json")}
  for change in ({"params_sha256": "0" * 64}, {"residual_source": None}):
    other = Stub()
    other.identity = lambda: {**same_model(evaluated[1])(), **change}
    with pytest.raises(evaluate.EvaluationError, match=r"holds the scores of another model "
                       r"\(jax, parameters [0-9a-f]{12}, residual source accompaniment\), "
                       r"not of this one"):
      evaluate.evaluate(other, musdb_corpus, out, wav=True, split="test")
    assert other.calls == 0
  assert {p: p.read_bytes() for p in out.rglob("*.json")} == before


# --------------------------------------------------------------------------- #
# Aggregates and scores.
# --------------------------------------------------------------------------- #


def test_aggregates_by_hand_and_as_museval_aggregates():
  sdr = {"A": [1.0, 2.0, NAN, 10.0, 11.0], "B": [3.0], "C": [NAN, NAN]}
  scores = {t: {"vocals": {m: x for m in evaluate.METRICS}} for t, x in sdr.items()}
  stats = evaluate.aggregate(scores, ["vocals"])["vocals"]["SDR"]
  # SiSEC: track medians 6 (A) and 3 (B); C has no defined frame.
  assert stats["sisec_median"] == 4.5 and stats["tracks"] == 2
  # Pooled: 1, 2, 3, 10, 11.
  assert stats["pooled_median"] == 3.0 and stats["pooled_mean"] == 5.4
  assert stats["pooled_mad"] == 2.0  # |x - 3|: 2, 1, 0, 7, 8
  assert stats["pooled_std"] == pytest.approx(np.std([1, 2, 3, 10, 11]), abs=1e-4)
  assert (stats["frames"], stats["frames_total"]) == (5, 8)
  # museval's own SiSEC aggregate (median over frames, then tracks) agrees.
  museval = evaluate.import_museval()  # also where no ffmpeg program is installed

  store = museval.EvalStore()
  for track, x in sdr.items():
    track_store = museval.TrackStore(track)
    track_store.add_target("vocals", {m: x for m in evaluate.METRICS})
    store.add_track(track_store)
  assert store.agg_frames_tracks_scores()["vocals"]["SDR"] == pytest.approx(4.5)
  empty = evaluate.aggregate({"C": scores["C"]}, ["vocals"])["vocals"]["SDR"]
  assert empty["sisec_median"] is None and empty["pooled_median"] is None
  assert (empty["tracks"], empty["frames"]) == (0, 0)


def test_silent_estimate_scores_nan_frames_without_museval_refusing():
  refs = {s: np.random.default_rng(i).uniform(-0.5, 0.5, (2500, 2)).astype(np.float32)
          for i, s in enumerate(SOURCES)}
  estimates = {"accompaniment": refs["accompaniment"], "vocals": np.zeros((2500, 2), np.float32)}
  data = json.loads(evaluate.score("t", refs, estimates, rate=1000).json)
  assert [t["name"] for t in data["targets"]] == list(SOURCES)
  for target in data["targets"]:  # 2.5 s: 2 whole 1 s frames
    assert len(target["frames"]) == 2
    assert all(np.isnan(v) for f in target["frames"] for v in f["metrics"].values())


def test_sources_are_grouped_as_museval_groups_them():
  assert evaluate._groups(["bass", "drums", "other", "vocals"]) == [
      (["bass", "drums", "other", "vocals"],) * 2]
  assert evaluate._groups(["accompaniment", "vocals"]) == [(["vocals", "accompaniment"],) * 2]
  assert evaluate._groups(["vocals", "drums", "accompaniment"]) == [
      (["vocals", "drums"], ["drums"]), (["vocals", "accompaniment"],) * 2]


# --------------------------------------------------------------------------- #
# Errors.
# --------------------------------------------------------------------------- #


def test_a_bad_track_is_reported_and_the_others_summarized(musdb_corpus, evaluated, tmp_path):
  root, good = tmp_path / "musdb", tracks_lib.find_tracks(musdb_corpus, "test", True)[0]
  shutil.copytree(good.path, root / "test" / good.name)
  shutil.copytree(good.path, root / "test" / "Broken Track")
  (root / "test" / "Broken Track" / "vocals.wav").unlink()
  out = copy_outputs(evaluated, tmp_path)
  stub = Stub()
  stub.identity = same_model(evaluated[1])
  with pytest.raises(evaluate.EvaluationError, match="1 of 2 tracks failed .Broken Track."):
    evaluate.evaluate(stub, root, out, wav=True, split="test")
  summary = json.loads((out / "summary.json").read_text())
  assert summary["tracks"] == [good.name]
  assert "no vocals.wav" in summary["failed"]["Broken Track"]
  assert "Broken Track" in (out / "summary.md").read_text()


def test_sources_without_musdb_references_are_refused(musdb_corpus, tmp_path):
  with pytest.raises(evaluate.EvaluationError, match="piano"):
    evaluate.evaluate(Stub(("vocals", "piano")), musdb_corpus, tmp_path, wav=True, split="test")


def test_a_folder_where_the_report_goes_is_refused_before_any_work(musdb_corpus, tmp_path):
  (tmp_path / "report.html").mkdir()
  (tmp_path / "report.html" / "mine.txt").write_text("not the program's")
  with pytest.raises(evaluate.EvaluationError,
                     match=r"^.*report.html: is a folder, where this file output goes; move "
                           r"the folder away or choose another name$"):
    evaluate.evaluate(Stub(), musdb_corpus, tmp_path, wav=True, split="test")
  assert (tmp_path / "report.html" / "mine.txt").read_text() == "not the program's"
  assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html"]


def test_a_four_source_model_is_scored_as_vocals_and_accompaniment(musdb_corpus, tmp_path):
  model = models.WaveUNet(**tiny_model_config(sources=("bass", "drums", "other", "vocals")))
  mix = np.zeros((1, models.lengths(model, 1).input_length, 2), np.float32)
  sep = jax_engine.separator_from_model(model, jax.jit(model.init)(jax.random.key(0), mix), 8000)
  summary = evaluate.evaluate(sep, musdb_corpus, tmp_path, wav=True, max_tracks=1,
                              stems=["vocals", "accompaniment"])
  assert list(summary["model"]) == list(summary["mixture_baseline"]) == ["vocals",
                                                                         "accompaniment"]
  assert summary["model"]["accompaniment"]["SDR"]["frames"] > 0
  with pytest.raises(evaluate.EvaluationError, match="--stems: 'piano'"):
    evaluate.evaluate(sep, musdb_corpus, tmp_path, wav=True, stems=["piano"])


def test_splits(musdb_corpus, tmp_path):
  train = tracks_lib.find_tracks(musdb_corpus, "train", True)[0].name
  # The valid split is what prepare holds out (test_evaluate_own): never every training
  # track.
  with pytest.raises(evaluate.EvaluationError, match="every track of .* is a validation track"):
    evaluate.tracks_of_split(musdb_corpus, "valid", True, [train])
  # One training track, no valid/: nothing to hold out (as prepare says).
  with pytest.raises(evaluate.EvaluationError, match="only one training track .* validation "
                     "needs at least 2 tracks there"):
    evaluate.tracks_of_split(musdb_corpus, "valid", True)
  with pytest.raises(evaluate.EvaluationError, match="--valid_tracks: not in .*: Nope"):
    evaluate.tracks_of_split(musdb_corpus, "valid", True, ["Nope"])
  with pytest.raises(evaluate.EvaluationError, match="add --wav"):
    evaluate.tracks_of_split(musdb_corpus, "test", False)
  (tmp_path / "test").mkdir()
  (tmp_path / "test" / "A - B.stem.mp4").touch()  # the stem-file layout (read by prepare)
  assert [t.name for t in evaluate.tracks_of_split(tmp_path, "test", False)] == ["A - B"]
  with pytest.raises(evaluate.EvaluationError, match="no tracks of the test split"):
    evaluate.tracks_of_split(tmp_path, "test", True)


# The command line, with a stub for the trained model (training one takes too long).
CLI = """
# on the CPU: the environment conftest.py set is inherited
import json, os
from waveunet_jax import evaluate
from waveunet_jax.separation import jax_engine

class Resumed:
  sources = ("accompaniment", "vocals")

  def identity(self):  # the model that scored before
    return json.loads(os.environ["SCORED_BY"])

  def separate(self, audio, rate):
    raise AssertionError("a track scored before was separated again")

def from_workdir(workdir, checkpoint="best", **kwargs):
  assert (workdir, checkpoint) == ("RUN", "7"), (workdir, checkpoint)
  return Resumed()

jax_engine.separator_from_workdir = from_workdir
evaluate.cli()
"""


def run_cli(*args, stub=None):
  command = ["-c", CLI] if stub else ["-m", "waveunet_jax.evaluate"]
  return subprocess.run([sys.executable, *command, *map(str, args)], cwd=ROOT,
                        capture_output=True, text=True, timeout=300,
                        env={**os.environ, "PYTHONPATH": str(ROOT),
                             "SCORED_BY": json.dumps(stub() if stub else None)})


def test_cli_summarizes_the_first_tracks(musdb_corpus, evaluated, tmp_path):
  out = copy_outputs(evaluated, tmp_path)
  result = run_cli("--workdir=RUN", "--checkpoint=7", f"--musdb_root={musdb_corpus}", "--wav",
                   f"--output_dir={out}", "--tracks=1", stub=same_model(evaluated[1]))
  assert result.returncode == 0, result.stderr
  first = tracks_lib.find_tracks(musdb_corpus, "test", True)[0].name
  assert json.loads((out / "summary.json").read_text())["tracks"] == [first]
  assert result.stdout == ((out / "summary.md").read_text()
                           + f"done: scores in {out} (summary.json, per-track JSON); the "
                           f"report: {out / 'report.html'} (open it in a browser)\n")
  assert "# test split: 1 track\n" in result.stdout


# A model that estimates each source as half the mix: scored for real, in seconds. Its
# identity holds the separation options evaluate gave it.
HALVES = """
# on the CPU: the environment conftest.py set is inherited
from waveunet_jax import evaluate
from waveunet_jax.separation import jax_engine

class Halves:
  sources = ("accompaniment", "vocals")

  def __init__(self, **options):
    self.options = options

  def identity(self):
    return {"engine": "halves", **self.options}

  def separate(self, audio, rate):
    return {s: audio / 2 for s in self.sources}

jax_engine.separator_from_workdir = lambda workdir, checkpoint, **kw: Halves(**kw)
evaluate.cli()
"""


def test_cli_scores_wav_tracks_with_no_ffmpeg_on_the_path(musdb_corpus, tmp_path):
  # museval imports musdb, which imports stempeg, which refuses to import without
  # ffmpeg: evaluate must score wav tracks (and write the report's MP3s) without it.
  bin_dir = os.path.dirname(sys.executable)  # the venv's: python, no ffmpeg
  assert shutil.which("ffmpeg", path=bin_dir) is None
  out = tmp_path / "eval"
  result = subprocess.run(
      [sys.executable, "-c", HALVES, "--workdir=RUN", f"--musdb_root={musdb_corpus}", "--wav",
       f"--output_dir={out}", "--tracks=1"], cwd=ROOT, capture_output=True, text=True,
      timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT), "PATH": bin_dir})
  assert result.returncode == 0, result.stderr
  first = tracks_lib.find_tracks(musdb_corpus, "test", True)[0].name
  summary = json.loads((out / "summary.json").read_text())
  assert summary["tracks"] == [first] and summary["failed"] == {}
  assert np.isfinite(summary["model"]["vocals"]["SDR"]["sisec_median"])
  assert sorted(p.suffix for p in (out / "excerpts" / "test" / first).iterdir()) == [
      ".json", ".mp3", ".mp3", ".mp3"]
  assert (out / evaluate.REPORT).is_file()


def test_cli_without_the_scoring_install_stops_before_any_work(musdb_corpus, tmp_path):
  """No museval (the train install): one line naming the install, and nothing separated
  or written first."""
  out = tmp_path / "eval"
  no_museval = "import sys; sys.modules['museval'] = None\n" + HALVES
  result = subprocess.run(
      [sys.executable, "-c", no_museval, "--workdir=RUN", f"--musdb_root={musdb_corpus}",
       "--wav", f"--output_dir={out}", "--tracks=1"], cwd=ROOT, capture_output=True,
      text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
  assert result.returncode == 1, result.stderr
  assert result.stderr.strip().splitlines() == [
      "error: evaluate needs the train install (no module named museval): "
      "pip install 'waveunet_jax[train]'"]
  assert not out.exists()


def test_cli_separates_with_the_averaging_flags(musdb_corpus, tmp_path):
  out = tmp_path / "eval"
  result = subprocess.run(
      [sys.executable, "-c", HALVES, "--workdir=RUN", f"--musdb_root={musdb_corpus}", "--wav",
       f"--output_dir={out}", "--tracks=1", "--noreport", "--shifts=2", "--flip", "--seed=5"],
      cwd=ROOT, capture_output=True, text=True, timeout=300,
      env={**os.environ, "PYTHONPATH": str(ROOT)})
  assert result.returncode == 0, result.stderr
  options = json.loads((out / "summary.json").read_text())["separator"]
  assert (options["shifts"], options["flip"], options["seed"]) == (2, True, 5)


def cli_error(*args):
  result = run_cli(*args)
  assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
  return result.stderr.strip().splitlines()[-1]


def test_cli_errors_are_one_line(musdb_corpus, tmp_path):
  line = cli_error(f"--workdir={tmp_path / 'no-run'}", f"--musdb_root={musdb_corpus}", "--wav",
                 f"--output_dir={tmp_path / 'out'}")
  assert line.startswith("error: --workdir=") and "no-run" in line
  line = cli_error(f"--workdir={tmp_path / 'no-run'}", f"--musdb_root={tmp_path}", "--wav",
                 f"--output_dir={tmp_path / 'out'}")
  assert line.startswith("error: --musdb_root=") and "no tracks of the test split" in line
  line = cli_error(f"--workdir={tmp_path / 'no-run'}", f"--musdb_root={musdb_corpus}", "--wav",
                   f"--output_dir={tmp_path / 'out'}", "--shifts=-1")
  assert line == ("error: --shifts=-1: use 0 (no test-time shifts) or a whole number of random "
                  "shifts up to 20")
  # Refused before anything is read, as separate refuses it (files.check_output_dir).
  line = cli_error(f"--workdir={tmp_path / 'no-run'}", f"--musdb_root={musdb_corpus}", "--wav",
                   "--output_dir=")
  assert line == ("error: --output_dir is empty: name the folder the scores go into "
                  "(--output_dir=. for the current folder)")

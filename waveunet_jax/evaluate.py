"""Scores a model on a MUSDB18 split with museval (BSSEval v4): Python API and command line.

  python -m waveunet_jax.evaluate --workdir=runs/m4 --musdb_root=musdb18 --output_dir=eval/m4
  python -m waveunet_jax.evaluate --workdir=runs/m4 --musdb_root=musdb18hq --wav --split=valid \\
      --tracks=3 --output_dir=eval/m4-valid

`evaluate` does the work (what a track needs, what it writes, resuming); `tracks_of_split`
chooses the tracks, `read_track` reads one, `score` and `aggregate` make the numbers, and
`report` the HTML page. The flags and the output, for users: docs/evaluation.md.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import pathlib
import sys
import time
import types
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np
from absl import flags, logging

from waveunet_jax import console, files, shared_flags
from waveunet_jax import report as report_lib
from waveunet_jax import stems as stems_lib
from waveunet_jax.data import tracks as tracks_lib
from waveunet_jax.separation import separator as separator_lib

SCORED_SPLITS = ("test", "valid")
METRICS = ("SDR", "SIR", "SAR", "ISR")
BASELINE = "mixture-baseline"  # folder of the baseline's per-track JSON
EXCERPTS = "excerpts"  # folder of the audio excerpts the report plays
REPORT = "report.html"
WINDOW_SECONDS = 1.0  # museval's window and hop, as in SiSEC 2018
# The aggregate statistics of each source and metric (see `aggregate`), with their titles.
STATISTICS = {"sisec_median": "SiSEC median", "pooled_median": "pooled median",
              "pooled_mad": "MAD", "pooled_mean": "mean", "pooled_std": "SD"}


class EvaluationError(ValueError):
  """An evaluation that cannot run or finish; the message names the flag, file or track."""


class ReportError(EvaluationError):
  """The report could not be written; the scores and the summary were."""


class SeparatorLike(Protocol):
  """What evaluation needs of a `separator.Separator` (tests pass stubs). Evaluation
  reads `num_channels` only for a track of mono stems (stereo where a stub has none)."""

  sources: Sequence[str]
  num_channels: int

  def separate(self, audio: np.ndarray, rate: int, *, stems: Sequence[str] | None = None
               ) -> dict[str, np.ndarray]: ...


# --------------------------------------------------------------------------- #
# Tracks.
# --------------------------------------------------------------------------- #


def tracks_of_split(musdb_root: str | os.PathLike, split: str, wav: bool,
                    valid_tracks: Sequence[str] | None = None) -> list[tracks_lib.Track]:
  """The tracks of `split`, sorted by name: `test` (DIR/test), or `valid`: those that
  `prepare` holds out for validation (`tracks.split_tracks` chooses them: `valid_tracks`,
  else DIR/valid/, else musdb's validation tracks of MUSDB18, else about 10 % of
  DIR/train chosen by a hash of their names). Read as `prepare` reads them, through
  `tracks`: `<track>.stem.mp4` files, or with `wav` the MUSDB18-HQ folders or any folder
  of multitracks in that layout. Raises EvaluationError if there are none."""
  root = pathlib.Path(musdb_root)
  if not root.is_dir():
    raise EvaluationError(f"--musdb_root={root}: no such directory")
  if split not in SCORED_SPLITS:
    raise EvaluationError(f"--split={split}: use {' or '.join(SCORED_SPLITS)}")
  if split == "valid":
    try:
      return sorted(tracks_lib.split_tracks(root, wav, valid_tracks)["valid"],
                    key=lambda t: t.name)
    except tracks_lib.DataError as e:
      raise EvaluationError(str(e)) from None
  tracks = tracks_lib.find_tracks(root, "test", wav)
  if not tracks:
    kind = "<track>/<stem>.wav folders" if wav else "<track>.stem.mp4 files"
    hint = "" if wav else " (for the MUSDB18-HQ wav layout or your own multitracks, add --wav)"
    raise EvaluationError(f"--musdb_root={root}: no tracks of the test split in {root / 'test'}; "
                          f"expected {kind}{hint}")
  return tracks


def check_sources(sources: Sequence[str]) -> None:
  """Raises EvaluationError unless every source has a MUSDB18 reference."""
  unknown = [s for s in sources if s not in stems_lib.SOURCES]
  if unknown or not sources:
    raise EvaluationError(f"the model's sources ({', '.join(sources)}) are not MUSDB18 "
                          f"sources; evaluation knows {', '.join(stems_lib.SOURCES)}")


def references(stems: Mapping[str, np.ndarray], sources: Sequence[str]) -> dict[str, np.ndarray]:
  """{source: [T, C]}: the sum of a track's stems that make the source
  (`stems.combine_multitrack`: 'accompaniment' = drums + bass + other, or the
  accompaniment stem)."""
  return stems_lib.combine_multitrack(stems, sources)


def read_track(track: tracks_lib.Track, sources: Sequence[str], channels: int = 2, *,
               needed_for: str = " of the model's sources"
               ) -> tuple[np.ndarray, dict[str, np.ndarray], int]:
  """(mix [T, C], {source: reference [T, C]}, rate) of a track: every stem read
  (`tracks.read_multitrack`), the mix their sum, the references as `references`
  makes them. Mono stems (a folder's wavs; MUSDB18's are stereo) are scored as the
  model hears them: duplicated into the channels of the track's other stems, or where
  all are mono into `channels` (the model's: stereo, both channels a copy; a mono model,
  kept mono). The mix, the estimates and the references then all have those channels;
  an info line per track names the stems duplicated.
  Raises tracks.DataError naming the track folder, its stems and what is missing
  when `sources` cannot be made of them."""
  stems, rate = tracks_lib.read_multitrack(track, sources, needed_for, all_stems=True,
                                           mono=True)
  width = max(x.shape[1] for x in stems.values())
  width = channels if width == 1 else width
  mono = [stem for stem, x in stems.items() if x.shape[1] < width]
  if mono:
    logging.info("track %r: mono %s scored as %d channels (each a copy of the mono stem)",
                 track.name, ", ".join(f"{stem}.wav" for stem in mono), width)
    stems = {stem: np.repeat(x, width, axis=1) if stem in mono else x
             for stem, x in stems.items()}
  return sum(stems.values()), references(stems, sources), rate


# --------------------------------------------------------------------------- #
# Scores.
# --------------------------------------------------------------------------- #


def _groups(sources: Sequence[str]) -> list[tuple[list[str], list[str]]]:
  """(sources scored together, those reported from that set), as museval.eval_mus_track
  forms them: vocals and accompaniment as a pair, any other sources together (vocals
  among them, reported from the pair). A lone source is scored alone (museval would skip
  it; its SIR is NaN)."""
  if "vocals" in sources and "accompaniment" in sources:
    rest = [s for s in sources if s != "accompaniment"]
    groups = [(rest, [s for s in rest if s != "vocals"])] if len(rest) > 1 else []
    return groups + [(["vocals", "accompaniment"], ["vocals", "accompaniment"])]
  return [(list(sources), list(sources))]


def _silent(x: np.ndarray) -> bool:
  """museval's own test of a silent source [T, C]: its channels sum to zero throughout."""
  return bool(np.all(np.sum(x, axis=1) == 0))


class _NoStempeg(types.ModuleType):
  """Stands in for stempeg where it cannot be imported; refuses every use."""

  def __getattr__(self, name: str):
    if name.startswith("__"):  # import machinery and introspection probe these
      raise AttributeError(name)
    raise RuntimeError(f"stempeg.{name}: stempeg needs the ffmpeg program, which is not "
                       "on the PATH; waveunet_jax reads and writes stem files with PyAV")


def import_museval():
  """museval, also where no ffmpeg program is installed.

  museval imports musdb, which imports stempeg, whose import raises RuntimeError unless
  ffmpeg and ffprobe are on the PATH. musdb calls stempeg only inside the functions
  that read and write stem files, and this package calls none of them (it reads stem
  files with PyAV): so there a stand-in that refuses every use takes stempeg's place.
  """
  try:
    import stempeg  # noqa: F401
  except (ImportError, RuntimeError):  # "ffmpeg or ffprobe could not be found!"
    sys.modules["stempeg"] = _NoStempeg("stempeg")
  import museval

  return museval


def score(name: str, refs: Mapping[str, np.ndarray], estimates: Mapping[str, np.ndarray],
          rate: int) -> Any:
  """museval's scores (a `museval.TrackStore`) of `estimates` {source: [T, C]} against
  `refs`: BSSEval v4, windows and hops of `WINDOW_SECONDS`, the sources in the sets of
  `_groups`. museval leaves a frame undefined (NaN) for every source when any reference
  or estimate of the set is silent in it (vocals resting for a second), and stores an
  infinite score (an exact estimate) as NaN too; `aggregate` skips those frames. A set
  with a source that is silent over the whole track, which museval refuses, is NaN in
  every frame (what museval's frame-wise rule gives)."""
  museval = import_museval()

  window = round(WINDOW_SECONDS * rate)
  values = {}
  for scored, reported in _groups(list(estimates)):
    r = np.stack([refs[s] for s in scored])
    e = np.stack([estimates[s] for s in scored])
    silent = ([f"{s} reference" for s, x in zip(scored, r) if _silent(x)]
              + [f"{s} estimate" for s, x in zip(scored, e) if _silent(x)])
    if silent:
      logging.warning("%s: silent throughout: %s; every frame of %s is undefined (NaN)",
                      name, ", ".join(silent), ", ".join(reported))
      frames = museval.metrics.Framing(window, window, r.shape[1]).nwin
      sdr = isr = sir = sar = np.full((len(scored), frames), np.nan)
    else:
      sdr, isr, sir, sar = museval.evaluate(r, e, win=window, hop=window, mode="v4")
    for i, s in enumerate(scored):
      if s in reported:
        values[s] = {"SDR": sdr[i].tolist(), "SIR": sir[i].tolist(), "SAR": sar[i].tolist(),
                     "ISR": isr[i].tolist()}
  store = museval.TrackStore(track_name=name, win=WINDOW_SECONDS, hop=WINDOW_SECONDS)
  for s in estimates:
    store.add_target(target_name=s, values=values[s])
  return store


def read_scores(path: pathlib.Path, sources: Sequence[str]) -> dict[str, dict[str, np.ndarray]]:
  """{source: {metric: frame scores}} from museval's per-track JSON."""
  try:
    targets = json.loads(path.read_text())["targets"]
    scores = {t["name"]: {m: np.array([f["metrics"][m] for f in t["frames"]], np.float64)
                          for m in METRICS} for t in targets}
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise EvaluationError(f"{path}: cannot read it as museval scores ({e}); delete it to "
                          "score the track again") from None
  if sorted(scores) != sorted(sources):
    raise EvaluationError(f"{path}: holds scores of {', '.join(scores) or 'nothing'}, not of "
                          f"the model's sources ({', '.join(sources)}); evaluate into another "
                          "--output_dir")
  return scores


def _describe(model: Mapping[str, Any] | None) -> str:
  if not model:
    return "not recorded"
  parts = [f"workdir {model['workdir']}" if model.get("workdir") else model.get("engine", ""),
           f"checkpoint {model['checkpoint']}" if model.get("checkpoint") else "",
           f"step {model['step']}" if model.get("step") is not None else "",
           f"parameters {model.get('params_sha256', '?')[:12]}",
           f"residual source {model.get('residual_source')}",
           report_lib.averaging(model) or ""]
  return ", ".join(p for p in parts if p)


def check_same_model(path: pathlib.Path, model: Mapping[str, Any] | None) -> None:
  """Raises EvaluationError unless the per-track JSON at `path` holds scores of `model`
  (what `separator.Separator.identity` gives), so that a resumed evaluation never
  reports another model's scores as its own."""
  try:
    saved = json.loads(path.read_text()).get("separator")
  except (OSError, ValueError, AttributeError) as e:
    raise EvaluationError(f"{path}: cannot read it as museval scores ({e}); delete it to "
                          "score the track again") from None
  if saved != model:
    raise EvaluationError(
        f"{path} holds the scores of another model ({_describe(saved)}), not of this one "
        f"({_describe(model)}); evaluate into another --output_dir, or delete "
        f"{path.parent} to score this one there")


def track_median(frames: Sequence[float]) -> float:
  """A track's score in SiSEC 2018's aggregate: the median over its finite frames
  (NaN if it has none)."""
  frames = np.asarray(frames, np.float64)
  frames = frames[np.isfinite(frames)]
  return float(np.median(frames)) if frames.size else float("nan")


def _stat(value: float) -> float | None:
  return round(float(value), 4) if np.isfinite(value) else None


def aggregate(scores: Mapping[str, Mapping[str, Mapping[str, Sequence[float]]]],
              sources: Sequence[str]) -> dict[str, dict[str, dict[str, float | int | None]]]:
  """{track: {source: {metric: frame scores}}} -> {source: {metric: statistics}}.

  Non-finite frames are skipped. `sisec_median` (SiSEC 2018): the median over tracks of
  each track's median over frames (`tracks`: those with a finite frame); `pooled_*`
  (the Wave-U-Net paper: median, MAD, mean and SD): over the finite 1 s frames of all
  tracks together (`frames` of `frames_total`). A statistic of no frames is None.
  """
  out = {}
  for source in sources:
    out[source] = {}
    for metric in METRICS:
      per_track = [np.asarray(scores[t][source][metric], np.float64) for t in scores]
      finite = [x[np.isfinite(x)] for x in per_track]
      medians = np.array([track_median(x) for x in finite if x.size])
      pooled = np.concatenate(finite) if finite else np.zeros(0)
      median = np.median(pooled) if pooled.size else np.nan
      nothing = not pooled.size
      out[source][metric] = {
          "sisec_median": _stat(np.median(medians) if medians.size else np.nan),
          "tracks": int(medians.size),
          "pooled_median": _stat(median),
          "pooled_mad": _stat(np.nan if nothing else np.median(np.abs(pooled - median))),
          "pooled_mean": _stat(np.nan if nothing else pooled.mean()),
          "pooled_std": _stat(np.nan if nothing else pooled.std()),
          "frames": int(pooled.size),
          "frames_total": int(sum(x.size for x in per_track)),
      }
  return out


def markdown(summary: Mapping[str, Any]) -> str:
  """The summary as markdown: a table per system."""
  n = len(summary["tracks"])
  lines = [f"# {summary['split']} split: {n} track{'' if n == 1 else 's'}", "",
           f"museval {summary['museval']['version']}, BSSEval v4, 1 s windows; scores in dB. "
           "SiSEC: median over each track's frames, then over tracks (SiSEC 2018). Pooled: "
           "over all frames of all tracks (the Wave-U-Net paper). Undefined (NaN) frames "
           "are skipped; tracks and frames count those that remain."]
  columns = tuple(STATISTICS)
  header = f"| source | metric | {' | '.join(STATISTICS.values())} | tracks | frames |"
  for key, title in (("model", "Model"),
                     ("mixture_baseline", "Mixture baseline (mix as every source)")):
    lines += ["", f"## {title}", "", header, "|---|---|--:|--:|--:|--:|--:|--:|--:|"]
    for source, metrics in summary[key].items():
      for metric, s in metrics.items():
        cells = ["–" if s[c] is None else f"{s[c]:.2f}" for c in columns]
        lines.append(f"| {source} | {metric} | {' | '.join(cells)} | {s['tracks']} "
                     f"| {s['frames']}/{s['frames_total']} |")
  if summary["failed"]:
    lines += ["", "## Failed tracks", ""] + [f"- {e}" for e in summary["failed"].values()]
  return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- #
# Evaluation.
# --------------------------------------------------------------------------- #


def _median_sdr(scores: Mapping[str, Mapping[str, np.ndarray]]) -> str:
  return ", ".join(f"{s} {track_median(m['SDR']):.2f}" for s, m in scores.items())


def evaluate(separator: SeparatorLike, musdb_root: str | os.PathLike,
             output_dir: str | os.PathLike, *, wav: bool = False, split: str = "test",
             valid_tracks: Sequence[str] | None = None,
             max_tracks: int | None = None,
             stems: Sequence[str] | None = None, report: bool = True,
             split_read: Sequence[Any] | None = None) -> dict[str, Any]:
  """Scores `separator` and the mixture baseline on a split.
  `split_read`: the split's tracks as `tracks_of_split` gave them, if the caller has
  them already (it logs the validation choice once).

  A track needs the stems that the model's sources (or `stems`) are made of, as `stems`
  says, not all four of MUSDB18: `vocals.wav` + `accompaniment.wav` (or
  `instrumental.wav`, or drums, bass, other, piano ... in any number) scores a
  vocals/accompaniment model; a track that lacks a source's stems fails with a line
  naming its folder, its stems and what is missing. For each track: the mix is the sum
  of every stem there (the references then add up to it exactly, `read_track`), the
  separator separates it whole (at the model's rate and back, with its full band, stem
  layout and test-time averaging, which its identity records beside the scores), and
  museval scores its sources against the references (`score`) over 1 s windows at the
  track's rate (44.1 kHz for MUSDB18).

  The mixture baseline estimates every source as the mix itself (the usual "mixture"
  baseline; BSSEval v4 is not scale invariant, so not mix / number of sources). It does
  not depend on the model: copy `OUT/mixture-baseline` into a new OUT to skip it.
  Writes, in OUT = `output_dir`:

    OUT/<split>/<track>.json                   museval's per-track JSON (TrackStore)
    OUT/mixture-baseline/<split>/<track>.json  the same for the unprocessed mixture
    OUT/summary.json, OUT/summary.md           the aggregates (`aggregate`, `markdown`)
    OUT/report.html                            plots, the aggregates and audio in one file
    OUT/excerpts/<split>/<track>/              what the report plays (see `report`)

  Resumable: a track whose JSON exists is not separated again, its scores are read back
  (`check_same_model` first); every JSON is written to a temporary name and renamed. The
  report comes last: if it cannot be written, the scores and summary stay and the error
  says so (`ReportError`).

  Args:
    separator: a `separator.Separator`, or anything with its `sources` and `separate`.
    musdb_root: folder with `test/`, or `train/` (and `valid/`) for 'valid' (stem files,
      or with `wav` the HQ layout or one's own multitracks).
    output_dir: where the per-track JSON and the summary go.
    split: 'test', or 'valid': the tracks `prepare` holds out (`valid_tracks`, else
      `valid/`, else musdb's validation tracks or about 10 % of `train/`).
    max_tracks: only the split's first tracks (by name).
    stems: score this stem layout of the model's sources (`stems`, e.g. vocals and
      accompaniment of a four-source model); None: the model's sources.
    report: keep an excerpt of each track separated and write `output_dir/report.html`.
  Returns:
    The summary written to `output_dir/summary.json`.
  Raises:
    EvaluationError: no tracks, sources without MUSDB18 references, unusable earlier
      results; or, after writing the summary of the others, tracks that failed.
    ReportError: after writing the scores and the summary, the report could not be.
  """
  layout = None
  if stems is not None:
    try:
      layout = stems_lib.check(stems, separator.sources)
    except ValueError as e:
      raise EvaluationError(f"--stems: {e}") from None
  sources = tuple(layout or separator.sources)
  check_sources(sources)
  if max_tracks is not None and max_tracks < 1:
    raise EvaluationError(f"--tracks={max_tracks}: must be positive")
  if split_read is None:
    split_read = tracks_of_split(musdb_root, split, wav, valid_tracks)
  tracks = list(split_read)[:max_tracks]
  output_dir = pathlib.Path(output_dir)
  for name in ("summary.json", "summary.md") + ((REPORT,) if report else ()):
    try:  # before any work: a folder where a file goes is refused, never replaced
      files.check_target(output_dir / name)
    except files.WriteError as e:
      raise EvaluationError(str(e)) from None
  folders = {"model": output_dir / split, "mixture_baseline": output_dir / BASELINE / split}
  identity = getattr(separator, "identity", None)
  model = {**identity(), "stems": list(sources)} if identity else None
  for track in tracks:  # before any work: earlier scores must be this model's
    if (folders["model"] / f"{track.name}.json").exists():
      check_same_model(folders["model"] / f"{track.name}.json", model)
  channels = getattr(separator, "num_channels", 2)
  needed_for = " of --stems" if layout else " of the model's sources; --stems scores others"
  scores = {key: {} for key in folders}
  failed = {}
  bar = console.progress(len(tracks), f"evaluate {split}", unit="track", iterable=tracks)
  for i, track in enumerate(bar):
    bar.set_postfix_str(track.name, refresh=False)
    paths = {key: folder / f"{track.name}.json" for key, folder in folders.items()}
    todo = [key for key, path in paths.items() if not path.exists()]
    start, took, where = time.perf_counter(), {}, f"{split} [{i + 1}/{len(tracks)}] {track.name}"
    try:
      if todo:
        mix, refs, rate = read_track(track, sources, channels, needed_for=needed_for)
        took["audio"] = len(mix) / rate
        for key in todo:
          tic = time.perf_counter()
          if key == "model":
            try:
              estimates = (separator.separate(mix, rate) if layout is None
                           else separator.separate(mix, rate, stems=layout))
            except separator_lib.SeparationError as e:
              raise EvaluationError(f"track {track.name!r}: {e}") from None
            took["separation"] = time.perf_counter() - tic
            if report:
              _save_excerpts(output_dir / EXCERPTS / split / track.name, mix, estimates,
                             sources, rate, model)
          else:
            estimates = {s: mix for s in sources}
          tic = time.perf_counter()
          store = json.loads(score(track.name, refs, {s: estimates[s] for s in sources},
                                   rate).json)
          if key == "model":
            store["separator"] = model
          files.write_text_atomic(paths[key], json.dumps(store) + "\n")
          took["museval"] = took.get("museval", 0.0) + time.perf_counter() - tic
    except (tracks_lib.DataError, EvaluationError) as e:
      logging.error("%s: %s", where, e)
      failed[track.name] = str(e)
      continue
    for key, path in paths.items():
      scores[key][track.name] = read_scores(path, sources)
    timing = ("scored before, read back" if not todo else
              f"{took.pop('audio'):.1f} s of audio in {time.perf_counter() - start:.1f} s ("
              + ", ".join(f"{k} {v:.1f} s" for k, v in took.items()) + ")")
    logging.info("%s: %s; median SDR %s (mixture: %s)", where, timing,
                 _median_sdr(scores["model"][track.name]),
                 _median_sdr(scores["mixture_baseline"][track.name]))

  if failed and not scores["model"]:  # nothing to summarise: no summary, an error
    raise EvaluationError(f"every track failed ({', '.join(failed)}: each one's error is "
                          "above); nothing is scored, no summary written")
  summary = {
      "split": split,
      "musdb_root": str(musdb_root),
      "separator": model,
      "tracks": list(scores["model"]),
      "failed": failed,
      "museval": {"version": importlib.metadata.version("museval"), "mode": "v4",
                  "window_seconds": WINDOW_SECONDS, "hop_seconds": WINDOW_SECONDS},
      **{key: aggregate(s, sources) for key, s in scores.items()},
  }
  files.write_text_atomic(output_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
  files.write_text_atomic(output_dir / "summary.md", markdown(summary))
  report_error = None
  if report:
    try:
      _write_report(output_dir, summary, scores, sources)
    except (OSError, ValueError) as e:  # AudioError, WriteError: ValueErrors
      report_error = f"{output_dir / REPORT}: cannot write the report ({e})"
  if failed:
    raise EvaluationError(f"{len(failed)} of {len(tracks)} tracks failed ({', '.join(failed)}); "
                          f"{output_dir / 'summary.md'} covers the others"
                          + (f"; and {report_error}" if report_error else ""))
  if report_error:
    raise ReportError(f"{report_error}; the scores and {output_dir / 'summary.md'} are written")
  return summary


def _save_excerpts(folder: pathlib.Path, mix: np.ndarray, estimates: Mapping[str, np.ndarray],
                   sources: Sequence[str], rate: int, model: Mapping[str, Any] | None) -> None:
  """Keeps the report's excerpts of a track; one that cannot be kept costs only its
  players, never the track's scores."""
  try:
    report_lib.save_excerpts(folder, mix, {s: estimates[s] for s in sources}, rate, model)
  except (OSError, ValueError) as e:  # AudioError, WriteError: ValueErrors
    logging.warning("%s: cannot keep the excerpts of this track (%s); the report will have "
                    "no audio for it", folder, e)


def _write_report(output_dir: pathlib.Path, summary: Mapping[str, Any],
                  scores: Mapping[str, Mapping[str, Mapping[str, Mapping[str, np.ndarray]]]],
                  sources: Sequence[str]) -> pathlib.Path:
  """`report.html` from the scores read back and the summary (see `report`)."""
  split, tracks = summary["split"], []
  for name in summary["tracks"]:
    sdr = {key: {s: by_track[name][s]["SDR"] for s in sources}
           for key, by_track in scores.items()}
    folder = output_dir / EXCERPTS / split / name
    tracks.append(report_lib.TrackReport(
        name, sdr, {key: {s: track_median(x) for s, x in by_source.items()}
                    for key, by_source in sdr.items()},
        report_lib.load_excerpts(folder, summary["separator"]),
        missing_excerpts=f"no excerpt of this model in {folder} (to make one, delete "
                         f"{output_dir / split / name}.json and evaluate again)"))
  return report_lib.write(output_dir / REPORT, summary, tracks, STATISTICS)


# --------------------------------------------------------------------------- #
# Command line.
# --------------------------------------------------------------------------- #


def _define_flags() -> None:
  # Defined only when run as a program (shared_flags says why).
  shared_flags.define(
      "workdir", "checkpoint", "musdb_root", "wav", "valid_tracks", "output_dir",
      "residual_source", "stems", "shifts", "flip", "seed",
      musdb_root="MUSDB18 folder with train/ and test/.",
      valid_tracks="Comma-separated training tracks of the valid split (default: those "
                   "prepare holds out: the valid/ folder; else musdb's 14-track split for "
                   "MUSDB18; else about 10 % of the training tracks).",
      output_dir="Where the per-track JSON and the summary go.")
  flags.DEFINE_enum("split", "test", list(SCORED_SPLITS), "test, or valid (the tracks prepare "
                    "validates on: valid/, or those held out of train/).")
  flags.DEFINE_integer("tracks", None, "Evaluate only the split's first N tracks.")
  flags.DEFINE_bool("report", True, f"Write OUTPUT_DIR/{REPORT} (plots, the aggregates and "
                    "audio excerpts in one file); --noreport: neither it nor the excerpts.")
  flags.mark_flags_as_required(["workdir", "musdb_root", "output_dir"])


def main(argv: list[str]) -> None:
  # Flax: imported here so that cli() can name the install.
  from waveunet_jax import models
  from waveunet_jax.separation import jax_engine

  console.no_arguments(argv)
  import_museval()  # the scoring's install, before any work (cli() names a missing one)
  args = flags.FLAGS
  try:
    files.check_output_dir(args.output_dir, "the scores")
  except files.WriteError as e:
    sys.exit(f"error: {e}")
  valid = tracks_lib.track_names(args.valid_tracks)
  output_dir = pathlib.Path(args.output_dir)
  try:
    # Both before the model loads: a bad flag or folder costs no checkpoint read.
    separator_lib.check_averaging(args.shifts, args.seed)
    chosen = tracks_of_split(args.musdb_root, args.split, args.wav, valid)
    model = jax_engine.separator_from_workdir(
        args.workdir, args.checkpoint,
        residual_source=None if args.residual_source == "none" else args.residual_source,
        shifts=args.shifts, flip=args.flip, seed=args.seed)
    evaluate(model, args.musdb_root, output_dir, wav=args.wav, split=args.split,
             valid_tracks=valid, max_tracks=args.tracks,
             stems=args.stems.split(",") if args.stems else None, report=args.report,
             split_read=chosen)
  except ReportError as e:  # the scores are there: show them, then the failure
    print((output_dir / "summary.md").read_text(), end="")
    sys.exit(f"error: {e}")
  except (EvaluationError, tracks_lib.DataError, separator_lib.SeparationError,
          models.ConfigError, files.WriteError) as e:
    sys.exit(f"error: {e}")
  print((output_dir / "summary.md").read_text(), end="")
  console.done(f"done: scores in {output_dir} (summary.json, per-track JSON)"
               + (f"; the report: {output_dir / REPORT} (open it in a browser)" if args.report
                  else ""))


def cli() -> None:
  """The program `python -m waveunet_jax.evaluate` (and the console script
  waveunet-evaluate)."""
  console.run_program(main, _define_flags, install=("train", "evaluate"), interrupted=(
      "the tracks scored so far are kept in --output_dir; re-running the same command "
      "scores the rest"))


if __name__ == "__main__":
  cli()

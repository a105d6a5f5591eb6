"""The evaluation report: one self-contained HTML file to look at and listen to.

`evaluate` keeps a short excerpt of each track it separates (`save_excerpts`: the mix
and each estimate, `EXCERPT_SECONDS` from the loudest part of the mix, encoded small)
beside its scores, and at the end writes `report.html` (`write`; what the page shows:
`render`). This module draws; it computes no score or aggregate (evaluation owns those)
and reads only the excerpts.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import html
import json
import math
import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from absl import logging

from waveunet_jax import audio, files

EXCERPT_SECONDS = 10  # of each track, from the loudest part of its mix
EXCERPT_INFO = "excerpt.json"  # in a track's excerpt folder, beside the audio files
MIX = "mix"  # the excerpt of the mix (source names are MUSDB18's, never this)
SYSTEMS = {"model": "model", "mixture_baseline": "mixture baseline"}  # summary keys
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b")
BASELINE_COLOUR = "#8c8c8c"


# --------------------------------------------------------------------------- #
# Excerpts.
# --------------------------------------------------------------------------- #


@dataclasses.dataclass(frozen=True)
class Encoding:
  """How excerpts are stored: an `audio.AUDIO_FORMATS` entry at a bitrate."""

  format: str
  mime: str
  description: str
  bitrate: str = audio.DEFAULT_BITRATE

  @classmethod
  def from_json(cls, info: Mapping[str, Any]) -> Encoding:
    """From `EXCERPT_INFO`, whose older files name fields since dropped (16 kHz mono WAV
    excerpts, once made where ffmpeg was missing, still play)."""
    return cls(**{f.name: info[f.name] for f in dataclasses.fields(cls) if f.name in info})


EXCERPT_ENCODING = Encoding("mp3", "audio/mpeg", "MP3 at 64 kb/s", bitrate="64k")  # 80 KB per 10 s


def excerpt_span(mix: np.ndarray, rate: int) -> tuple[int, int]:
  """[start, stop) frames of the loudest `EXCERPT_SECONDS` of `mix` [T, C] (by energy,
  starting on a whole second, as museval's frames do); the whole mix if shorter."""
  length = EXCERPT_SECONDS * rate
  if len(mix) <= length:
    return 0, len(mix)
  seconds = -(-len(mix) // rate)
  power = np.sum(np.square(mix, dtype=np.float64), axis=1)
  energy = np.zeros(seconds * rate)
  energy[:len(power)] = power
  per_second = np.concatenate([[0.0], np.cumsum(energy.reshape(seconds, rate).sum(1))])
  starts = (len(mix) - length) // rate + 1  # excerpts that fit in the mix
  windows = per_second[EXCERPT_SECONDS:EXCERPT_SECONDS + starts] - per_second[:starts]
  start = int(np.argmax(windows)) * rate
  return start, start + length


def save_excerpts(folder: str | os.PathLike, mix: np.ndarray,
                  estimates: Mapping[str, np.ndarray], rate: int,
                  separator: Mapping[str, Any] | None) -> None:
  """Writes the excerpt of `mix` and of each estimate {source: [T, C]} into `folder`
  (complete or not at all), with an `EXCERPT_INFO` naming the position, the encoding
  and the `separator` (its identity) that made the estimates."""
  start, stop = excerpt_span(mix, rate)
  how = EXCERPT_ENCODING
  names = {}  # source -> its file's name
  # An earlier excerpt of the track (it holds EXCERPT_INFO) is replaced, nothing else.
  with files.atomic_path(folder, ours=lambda f: (f / EXCERPT_INFO).is_file()) as temp:
    temp.mkdir()
    for name, x in {MIX: mix, **estimates}.items():
      x = np.asarray(x[start:stop], np.float32)
      path = audio.write_audio(temp / f"{name}{audio.AUDIO_FORMATS[how.format].extension}", x,
                               rate, how.format, how.bitrate)
      names[name] = path.name
    info = {"start_seconds": start / rate, "seconds": (stop - start) / rate,
            "encoding": dataclasses.asdict(how), "files": names, "separator": separator}
    (temp / EXCERPT_INFO).write_text(json.dumps(info, indent=2) + "\n")


@dataclasses.dataclass(frozen=True)
class Excerpts:
  """A track's excerpts as kept by `save_excerpts`."""

  start_seconds: float
  seconds: float
  encoding: Encoding
  files: dict[str, pathlib.Path]  # MIX and sources -> encoded file


def load_excerpts(folder: str | os.PathLike,
                  separator: Mapping[str, Any] | None) -> Excerpts | None:
  """The excerpts in `folder`, or None (logged) if there are none or they are another
  separator's; a file that has gone is left out."""
  folder = pathlib.Path(folder)
  try:
    info = json.loads((folder / EXCERPT_INFO).read_text())
    excerpts = Excerpts(float(info["start_seconds"]), float(info["seconds"]),
                        Encoding.from_json(info["encoding"]),
                        {k: folder / v for k, v in info["files"].items()})
  except FileNotFoundError:
    return None
  except (OSError, ValueError, KeyError, TypeError) as e:
    logging.warning("%s: cannot read it (%s); the report leaves its excerpts out",
                    folder / EXCERPT_INFO, e)
    return None
  if info.get("separator") != json.loads(json.dumps(separator)):  # as JSON holds it
    logging.warning("%s: excerpts of another model; the report leaves them out", folder)
    return None
  return dataclasses.replace(excerpts, files={k: p for k, p in excerpts.files.items()
                                              if p.is_file()})


# --------------------------------------------------------------------------- #
# The report.
# --------------------------------------------------------------------------- #


@dataclasses.dataclass(frozen=True)
class TrackReport:
  """What the report shows of one track: for each of `SYSTEMS`, each source's SDR per
  1 s frame and the track's median (evaluation's `track_median`); and its excerpts."""

  name: str
  sdr: Mapping[str, Mapping[str, np.ndarray]]   # system -> source -> [frames]
  medians: Mapping[str, Mapping[str, float]]    # system -> source -> median SDR
  excerpts: Excerpts | None
  missing_excerpts: str = "no excerpt kept"     # says why, if `excerpts` is None


def write(path: str | os.PathLike, summary: Mapping[str, Any], tracks: Sequence[TrackReport],
          statistics: Mapping[str, str], created: datetime.datetime | None = None
          ) -> pathlib.Path:
  """Writes the report to `path` (complete or not at all). `summary`: evaluation's
  summary.json; `statistics`: its aggregate statistics {key: title}, in table order."""
  path = pathlib.Path(path)
  files.write_text_atomic(path, render(summary, tracks, statistics, created))
  return path


def render(summary: Mapping[str, Any], tracks: Sequence[TrackReport],
           statistics: Mapping[str, str], created: datetime.datetime | None = None) -> str:
  """The report as one HTML page:

  * per source, a box plot of the per-track SDR (each track's median over its 1 s
    frames, as SiSEC 2018 aggregates them) of the model next to the mixture baseline's;
  * a table of both aggregates of `summary.json`;
  * per track, its SDR over time (museval's 1 s frames; undefined frames are gaps) of
    each source, model and baseline, and audio players for its excerpts;
  * the separator's identity and the date.

  Plots are inline SVG drawn here and audio is inlined as data: URIs, so the file opens
  from disk with nothing else: no network, no other file, no script."""
  created = created or datetime.datetime.now().astimezone()
  sources = list(summary["model"])
  colours = {s: COLOURS[i % len(COLOURS)] for i, s in enumerate(sources)}
  n = len(tracks)
  title = f"Evaluation: {summary['split']} split, {n} track{'' if n == 1 else 's'}"
  museval = summary["museval"]
  body = [f"<h1>{_e(title)}</h1>",
          f"<p class=meta>{_e(created.strftime('%Y-%m-%d %H:%M %Z').strip())} · museval "
          f"{_e(museval['version'])}, BSSEval {_e(museval['mode'])}, "
          f"{museval['window_seconds']:g} s frames · scores in dB · "
          f"tracks from {_e(summary['musdb_root'])}</p>",
          _identity(summary.get("separator")),
          "<h2>SDR per track</h2>",
          "<p>A point is one track: its median SDR over its 1 s frames (SiSEC 2018). "
          "Box: quartiles over tracks, the line inside their median (the SiSEC "
          "aggregate); whiskers reach the furthest track within 1.5 times the box's "
          "height. Grey: the mixture baseline (the mix as every source).</p>",
          "<div class=row>" + "".join(_box_plot(s, tracks, colours[s]) for s in sources)
          + "</div>",
          "<h2>Aggregates</h2>", _aggregates(summary, statistics)]
  if summary.get("failed"):
    body += ["<h2>Failed tracks</h2><ul>"]
    body += [f"<li>{_e(name)}: {_e(error)}</li>" for name, error in summary["failed"].items()]
    body += ["</ul>"]
  body += ["<h2>Tracks</h2>", "<ol class=toc>"]
  body += [f'<li><a href="#track-{i}">{_e(t.name)}</a></li>' for i, t in enumerate(tracks)]
  body += ["</ol>"]
  body += [_track(i, t, colours) for i, t in enumerate(tracks)]
  return (f"<!doctype html>\n<html lang=en><head><meta charset=utf-8>"
          f"<meta name=viewport content='width=device-width'><title>{_e(title)}</title>"
          f"<style>{_STYLE}</style></head>\n<body>\n" + "\n".join(body) + "\n</body></html>\n")


_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:2em auto;max-width:1000px;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{margin-top:1.8em;border-bottom:1px solid #ddd}h3{margin-bottom:.3em}
.meta{color:#666}.row{display:flex;flex-wrap:wrap;gap:1em}
table{border-collapse:collapse;margin:.5em 0 1em}td,th{padding:2px 8px;text-align:right}
th{border-bottom:1px solid #999}td:nth-child(-n+2),th:nth-child(-n+2){text-align:left}
tr.sdr td{font-weight:600}table.id td{text-align:left}
svg{max-width:100%;height:auto}
.players{display:flex;flex-wrap:wrap;gap:.5em 1.5em}.players figure{margin:0}
figcaption{font-size:.9em;color:#444}audio{width:260px;height:32px}
svg text{font:11px system-ui,sans-serif;fill:#333}
"""


def _e(text: Any) -> str:
  return html.escape(str(text), quote=True)


def averaging(model: Mapping[str, Any]) -> str | None:
  """The test-time averaging a separator's identity records ("4 shifts (seed 0), flip"),
  or None for plain separation."""
  parts = [f"{model['shifts']} shifts (seed {model.get('seed')})" if model.get("shifts") else "",
           "flip" if model.get("flip") else ""]
  return ", ".join(p for p in parts if p) or None


def _identity(model: Mapping[str, Any] | None) -> str:
  if not model:
    return "<p>Separator: not recorded.</p>"
  rows = [("workdir", model.get("workdir")), ("checkpoint", model.get("checkpoint")),
          ("step", model.get("step")), ("parameters (sha256)", (model.get("params_sha256")
                                                                or "")[:12] or None),
          ("engine", model.get("engine")), ("residual source", model.get("residual_source")),
          ("test-time averaging", averaging(model)),
          ("sources scored", ", ".join(model.get("stems") or []) or None)]
  cells = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows
                  if v is not None)
  return (f"<h2>Separator</h2><table class=id>{cells}</table><details><summary>everything "
          f"recorded</summary><pre>{_e(json.dumps(model, indent=2))}</pre></details>")


def _aggregates(summary: Mapping[str, Any], statistics: Mapping[str, str]) -> str:
  header = ("<tr><th>source</th><th>metric</th>"
            + "".join(f"<th>{_e(t)}</th>" for t in statistics.values())
            + "<th>tracks</th><th>frames</th></tr>")
  out = ["<p>SiSEC: the median over each track's frames, then over tracks (SiSEC 2018). "
         "Pooled: over all 1 s frames of all tracks (the Wave-U-Net paper). Undefined "
         "frames are skipped; tracks and frames count those that remain.</p>"]
  for key, title in SYSTEMS.items():
    out += [f"<h3>{_e(title.capitalize())}</h3><table>{header}"]
    for source, metrics in summary[key].items():
      for metric, s in metrics.items():
        cells = "".join("<td>–</td>" if s[c] is None else f"<td>{s[c]:.2f}</td>"
                        for c in statistics)
        out.append(f"<tr{' class=sdr' if metric == 'SDR' else ''}><td>{_e(source)}</td>"
                   f"<td>{_e(metric)}</td>{cells}<td>{s['tracks']}</td>"
                   f"<td>{s['frames']}/{s['frames_total']}</td></tr>")
    out.append("</table>")
  return "\n".join(out)


def _track(i: int, track: TrackReport, colours: Mapping[str, str]) -> str:
  medians = "; ".join(
      f"{_e(s)} {_number(m)} dB (mixture {_number(track.medians['mixture_baseline'][s])})"
      for s, m in track.medians["model"].items())
  out = [f'<section id="track-{i}"><h3>{_e(track.name)}</h3>',
         f"<p>Median SDR: {medians}.</p>", _time_plot(track, colours)]
  excerpts = track.excerpts
  if excerpts is None:
    out.append(f"<p>No audio: {_e(track.missing_excerpts)}.</p>")
  else:
    start = excerpts.start_seconds
    out.append(f"<p>Listen: {excerpts.seconds:g} s from {_clock(start)} (shaded above), "
               f"{_e(excerpts.encoding.description)}.</p><div class=players>")
    for name, path in excerpts.files.items():
      data = base64.b64encode(path.read_bytes()).decode("ascii")
      label = "mix" if name == MIX else f"{name} (model)"
      out.append(f"<figure><figcaption>{_e(label)}</figcaption><audio controls "
                 f'preload=metadata src="data:{excerpts.encoding.mime};base64,{data}">'
                 "</audio></figure>")
    out.append("</div>")
  out.append("</section>")
  return "\n".join(out)


def _number(x: float) -> str:
  return f"{x:.2f}" if math.isfinite(x) else "undefined"


def _clock(seconds: float) -> str:
  return f"{int(seconds) // 60}:{int(seconds) % 60:02d}"


# --------------------------------------------------------------------------- #
# Plots: inline SVG.
# --------------------------------------------------------------------------- #


def _ticks(lo: float, hi: float, count: int = 5) -> tuple[float, float, list[float]]:
  """A range covering [lo, hi] on round numbers, and its ticks (about `count`)."""
  if not (math.isfinite(lo) and math.isfinite(hi)):
    lo, hi = -10.0, 10.0
  if hi - lo < 1e-9:
    lo, hi = lo - 1, hi + 1
  raw = (hi - lo) / count
  magnitude = 10 ** math.floor(math.log10(raw))
  step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
  lo, hi = math.floor(lo / step) * step, math.ceil(hi / step) * step
  return lo, hi, [lo + k * step for k in range(round((hi - lo) / step) + 1)]


def _scale(lo: float, hi: float, a: float, b: float):
  return lambda v: a + (v - lo) / (hi - lo) * (b - a)


def _y_axis(y, ticks: Sequence[float], left: float, right: float, label: str) -> list[str]:
  out = []
  for t in ticks:
    out.append(f'<line x1="{left}" x2="{right}" y1="{y(t):.1f}" y2="{y(t):.1f}" '
               f'stroke="{"#999" if t == 0 else "#e6e6e6"}"/>')
    out.append(f'<text x="{left - 4}" y="{y(t) + 4:.1f}" text-anchor="end">{t:g}</text>')
  middle = (y(ticks[0]) + y(ticks[-1])) / 2
  out.append(f'<text transform="translate(12 {middle:.1f}) rotate(-90)" '
             f'text-anchor="middle">{_e(label)}</text>')
  return out


def _box_plot(source: str, tracks: Sequence[TrackReport], colour: str) -> str:
  """A source's per-track median SDR, model and baseline, as boxes with points."""
  width, height, left, top, bottom = 250, 260, 48, 24, 36
  values = {key: np.array([t.medians[key][source] for t in tracks], np.float64)
            for key in SYSTEMS}
  finite = {key: v[np.isfinite(v)] for key, v in values.items()}
  everything = np.concatenate(list(finite.values()))
  lo, hi, ticks = _ticks(*((everything.min(), everything.max()) if everything.size
                           else (math.nan, math.nan)))
  y = _scale(lo, hi, height - bottom, top)
  out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
         f'viewBox="0 0 {width} {height}" role="img" aria-label="{_e(source)} SDR per track">',
         f'<text x="{(left + width) / 2}" y="14" text-anchor="middle" '
         f'font-weight="bold">{_e(source)}</text>']
  out += _y_axis(y, ticks, left, width - 8, "SDR (dB)")
  slot = (width - 8 - left) / len(SYSTEMS)
  for k, key in enumerate(SYSTEMS):
    centre, half = left + slot * (k + 0.5), slot * 0.22
    fill = colour if key == "model" else BASELINE_COLOUR
    v = finite[key]
    out.append(f'<text x="{centre:.1f}" y="{height - bottom + 16}" text-anchor="middle">'
               f'{_e(SYSTEMS[key])}</text>')
    if v.size:
      q1, median, q3 = np.percentile(v, [25, 50, 75])
      reach = 1.5 * (q3 - q1)
      low, high = v[v >= q1 - reach].min(), v[v <= q3 + reach].max()
      out += [f'<line x1="{centre:.1f}" x2="{centre:.1f}" y1="{y(low):.1f}" '
              f'y2="{y(high):.1f}" stroke="#444"/>',
              f'<rect x="{centre - half:.1f}" y="{y(q3):.1f}" width="{2 * half:.1f}" '
              f'height="{max(y(q1) - y(q3), 1):.1f}" fill="{fill}" fill-opacity="0.35" '
              f'stroke="{fill}"/>',
              f'<line x1="{centre - half:.1f}" x2="{centre + half:.1f}" y1="{y(median):.1f}" '
              f'y2="{y(median):.1f}" stroke="#000" stroke-width="2"/>',
              f'<text x="{centre + half + 3:.1f}" y="{y(median) + 4:.1f}">{median:.2f}</text>']
    for j, (track, value) in enumerate(zip(tracks, values[key])):
      if math.isfinite(value):
        dx = ((j * 0.618) % 1 - 0.5) * half  # spread, the same on every run
        out.append(f'<circle cx="{centre + dx:.1f}" cy="{y(value):.1f}" r="2.5" '
                   f'fill="{fill}" stroke="#fff" stroke-width="0.5"><title>{_e(track.name)}: '
                   f'{value:.2f} dB</title></circle>')
    missing = len(values[key]) - v.size
    if missing:
      out.append(f'<text x="{centre:.1f}" y="{height - bottom + 30}" text-anchor="middle" '
                 f'fill="#999">{missing} undefined</text>')
  return "\n".join(out + ["</svg>"])


def _time_plot(track: TrackReport, colours: Mapping[str, str]) -> str:
  """The track's SDR per 1 s frame of each source and system; undefined frames are gaps."""
  width, height, left, right, top, bottom = 960, 230, 48, 20, 30, 30
  series = [(key, source, np.asarray(frames, np.float64))
            for key, by_source in track.sdr.items() for source, frames in by_source.items()]
  frames = max((len(x) for _, _, x in series), default=0)
  finite = np.concatenate([x[np.isfinite(x)] for _, _, x in series] or [np.zeros(0)])
  lo, hi, ticks = _ticks(*((finite.min(), finite.max()) if finite.size
                           else (math.nan, math.nan)))
  y = _scale(lo, hi, height - bottom, top)
  _, seconds, x_ticks = _ticks(0.0, max(frames, 1), min(10, max(frames, 1)))  # whole s
  x = _scale(0.0, seconds, left, width - right)
  out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
         f'viewBox="0 0 {width} {height}" role="img" '
         f'aria-label="SDR over time of {_e(track.name)}">']
  if track.excerpts is not None:
    start, stop = track.excerpts.start_seconds, track.excerpts.start_seconds + \
        track.excerpts.seconds
    out.append(f'<rect x="{x(start):.1f}" y="{top}" width="{x(stop) - x(start):.1f}" '
               f'height="{height - top - bottom}" fill="#fff3c4"><title>the excerpt below'
               '</title></rect>')
  out += _y_axis(y, ticks, left, width - right, "SDR (dB)")
  for t in x_ticks:
    out.append(f'<text x="{x(t):.1f}" y="{height - bottom + 15}" text-anchor="middle">'
               f'{_clock(t)}</text>')
  legend_x = left
  for key, source, values in series:
    colour = colours[source]
    style = (f'stroke="{colour}" stroke-width="1.5"' if key == "model" else
             f'stroke="{colour}" stroke-width="1" stroke-dasharray="4 3" stroke-opacity="0.7"')
    for run in _finite_runs(values):
      if len(run) == 1:
        out.append(f'<circle cx="{x(run[0] + 0.5):.1f}" cy="{y(values[run[0]]):.1f}" r="1.5" '
                   f'fill="{colour}"/>')
      else:  # a frame's score at the frame's middle
        points = " ".join(f"{x(i + 0.5):.1f},{y(values[i]):.1f}" for i in run)
        out.append(f'<polyline points="{points}" fill="none" {style}/>')
    label = f"{source} ({SYSTEMS[key]})"
    out.append(f'<line x1="{legend_x}" x2="{legend_x + 22}" y1="12" y2="12" {style}/>'
               f'<text x="{legend_x + 26}" y="16">{_e(label)}</text>')
    legend_x += 36 + 7 * len(label)
  out.append(f'<text x="{width - right}" y="{height - 2}" text-anchor="end">time (1 s frames; '
             "gaps: undefined frames)</text>")
  return "\n".join(out + ["</svg>"])


def _finite_runs(values: np.ndarray) -> list[list[int]]:
  """The indices of `values`, in runs of consecutive finite values."""
  runs, run = [], []
  for i, v in enumerate(values):
    if math.isfinite(v):
      run.append(i)
    elif run:
      runs.append(run)
      run = []
  return runs + ([run] if run else [])

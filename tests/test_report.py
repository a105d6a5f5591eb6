"""The evaluation report: drawn by a real browser (headless Chromium), self-contained,
its players' audio decodable; the excerpts (MP3, older 16 kHz WAV ones too); and a
report that cannot be written never costs the scores.

The browser test opens the report of the `evaluated` run (conftest.py) and skips where
no Chromium is installed (CI installs Debian's).
"""

import base64
import contextlib
import html.parser
import json
import os
import shutil
import signal
import subprocess

import numpy as np
import pytest

from waveunet_jax import audio, evaluate, report

SOURCES = ("accompaniment", "vocals")  # the `evaluated` model's
TRACKS = 2  # and its tracks (6 s each: shorter than an excerpt)
URL_ATTRIBUTES = {"src", "href", "xlink:href", "srcset", "poster", "action", "data",
                  "background", "formaction"}


def chromium() -> str:
  binary = (shutil.which("chromium") or shutil.which("chromium-browser")
            or shutil.which("google-chrome"))
  if binary is None:
    pytest.skip("no Chromium on the PATH (chromium, chromium-browser or google-chrome); "
                "e.g. apt-get install chromium")
  return binary


def run_chromium(binary: str, profile, *args: str, timeout: float = 120) -> str:
  """Headless Chromium with its own profile; its whole process group is killed at the
  end, whatever happened (its helpers may outlive it)."""
  process = subprocess.Popen(
      [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
       "--no-first-run", "--mute-audio", "--hide-scrollbars", f"--user-data-dir={profile}",
       *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
      start_new_session=True)
  try:
    stdout, stderr = process.communicate(timeout=timeout)
  finally:
    with contextlib.suppress(ProcessLookupError):
      os.killpg(process.pid, signal.SIGKILL)
    process.wait()
  assert process.returncode == 0, stderr[-3000:]
  return stdout


class Elements(html.parser.HTMLParser):
  """The start tags of a page: [(tag, {attribute: value})], and the captions' text."""

  def __init__(self, page: str):
    super().__init__()
    self.tags, self.captions, self._in_caption = [], [], False
    self.feed(page)

  def handle_starttag(self, tag, attrs):
    self.tags.append((tag, dict(attrs)))
    self._in_caption = tag == "figcaption"

  handle_startendtag = handle_starttag

  def handle_data(self, data):
    if self._in_caption:
      self.captions.append(data)
      self._in_caption = False

  def all(self, tag: str) -> list[dict]:
    return [attrs for t, attrs in self.tags if t == tag]

  def outside_references(self) -> list[tuple[str, str, str]]:
    """(tag, attribute, start of the value) of every reference neither inline (data:)
    nor within the page (#)."""
    return [(tag, name, (value or "")[:80]) for tag, attrs in self.tags
            for name, value in attrs.items()
            if name in URL_ATTRIBUTES and not (value or "").startswith(("data:", "#"))]


def rgb(colour: str) -> tuple[int, int, int]:
  return tuple(int(colour[i:i + 2], 16) for i in (1, 3, 5))


def test_report_renders_with_its_plots_and_players_in_chromium(evaluated, tmp_path):
  binary = chromium()
  page = evaluated[0] / evaluate.REPORT
  text = page.read_text()
  # Self-contained: no reference outside the file, in its markup or its style sheet.
  assert Elements(text).outside_references() == []
  assert "url(" not in text and "@import" not in text and "<script" not in text

  shot = tmp_path / "shot.png"
  run_chromium(binary, tmp_path / "profile", f"--screenshot={shot}", "--window-size=1200,3000",
               page.as_uri())
  from PIL import Image

  with Image.open(shot) as image:
    assert image.format == "PNG" and image.size == (1200, 3000)
    pixels = np.asarray(image.convert("RGB"))
  assert (pixels < 240).any(axis=2).mean() > 0.03  # not blank: text, plots, players
  packed = pixels.astype(np.uint32) @ np.array([1 << 16, 1 << 8, 1], np.uint32)
  assert len(np.unique(packed)) > 200  # colours, anti-aliased text and lines
  for colour in report.COLOURS[:len(SOURCES)]:  # each source's plots were drawn
    assert (pixels == rgb(colour)).all(axis=2).sum() > 50, colour

  dom = Elements(run_chromium(binary, tmp_path / "profile", "--dump-dom", page.as_uri()))
  assert dom.outside_references() == []
  svgs = dom.all("svg")  # a box plot per source, an SDR-over-time plot per track
  assert len(svgs) == len(SOURCES) + TRACKS
  assert len(dom.all("polyline")) >= TRACKS and len(dom.all("rect")) >= 2 * len(SOURCES)
  players = dom.all("audio")  # per track: the mix and each estimate
  assert len(players) == TRACKS * (1 + len(SOURCES))
  assert all("controls" in p for p in players)
  assert sorted(dom.captions) == sorted(["mix"] * TRACKS + [f"{s} (model)" for s in SOURCES]
                                        * TRACKS)
  for i, player in enumerate(players):  # each plays the whole 6 s track
    mime, _, payload = player["src"].removeprefix("data:").partition(";base64,")
    extension = {"audio/mpeg": ".mp3", "audio/wav": ".wav"}[mime]
    (tmp_path / f"{i}{extension}").write_bytes(base64.b64decode(payload, validate=True))
    samples, rate = audio.read_audio(tmp_path / f"{i}{extension}")
    assert len(samples) / rate == pytest.approx(6.0, abs=0.1)
    assert np.sqrt(np.mean(np.square(samples))) > 1e-3


def test_the_excerpt_is_the_loudest_whole_seconds():
  rate = 100
  mix = np.full((int(40.5 * rate), 2), 0.01, np.float32)
  mix[25 * rate:35 * rate] = 0.5
  assert report.excerpt_span(mix, rate) == (25 * rate, 35 * rate)
  mix[:] = 0.01
  mix[-3 * rate:] = 0.5  # the loudest at the very end: the excerpt stays within the track
  assert report.excerpt_span(mix, rate) == (30 * rate, 40 * rate)
  assert report.excerpt_span(mix[:5 * rate], rate) == (0, 5 * rate)  # shorter: all of it


def test_excerpts_are_mp3_and_older_wav_ones_still_load(tmp_path):
  rate = 8000
  tone = 0.5 * np.sin(2 * np.pi * 440 * np.arange(3 * rate) / rate)
  mix = np.stack([tone, tone], axis=1).astype(np.float32)
  model = {"engine": "test", "params_sha256": "0" * 64}
  report.save_excerpts(tmp_path / "track", mix, {s: mix / 2 for s in SOURCES}, rate, model)
  excerpts = report.load_excerpts(tmp_path / "track", model)
  assert excerpts.encoding == report.EXCERPT_ENCODING and excerpts.seconds == 3.0
  assert sorted(excerpts.files) == sorted([report.MIX, *SOURCES])
  samples, out_rate = audio.read_audio(excerpts.files[report.MIX])
  assert out_rate == rate and samples.shape == (3 * rate, 2)
  assert np.corrcoef(samples[:, 0], mix[:, 0])[0, 1] > 0.99
  assert report.load_excerpts(tmp_path / "track", {**model, "params_sha256": "1" * 64}) is None
  assert report.load_excerpts(tmp_path / "none", model) is None
  assert not [p for p in tmp_path.rglob(".*")]  # no temporaries left behind
  # Made where ffmpeg was missing, before excerpts were always MP3.
  info = json.loads((tmp_path / "track" / report.EXCERPT_INFO).read_text())
  info["encoding"] = {"format": "wav16", "mime": "audio/wav", "description": "16 kHz mono",
                      "bitrate": "320k", "rate": 16000, "mono": True}
  (tmp_path / "track" / report.EXCERPT_INFO).write_text(json.dumps(info))
  assert report.load_excerpts(tmp_path / "track", model).encoding.mime == "audio/wav"


def test_undefined_frames_are_gaps_and_names_are_escaped(evaluated):
  nan = float("nan")
  frames = np.array([1, 2, nan, 3, nan, nan, 4, 5, 6])
  track = report.TrackReport("A & B <i>", {key: {s: frames for s in SOURCES} for key in report.SYSTEMS},
                       {key: {s: 3.0 for s in SOURCES} for key in report.SYSTEMS}, None,
                       missing_excerpts="none kept")
  page = report.render(evaluated[1], [track], evaluate.STATISTICS)
  plot = page[page.index('id="track-0"'):]
  series = len(SOURCES) * len(report.SYSTEMS)
  assert plot.count("<polyline") == 2 * series  # frames 0-1 and 6-8
  assert plot.count("<circle") == series  # the lone frame 3
  assert "A &amp; B &lt;i&gt;" in page and "<i>" not in page
  assert "No audio: none kept." in page


def test_a_report_that_cannot_be_written_keeps_the_scores(musdb_corpus, evaluated, tmp_path,
                                                          monkeypatch):
  out = tmp_path / "eval"
  shutil.copytree(evaluated[0], out)
  for name in ("summary.json", "summary.md", evaluate.REPORT):
    (out / name).unlink()

  class Scored:  # the model that scored before: nothing is separated again
    sources = SOURCES

    def identity(self):
      return {k: v for k, v in evaluated[1]["separator"].items() if k != "stems"}

    def separate(self, audio, rate):
      raise AssertionError("a track scored before was separated again")

  def disk_full(*args, **kwargs):
    raise OSError(28, "No space left on device")

  monkeypatch.setattr(report, "write", disk_full)
  with pytest.raises(evaluate.ReportError, match=r"report.html: cannot write the report "
                     r"\(.*No space left on device\); the scores and .*summary.md are written"):
    evaluate.evaluate(Scored(), musdb_corpus, out, wav=True)
  assert json.loads((out / "summary.json").read_text()) == evaluated[1]
  assert (out / "summary.md").exists() and not (out / evaluate.REPORT).exists()
  assert evaluate.evaluate(Scored(), musdb_corpus, out, wav=True, report=False) == evaluated[1]


def test_the_separator_table_says_how_the_estimates_were_averaged():
  plain = {"engine": "jax", "residual_source": "accompaniment"}
  assert "test-time averaging" not in report._identity(plain)
  page = report._identity({**plain, "shifts": 4, "seed": 0, "flip": True})
  assert "<th>test-time averaging</th><td>4 shifts (seed 0), flip</td>" in page
  assert report.averaging({**plain, "flip": True}) == "flip"

"""Separating files: the command line, and the Python API for files and folders.

  python -m waveunet_jax.separate --workdir=runs/m4 song.mp3 album/ --output_dir=separated
  python -m waveunet_jax.separate --model=m4.onnx song.wav --output_dir=separated

writes `separated/<track>/<stem>.wav` (the `--filename` template) for every stem, at the
input's sample rate, length and channels; a folder input gives the same tree out. The
model (a workdir's on JAX, or an export's on its runtime: `load_separator`) is behind a
`separator.Separator`; this module lists the inputs (`list_jobs`), reads them ahead
(`_Reader`) and writes the outputs (`separate_files`, also the Python API:
`separate_files(jax_engine.separator_from_workdir("runs/m4"), ["album/"], "out")`).
Stems, formats, test-time averaging: docs/separation.md.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pathlib
import queue
import signal
import string
import sys
import threading
from collections.abc import Iterator, Sequence

import numpy as np
from absl import app, flags, logging

from waveunet_jax import audio, console, files, shared_flags
from waveunet_jax.separation.separator import (  # noqa: F401 (the API)
    SeparationError, Separator, check_averaging)

DEFAULT_FILENAME = "{track}/{stem}.{ext}"
FILENAME_FIELDS = ("track", "trackext", "stem", "ext")
# --clip: what happens to stem samples beyond [-1, 1] (None: 'none' for float output,
# 'clamp' for the formats that cannot hold them).
CLIP_MODES = ("clamp", "rescale", "none")
# Blocks a reader decodes ahead of the network (about 100 s of 44.1 kHz audio).
READ_AHEAD_BLOCKS = 64


@dataclasses.dataclass(frozen=True)
class Job:
  """One input file and where its stems go: `folder` is its place in the output tree
  (its folder below a folder input), the template names the files there."""

  path: pathlib.Path
  folder: pathlib.Path


class SeparationInterrupted(KeyboardInterrupt):
  """Separation stopped by SIGINT (Ctrl-C) or SIGTERM: the song in progress left
  nothing behind, the songs finished before it are kept. The message says which."""

  def __init__(self, message: str, signum: int):
    super().__init__(message)
    self.signum = signum


def check_filename(template: str) -> str:
  """`template` if it uses {stem} and only known fields, each plain (a format spec or a
  conversion could cut or pad a name into a path), and is a relative path without
  empty, `.` or `..` parts; ValueError naming --filename else."""
  try:
    parsed = list(string.Formatter().parse(template))
  except ValueError as e:
    raise ValueError(f"--filename={template}: {e}") from None
  fields = set()
  for _, field, spec, conversion in parsed:
    if field is not None and (spec or conversion):
      raise ValueError(f"--filename={template}: placeholders take no format spec or "
                       f"conversion; write {{{field}}}")
    if field is not None:
      fields.add(field)
  unknown = fields - set(FILENAME_FIELDS)
  if unknown or "stem" not in fields:
    raise ValueError(f"--filename={template}: use {{stem}} and any of "
                     f"{', '.join('{' + f + '}' for f in FILENAME_FIELDS)}"
                     + (f", not {', '.join('{' + f + '}' for f in sorted(unknown))}"
                        if unknown else ""))
  if not _plain_parts(template):
    raise ValueError(f"--filename={template}: must be a path inside --output_dir, without "
                     "a leading /, empty parts (//), . or ..")
  return template


def _plain_parts(path: str) -> bool:
  """Whether `path` is relative and every part of it names a file or folder."""
  return all(part not in ("", ".", "..") for part in path.split("/"))


def clip_mode(clip: str | None, fmt: str) -> str:
  """The --clip mode for `fmt`: as given, or by default 'none' for float output and
  'clamp' else. ValueError for 'none' with a format that clips."""
  if clip is None:
    return "clamp" if audio.AUDIO_FORMATS[fmt].clips else "none"
  if clip not in CLIP_MODES:
    raise ValueError(f"--clip={clip}: use {', '.join(CLIP_MODES)}")
  if clip == "none" and audio.AUDIO_FORMATS[fmt].clips:
    raise ValueError(f"--clip=none: --format={fmt} cannot hold samples beyond [-1, 1]; "
                     "use --format=float to keep them, or --clip=rescale")
  return clip


def output_paths(job: Job, output_dir: str | os.PathLike, names: Sequence[str], fmt: str,
                 template: str = DEFAULT_FILENAME) -> dict[str, pathlib.Path]:
  """{stem: output file} of one input; ValueError naming the input if a name it gives
  (an input named `...wav`: {track} is '..') would leave `output_dir`."""
  ext = audio.AUDIO_FORMATS[fmt].extension[1:]
  track, trackext = job.path.stem, job.path.suffix[1:]
  output_dir = pathlib.Path(output_dir)
  paths = {}
  for name in names:
    relative = template.format(track=track, trackext=trackext, stem=name, ext=ext)
    path = output_dir / job.folder / relative
    if not (_plain_parts(relative) and _inside(path, output_dir)):
      raise ValueError(f"{job.path}: --filename={template} makes {relative!r} of its name, "
                       "which is no path inside --output_dir (an empty, . or .. part); "
                       "rename the file or choose another --filename")
    paths[name] = path
  return paths


def _inside(path: pathlib.Path, folder: pathlib.Path) -> bool:
  """Whether `path`, normalised, lies below `folder` (lexically: links are the user's)."""
  path, folder = (os.path.normpath(os.path.abspath(p)) for p in (path, folder))
  return path != folder and os.path.commonpath([path, folder]) == folder


def plan_outputs(listed: Sequence[tuple[Job, str | None]], output_dir: str | os.PathLike,
                 names: Sequence[str], fmt: str, template: str = DEFAULT_FILENAME
                 ) -> list[tuple[Job, dict[str, pathlib.Path], str | None]]:
  """(job, {stem: output}, error) for each (job, error) of `list_jobs`, in order. A job
  is refused (its error set, its outputs possibly empty) if an output would leave
  `output_dir`, two of its stems would share a file, an output would be an input of
  the run (compared resolved) or an earlier job's output, or a folder stands where an
  output goes. Reads no audio and writes nothing."""
  inputs = {os.path.realpath(job.path) for job, error in listed if error is None}
  claimed: dict[str, pathlib.Path] = {}  # resolved output -> the input that makes it
  plan = []
  for job, error in listed:
    paths = {}
    if error is None:
      try:
        paths = output_paths(job, output_dir, names, fmt, template)
        error = _clash(job, paths, inputs, claimed, template)
      except ValueError as e:  # files.WriteError included
        error = str(e)
    if error is None:
      claimed.update((os.path.realpath(p), job.path) for p in paths.values())
    plan.append((job, paths, error))
  return plan


def _clash(job: Job, paths: dict[str, pathlib.Path], inputs: set[str],
           claimed: dict[str, pathlib.Path], template: str) -> str | None:
  """Why `job` may not write `paths`, or None."""
  real = {name: os.path.realpath(path) for name, path in paths.items()}
  if len(set(real.values())) < len(real):
    return (f"{job.path}: --filename={template} puts two of its stems into one file; use "
            "{stem} in a part of the name that differs")
  for name, path in paths.items():
    if real[name] in inputs:
      return (f"{job.path}: its {name} would overwrite the input {path}; choose another "
              "--output_dir or --filename")
    if real[name] in claimed:
      return (f"{job.path}: its outputs would go where those of {claimed[real[name]]} go "
              f"({path.parent}); separate it into another --output_dir or name outputs "
              "with --filename")
    files.check_target(path)  # a folder where the file goes
  return None


def list_jobs(inputs: Sequence[str | os.PathLike], output_dir: str | os.PathLike | None = None
              ) -> list[tuple[Job, str | None]]:
  """(job, None) for each file to separate, (job, error) for each bad input. A folder
  gives its audio files, recursively, each with its folder below the input, except
  those under `output_dir` where it lies inside the folder (earlier outputs are not
  songs)."""
  skip = pathlib.Path(output_dir).resolve() if output_dir is not None else None
  listed = []
  for item in map(pathlib.Path, inputs):
    if item.is_dir():
      inside = skip is not None and item.resolve() in skip.parents
      found = sorted(
          p for p in item.rglob("*") if p.is_file()
          and not any(part.startswith(".") for part in p.relative_to(item).parts)
          and p.suffix.lower() in audio.AUDIO_EXTENSIONS
          and not (inside and skip in p.resolve().parents))
      if not found:
        listed.append((Job(item, pathlib.Path()),
                       f"{item}: no audio files in this folder (extensions "
                       f"{' '.join(audio.AUDIO_EXTENSIONS)})"))
      listed.extend((Job(f, f.parent.relative_to(item)), None) for f in found)
    elif item.exists():
      listed.append((Job(item, pathlib.Path()), None))
    else:
      listed.append((Job(item, pathlib.Path()), f"{item}: no such file or directory"))
  return listed


# --------------------------------------------------------------------------- #
# Reading ahead.
# --------------------------------------------------------------------------- #


class _Opened:
  """One file as the reader thread hands it over: its header (or the error that
  opening it gave), then its blocks through `blocks()`."""

  def __init__(self, job: Job, stream: audio.AudioStream | None, error: Exception | None):
    self.job, self.stream, self.error = job, stream, error
    self.queue: queue.Queue = queue.Queue(maxsize=READ_AHEAD_BLOCKS)
    self.abandoned = threading.Event()

  def blocks(self) -> Iterator[np.ndarray]:
    """The file's blocks; raises what reading it raised."""
    try:
      while (block := self.queue.get()) is not None:
        if isinstance(block, Exception):
          raise block
        yield block
    finally:
      self.abandoned.set()  # the reader stops decoding a file nobody reads any more


class _Reader:
  """Decodes the jobs' files in order on a thread of its own, up to
  `READ_AHEAD_BLOCKS` ahead of the consumer, so that the next file is being decoded
  while the network works on the current one. Iterate it for one `_Opened` per job."""

  def __init__(self, jobs: Sequence[Job]):
    self._jobs = list(jobs)
    self._files: queue.Queue[_Opened] = queue.Queue(maxsize=1)
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._run, daemon=True)
    self._thread.start()

  def _put(self, q: queue.Queue, item, abandoned: threading.Event | None = None) -> bool:
    """Puts `item` unless the reader is closed or the file abandoned first."""
    while not self._stop.is_set() and not (abandoned and abandoned.is_set()):
      try:
        q.put(item, timeout=0.1)
        return True
      except queue.Full:
        pass
    return False

  def _run(self) -> None:
    for job in self._jobs:
      opened = None
      try:
        with audio.open_audio(job.path) as stream:
          opened = _Opened(job, audio.AudioStream(stream.rate, stream.channels,
                                                  stream.frames, iter(())), None)
          if not self._put(self._files, opened):
            return
          for block in stream.blocks:
            if not self._put(opened.queue, block, opened.abandoned):
              break
          end = None
      except Exception as e:  # handed to the consumer, which names the file
        end = e
      if opened is None:
        if not self._put(self._files, _Opened(job, None, end)):
          return
      else:
        self._put(opened.queue, end, opened.abandoned)

  def __iter__(self) -> Iterator[_Opened]:
    for _ in self._jobs:
      yield self._files.get()

  def close(self) -> None:
    self._stop.set()
    self._thread.join(timeout=10)


# --------------------------------------------------------------------------- #
# Separating files.
# --------------------------------------------------------------------------- #


def separate_file(separator: Separator, path: str | os.PathLike,
                  output_dir: str | os.PathLike, **kwargs) -> list[pathlib.Path]:
  """Separates one file into `output_dir` (see `separate_files`); returns its outputs,
  one per stem."""
  return separate_files(separator, [path], output_dir, **kwargs)


def separate_files(separator: Separator, inputs: Sequence[str | os.PathLike],
                   output_dir: str | os.PathLike, *, fmt: str = "wav16",
                   bitrate: str = audio.DEFAULT_BITRATE, stems: Sequence[str] | None = None,
                   filename: str = DEFAULT_FILENAME, clip: str | None = None,
                   overwrite: bool = False, progress: bool = False) -> list[pathlib.Path]:
  """Separates files, and the audio files of folders (recursively, the same tree out).

  Each output is written under a hidden temporary name and renamed when its whole
  song is done: an output is complete or absent. Existing outputs are kept unless
  `overwrite`. A failing input is logged as one line and the others go on; at the
  end a SeparationError lists the failed inputs.

  Args:
    fmt: an `audio.AUDIO_FORMATS` key; `bitrate` for the lossy ones.
    stems: the stem layout (`stems` module); None: the model's sources.
    filename: where each stem goes below `output_dir`, from the fields {track} (the
      input's name without extension), {trackext}, {stem} and {ext}.
    clip: samples beyond [-1, 1]: 'clamp' them (with a warning saying how many),
      'rescale' all stems of a file together so that none clips, or 'none' (float
      output only: the stems keep their exact sum); None: 'none' for float output,
      'clamp' else.
  Returns:
    The outputs of the inputs that worked.
  """
  if fmt not in audio.AUDIO_FORMATS:
    raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(audio.AUDIO_FORMATS)}")
  if audio.AUDIO_FORMATS[fmt].lossy:
    try:
      audio.bits_per_second(bitrate)
    except audio.AudioError as e:  # else every output would fail alike
      raise SeparationError(f"--bitrate: {e}") from None
  files.check_output_dir(output_dir, "the stems")
  check_filename(filename)
  clip = clip_mode(clip, fmt)
  names = separator.stem_names(stems)
  made = _missing_folders(pathlib.Path(output_dir))  # removed again if left empty
  try:
    pathlib.Path(output_dir).mkdir(parents=True, exist_ok=True)
  except OSError as e:  # e.g. under a regular file: nothing could be written
    raise SeparationError(f"--output_dir={output_dir}: cannot create this folder "
                          f"({e.strerror or e})") from None
  plan = []  # (job, its outputs, the stems to write, an error) in order
  for job, paths, error in plan_outputs(list_jobs(inputs, output_dir), output_dir, names,
                                        fmt, filename):
    for path in paths.values():
      files.remove_stale_parts(path)  # a killed run's temporaries, whatever is redone
    plan.append((job, paths, [n for n in paths if overwrite or not paths[n].exists()], error))
  work = [job for job, _, missing, error in plan if error is None and missing]

  outputs, failed = [], []
  bar = reader = None
  try:
    bar = _progress_bar(work, enabled=progress)
    reader = _Reader(work)
    opened_files = enumerate(reader, 1)
    for job, paths, missing, error in plan:
      if error is None and not missing:
        logging.info("%s: kept the existing outputs (--overwrite to redo them)", job.path)
        outputs += paths.values()
        continue
      if error is None:
        try:
          number, opened = next(opened_files)
          bar.set_description_str(f"file {number}/{len(work)}")
          bar.set_postfix_str(job.path.name)
          if opened.error is not None:
            raise opened.error
          _separate_one(separator, opened, paths, missing, names, fmt, bitrate, clip, bar)
          outputs += paths.values()
          continue
        except (SeparationError, audio.AudioError, files.WriteError) as e:
          error = str(e)
        except KeyboardInterrupt as e:
          # Python's own SIGINT handler names no signal; _sigterm_interrupts does.
          name = str(e) if str(e) in signal.Signals.__members__ else "SIGINT"
          raise SeparationInterrupted(
              f"interrupted ({name}): nothing written for {job.path}; the songs finished "
              f"before it are kept in {output_dir}; re-running the same command separates "
              "the rest", signal.Signals[name]) from None
      logging.error("%s", error)
      failed.append(str(job.path))
  finally:
    if reader is not None:
      reader.close()
    if bar is not None:
      bar.close()
    _remove_empty(made)
  if failed:
    raise SeparationError(f"{len(failed)} input(s) failed: {', '.join(failed)}")
  return outputs


def _missing_folders(folder: pathlib.Path) -> list[pathlib.Path]:
  """`folder` and those above it that do not exist yet, deepest first."""
  missing = []
  while not folder.exists() and folder != folder.parent:
    missing.append(folder)
    folder = folder.parent
  return missing


def _remove_empty(folders: Sequence[pathlib.Path]) -> None:
  """Removes those of `folders` (which this program made) that are empty, deepest
  first, so that a failed or interrupted run leaves no empty folder of its own."""
  for folder in sorted(set(folders), key=lambda p: len(p.absolute().parts), reverse=True):
    with contextlib.suppress(OSError):  # not empty, or gone
      if folder.is_dir() and not folder.is_symlink():
        folder.rmdir()


def _separate_one(separator: Separator, opened: _Opened, paths: dict[str, pathlib.Path],
                  missing: list[str], names: Sequence[str], fmt: str, bitrate: str, clip: str,
                  bar) -> None:
  stream, path = opened.stream, opened.job.path
  # Folders this output makes, removed again if it fails.
  made = [f for n in missing for f in _missing_folders(paths[n].parent)]
  sinks, writers, spools = [], [], []
  input_peak, peak = _Peak(), _Peak()
  try:
    separator.check_channels(stream.channels, str(path))
    if clip == "rescale":  # a first pass to learn the stems' peak
      for n in missing:
        spools.append(audio.Spool(paths[n], stream.channels))
      sinks = spools
    else:
      for n in missing:  # one at a time: those made are discarded if the next fails
        writers.append(audio.AudioWriter(paths[n], stream.rate, stream.channels, fmt, bitrate))
      sinks = writers
    index = [names.index(n) for n in missing]
    for block in separator.separate_blocks(input_peak.track(opened.blocks()), stream.rate,
                                           stream.channels, name=str(path), stems=names):
      for sink, i in zip(sinks, index):
        sink.write(block[:, i])
      if clip == "rescale":
        peak.add(block)
      bar.update(len(block) / stream.rate)
    if clip == "rescale":
      scale = 1.0 / peak.value if peak.value > 1.0 else 1.0
      if scale < 1.0:
        logging.warning("%s: stems scaled by %.4f together (their peak was %.3f) so that "
                        "none clips", path, scale, peak.value)
      for n in missing:
        writers.append(audio.AudioWriter(paths[n], stream.rate, stream.channels, fmt, bitrate))
      for spool, writer in zip(spools, writers):
        for block in spool.blocks():
          writer.write(block * np.float32(scale))
    for name, writer in zip(missing, writers):
      if writer.clipped:
        logging.warning("%s: %s: %d samples beyond [-1, 1] were clamped (peak %.3f); "
                        "--clip=rescale scales all stems together instead, --format=float "
                        "keeps them", path, name, writer.clipped, writer.peak)
    for writer in writers:  # every file complete before any is renamed into place
      writer.finish()
    for writer in writers:
      writer.commit()
  except BaseException:
    opened.abandoned.set()
    for writer in writers:
      writer.discard()
    for spool in spools:  # before the folders they are in
      spool.close()
    _remove_empty(made)
    raise
  finally:
    for spool in spools:
      spool.close()
  if input_peak.value > 1.0:
    logging.warning("%s: the input reaches %.3f, beyond the [-1, 1] the model was trained "
                    "on; its stems may be poor", path, input_peak.value)
  kept = [n for n in names if n not in missing]
  logging.info("%s -> %s%s", path, ", ".join(str(paths[n]) for n in missing),
               f" (kept the existing {', '.join(kept)})" if kept else "")


class _Peak:
  """The largest |sample| of the blocks seen."""

  def __init__(self):
    self.value = 0.0

  def add(self, block: np.ndarray) -> None:
    if block.size:
      self.value = max(self.value, float(np.abs(block).max()))

  def track(self, blocks: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
    for block in blocks:
      self.add(block)
      yield block


def _progress_bar(jobs: Sequence[Job], enabled: bool):
  """One bar for the whole job, in seconds of audio (from the files' headers, read
  only for a bar that shows)."""
  enabled = enabled and console.shows_bars()
  total = 0.0
  for job in jobs if enabled else ():
    try:
      info = audio.audio_info(job.path)
      total += info.frames / info.rate
    except audio.AudioError:
      pass  # reported when it is read
  return console.progress(round(total, 1), f"file 1/{len(jobs)}", unit="s", shown=enabled,
                          bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} s "
                                     "of audio [{elapsed}<{remaining}, {rate_fmt}{postfix}]")


# --------------------------------------------------------------------------- #
# Command line.
# --------------------------------------------------------------------------- #


def _define_flags() -> None:
  # Defined only when run as a program (shared_flags says why).
  shared_flags.define(
      "workdir", "checkpoint", "output_dir", "stems", "residual_source", "overwrite",
      "overlap", "window_seconds", "batch_size", "shifts", "flip", "seed",
      workdir="Training workdir of the model (or --model).",
      output_dir="Where the outputs go (see --filename).", overwrite="Replace existing outputs.")
  flags.DEFINE_string("model", None, "An exported model instead of --workdir: .onnx, "
                      ".tflite, .stablehlo or a SavedModel folder (python -m "
                      "waveunet_jax.export); its window is the one it was exported with.")
  flags.DEFINE_string("filename", DEFAULT_FILENAME,
                      "Output path below --output_dir, from {track} (input name without "
                      "extension), {trackext}, {stem} and {ext}.")
  flags.DEFINE_enum("format", "wav16", list(audio.AUDIO_FORMATS),
                    "wav16, wav24, float (32-bit wav), flac (24-bit), or lossy at "
                    "--bitrate: mp3, ogg (Vorbis), m4a (AAC).")
  flags.DEFINE_string("bitrate", audio.DEFAULT_BITRATE, "Bitrate of mp3, ogg and m4a.")
  flags.DEFINE_enum("clip", None, list(CLIP_MODES),
                    "Stem samples beyond [-1, 1]: clamp (with a warning), rescale (all stems "
                    "of a file together), none (float output keeps the exact sum). Default: "
                    "none for --format=float, clamp else.")
  flags.mark_flags_as_required(["output_dir"])


def load_separator(args) -> Separator:
  """The Separator the flags name: a workdir's model on JAX (the jax install), or an
  exported model on its runtime (which imports neither this project's JAX code nor
  JAX for ONNX)."""
  residual = None if args.residual_source == "none" else args.residual_source
  options = dict(residual_source=residual, shifts=args.shifts, flip=args.flip, seed=args.seed)
  if (args.workdir is None) == (args.model is None):
    raise SeparationError("give the model: --workdir=RUN (a training workdir) or "
                          "--model=FILE (an export), not both")
  if args.model is not None:
    from waveunet_jax.separation import model_formats

    if args.window_seconds is not None or args.overlap:
      raise SeparationError("--window_seconds and --overlap are fixed when a model is "
                            "exported (python -m waveunet_jax.export)")
    return Separator(model_formats.load(args.model, args.batch_size), **options)
  try:
    from waveunet_jax.separation import jax_engine

    jax_engine.check_window_seconds(args.window_seconds)  # before the checkpoint loads
    return jax_engine.separator_from_workdir(args.workdir, args.checkpoint,
                                             window_seconds=args.window_seconds,
                                             overlap=args.overlap, batch_size=args.batch_size,
                                             **options)
  except ModuleNotFoundError as e:  # the base install separates exports only
    line = console.missing_extra("--workdir", "jax", e)
    if line is None:
      raise
    raise SeparationError(line) from None


def main(argv: list[str]) -> None:
  inputs, args = argv[1:], flags.FLAGS
  if not inputs:
    raise app.UsageError("give the audio files or folders to separate")
  try:
    written = _run(inputs, args)
  except SeparationInterrupted as e:  # its line names the song and what was kept
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.exit(128 + e.signum)
  except KeyboardInterrupt as e:  # before or between songs: none was begun
    console.exit_interrupted(e, f"finished songs are kept in {args.output_dir}, nothing else "
                             "is written; re-running the same command separates the rest")
  console.done(f"done: {len(written)} stems in {args.output_dir}")


def _run(inputs: list[str], args) -> list[pathlib.Path]:
  """The program's work: the outputs written; exits with one line for an error."""
  try:
    files.check_output_dir(args.output_dir, "the stems")
    check_filename(args.filename)
    clip_mode(args.clip, args.format)
    if args.batch_size is not None and args.batch_size < 1:
      raise SeparationError(f"--batch_size={args.batch_size}: must be a positive number of "
                            "windows (or left out: one per device, or an exported model's "
                            "fixed batch)")
    check_averaging(args.shifts, args.seed)
    separator = load_separator(args)
    stems = separator.stem_names(args.stems.split(",") if args.stems else None)
  except ValueError as e:  # SeparationError, ConfigError, a bad --overlap
    sys.exit(f"error: {e}")
  try:
    return separate_files(separator, inputs, args.output_dir, fmt=args.format,
                          bitrate=args.bitrate, stems=stems, filename=args.filename,
                          clip=args.clip, overwrite=args.overwrite, progress=True)
  except SeparationError as e:
    sys.exit(f"error: {e}")


def cli() -> None:
  """The program `python -m waveunet_jax.separate` (and the console script
  waveunet-separate)."""
  console.run_program(main, _define_flags)


if __name__ == "__main__":
  cli()

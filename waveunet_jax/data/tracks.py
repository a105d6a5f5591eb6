"""Where training and evaluation tracks come from, and which are for validation.

Reading: a `Track` on disk (its docstring says which layouts), `read_multitrack` its
stems, `check_track` its headers only (a bad track fails before hours of decoding).
Splits: `split_tracks` (the validation choice: `choose_validation`). `builder` cuts what
this reads into a TFDS dataset; `evaluate` scores a model on it. Errors are `DataError`s
whose message names the track or file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import pathlib
from collections.abc import Sequence

import numpy as np
from absl import logging

from waveunet_jax import audio
from waveunet_jax import stems as stems_lib
from waveunet_jax.data.records import DataError

MUSDB_SAMPLE_RATE = 44100
# MUSDB18-HQ's mix, beside the stems: never read (training sums the stems).
MIXTURE = "mixture"
# Each stem's stream index in a `.stem.mp4` (`stems` owns the order; 0 is the mix).
STEM_STREAMS = {stem: i for i, stem in enumerate(stems_lib.STEM_FILE_STREAMS) if stem != MIXTURE}
# Why a track's stem is needed, in errors of `prepare` (`builder`) (`evaluate` says its own).
NEEDED_FOR = " of config.model.sources"
SPLITS = ("train", "valid", "test")
# Without validation tracks named or found, about this share of the training tracks
# becomes the validation split.
VALID_SHARE = 0.1


# --------------------------------------------------------------------------- #
# Reading tracks.
# --------------------------------------------------------------------------- #


@dataclasses.dataclass(frozen=True)
class Track:
  """A multitrack on disk: MUSDB18's `<track>.stem.mp4` file (decoded by PyAV), or a
  `<track>/<stem>.wav` folder (MUSDB18-HQ, or one's own multitracks: extra stems such as
  `piano.wav` count as `other`, `accompaniment.wav` or `instrumental.wav` holds drums +
  bass + other, and a stem that no source needs may be missing; `stems` owns the rule;
  mono stems only where the caller takes them, `read_multitrack(mono=True)`). Found in
  `DIR/{train,valid,test}` (`folder_tracks`) or listed in a text file
  (`read_tracks_file`)."""

  name: str
  path: pathlib.Path  # a `<name>.stem.mp4` file, or a `<name>/` folder of wavs
  wav: bool


def find_tracks(root: pathlib.Path, subset: str, wav: bool) -> list[Track]:
  """The tracks of `root/subset`, sorted by name (may be empty)."""
  folder = pathlib.Path(root) / subset
  if not folder.is_dir():
    return []
  if wav:
    return [Track(p.name, p, True) for p in sorted(folder.iterdir())
            if p.is_dir() and not p.name.startswith(".")]
  suffix = ".stem.mp4"
  return [Track(p.name[:-len(suffix)], p, False) for p in sorted(folder.glob(f"*{suffix}"))]


def stem_files(track: Track) -> dict[str, pathlib.Path]:
  """{stem: path} of a track folder's wavs: every `<stem>.wav` but `mixture.wav`,
  MUSDB18's four stems first (in stems.STEMS order, which fixes the order of sums), then
  any others (`piano.wav`, ...) by name."""
  found = {p.stem: p for p in track.path.iterdir()
           if p.suffix.lower() == ".wav" and not p.name.startswith(".") and p.stem != MIXTURE
           and p.is_file()}
  order = ([s for s in stems_lib.STEMS if s in found]
           + sorted(s for s in found if s not in stems_lib.STEMS))
  return {stem: found[stem] for stem in order}


def needed_stems(track: Track, sources: Sequence[str],
                 needed_for: str = NEEDED_FOR) -> dict[str, pathlib.Path]:
  """The stem files of a track folder that `sources` sum (`stems.multitrack_parts`):
  a stem no source needs is not read, and may be missing. Raises DataError naming the
  track, its folder and stems, and what is missing when a source has none, or a stem
  that holds parts of several sources (`stems.split_across`)."""
  files = stem_files(track)
  found = f"it has {stems_lib.describe_stems(list(files), '.wav')}"
  needed = set()
  for source in sources:
    members = stems_lib.multitrack_parts(source, list(files))
    if not members:
      raise DataError(f"track {track.name!r}: {stems_lib.describe_missing(source, '.wav')} in "
                      f"{track.path} (needed for the source {source!r}{needed_for}); {found}")
    needed.update(members)
  split = stems_lib.split_across(list(files), sources)
  if split:
    stem, touched = next(iter(split.items()))
    raise DataError(
        f"track {track.name!r}: {files[stem]} holds {' + '.join(stems_lib.holds(stem))} in "
        f"one, which no source can take whole (needed apart for the sources "
        f"{', '.join(map(repr, touched))}{needed_for}); {found}; move it out of {track.path}")
  return {stem: path for stem, path in files.items() if stem in needed}


def read_multitrack(track: Track, sources: Sequence[str], needed_for: str = NEEDED_FOR, *,
                    all_stems: bool = False,
                    mono: bool = False) -> tuple[dict[str, np.ndarray], int]:
  """The stems of a track that `sources` need (all four of a `.stem.mp4`), float32
  [time, 2] each (or [time, 1], below), and their sample rate.

  `all_stems`: also the stems of a folder that no source needs (the whole mix), once
  the sources are checked to have theirs. `mono`: a folder's mono stems too ([time,
  1]; `evaluate` takes them); else they are refused, as MUSDB18's stems are stereo.
  """
  if track.wav:
    stems, rates = {}, {}
    files = needed_stems(track, sources, needed_for)  # first: the sources have their stems
    if all_stems:
      files = stem_files(track)
    for stem, path in files.items():
      stems[stem], rates[stem] = _read_wav(track, path, mono)
    _check_same(track, "sample rates", rates)
    rate = next(iter(rates.values()))
  else:
    stems, rate = _read_stem_file(track)
  _check_same(track, "lengths (samples)", {stem: len(audio) for stem, audio in stems.items()})
  return stems, rate


# What to do when a track's stems differ (`_check_same`).
_SAME_FIX = {"sample rates": "resample them to one rate (e.g. ffmpeg -i bass.wav -ar 44100 "
                             "bass-44k.wav)",
             "lengths (samples)": "trim or pad them to one length (they must start together)"}


def _check_same(track: Track, what: str, values: dict[str, int]) -> None:
  """DataError unless the stems' `values` (their sample rates or lengths) are one."""
  if len(set(values.values())) > 1:
    raise DataError(f"track {track.name!r}: stems have different {what} {values}; "
                    f"{_SAME_FIX[what]}")


def read_stems(track: Track) -> tuple[dict[str, np.ndarray], int]:
  """MUSDB18's four stems of a track, float32 [time, 2] each (any extra stem summed into
  `other`, as `stems` says), and their sample rate."""
  stems, rate = read_multitrack(track, stems_lib.STEMS, needed_for=" of MUSDB18's four stems")
  return stems_lib.combine_multitrack(stems, stems_lib.STEMS), rate


def check_track(track: Track, sources: Sequence[str] = stems_lib.STEMS) -> None:
  """Cheap header checks of one track, so that a bad track fails before hours of
  decoding rather than in the middle: the stems `sources` need present, readable,
  stereo, and (wav) of one rate and length."""
  if not track.wav:
    _stem_file_info(track)
    return
  infos = {}
  for stem, path in needed_stems(track, sources).items():
    try:
      infos[stem] = audio.audio_info(path)
    except audio.AudioError as e:
      raise DataError(f"track {track.name!r}: {e}") from None
    _check_channels(track, path.name, infos[stem].channels)
    if infos[stem].frames == 0:
      raise DataError(f"track {track.name!r}: {path} is empty")
  _check_same(track, "sample rates", {s: i.rate for s, i in infos.items()})
  _check_same(track, "lengths (samples)", {s: i.frames for s, i in infos.items()})


def _stem_file_info(track: Track) -> None:
  try:
    channels = audio.stem_file_channels(track.path, 1 + len(STEM_STREAMS))
  except audio.AudioError as e:
    raise DataError(f"track {track.name!r}: {e}") from None
  for stem, index in STEM_STREAMS.items():
    _check_channels(track, f"{track.path.name} ({stem} stream)", channels[index])


def _read_wav(track: Track, path: pathlib.Path, mono: bool = False) -> tuple[np.ndarray, int]:
  try:
    data, rate = audio.read_audio(path)
  except audio.AudioError as e:
    raise DataError(f"track {track.name!r}: {e}") from None
  _check_stereo(track, path.name, data, mono)
  return data, rate


def _read_stem_file(track: Track) -> tuple[dict[str, np.ndarray], int]:
  # check_track read the header before; read_stem_file checks the stream count again
  # and the channels are checked on the decoded streams, so the file opens once here.
  try:
    data, rate = audio.read_stem_file(track.path, 1 + len(STEM_STREAMS))
  except audio.AudioError as e:
    raise DataError(f"track {track.name!r}: {e}") from None
  stems = {stem: data[index] for stem, index in STEM_STREAMS.items()}
  for stem, part in stems.items():
    _check_stereo(track, f"{track.path.name} ({stem} stream)", part)
  return stems, rate


def _check_stereo(track: Track, what: str, audio: np.ndarray, mono: bool = False) -> None:
  _check_channels(track, what, audio.shape[1], mono)
  if len(audio) == 0:
    raise DataError(f"track {track.name!r}: {what} is empty")


def _check_channels(track: Track, what: str, channels: int, mono: bool = False) -> None:
  if channels != 2 and not (mono and channels == 1):
    raise DataError(f"track {track.name!r}: {what} has {channels} channel(s); "
                    f"MUSDB18 stems are stereo{' (or mono here)' if mono else ''}")



# --------------------------------------------------------------------------- #
# Splits.
# --------------------------------------------------------------------------- #


def folder_tracks(root: pathlib.Path, wav: bool) -> dict[str, list[Track]]:
  """--musdb_root's tracks per split: `root/train`, and `root/valid` and `root/test`
  where they exist."""
  root = pathlib.Path(root)
  if not root.is_dir():
    raise DataError(f"--musdb_root={root}: no such directory")
  splits = {split: find_tracks(root, split, wav) for split in SPLITS}
  if not splits["train"]:
    kind = "<track>/<stem>.wav folders" if wav else "<track>.stem.mp4 files"
    hint = "" if wav else " (for the MUSDB18-HQ wav release or your own multitracks, add --wav)"
    raise DataError(f"--musdb_root={root}: no tracks found in {root / 'train'}; expected "
                    f"{kind}{hint}")
  both = sorted({t.name for t in splits["train"]} & {t.name for t in splits["valid"]})
  if both:
    raise DataError(f"--musdb_root={root}: {both[0]!r} is in both train/ and valid/; a track "
                    "belongs to one split")
  return splits


def read_tracks_file(path: str | pathlib.Path) -> dict[str, list[Track]]:
  """--tracks_file's tracks per split, each sorted by name. Each line names a track
  folder (absolute, or relative to the file's folder), optionally followed by
  whitespace and its split: train (the default), valid or test. Blank lines and lines
  starting with # are skipped. A track's name is its folder's name."""
  path = pathlib.Path(path)
  try:
    text = path.read_text()
  except (OSError, UnicodeDecodeError) as e:
    raise DataError(f"--tracks_file={path}: cannot read it ({getattr(e, 'strerror', e)})") \
        from None
  splits = {split: [] for split in SPLITS}
  line_of = {}
  for number, line in enumerate(text.splitlines(), 1):
    if not line.strip() or line.lstrip().startswith("#"):
      continue
    folder, split = _track_line(line.strip(), path.parent, f"{path}:{number}")
    if folder.name in line_of:
      raise DataError(f"{path}:{number}: a second track named {folder.name!r} (the first is on "
                      f"line {line_of[folder.name]}); a track is named by its folder, and "
                      "names must differ")
    line_of[folder.name] = number
    splits[split].append(Track(folder.name, folder, True))
  if not splits["train"]:
    raise DataError(f"--tracks_file={path}: no training track (a line with no split or with "
                    "train); write one track folder per line")
  return {split: sorted(tracks, key=lambda t: t.name) for split, tracks in splits.items()}


def _track_line(text: str, base: pathlib.Path, where: str) -> tuple[pathlib.Path, str]:
  """(folder, split) of one --tracks_file line; a whole line that is a folder is one
  (its name may end in a split's name), else the last word may be the split."""
  folder = base / pathlib.Path(text).expanduser()
  if folder.is_dir():
    return folder, "train"
  head, _, word = text.rpartition(" ") if "\t" not in text else text.rpartition("\t")
  head, word = head.strip(), word.strip()
  if head:
    head_folder = base / pathlib.Path(head).expanduser()
    if word in SPLITS and head_folder.is_dir():
      return head_folder, word
    if head_folder.is_dir():
      raise DataError(f"{where}: unknown split {word!r} for {head_folder}; use train, valid "
                      "or test")
    if word in SPLITS:
      folder = head_folder
  what = "is not a folder" if folder.exists() else "no such folder"
  raise DataError(f"{where}: {folder}: {what}; a line names a track folder of wav stems "
                  f"(absolute, or relative to {base}), then optionally its split")


def musdb_validation_tracks() -> tuple[str, ...]:
  """musdb's standard validation split of the MUSDB18 training set (14 tracks)."""
  import importlib.util

  import yaml  # a dependency of musdb

  # The file is found without importing musdb: its import imports stempeg, which raises
  # where no ffmpeg program is installed.
  package = importlib.util.find_spec("musdb").submodule_search_locations[0]
  with open(pathlib.Path(package, "configs", "mus.yaml"), encoding="utf-8") as f:
    return tuple(yaml.safe_load(f)["validation_tracks"])


def track_names(flag_value: str | None) -> list[str] | None:
  """A --valid_tracks value ("Artist - Title,Artist - Title") as names; None if unset."""
  if not flag_value:
    return None
  return [name.strip() for name in flag_value.split(",") if name.strip()]


def _musdb_validation(train: Sequence[Track]) -> set[str]:
  return set(musdb_validation_tracks()) & {t.name for t in train}


def _named_validation(train: Sequence[Track], where: str,
                      valid_tracks: Sequence[str]) -> set[str]:
  missing = sorted(set(valid_tracks) - {t.name for t in train})
  if missing:
    raise DataError(f"--valid_tracks: not in {where}: {', '.join(missing)}")
  return set(valid_tracks)


def hashed_validation(train: Sequence[Track]) -> set[str]:
  """About VALID_SHARE of `train` (at least one, never all): the tracks whose names
  hash lowest (sha256), so the choice depends on the names alone (not on the order a
  file system lists them, nor on the machine), and most of it stays when tracks are
  added."""
  count = max(1, round(VALID_SHARE * len(train)))
  ranked = sorted(train, key=lambda t: (hashlib.sha256(t.name.encode()).hexdigest(), t.name))
  return {t.name for t in ranked[:count]}


def choose_validation(splits: dict[str, list[Track]], valid_tracks: Sequence[str] | None,
                      train_from: str, valid_from: str) -> dict[str, list[Track]]:
  """`splits` with the validation tracks settled, the first of:
  `valid_tracks` (moved out of train); the given valid tracks (a valid/ folder, or lines
  marked valid); musdb's validation tracks, if train holds any (MUSDB18 itself); about
  VALID_SHARE of train (`hashed_validation`). Logs the choice in one line.

  `train_from`, `valid_from`: where the train and valid tracks come from, for the
  messages ("DIR/train", "DIR/valid/").
  """
  train, valid = splits["train"], splits["valid"]
  if valid_tracks is not None:
    if valid:
      logging.warning("--valid_tracks names the validation tracks: the %d track(s) of %s "
                      "are not used", len(valid), valid_from)
    wanted = _named_validation(train, train_from, valid_tracks)
    why = "named by --valid_tracks"
  elif valid:
    logging.info("validation: the %d track(s) of %s", len(valid), valid_from)
    return splits
  elif wanted := _musdb_validation(train):
    why = "musdb's validation split of MUSDB18"
  elif len(train) < 2:
    raise DataError(f"only one training track ({train[0].name!r}) in {train_from}: validation "
                    f"needs at least 2 tracks there (about {VALID_SHARE:.0%} are held out) or "
                    f"tracks of its own in {valid_from}")
  else:
    wanted = hashed_validation(train)
    why = (f"about {VALID_SHARE:.0%} chosen by a hash of their names (no --valid_tracks, "
           f"no {valid_from}, no track of MUSDB18)")
  kept = [t for t in train if t.name not in wanted]
  if not kept:
    raise DataError(f"every track of {train_from} is a validation track ({why}); leave some "
                    "for training")
  logging.info("validation: %d of the %d tracks of %s, %s: %s", len(wanted), len(train),
               train_from, why, ", ".join(repr(name) for name in sorted(wanted)))
  return {**splits, "train": kept, "valid": [t for t in train if t.name in wanted]}


def check_one_of(musdb_root, tracks_file) -> None:
  if bool(musdb_root) == bool(tracks_file):
    raise DataError("give --musdb_root=DIR (a folder with train/, and optionally valid/ and "
                    "test/) or --tracks_file=FILE (one track folder per line)"
                    + (", not both" if musdb_root else ""))


def split_tracks(musdb_root: str | pathlib.Path | None, wav: bool,
                 valid_tracks: Sequence[str] | None, *,
                 tracks_file: str | pathlib.Path | None = None) -> dict[str, list[Track]]:
  """Tracks per split, from --musdb_root's folders or --tracks_file's lines (exactly one
  given), with the validation tracks chosen by `choose_validation`: `--valid_tracks`,
  else the valid/ folder (or lines), else musdb's 14-track split for MUSDB18, else about
  10 % of the training tracks chosen by a hash of their names. `evaluate --split=valid`
  asks this for the same choice, so it scores the tracks `builder` held out."""
  check_one_of(musdb_root, tracks_file)
  if tracks_file:
    splits = read_tracks_file(tracks_file)
    return choose_validation(splits, valid_tracks, f"the train lines of {tracks_file}",
                             f"valid lines in {tracks_file}")
  root = pathlib.Path(musdb_root)
  return choose_validation(folder_tracks(root, wav), valid_tracks, str(root / "train"),
                           f"{root / 'valid'}/")


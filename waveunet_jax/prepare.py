"""MUSDB18 (stem files or the HQ wav release) or one's own multitracks -> a TFDS
dataset of TFRecord windows.

  python -m waveunet_jax.prepare --musdb_root=DIR --data_dir=OUT --config=experiments/shallow.py
  python -m waveunet_jax.prepare --musdb_root=DIR --wav ...      # MUSDB18-HQ layout
  python -m waveunet_jax.prepare --tracks_file=FILE ...          # track folders listed

Reads `DIR/{train,valid,test}` (valid/ and test/ optional): `<track>.stem.mp4` files
(MUSDB18, decoded by PyAV) or, with `--wav`, `<track>/<stem>.wav`
folders (MUSDB18-HQ, or one's own multitracks: extra stems such as `piano.wav` count
as `other`, and a stem that no source of the config needs may be missing; `stems`
owns the rule). `--tracks_file` lists track folders instead (`read_tracks_file`).
The splits are `train`, `valid` and `test`; the validation tracks are
`--valid_tracks`, else the valid/ folder (or lines), else musdb's 14-track split
for MUSDB18, else about 10 % of the training tracks (`choose_validation`).

Storage, chosen so that a random crop never decodes a whole track:
* only the config's sources are stored (never a mix: training sums the sources), at
  the config's sample rate and channel count, as int16;
* each track is zero-padded by the network's context at both ends, as in the paper,
  and cut into overlapping windows: window k holds the crops that start at
  `k * hop ... (k + 1) * hop - 1` (so `hop + input_length - 1` samples), where
  `hop` is a multiple of the output length near 4 input lengths. A crop reads one
  window (about 25 % of storage is overlap), and validation tiles with hop =
  output length line up with windows.
The windows depend on the model's input and output lengths, so the dataset's TFDS
config name records them (`Layout.name`); a second config with other lengths
prepares its own dataset beside the first in the same --data_dir.

Never on the training path: training only reads what this wrote.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import pathlib
import shlex
import shutil
from collections.abc import Iterator, Sequence

import numpy as np
from absl import logging

from waveunet_jax import audio, console
from waveunet_jax import stems as stems_lib

# `models` (Flax) is imported where it is used, so that without the train install
# `cli()` can say what to install in one line.

MUSDB_SAMPLE_RATE = 44100
# The four stems of MUSDB18 (`stems` owns them and the sources derived from them), and
# their stream index in a `.stem.mp4` (0 is the mix).
STEMS = stems_lib.STEMS
STEM_STREAMS = {"drums": 1, "bass": 2, "other": 3, "vocals": 4}
# MUSDB18-HQ's mix, beside the stems: never read (training sums the stems).
MIXTURE = "mixture"
# Why a track's stem is needed, in errors of `prepare`.
NEEDED_FOR = " of config.model.sources"
SPLITS = ("train", "valid", "test")
# Without validation tracks named or found, about this share of the training tracks
# becomes the validation split.
VALID_SHARE = 0.1
# int16 sample = round(float sample * AUDIO_SCALE), clipped to the int16 range.
AUDIO_SCALE = 32768.0
# Windows hold about this many input lengths of crop starts (overlap is 1 / this).
WINDOW_INPUT_LENGTHS = 4


class DataError(ValueError):
  """Input data that cannot be used; the message names the track or file."""


@dataclasses.dataclass(frozen=True)
class Layout:
  """What a prepared dataset holds: which audio, and cut for which lengths."""

  sources: tuple[str, ...]
  sample_rate: int
  num_channels: int
  input_length: int
  output_length: int

  @property
  def offset(self) -> int:
    from waveunet_jax import models

    return models.Lengths(self.input_length, self.output_length).offset

  @property
  def hop(self) -> int:
    """Crop starts per window: a multiple of the output length."""
    tiles = math.ceil(WINDOW_INPUT_LENGTHS * self.input_length / self.output_length)
    return tiles * self.output_length

  @property
  def window_length(self) -> int:
    return self.hop + self.input_length - 1

  @property
  def name(self) -> str:
    """The TFDS config name: everything the stored windows depend on."""
    return (f"{'-'.join(self.sources)}_{self.sample_rate}hz_{self.num_channels}ch"
            f"_in{self.input_length}_out{self.output_length}")


def layout_for(config) -> Layout:
  """The dataset layout a training config needs."""
  sources = tuple(config.model.sources)
  for source in sources:
    if source not in STEMS and source not in stems_lib.derivable(STEMS):
      raise DataError(f"config.model.sources: {source!r} is not in MUSDB18; use "
                      f"{', '.join(STEMS + tuple(stems_lib.derivable(STEMS)))}")
  if config.model.num_channels not in (1, 2):
    raise DataError(f"config.model.num_channels: MUSDB18 is stereo; use 1 (downmixed) or 2, "
                    f"got {config.model.num_channels}")
  from waveunet_jax import models

  size = models.lengths(config.model, config.data.output_length)
  return Layout(sources, int(config.data.sample_rate), int(config.model.num_channels),
                size.input_length, size.output_length)


# --------------------------------------------------------------------------- #
# Reading tracks.
# --------------------------------------------------------------------------- #


@dataclasses.dataclass(frozen=True)
class Track:
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
  MUSDB18's four stems first (in STEMS order, which fixes the order of sums), then
  any others (`piano.wav`, ...) by name."""
  found = {p.stem: p for p in track.path.iterdir()
           if p.suffix.lower() == ".wav" and not p.name.startswith(".") and p.stem != MIXTURE
           and p.is_file()}
  order = [s for s in STEMS if s in found] + sorted(s for s in found if s not in STEMS)
  return {stem: found[stem] for stem in order}


def needed_stems(track: Track, sources: Sequence[str],
                 needed_for: str = NEEDED_FOR) -> dict[str, pathlib.Path]:
  """The stem files of a track folder that `sources` sum (`stems.multitrack_parts`):
  a stem no source needs is not read, and may be missing. Raises DataError naming the
  track and the file when a source has none."""
  files = stem_files(track)
  needed = set()
  for source in sources:
    members = stems_lib.multitrack_parts(source, list(files))
    if not members:
      raise DataError(f"track {track.name!r}: {stems_lib.describe_missing(source, '.wav')} in "
                      f"{track.path} (needed for the source {source!r}{needed_for})")
    needed.update(members)
  return {stem: path for stem, path in files.items() if stem in needed}


def read_multitrack(track: Track, sources: Sequence[str],
                    needed_for: str = NEEDED_FOR) -> tuple[dict[str, np.ndarray], int]:
  """The stems of a track that `sources` need (all four of a `.stem.mp4`), float32
  [time, 2] each, and their sample rate."""
  if track.wav:
    stems, rates = {}, {}
    for stem, path in needed_stems(track, sources, needed_for).items():
      stems[stem], rates[stem] = _read_wav(track, path)
    if len(set(rates.values())) > 1:
      raise DataError(f"track {track.name!r}: stems have different sample rates {rates}")
    rate = next(iter(rates.values()))
  else:
    stems, rate = _read_stem_file(track)
  lengths = {stem: len(audio) for stem, audio in stems.items()}
  if len(set(lengths.values())) > 1:
    raise DataError(f"track {track.name!r}: stems have different lengths (samples) {lengths}")
  return stems, rate


def read_stems(track: Track) -> tuple[dict[str, np.ndarray], int]:
  """MUSDB18's four stems of a track, float32 [time, 2] each (any extra stem summed into
  `other`, as `stems` says), and their sample rate."""
  stems, rate = read_multitrack(track, STEMS, needed_for=" of MUSDB18's four stems")
  return stems_lib.combine_multitrack(stems, STEMS), rate


def check_track(track: Track, sources: Sequence[str] = STEMS) -> None:
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
  for what, values in (("sample rates", {s: i.rate for s, i in infos.items()}),
                       ("lengths (samples)", {s: i.frames for s, i in infos.items()})):
    if len(set(values.values())) > 1:
      raise DataError(f"track {track.name!r}: stems have different {what} {values}")


def _stem_file_info(track: Track) -> None:
  try:
    channels = audio.stem_file_channels(track.path, 1 + len(STEM_STREAMS))
  except audio.AudioError as e:
    raise DataError(f"track {track.name!r}: {e}") from None
  for stem, index in STEM_STREAMS.items():
    _check_channels(track, f"{track.path.name} ({stem} stream)", channels[index])


def _read_wav(track: Track, path: pathlib.Path) -> tuple[np.ndarray, int]:
  try:
    data, rate = audio.read_audio(path)
  except audio.AudioError as e:
    raise DataError(f"track {track.name!r}: {e}") from None
  _check_stereo(track, path.name, data)
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


def _check_stereo(track: Track, what: str, audio: np.ndarray) -> None:
  _check_channels(track, what, audio.shape[1])
  if len(audio) == 0:
    raise DataError(f"track {track.name!r}: {what} is empty")


def _check_channels(track: Track, what: str, channels: int) -> None:
  if channels != 2:
    raise DataError(f"track {track.name!r}: {what} has {channels} channel(s); "
                    "MUSDB18 stems are stereo")


def track_sources(stems: dict[str, np.ndarray], rate: int, layout: Layout) -> np.ndarray:
  """The layout's sources of one track's stems (`read_multitrack`), summed as `stems`
  says: int16 [sources, time, channels], resampled
  with a band-limited resampler (soxr, high quality) and downmixed if mono."""
  import soxr

  out = []
  for source in stems_lib.combine_multitrack(stems, layout.sources).values():
    if layout.num_channels == 1:
      source = source.mean(axis=1, keepdims=True)
    if rate != layout.sample_rate:
      source = soxr.resample(source, rate, layout.sample_rate, quality="HQ")
    out.append(source)
  return to_int16(np.stack(out))


def to_int16(audio: np.ndarray) -> np.ndarray:
  return np.clip(np.round(audio * AUDIO_SCALE), -32768, 32767).astype(np.int16)


# --------------------------------------------------------------------------- #
# Windows.
# --------------------------------------------------------------------------- #


def track_windows(sources: np.ndarray, layout: Layout) -> Iterator[dict[str, np.ndarray | int]]:
  """Cuts one track, [S, N, C], into the stored windows (see the module docstring).

  A crop starting at s (0 <= s < N - output_length + 1) is
  `padded[:, s:s + input_length]` of the track padded by `layout.offset` zeros on the
  left; its targets are the track's samples s ... s + output_length - 1. Window k
  holds `padded[:, k * hop:k * hop + window_length]`, `num_starts` training crop
  starts and `num_tiles` validation tiles (starts k * hop + j * output_length), the
  last tile running into zero padding past the end of the track.
  """
  n = sources.shape[1]
  hop, out = layout.hop, layout.output_length
  num_starts = n - out + 1
  num_tiles = math.ceil(n / out)
  last_start = max(num_starts - 1, (num_tiles - 1) * out)
  num_windows = last_start // hop + 1
  right = num_windows * hop + layout.input_length - 1 - layout.offset - n
  padded = np.pad(sources, ((0, 0), (layout.offset, right), (0, 0)))
  for k in range(num_windows):
    yield {
        "index": k,
        "start": k * hop,
        "num_starts": int(np.clip(num_starts - k * hop, 0, hop)),
        "num_tiles": int(np.clip(num_tiles - k * (hop // out), 0, hop // out)),
        "sources": padded[:, k * hop:k * hop + layout.window_length],
    }


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


def validation_names(train: Sequence[Track], folder: pathlib.Path,
                     valid_tracks: Sequence[str] | None) -> set[str]:
  """The names of the validation tracks among `train` (the tracks of `folder`):
  `valid_tracks`, or musdb's validation split when None."""
  if valid_tracks is None:
    wanted = _musdb_validation(train)
    if not wanted:
      raise DataError(f"--musdb_root={folder.parent}: none of musdb's validation tracks is in "
                      f"{folder}; choose some with --valid_tracks=NAME,NAME")
    return wanted
  return _named_validation(train, str(folder), valid_tracks)


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


def _check_one_of(musdb_root, tracks_file) -> None:
  if bool(musdb_root) == bool(tracks_file):
    raise DataError("give --musdb_root=DIR (a folder with train/, and optionally valid/ and "
                    "test/) or --tracks_file=FILE (one track folder per line)"
                    + (", not both" if musdb_root else ""))


def split_tracks(musdb_root: str | pathlib.Path | None, wav: bool,
                 valid_tracks: Sequence[str] | None, *,
                 tracks_file: str | pathlib.Path | None = None) -> dict[str, list[Track]]:
  """Tracks per split, from --musdb_root's folders or --tracks_file's lines (exactly one
  given), with the validation tracks chosen by `choose_validation`."""
  _check_one_of(musdb_root, tracks_file)
  if tracks_file:
    splits = read_tracks_file(tracks_file)
    return choose_validation(splits, valid_tracks, f"the train lines of {tracks_file}",
                             f"valid lines in {tracks_file}")
  root = pathlib.Path(musdb_root)
  return choose_validation(folder_tracks(root, wav), valid_tracks, str(root / "train"),
                           f"{root / 'valid'}/")


# --------------------------------------------------------------------------- #
# The TFDS builder.
# --------------------------------------------------------------------------- #


def _builder_class():
  """Defines the builder on first use, so importing this module does not import
  tensorflow (the separation path never needs it)."""
  global _BUILDER
  if _BUILDER is not None:
    return _BUILDER
  import tensorflow_datasets as tfds

  class MusdbWindows(tfds.core.GeneratorBasedBuilder):
    """MUSDB18 sources cut into windows for random crops (see waveunet_jax.prepare)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}

    def __init__(self, *, layout: Layout, splits: dict[str, list[Track]] | None = None,
                 **kwargs):
      self.layout = layout
      self._tracks = splits
      super().__init__(config=tfds.core.BuilderConfig(name=layout.name), **kwargs)

    def _info(self):
      shape = (len(self.layout.sources), self.layout.window_length, self.layout.num_channels)
      return self.dataset_info_from_configs(
          description=__doc__,
          features=tfds.features.FeaturesDict({
              "track": tfds.features.Text(),
              "index": np.int32,
              "start": np.int64,
              "num_starts": np.int32,
              "num_tiles": np.int32,
              "sources": tfds.features.Tensor(shape=shape, dtype=np.int16,
                                              encoding=tfds.features.Encoding.BYTES),
          }),
          metadata=tfds.core.MetadataDict(layout=dataclasses.asdict(self.layout)),
      )

    # TFDS prints these to stdout whatever the log level; prepare logs its own lines.
    def _log_download_bytes(self) -> None:
      logging.info("writing %s to %s", self.layout.name, self.data_dir)

    def _log_download_done(self) -> None:
      logging.info("%s is prepared in %s", self.layout.name, self.data_dir)

    def _split_generators(self, dl_manager):
      del dl_manager  # everything is local
      return {split: self._generate_examples(split, tracks)
              for split, tracks in self._tracks.items() if tracks}

    def _generate_examples(self, split: str, tracks: list[Track]):
      with console.progress(len(tracks), f"prepare {split}", unit="track") as bar:
        yield from self._split_examples(split, tracks, bar)

    def _split_examples(self, split: str, tracks: list[Track], bar):
      longest, used = (0.0, ""), 0
      for i, track in enumerate(tracks):
        bar.set_postfix_str(track.name, refresh=False)
        stems, rate = read_multitrack(track, self.layout.sources)
        sources = track_sources(stems, rate, self.layout)
        extra = [s for s in stems if s not in STEMS]
        seconds = sources.shape[1] / self.layout.sample_rate
        longest = max(longest, (seconds, track.name))
        if sources.shape[1] < self.layout.output_length:
          logging.warning("%s [%d/%d] %s: skipped, %.2f s is shorter than one output "
                          "(%d samples)", split, i + 1, len(tracks), track.name, seconds,
                          self.layout.output_length)
          if i == len(tracks) - 1 and not used:
            # Else TFDS stops with "No examples were yielded".
            raise DataError(
                f"every track of the {split} split is shorter than one training example: "
                f"this config's examples have {self.layout.output_length} output samples at "
                f"{self.layout.sample_rate} Hz, so tracks must last at least "
                f"{self.layout.output_length / self.layout.sample_rate:.2f} s, and the "
                f"longest, {longest[1]!r}, lasts {longest[0]:.2f} s. Use longer tracks or a "
                "smaller config.data.output_length")
          continue
        used += 1
        count = 0
        for window in track_windows(sources, self.layout):
          count += 1
          yield f"{track.name}/{window['index']}", {"track": track.name, **window}
        bar.update()
        # Every track on a log line where no bar shows (a log file); extra stems always.
        if bar.disable or extra:
          logging.info("%s [%d/%d] %s: %.1f s, %d windows%s", split, i + 1, len(tracks),
                       track.name, seconds, count,
                       f" ({', '.join(extra)} counted as {stems_lib.EXTRA})" if extra else "")

  _BUILDER = MusdbWindows
  return _BUILDER


_BUILDER = None


def builder(layout: Layout, data_dir: str | pathlib.Path, splits=None):
  """The TFDS builder of `layout` under `data_dir` (prepared or not)."""
  return _builder_class()(layout=layout, splits=splits, data_dir=str(data_dir))


def prepare(config, musdb_root: str | pathlib.Path | None, data_dir: str | pathlib.Path, *,
            wav: bool = False, valid_tracks: Sequence[str] | None = None,
            tracks_file: str | pathlib.Path | None = None):
  """Builds the dataset `config` trains on from the tracks of `musdb_root` or of
  `tracks_file` (`split_tracks`); does nothing if it is already there.

  TFDS writes into a temporary `incomplete.*` folder and renames it when every split
  is written, so a killed run leaves no dataset that loads half-written; leftovers
  of killed runs are removed here and the next run starts the job again.
  """
  _check_one_of(musdb_root, tracks_file)
  import tensorflow_datasets as tfds

  layout = layout_for(config)
  result = builder(layout, data_dir)
  if result.is_prepared():
    logging.info("%s is already prepared in %s", layout.name, result.data_dir)
    return result
  splits = split_tracks(musdb_root, wav, valid_tracks, tracks_file=tracks_file)
  for split, tracks in splits.items():
    logging.info("%s: %d tracks", split, len(tracks))
  for track in (track for tracks in splits.values() for track in tracks):
    check_track(track, layout.sources)
  result = builder(layout, data_dir, splits)
  version_dir = pathlib.Path(result.data_dir)
  for stale in version_dir.parent.glob("incomplete.*"):
    logging.info("removing %s, left by an interrupted run", stale)
    shutil.rmtree(stale, ignore_errors=True)
  tfds.display_progress_bar(False)  # TFDS's bars for splits and shuffling; ours count tracks
  result.download_and_prepare(download_config=tfds.download.DownloadConfig(
      try_download_gcs=False, compute_stats=tfds.download.ComputeStatsMode.SKIP))
  return result


def main(argv: Sequence[str]) -> None:
  from absl import flags

  from waveunet_jax import models

  console.no_arguments(argv)
  console.import_tensorflow()
  FLAGS = flags.FLAGS
  valid = track_names(FLAGS.valid_tracks)
  try:
    result = prepare(FLAGS.config, FLAGS.musdb_root, FLAGS.data_dir, wav=FLAGS.wav,
                     valid_tracks=valid, tracks_file=FLAGS.tracks_file)
  except (DataError, models.ConfigError) as e:
    raise SystemExit(f"error: {e}") from None
  splits = {name: split.num_examples for name, split in result.info.splits.items()}
  from ml_collections import config_flags

  config = [f"--config={config_flags.get_config_filename(FLAGS['config'])}",
            *(f"--config.{k}={v}" for k, v in config_flags.get_override_values(FLAGS["config"])
              .items() if k != "data.data_dir")]
  command = [console.python(), "-m", "waveunet_jax.main", *config, "--workdir=WORKDIR",
             f"--config.data.data_dir={FLAGS.data_dir}"]
  console.done(f"done: prepared {result.data_dir}, windows per split {splits}. Train on it "
               f"(the same config and overrides):\n  {shlex.join(command)}")


def _define_flags() -> None:
  # Defined only when run as a program (shared_flags says why).
  from absl import flags

  from waveunet_jax import shared_flags

  shared_flags.define(
      "config", "musdb_root", "wav", "valid_tracks",
      config="Training config whose sources, rate and lengths to prepare.",
      musdb_root="MUSDB18, or any folder in its layout: train/, optionally valid/ and test/.",
      valid_tracks="Comma-separated training tracks to validate on (default: the valid/ "
                   "folder or valid lines; else musdb's 14-track split for MUSDB18; else "
                   "about 10 % of the training tracks).")
  flags.DEFINE_string("tracks_file", None, "Instead of --musdb_root: a text file naming one "
                      "track folder per line, optionally followed by its split (train, valid, "
                      "test).")
  flags.DEFINE_string("data_dir", None, "Where to write the TFDS dataset.")
  flags.mark_flags_as_required(["config", "data_dir"])


def cli() -> None:
  """The program `python -m waveunet_jax.prepare` (and the console script
  waveunet-prepare)."""
  console.run_program(main, _define_flags, install=("train", "prepare"))


if __name__ == "__main__":
  # Run the imported module's code: TFDS locates a builder by its package, which
  # `__main__` does not have.
  from waveunet_jax import prepare as _prepare

  _prepare.cli()

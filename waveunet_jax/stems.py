"""Source names: MUSDB18's stems, the sources derived from them, and stem layouts.

The one owner of how sources combine. A model separates into its own sources
(`config.model.sources`); a stem layout (`--stems`, `Separator.separate(stems=...)`)
asks for other names, each a source or one derived from the model's (`parts`). Datasets
(`builder`) and references (`evaluate`) derive their sources from MUSDB18's four stems
with the same rule; a multitrack of one's own, with other stems than those four, is
read by `holds` and `multitrack_parts`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

# MUSDB18's four stems; this order fixes the order in which stems are summed.
STEMS = ("vocals", "drums", "bass", "other")
# The streams of a MUSDB18 `.stem.mp4`, in file order: the mix, then the stems.
STEM_FILE_STREAMS = ("mixture", "drums", "bass", "other", "vocals")
# The stem of STEMS that every other stem of a multitrack counts as.
EXTRA = "other"
ACCOMPANIMENT = "accompaniment"
WITHOUT = "no_"
# Other names of a multitrack's stems: an instrumental is the accompaniment.
ALIASES = {"instrumental": ACCOMPANIMENT}


def parts(name: str, available: Sequence[str]) -> tuple[str, ...]:
  """The sources of `available` whose sum is `name`, one of

  * a source of `available` (one the model separates);
  * `accompaniment`: the sum of every source but `vocals` (MUSDB18: drums + bass + other);
  * `no_<source>`: the sum of every source but that one (Demucs's `--two-stems` second
    output, e.g. `no_drums`).

  Raises ValueError for a name that is neither available nor derivable from them."""
  if name in available:
    return (name,)
  if name == ACCOMPANIMENT and "vocals" in available and len(available) > 1:
    return tuple(s for s in available if s != "vocals")
  if name.startswith(WITHOUT) and name[len(WITHOUT):] in available and len(available) > 1:
    return tuple(s for s in available if s != name[len(WITHOUT):])
  raise ValueError(
      f"{name!r} is not one of the sources ({', '.join(available)}) nor derived from them "
      f"({', '.join(derivable(available)) or 'none'})")


def derivable(available: Sequence[str]) -> list[str]:
  """The derived names that `available` sources can form."""
  if len(available) < 2:
    return []
  names = [ACCOMPANIMENT] if "vocals" in available and ACCOMPANIMENT not in available else []
  return names + [WITHOUT + s for s in available]


def check(names: Sequence[str], available: Sequence[str]) -> tuple[str, ...]:
  """`names` if each can be formed from `available` and none repeats; ValueError else."""
  names = tuple(names)
  if not names:
    raise ValueError("no stems named")
  if len(set(names)) != len(names):
    raise ValueError(f"stems named twice in {', '.join(names)}")
  for name in names:
    parts(name, available)
  return names


def parse(flag_value: str | None, available: Sequence[str]) -> tuple[str, ...]:
  """A comma-separated stem layout (None or empty: `available` itself)."""
  if not flag_value:
    return tuple(available)
  return check([n.strip() for n in flag_value.split(",") if n.strip()], available)


def combine(sources: Mapping[str, np.ndarray], names: Sequence[str]) -> dict[str, np.ndarray]:
  """{name: audio} for each of `names`: a source, or the sum of its parts."""
  available = list(sources)
  out = {}
  for name in names:
    members = parts(name, available)
    total = sources[members[0]]
    for member in members[1:]:
      total = total + sources[member]
    out[name] = total
  return out


def holds(stem: str) -> tuple[str, ...]:
  """The stems of MUSDB18 that a multitrack's stem holds. A multitrack of one's own may
  hold other stems than those four (`piano`, `guitar`, `strings`, ...) and may lack some;
  a stem holds

  * one of the four: itself;
  * a stem named after a source derived from them: that source's stems mixed in one:
    `accompaniment` (or its other name `instrumental`, `ALIASES`) is drums + bass +
    other, `no_vocals` (Demucs's) the same, `no_drums` vocals + bass + other;
  * any other stem: `other`, where MUSDB18 files every instrument that is not vocals,
    drums or bass.
  """
  name = ALIASES.get(stem, stem)
  if name in STEMS:
    return (name,)
  if name in derivable(STEMS):
    return parts(name, STEMS)
  return (EXTRA,)


def multitrack_parts(source: str, stems: Sequence[str]) -> tuple[str, ...]:
  """The stems of a multitrack (their names, `stems`, in the order given) whose sum is
  `source`, one of MUSDB18's stems or a source derived from them: those that hold
  (`holds`) nothing but its stems. Empty if there are none.

  So `other` is `other` plus the extra stems, `accompaniment` every stem but `vocals` (a
  piano is accompaniment; so is `accompaniment.wav`), `drums` never `accompaniment.wav`
  (its drums cannot be taken apart from its bass). A source needs at least one such
  stem; a stem that no source needs may be missing; a stem that holds part of a source
  but also another's (`accompaniment.wav` for the sources drums, bass and other) can go
  to none of them (`split_across`)."""
  wanted = set(parts(source, STEMS))
  return tuple(stem for stem in stems if set(holds(stem)) <= wanted)


def split_across(stems: Sequence[str], sources: Sequence[str]) -> dict[str, tuple[str, ...]]:
  """{stem: the sources it holds part of} for each of a multitrack's `stems` that holds
  part of a source of `sources` and is none's `multitrack_parts` (`accompaniment`
  for drums, bass and other): no source can take it, so they cannot add up to it."""
  out = {}
  for stem in stems:
    held = set(holds(stem))
    wanted = {source: set(parts(source, STEMS)) for source in sources}
    if not any(held <= w for w in wanted.values()):
      touched = tuple(source for source, w in wanted.items() if held & w)
      if touched:
        out[stem] = touched
  return out


def describe_stems(stems: Sequence[str], suffix: str = "") -> str:
  """A multitrack's stems for a message, each that holds several of MUSDB18's with
  them: 'vocals.wav, accompaniment.wav (drums + bass + other)'; `suffix` ends each
  stem name (a file's `.wav`)."""
  if not stems:
    return "no stem"
  return ", ".join(stem + suffix + (f" ({' + '.join(holds(stem))})" if len(holds(stem)) > 1
                                    else "") for stem in stems)


def describe_missing(source: str, suffix: str = "") -> str:
  """What a multitrack lacks when `multitrack_parts(source, ...)` is empty, for an
  error message; `suffix` ends each stem name (a file's `.wav`)."""
  wanted = parts(source, STEMS)
  if EXTRA not in wanted:
    names = [stem + suffix for stem in wanted]
    return f"no {names[0]}" if len(names) == 1 else f"none of {', '.join(names)}"
  if wanted == (EXTRA,):
    return f"no {EXTRA}{suffix} nor any stem beyond {', '.join(s + suffix for s in STEMS)}"
  return "no stem but " + " and ".join(s + suffix for s in STEMS if s not in wanted)


def combine_multitrack(stems: Mapping[str, np.ndarray],
                       names: Sequence[str]) -> dict[str, np.ndarray]:
  """`combine` for a multitrack: {name: the sum of its `multitrack_parts`} for each of
  `names`. ValueError if one has no parts in `stems`."""
  out = {}
  for name in names:
    members = multitrack_parts(name, list(stems))
    if not members:
      raise ValueError(f"{describe_missing(name)} for the source {name!r}")
    total = stems[members[0]]
    for member in members[1:]:
      total = total + stems[member]
    out[name] = total
  return out


def combine_stacked(block: np.ndarray, available: Sequence[str],
                    names: Sequence[str]) -> np.ndarray:
  """`combine` on a stacked block [n, sources, channels] -> [n, len(names), channels]."""
  if tuple(names) == tuple(available):
    return block
  out = np.empty((block.shape[0], len(names), block.shape[2]), block.dtype)
  for i, name in enumerate(names):
    index = [available.index(m) for m in parts(name, available)]
    out[:, i] = block[:, index].sum(axis=1) if len(index) > 1 else block[:, index[0]]
  return out


def default_residual_source(sources: Sequence[str]) -> str:
  """The source that receives the band above the model's Nyquist frequency (and any
  other part of the mix the others miss) when none is configured: the one a listener
  expects it in. `accompaniment` for the voice task, `other` for the four stems,
  otherwise the last source (a difference model's difference output)."""
  for name in (ACCOMPANIMENT, "other"):
    if name in sources:
      return name
  return sources[-1]


# Every source a dataset or a reference can hold: the stems and what derives from them.
SOURCES = STEMS + tuple(derivable(STEMS))

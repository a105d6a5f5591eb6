"""Source names: MUSDB18's stems, the sources derived from them, and stem layouts.

The one owner of how sources combine. A model separates into its own sources
(`config.model.sources`); a stem layout (`--stems`, `Separator.separate(stems=...)`)
asks for other names, each one of

* a source the model separates;
* `accompaniment`: the sum of every source but `vocals` (MUSDB18: drums + bass + other);
* `no_<source>`: the sum of every source but that one (Demucs's `--two-stems` second
  output, e.g. `no_drums`).

Datasets (`prepare`) and references (`evaluate`) derive their sources from MUSDB18's
four stems with the same rule.

A multitrack of one's own may hold other stems than those four (`piano`, `guitar`,
`strings`, ...) and may lack some. Each extra stem counts as `other`, where MUSDB18
files every instrument that is not vocals, drums or bass; so `other` is `other` plus
the extra stems, `accompaniment` is every stem but `vocals` (a piano is
accompaniment), and `no_<source>` every stem but those counted as that source. A
source needs at least one of its stems; a stem that no source needs may be missing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

# MUSDB18's stems, in the order of its stem files' streams (after the mixture).
STEMS = ("vocals", "drums", "bass", "other")
# The stem of STEMS that every other stem of a multitrack counts as.
EXTRA = "other"
ACCOMPANIMENT = "accompaniment"
WITHOUT = "no_"


def parts(name: str, available: Sequence[str]) -> tuple[str, ...]:
  """The sources of `available` whose sum is `name`. Raises ValueError for a name that
  is neither available nor derivable from them."""
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


def counts_as(stem: str) -> str:
  """The stem of MUSDB18 that a multitrack's stem counts as: itself, or `other`."""
  return stem if stem in STEMS else EXTRA


def multitrack_parts(source: str, stems: Sequence[str]) -> tuple[str, ...]:
  """The stems of a multitrack (their names, `stems`, in the order given) whose sum is
  `source`, one of MUSDB18's stems or a source derived from them (see the module
  docstring). Empty if the multitrack holds none of them."""
  wanted = parts(source, STEMS)
  return tuple(stem for stem in stems if counts_as(stem) in wanted)


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

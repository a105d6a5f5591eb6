"""The program that writes a deterministic, music-like synthetic multitrack corpus in the
MUSDB18 layouts (`data.generator` makes the songs).

    python -m waveunet_jax.synthetic OUT --tracks=N --seconds=S --seed=K [--test_tracks=M] [--stems]

writes MUSDB18-HQ folders ``OUT/{train,test}/<track>/{mixture,vocals,drums,bass,other}.wav``
(44.1 kHz, stereo, PCM_16) or, with ``--stems``, MUSDB18 stem files
``OUT/{train,test}/<track>.stem.mp4`` (5 AAC streams: mixture, drums, bass, other, vocals;
encoded by PyAV). Tracks already complete are skipped. Defaults: --tracks=8 --seconds=30
--seed=0 --test_tracks=1.
"""

from __future__ import annotations

import sys

from absl import app, flags

from waveunet_jax import console
from waveunet_jax.data.generator import write_corpus


# --------------------------------------------------------------------------- #
# Command line.
# --------------------------------------------------------------------------- #


# The exit status of a command line that cannot work: argparse's, which this program
# used before absl (the other programs exit 1).
USAGE_STATUS = 2


def _define_flags() -> None:
  # Defined only when run as a program: --tracks and --stems mean other things in
  # evaluate and separate.
  flags.DEFINE(_ArgparseInteger(), "tracks", 8, "number of train tracks (default 8)")
  flags.DEFINE(_ArgparseInteger(), "test_tracks", 1, "number of test tracks (default 1)")
  flags.DEFINE_float("seconds", 30.0, "length of each track (default 30)")
  flags.DEFINE(_ArgparseInteger(), "seed", 0, "corpus seed (default 0)")
  flags.DEFINE_bool("stems", False, "write MUSDB18 .stem.mp4 files (AAC) instead of wav "
                    "folders")


class _ArgparseInteger(flags.IntegerParser):
  """absl's integer flag, refusing a value that is no integer in the words this program
  used before it moved from argparse to absl ("invalid int value: 'two'")."""

  def convert(self, argument: int | str) -> int:
    try:
      return super().convert(argument)
    except ValueError:
      raise ValueError(f"invalid int value: {argument!r}") from None


def main(argv: list[str]) -> None:
  """Writes the corpus into the folder argv[1] names and prints each track's path."""
  if len(argv) != 2:
    raise app.UsageError("give one output folder, OUT (it gets train/ and test/ subfolders)"
                         if len(argv) < 2 else f"unexpected arguments: {' '.join(argv[2:])}",
                         exitcode=USAGE_STATUS)
  args = flags.FLAGS
  try:
    paths = write_corpus(argv[1], args.tracks, args.test_tracks, args.seconds, args.seed,
                         args.stems)
  except (ValueError, RuntimeError) as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.exit(USAGE_STATUS)
  for p in paths:
    print(p)


def cli() -> None:
  """The program `python -m waveunet_jax.synthetic` (and the console script
  waveunet-synthetic)."""
  console.run_program(main, _define_flags, usage_status=USAGE_STATUS, interrupted=(
      "the tracks finished are kept, nothing half-written is; re-running the same command "
      "writes the rest"))


if __name__ == "__main__":
  cli()

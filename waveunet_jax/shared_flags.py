"""The flags that several programs take, each defined once here: a program's
`_define_flags` names the ones it takes, `shared_flags.define("workdir", "checkpoint")`,
then defines its own.

Defined only when a program runs (its `cli()`, through `console.run_program`), never
at import, so that the programs' modules can be imported together (tests, a notebook)
without clashing over --workdir. A flag's help says what it means wherever it is
taken; where a program uses it differently (export's --batch_size fixes the exported
model's batch) or writes other things to it (--output_dir), the program passes its own
help: `define("batch_size", batch_size="Windows per call ...")`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from absl import flags

from waveunet_jax.separation.separator import MAX_SHIFTS

CONFIG_HELP = "Config file with an optional argument, e.g. experiments/deep.py:M5."

# name: (absl's DEFINE_* function, default, help; None where each program says it).
DEFINITIONS: dict[str, tuple[Callable[..., Any], Any, str | None]] = {
    "workdir": (flags.DEFINE_string, None, "Training workdir of the model."),
    "checkpoint": (flags.DEFINE_string, "best", "best, latest or a step number."),
    "residual_source": (
        flags.DEFINE_string, "default",
        "The source that receives the band above the model's Nyquist frequency (stems "
        "then add up to the input); 'default': the config's choice, else accompaniment or "
        "other; 'none': no source (every source band-limited)."),
    "stems": (
        flags.DEFINE_string, None,
        "Stems of the model's sources, e.g. vocals,accompaniment for a four-source model "
        "(default: its sources). accompaniment: all but vocals; no_<source>: all but that "
        "one."),
    "window_seconds": (flags.DEFINE_float, None, "Output seconds per window (default 30, "
                       "less if it would not fit in memory)."),
    "overlap": (flags.DEFINE_float, 0.0,
                "Share of each window cross-faded with the next, in [0, 0.5]."),
    "batch_size": (flags.DEFINE_integer, None, "Windows per forward pass, split over this "
                   "host's devices (default: one per device, or an exported model's fixed "
                   "batch)."),
    "shifts": (
        flags.DEFINE_integer, 0,
        "Test-time averaging (Demucs's shift trick): average the estimates of N passes, "
        "each of the song delayed by a random amount (up to half a window, drawn from "
        "--seed); 0: one plain pass. N shifts cost about N times the separation time (3N "
        f"with --flip), and each pass holds a few windows in memory. At most {MAX_SHIFTS}."),
    "flip": (
        flags.DEFINE_bool, False,
        "Test-time averaging: also separate the song with left and right swapped and with "
        "its polarity flipped (a mono model: flipped only), each turned back, and average; "
        "costs 3 times the separation time (a mono model: 2), times --shifts."),
    "seed": (flags.DEFINE_integer, 0, "Seed of --shifts' random delays: the same song and "
             "flags give the same stems."),
    "output_dir": (flags.DEFINE_string, None, None),
    "overwrite": (flags.DEFINE_bool, False, None),
    "musdb_root": (flags.DEFINE_string, None, None),
    "wav": (flags.DEFINE_bool, False, "Read <track>/<stem>.wav folders (MUSDB18-HQ, your "
            "own multitracks) instead of .stem.mp4 files."),
    "valid_tracks": (flags.DEFINE_string, None, None),
}


def define(*names: str, **helps: str) -> None:
  """Defines the shared flags `names` (those of `DEFINITIONS`, and "config") for the program
  about to run; `helps` holds the program's own help text of a flag, where it has one."""
  unknown = (set(names) | set(helps)) - set(DEFINITIONS) - {"config"}
  if unknown or not set(helps) <= set(names):
    raise KeyError(f"no shared flag {sorted(unknown or set(helps) - set(names))}")
  for name in names:
    if name == "config":
      _define_config(helps.get(name, CONFIG_HELP))
      continue
    define_flag, default, help_text = DEFINITIONS[name]
    help_text = helps.get(name, help_text)
    if help_text is None:
      raise KeyError(f"--{name}: the program gives its help text (what goes there)")
    define_flag(name, default, help_text)


def _define_config(help_text: str) -> None:
  """--config, an ml_collections config file with an optional argument and
  --config.<group>.<field> overrides (`console.parse_flags` explains its errors)."""
  # ml_collections is the jax install's: imported only by the programs that take a config.
  from ml_collections import config_flags

  config_flags.DEFINE_config_file("config", None, help_text, lock_config=True)

"""A training workdir: its `config.json`, its checkpoints' progress, loading for inference.

A workdir holds one run:

  WORKDIR/config.json      the config the run trains (written by process 0 when it starts),
                           and where it started if from another run (`STARTED_FROM`)
  WORKDIR/checkpoints/     Orbax checkpoints every config.checkpoint_every_steps
  WORKDIR/best/            the checkpoint of the best validation loss
  WORKDIR/data_state/      each device's input pipeline position, beside each checkpoint
  WORKDIR/tensorboard/     metrics

Re-running training in a workdir resumes its run, so the new config must describe the
same run: `check_resumable` refuses any difference except in `MAY_CHANGE_ON_RESUME`,
before anything in the workdir is touched.

Training (`train.py`), separation and evaluation all read a workdir through here.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from typing import Any, NamedTuple

import jax
import ml_collections
import orbax.checkpoint as ocp

from waveunet_jax.files import write_text_atomic

# The config fields a re-run may change and still resume the workdir's run: how long to
# train (num_train_steps also sets where 'warmup_cosine' decays to 0), when to stop
# early, how often to validate, log and checkpoint, how many checkpoints to keep, and
# where the prepared datasets live (the same datasets moved to another disk; the data
# positions are restored as positions, so they must be the same data; a mixture of
# another number of datasets cannot restore them, and its data order starts afresh,
# as on another number of devices), and how the model separates (not used in
# training). Every other field
# (the network, the data's rate, lengths and augmentation, the optimiser, the batch
# sizes, the seed, init_from: a resumed run goes on from its own checkpoints) describes
# another run, so a re-run that changes it is refused.
MAY_CHANGE_ON_RESUME = (
    "num_train_steps",
    "patience",
    "eval_every_steps",
    "log_every_steps",
    "checkpoint_every_steps",
    "keep_checkpoints",
    "data.data_dir",
    "separation.residual_source",
)


# config.json's one key that is no config field: where a run that started from
# another run's parameters (config.init_from) started, {"workdir", "checkpoint",
# "step"}. `save_config` writes and keeps it, `load_config` leaves it out.
STARTED_FROM = "started_from"


class WorkdirError(RuntimeError):
  """A workdir that cannot be used as asked; the message says why and what to do."""


@dataclasses.dataclass
class Progress:
  """Where the training schedule stands; saved as JSON with every checkpoint."""

  stage: int = 0                 # 0: main stage, 1: fine-tune stage
  stage_start_step: int = 0
  best_loss: float = float("inf")
  best_step: int = -1
  bad_validations: int = 0       # validations since the last improvement
  done: bool = False
  data_start_step: int = 0       # where the data order last started afresh (see train.py)


# --------------------------------------------------------------------------- #
# config.json
# --------------------------------------------------------------------------- #


def save_config(config: ml_collections.ConfigDict, workdir: str | os.PathLike,
                started_from: dict[str, Any] | None = None) -> None:
  """Writes config.json beside the checkpoints (atomically, from process 0 only);
  separation reads it. `started_from` (see STARTED_FROM) is recorded when given, and
  kept from the config.json there otherwise (a resumed run)."""
  if jax.process_index() != 0:
    return
  path = pathlib.Path(workdir) / "config.json"
  saved = json.loads(config.to_json_best_effort())
  if started_from is None and path.is_file():
    started_from = json.loads(path.read_text()).get(STARTED_FROM)
  if started_from is not None:
    saved[STARTED_FROM] = started_from
  write_text_atomic(path, json.dumps(saved, indent=2, sort_keys=True))


def workdir_path(workdir: str | os.PathLike) -> pathlib.Path:
  """`workdir` as an absolute path: every reader of a workdir resolves it here, once,
  so a relative --workdir (or config.init_from) means the same folder everywhere (Orbax
  refuses relative paths)."""
  return pathlib.Path(workdir).absolute()


def _named(source: str | None, flag: str, value: Any) -> str:
  """How errors name what was asked for: `source` (e.g. config.init_from=...) or the flag."""
  return source or f"{flag}={value}"


def load_config(workdir: str | os.PathLike, *,
                source: str | None = None) -> ml_collections.ConfigDict:
  """The config.json of `workdir` as a ConfigDict (lists back to tuples). Errors name
  `source` if given, else --workdir."""
  path = workdir_path(workdir) / "config.json"
  if not path.is_file():
    raise WorkdirError(f"{_named(source, '--workdir', workdir)}: no config.json; "
                       "is it a training workdir?")
  try:
    saved = json.loads(path.read_text())
  except (OSError, ValueError) as e:
    raise WorkdirError(
        f"{_named(source, '--workdir', workdir)}: cannot read {path} ({e})") from None
  saved.pop(STARTED_FROM, None)
  return ml_collections.ConfigDict(_tuples(saved))


def _tuples(value):
  """JSON lists back to the tuples the configs use."""
  if isinstance(value, dict):
    return {k: _tuples(v) for k, v in value.items()}
  if isinstance(value, list):
    return tuple(_tuples(v) for v in value)
  return value


def _flat(tree: dict, prefix: str = "") -> dict[str, Any]:
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(_flat(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = value
  return flat


def config_differences(saved: ml_collections.ConfigDict, config: ml_collections.ConfigDict,
                       may_change: tuple[str, ...] | None = None) -> list[tuple[str, Any, Any]]:
  """(field, saved value, new value) of every field that differs, except those in
  `may_change` (default: MAY_CHANGE_ON_RESUME), in the config's field order (the
  network first). A field only one of them has counts, as None."""
  may_change = MAY_CHANGE_ON_RESUME if may_change is None else may_change
  # Both through JSON, so that tuples and lists, and placeholders, compare alike.
  old = _flat(json.loads(saved.to_json_best_effort()))
  new = _flat(json.loads(config.to_json_best_effort()))
  names = list(new) + [name for name in old if name not in new]
  return [(name, old.get(name), new.get(name)) for name in names
          if name not in may_change and old.get(name) != new.get(name)]


def check_resumable(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> None:
  """Raises WorkdirError naming the fields if `workdir` holds a run of another config.

  A workdir without config.json (new, or never started) takes any config."""
  if not (pathlib.Path(workdir) / "config.json").is_file():
    return
  differences = config_differences(load_config(workdir), config)
  if not differences:
    return
  shown = []
  for name, old, new in differences[:6]:
    values = f" ({json.dumps(old)} in config.json, {json.dumps(new)} now)"
    shown.append(f"config.{name}" + (values if len(values) <= 60 else ""))
  more = f" and {len(differences) - 6} more" if len(differences) > 6 else ""
  raise WorkdirError(
      f"--workdir={workdir} holds a run of another config: {', '.join(shown)}{more} "
      f"differ from its config.json. Re-run with the config it was started with (a resumed "
      f"run may change only {', '.join(MAY_CHANGE_ON_RESUME)}) or choose another --workdir")


# --------------------------------------------------------------------------- #
# Checkpoints.
# --------------------------------------------------------------------------- #


def read_progress(workdir: str | os.PathLike) -> Progress | None:
  """Where the run in `workdir` stands (its latest checkpoint), or None."""
  with ocp.CheckpointManager(workdir_path(workdir) / "checkpoints") as manager:
    step = manager.latest_step()
    if step is None:
      return None
    restored = manager.restore(step, args=ocp.args.Composite(progress=ocp.args.JsonRestore()))
  return Progress(**restored["progress"])


class Trained(NamedTuple):
  config: ml_collections.ConfigDict
  variables: dict[str, Any]  # params, and batch_stats with BatchNorm
  step: int                  # the optimiser step of the checkpoint


def load_for_inference(workdir: str | os.PathLike, checkpoint: str = "best", *,
                       source: str | None = None) -> Trained:
  """(config, variables, step) of a trained model: checkpoint 'best', 'latest' or a
  step number. Errors name `source` if given, else --workdir and --checkpoint."""
  config = load_config(workdir, source=source)
  named, workdir = workdir, workdir_path(workdir)
  if checkpoint == "best":
    folder, step = workdir / "best", None
  elif checkpoint == "latest":
    folder, step = workdir / "checkpoints", None
  elif str(checkpoint).isdigit():
    folder, step = workdir / "checkpoints", int(checkpoint)
  else:
    raise WorkdirError(f"{_named(source, '--checkpoint', checkpoint)}: use best, latest or a "
                       "step number")
  if not folder.is_dir():  # Orbax's manager would create it: reading writes nothing
    if checkpoint == "best":  # no validation yet: fall back to the latest
      return load_for_inference(named, "latest", source=source)
    raise WorkdirError(f"{_named(source, '--workdir', named)}: no checkpoint in {folder}; "
                       "train the run first (python -m waveunet_jax.main)")
  handlers = {"state": ocp.StandardCheckpointHandler(), "progress": ocp.JsonCheckpointHandler()}
  with ocp.CheckpointManager(folder, item_handlers=handlers) as manager:
    steps = manager.all_steps()
    if checkpoint == "best" and not steps:  # no validation yet: fall back to the latest
      return load_for_inference(named, "latest", source=source)
    step = step if step is not None else manager.latest_step()
    if step is None or step not in steps:
      raise WorkdirError(f"{_named(source, '--checkpoint', checkpoint)}: no such checkpoint in "
                         f"{folder} (steps: {sorted(steps) or 'none'})")
    # Restore onto this process's first device, whatever devices the run trained on.
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    abstract = jax.tree_util.tree_map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
        manager.item_metadata(step)["state"])
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract)))
  state = restored["state"]
  variables = {"params": state["params"]}
  if state.get("batch_stats"):
    variables["batch_stats"] = state["batch_stats"]
  return Trained(config, jax.device_get(variables), int(step))


def parse_init_from(value: str) -> tuple[pathlib.Path, str]:
  """config.init_from, 'WORKDIR' or 'WORKDIR:CHECKPOINT' (best, latest or a step
  number; default best) -> (workdir, checkpoint)."""
  head, _, tail = value.rpartition(":")
  if head and (tail in ("best", "latest") or tail.isdigit()):
    return pathlib.Path(head), tail
  return pathlib.Path(value), "best"


def load_init_from(value: str, workdir: str | os.PathLike) -> tuple[Trained, dict[str, Any]]:
  """The trained model config.init_from names, and where that is (`STARTED_FROM`'s
  record) for the run in `workdir`, which it must not be."""
  source = f"config.init_from={value}"
  origin, checkpoint = parse_init_from(value)
  origin = workdir_path(origin)
  if origin == workdir_path(workdir):
    raise WorkdirError(f"{source}: that is this run's --workdir; a run resumes from its own "
                       "checkpoints by itself: name another run's workdir, or none")
  if not (origin / "config.json").is_file():
    raise WorkdirError(f"{source}: no training workdir at {origin} (no config.json); name "
                       "a workdir, optionally with :best, :latest or :STEP")
  trained = load_for_inference(origin, checkpoint, source=source)
  return trained, {"workdir": str(origin), "checkpoint": checkpoint,
                   "step": trained.step}

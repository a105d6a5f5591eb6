"""A training workdir (`Workdir`): its layout, config.json, checkpoints, resumption and
where a run starts; and reading a trained model back for inference.

Training (`train`) uses a `Workdir` (its docstring shows the folders); separation and
evaluation read a workdir with `load_config` and `load_for_inference`. What a re-run
may change and still resume: `MAY_CHANGE_ON_RESUME`; what a checkpoint holds: `_items`
and `Progress`, written by `Workdir.save` and read by every reader here, so the saved
format has one owner. For users: docs/training.md and docs/faults.md.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pathlib
import shutil
from collections.abc import Iterator
from typing import Any, NamedTuple, Protocol

import flax
import jax
import jax.numpy as jnp
import ml_collections
import orbax.checkpoint as ocp
from absl import logging

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
    "data.pipeline",
    "separation.residual_source",
)


# Config fields added after runs were trained without them, each with the value that
# does what those runs did: `load_config` reads a config.json that lacks one as if it
# held this value, so an older workdir still resumes (with a config that leaves the
# field at this value), separates and evaluates. (experiments/default.py's defaults are
# these values; tests/test_checkpoints.py checks it.)
ADDED_FIELDS = {
    "loss.kind": "mse",
    "loss.stft_weight": 0.0,
    "loss.stft_fft_sizes": (512, 1024, 2048),
    "optim.ema_decay": 0.0,
}


# config.json's one key that is no config field: where a run that started from
# another run's parameters (config.init_from) started, {"workdir", "checkpoint",
# "step"}. `Workdir.save_config` writes and keeps it, `load_config` leaves it out.
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
# Reading config.json.
# --------------------------------------------------------------------------- #


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
  """The config.json of `workdir` as a ConfigDict (lists back to tuples), with the
  `ADDED_FIELDS` it predates. Errors name `source` if given, else --workdir."""
  path = Workdir(workdir).config_file
  if not path.is_file():
    raise WorkdirError(f"{_named(source, '--workdir', workdir)}: no config.json; "
                       "is it a training workdir?")
  try:
    saved = json.loads(path.read_text())
  except (OSError, ValueError) as e:
    raise WorkdirError(
        f"{_named(source, '--workdir', workdir)}: cannot read {path} ({e})") from None
  saved.pop(STARTED_FROM, None)
  for name, value in ADDED_FIELDS.items():
    *groups, field = name.split(".")
    group = saved
    for key in groups:
      group = group.setdefault(key, {})
    group.setdefault(field, value)
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


# --------------------------------------------------------------------------- #
# Checkpoints.
# --------------------------------------------------------------------------- #


def _handlers() -> dict[str, ocp.CheckpointHandler]:
  """A checkpoint's two items, by name: the train state and the schedule's progress.
  (Made when needed: Orbax's handlers start JAX's backend, which must wait for
  `distributed.connect`.)"""
  return {"state": ocp.StandardCheckpointHandler(), "progress": ocp.JsonCheckpointHandler()}


def _items(state: Any) -> Any:
  """A state as its checkpoint holds it (the item `state`, Orbax's standard pytree,
  beside `progress`, JSON of `Progress`): a dataclass as a dict of its fields, less those
  that are None (an option that is off, such as steps.TrainState.ema_params), so that
  a run with the option off writes the checkpoints of runs from before the field
  existed, and reads theirs."""
  if not dataclasses.is_dataclass(state):
    return state
  fields = {f.name: getattr(state, f.name) for f in dataclasses.fields(state)}
  return {name: value for name, value in fields.items() if value is not None}


def _save_args(state: Any, progress: Progress) -> ocp.args.Composite:
  return ocp.args.Composite(state=ocp.args.StandardSave(_items(state)),
                            progress=ocp.args.JsonSave(dataclasses.asdict(progress)))


def _restore_args(abstract_state: Any = None, progress: bool = False) -> ocp.args.Composite:
  """The items to read: the state onto `abstract_state`'s shapes and shardings (if
  given), the progress (if asked)."""
  items = {}
  if abstract_state is not None:
    items["state"] = ocp.args.StandardRestore(abstract_state)
  if progress:
    items["progress"] = ocp.args.JsonRestore()
  return ocp.args.Composite(**items)


def read_progress(workdir: str | os.PathLike) -> Progress | None:
  """Where the run in `workdir` stands (its latest checkpoint), or None."""
  with ocp.CheckpointManager(Workdir(workdir).checkpoints_dir) as manager:
    step = manager.latest_step()
    if step is None:
      return None
    restored = manager.restore(step, args=_restore_args(progress=True))
  return Progress(**restored["progress"])


class Trained(NamedTuple):
  config: ml_collections.ConfigDict
  # params (the average of the parameters where the run kept one: config.optim.ema_decay),
  # and batch_stats with BatchNorm
  variables: dict[str, Any]
  step: int                  # the optimiser step of the checkpoint


def load_for_inference(workdir: str | os.PathLike, checkpoint: str = "best", *,
                       source: str | None = None) -> Trained:
  """(config, variables, step) of a trained model: checkpoint 'best', 'latest' or a
  step number. Errors name `source` if given, else --workdir and --checkpoint."""
  config = load_config(workdir, source=source)
  named, workdir = workdir, Workdir(workdir)
  if checkpoint == "best":
    folder, step = workdir.best_dir, None
  elif checkpoint == "latest":
    folder, step = workdir.checkpoints_dir, None
  elif str(checkpoint).isdigit():
    folder, step = workdir.checkpoints_dir, int(checkpoint)
  else:
    raise WorkdirError(f"{_named(source, '--checkpoint', checkpoint)}: use best, latest or a "
                       "step number")
  if not folder.is_dir():  # Orbax's manager would create it: reading writes nothing
    if checkpoint == "best":  # no validation yet: fall back to the latest
      return load_for_inference(named, "latest", source=source)
    raise WorkdirError(f"{_named(source, '--workdir', named)}: no checkpoint in {folder}; "
                       "train the run first (python -m waveunet_jax.main)")
  with ocp.CheckpointManager(folder, item_handlers=_handlers()) as manager:
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
    restored = manager.restore(step, args=_restore_args(abstract))
  state = restored["state"]
  variables = {"params": state.get("ema_params", state["params"])}  # the average, if kept
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


# --------------------------------------------------------------------------- #
# The training workdir.
# --------------------------------------------------------------------------- #


# The module of models.WaveUNet whose parameters depend on the sources: fine-tuning
# into other sources starts it afresh.
OUTPUT_LAYER = "output"


class DataPositions(Protocol):
  """The training data's position (`data.batches.Sampler`), saved beside each
  checkpoint in a folder of its own."""

  def save(self, directory: pathlib.Path) -> None: ...


@dataclasses.dataclass(frozen=True)
class Start:
  """Where a run starts (`Workdir.start`): from scratch or its own checkpoints (both
  None), or from the parameters of the run config.init_from names."""

  init_from: Trained | None = None
  started_from: dict[str, Any] | None = None  # where that is (STARTED_FROM's record)

  def variables(self, config: ml_collections.ConfigDict, params: Any,
                batch_stats: Any) -> tuple[Any, Any]:
    """The parameters and BatchNorm statistics to start from, in place of the fresh ones
    (`params`, `batch_stats`: this run's initialisation). Same network: all are loaded.
    Other sources (`config.model.sources` or `.output`): the output layer keeps its
    fresh values. Anything else that differs is refused (WorkdirError) naming the
    first parameter that does not fit."""
    trained, origin = self.init_from, self.started_from
    if trained is None:
      return params, batch_stats
    same_sources = (tuple(trained.config.model.sources) == tuple(config.model.sources)
                    and trained.config.model.output == config.model.output)
    fresh = flax.traverse_util.flatten_dict({"params": params, "batch_stats": batch_stats},
                                            sep="/")
    there = flax.traverse_util.flatten_dict(dict(trained.variables), sep="/")
    fit = ("; only the output layer may differ (other config.model.sources): start from a "
           "run of this network")
    merged = {}
    for path in list(fresh) + [p for p in there if p not in fresh]:
      here, theirs = fresh.get(path), there.get(path)
      if not same_sources and path.split("/")[1] == OUTPUT_LAYER:
        if here is not None:
          merged[path] = here
        continue
      if theirs is None:
        raise WorkdirError(f"config.init_from={config.init_from}: that run's network has no "
                            f"{path} (shape {tuple(here.shape)} here){fit}")
      if here is None:
        raise WorkdirError(f"config.init_from={config.init_from}: that run's {path} (shape "
                            f"{tuple(theirs.shape)}) is not in this network{fit}")
      if here.shape != theirs.shape:
        raise WorkdirError(f"config.init_from={config.init_from}: {path} has shape "
                            f"{tuple(theirs.shape)} there and {tuple(here.shape)} here{fit}")
      merged[path] = jnp.asarray(theirs, here.dtype)
    if trained.config.data.sample_rate != config.data.sample_rate:
      logging.warning("config.init_from=%s trained at %d Hz and this run trains at %d Hz: the "
                      "network's filters will hear other frequencies", config.init_from,
                      trained.config.data.sample_rate, config.data.sample_rate)
    logging.info("starting from the parameters of %s, checkpoint %s (step %d)%s",
                 origin["workdir"], origin["checkpoint"], origin["step"],
                 "" if same_sources else f"; the output layer anew, for the sources "
                 f"{', '.join(config.model.sources)}")
    variables = flax.traverse_util.unflatten_dict(merged, sep="/")
    return variables["params"], variables.get("batch_stats", {})


class Workdir:
  """The workdir of one training run: every name in it, its config.json, its two
  Orbax checkpoint managers (`checkpoints/` and `best/`, opened by `open`), and the
  data positions saved beside each checkpoint. A workdir holds one run:

    WORKDIR/config.json      the config the run trains (written by process 0 when it
                             starts), and where it started if from another run
                             (`STARTED_FROM`)
    WORKDIR/checkpoints/     Orbax checkpoints every config.checkpoint_every_steps
    WORKDIR/best/            the checkpoint of the best validation loss
    WORKDIR/data_state/      each device's input pipeline position, beside each checkpoint
    WORKDIR/tensorboard/     metrics
    WORKDIR/synthetic_*/     the built-in synthetic corpus, when the config names no data

  `start(config)` is what training asks it at start-up, once, before anything in it
  changes: whether this config may train here, and where the run starts. Re-running
  training in a workdir resumes its run, so the new config must describe the same run:
  `start` refuses any difference except in `MAY_CHANGE_ON_RESUME`, and says where the
  run starts (its own checkpoints, or the run `config.init_from` names)."""

  CONFIG = "config.json"
  CHECKPOINTS = "checkpoints"
  BEST = "best"
  DATA_STATE = "data_state"
  TENSORBOARD = "tensorboard"
  SYNTHETIC_CORPUS = "synthetic_corpus"
  SYNTHETIC_DATA = "synthetic_tfds"

  def __init__(self, path: str | os.PathLike):
    self.path = workdir_path(path)
    self._checkpoints: ocp.CheckpointManager | None = None  # both set by `open`
    self._best: ocp.CheckpointManager | None = None

  # -- names -------------------------------------------------------------------

  @property
  def config_file(self) -> pathlib.Path:
    return self.path / self.CONFIG

  @property
  def checkpoints_dir(self) -> pathlib.Path:
    return self.path / self.CHECKPOINTS

  @property
  def best_dir(self) -> pathlib.Path:
    return self.path / self.BEST

  @property
  def tensorboard_dir(self) -> pathlib.Path:
    return self.path / self.TENSORBOARD

  @property
  def synthetic_corpus(self) -> pathlib.Path:
    return self.path / self.SYNTHETIC_CORPUS

  @property
  def synthetic_data_dir(self) -> pathlib.Path:
    return self.path / self.SYNTHETIC_DATA

  def data_state_dir(self, step: int) -> pathlib.Path:
    """Where the data positions of checkpoint `step` are saved."""
    return self.path / self.DATA_STATE / str(step)

  # -- config.json -------------------------------------------------------------

  def save_config(self, config: ml_collections.ConfigDict,
                  started_from: dict[str, Any] | None = None) -> None:
    """Writes config.json beside the checkpoints (atomically, from process 0 only);
    separation reads it. `started_from` (see STARTED_FROM) is recorded when given, and
    kept from the config.json there otherwise (a resumed run)."""
    if jax.process_index() != 0:
      return
    saved = json.loads(config.to_json_best_effort())
    if started_from is None and self.config_file.is_file():
      started_from = json.loads(self.config_file.read_text()).get(STARTED_FROM)
    if started_from is not None:
      saved[STARTED_FROM] = started_from
    write_text_atomic(self.config_file, json.dumps(saved, indent=2, sort_keys=True))

  def check_resumable(self, config: ml_collections.ConfigDict) -> None:
    """Raises WorkdirError naming the fields if the workdir holds a run of another
    config. A workdir without config.json (new, or never started) takes any config."""
    if not self.config_file.is_file():
      return
    differences = config_differences(load_config(self.path), config)
    if not differences:
      return
    shown = []
    for name, old, new in differences[:6]:
      values = f" ({json.dumps(old)} in config.json, {json.dumps(new)} now)"
      shown.append(f"config.{name}" + (values if len(values) <= 60 else ""))
    more = f" and {len(differences) - 6} more" if len(differences) > 6 else ""
    raise WorkdirError(
        f"--workdir={self.path} holds a run of another config: {', '.join(shown)}{more} "
        f"differ from its config.json. Re-run with the config it was started with (a resumed "
        f"run may change only {', '.join(MAY_CHANGE_ON_RESUME)}) or choose another --workdir")

  # -- start-up ----------------------------------------------------------------

  def start(self, config: ml_collections.ConfigDict) -> Start:
    """Where a run of `config` starts here, checked before anything in the workdir
    changes: refuses another config's workdir (WorkdirError, `check_resumable`); with
    config.init_from and no checkpoint of its own, loads that run's model (or raises
    WorkdirError saying why it cannot)."""
    self.check_resumable(config)
    if not config.init_from:
      return Start()
    if self._saved_step() is not None:
      logging.info("the workdir has checkpoints: resuming from them (config.init_from=%s "
                   "served the run's start)", config.init_from)
      return Start()
    return self._init_from(config.init_from)

  def _saved_step(self) -> int | None:
    """The latest checkpoint's step, read without creating anything."""
    if not self.checkpoints_dir.is_dir():
      return None
    with ocp.CheckpointManager(self.checkpoints_dir) as manager:
      return manager.latest_step()

  def _init_from(self, value: str) -> Start:
    """The trained model config.init_from names, and where that is (`STARTED_FROM`'s
    record); it must be another run's workdir."""
    source = f"config.init_from={value}"
    origin, checkpoint = parse_init_from(value)
    origin = workdir_path(origin)
    if origin == self.path:
      raise WorkdirError(f"{source}: that is this run's --workdir; a run resumes from its own "
                         "checkpoints by itself: name another run's workdir, or none")
    if not Workdir(origin).config_file.is_file():
      raise WorkdirError(f"{source}: no training workdir at {origin} (no config.json); name "
                         "a workdir, optionally with :best, :latest or :STEP")
    trained = load_for_inference(origin, checkpoint, source=source)
    return Start(trained, {"workdir": str(origin), "checkpoint": checkpoint,
                           "step": trained.step})

  @contextlib.contextmanager
  def removed_if_start_fails(self) -> Iterator[None]:
    """Nothing of a failed start stays behind in a workdir it made (a half-written
    synthetic corpus included); a workdir that was there keeps what it had."""
    created = not self.path.exists()
    try:
      yield
    except BaseException:
      if created and jax.process_index() == 0:
        shutil.rmtree(self.path, ignore_errors=True)
      raise

  # -- checkpoints -------------------------------------------------------------

  def open(self, keep_checkpoints: int) -> None:
    """Creates the workdir and opens its checkpoint managers (asynchronous saves)."""
    self.path.mkdir(parents=True, exist_ok=True)
    # Both save the same step at times: with several processes their barriers need
    # names of their own, or the two saves meet in one barrier and time out.
    options = lambda name: dict(
        enable_async_checkpointing=True, create=True,
        multiprocessing_options=ocp.options.MultiprocessingOptions(barrier_sync_key_prefix=name))
    self._checkpoints = ocp.CheckpointManager(
        self.checkpoints_dir, options=ocp.CheckpointManagerOptions(
            max_to_keep=keep_checkpoints, **options("checkpoints")))
    self._best = ocp.CheckpointManager(
        self.best_dir, options=ocp.CheckpointManagerOptions(max_to_keep=1, **options("best")))

  def latest_step(self) -> int | None:
    return self._checkpoints.latest_step()

  def read_progress(self) -> Progress | None:
    """The latest checkpoint's progress (read first on resuming: the stage decides the
    optimiser, and so the state to restore into)."""
    return read_progress(self.path)

  def save(self, state: Any, progress: Progress, data: DataPositions) -> None:
    """A checkpoint of `state` and `progress` at the state's step, the data positions
    beside it."""
    step = int(state.step)
    data.save(self.data_state_dir(step))
    self._checkpoints.save(step, args=_save_args(state, progress))
    # The data positions of checkpoints Orbax no longer keeps are useless; process 0
    # removes them (the others may still be writing the current step's).
    if jax.process_index() == 0:
      kept = {str(s) for s in self._checkpoints.all_steps()} | {str(step)}
      for old in self.data_state_dir(step).parent.iterdir():
        if old.name not in kept:
          shutil.rmtree(old, ignore_errors=True)

  def save_best(self, step: int, state: Any, progress: Progress) -> None:
    """`best/`'s checkpoint, replacing the one before."""
    self._best.save(step, args=_save_args(state, progress))

  def restore(self, step: int, target: Any, *, best: bool = False) -> tuple[Any, Progress]:
    """(state, progress) of checkpoint `step` (of `best/` if `best`), the state laid out
    as `target`."""
    manager = self._best if best else self._checkpoints
    if best:
      manager.wait_until_finished()
    abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, _items(target))
    restored = manager.restore(step, args=_restore_args(abstract, progress=True))
    state = restored["state"]
    if dataclasses.is_dataclass(target):
      state = dataclasses.replace(target, **state)
    return state, Progress(**restored["progress"])

  def wait_until_finished(self) -> None:
    """Returns once every asynchronous save has been written."""
    self._checkpoints.wait_until_finished()
    self._best.wait_until_finished()

  def close(self) -> None:
    self.wait_until_finished()
    self._checkpoints.close()
    self._best.close()

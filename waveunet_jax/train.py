"""The training loop: `Trainer` (schedule, validation, logging, checkpoints, stopping) and
`train_and_evaluate(config, workdir)`, the whole job (`main.py` only parses flags).

The step math is `steps`; the data, `data.batches`; the workdir, `workdir`. docs/training.md
and docs/multi-device.md describe runs.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import tensorflow as tf
from absl import logging
from jax.experimental import multihost_utils

from waveunet_jax import console, distributed, listening, models, optim, parallel, signals, steps
from waveunet_jax import workdir as workdir_lib
from waveunet_jax.data import batches


class TrainingError(RuntimeError):
  """A run that cannot start or go on (a batch that does not divide, a diverged loss, an
  empty validation split); the message says what to change."""


class Trainer:
  """Holds what one run needs: its workdir, mesh, model, loss, data, jitted steps and
  metrics writer; `run` trains to the end.

  * State: `steps.TrainState`, one pytree replicated over a 1-D mesh of every device of
    every process; batches are sharded on its `data` axis (`batches.TrainingData`), so
    BatchNorm statistics are global-batch ones, and the run is the same whether its
    devices sit in one process or in several. Process 0 alone writes config.json,
    TensorBoard and the synthetic corpus; Orbax checkpoints are written and read by all.
  * Schedule (the paper's): validate every `eval_every_steps`; a stage ends after
    `patience` validations without improvement; then the fine-tune stage restarts from
    the best parameters (their average, where one is kept: what validation and best/
    use) with its own batch size and learning rate and a fresh optimiser.
  * Checkpoints (`workdir.Workdir`): `checkpoints/` every `checkpoint_every_steps` and
    `best/` at each new best validation loss, each with the schedule's progress and the
    data positions, so re-running the same command resumes where the run stopped.
  * Stopping: SIGINT or SIGTERM ends the run after the current step with a checkpoint
    of that step (`signals.Interrupted`); a second one quits at once.

  `start` is where the run starts (`workdir.Workdir.start`), asked of the workdir here
  if not given; `model`, `loss` and `data` are the config's unless given (as
  `train_and_evaluate` gives them, built and checked once)."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: workdir_lib.Workdir,
               start: workdir_lib.Start | None = None, *, model: models.WaveUNet | None = None,
               loss: steps.Loss | None = None, data: batches.TrainingData | None = None):
    self.config = config
    self.workdir = workdir
    self.model = models.from_config(config) if model is None else model
    self.lengths = models.lengths(self.model, config.data.output_length)
    # A loss that cannot be fails here.
    self.loss = steps.Loss.from_config(config, self.lengths.output_length) if loss is None \
        else loss
    self.layout = parallel.data_parallel() if data is None else data.layout
    self._data = data  # the config's datasets, read when first needed (`data`)
    self.init = steps.create_state(config, self.model, optax.identity())
    optim.trainable_mask(config, self.init.params)  # a pattern that selects nothing fails here
    start = workdir.start(config) if start is None else start
    params, batch_stats = start.variables(config, self.init.params, self.init.batch_stats)
    # (No average here: `new_state` starts each stage's from its first parameters.)
    self.init = self.init.replace(params=params, batch_stats=batch_stats, ema_params=None)
    self.started_from = start.started_from  # for config.json (workdir.STARTED_FROM)
    workdir.open(config.keep_checkpoints)
    self.train_step = self.eval_step = None  # jitted for a stage's optimiser: compile_steps
    self.stop = signals.StopOnSignal()  # active while `run` runs
    self.writer = self.listening = None  # TensorBoard, on process 0; its audio, once needed
    if jax.process_index() == 0:
      self.writer = tf.summary.create_file_writer(str(workdir.tensorboard_dir))

  @property
  def data(self) -> batches.TrainingData:
    if self._data is None:
      self._data = batches.TrainingData(self.config, self.layout)
    return self._data

  # -- state and steps ---------------------------------------------------------

  def new_state(self, stage: int, params=None, batch_stats=None,
                step=0) -> tuple[steps.TrainState, Any]:
    """A state for `stage`: fresh, or from given parameters with a fresh optimiser; the
    average of the parameters, if kept, starts from them."""
    tx = steps.stage_optimizer(self.config, stage, self.init.params)
    state = steps.fresh_state(self.config, tx, self.init, params, batch_stats, step)
    # Copies: the train step donates its state, and self.init must outlive it.
    state = jax.tree_util.tree_map(jnp.copy, state)
    return jax.device_put(state, self.layout.replicated), tx

  def compile_steps(self, tx) -> None:
    self.train_step, self.eval_step = steps.jit_steps(self.config, self.model, tx,
                                                      self.layout, loss=self.loss)

  def sampler(self, progress: workdir_lib.Progress, state: steps.TrainState) -> batches.Sampler:
    """The training batches of the stage of `progress` (`state`: the stage's, to size
    the compiled step; compiled here for its memory analysis where the device sampler
    might be used, so that the loop's first call finds it compiled)."""
    batch_size, _ = steps.stage_settings(self.config, progress.stage)
    shapes = steps.abstract_batch(self.model, self.config.data.output_length, self.layout,
                                  batch_size)
    return self.data.sampler(progress, batch_size,
                             lambda: self.train_step.lower(state, shapes).compile())

  # -- validation and logging --------------------------------------------------

  def validate(self, state: steps.TrainState, stage: int) -> dict[str, float]:
    """Validation loss ('loss') and pooled SDR per source ('sdr/<source>') on the
    validation split. With several datasets (config.data.data_dir), each one's as
    '<name>/loss' and '<name>/sdr/<source>', and 'loss' and 'sdr/<source>' weight-
    averaged: as if each dataset's tiles counted by its sampling weight (loss: the
    weighted mean of the datasets' losses; SDR: of their mean energies), so that the
    datasets' sizes do not decide early stopping, their weights do."""
    datasets = self.data.datasets
    totals = {d.name: self.validation_sums(state, stage, d.path) for d in datasets}
    if len(datasets) == 1:
      return self.validation_metrics(totals[datasets[0].name])
    weighted = {key: sum(d.weight * totals[d.name][key] / totals[d.name]["count"]
                         for d in datasets) for key in ("loss_sum", "signal", "noise")}
    metrics = self.validation_metrics({**weighted, "count": 1.0})
    for d in datasets:
      own = self.validation_metrics(totals[d.name])
      metrics.update({f"{d.name}/{key}": value for key, value in own.items()})
    return metrics

  def validation_metrics(self, totals: dict[str, Any]) -> dict[str, float]:
    metrics = {"loss": float(totals["loss_sum"] / totals["count"])}
    for name, energy, noise in zip(self.model.sources, totals["signal"], totals["noise"]):
      metrics[f"sdr/{name}"] = float(10 * np.log10((energy + 1e-10) / (noise + 1e-10)))
    return metrics

  def validation_sums(self, state: steps.TrainState, stage: int,
                      data_dir: str) -> dict[str, np.ndarray]:
    """`eval_step`'s sums over every validation tile of one dataset."""
    batch_size, _ = steps.stage_settings(self.config, stage)
    totals = None
    for batch in self.data.validation_batches(batch_size, data_dir):
      sums = self.eval_step(state, batch)
      totals = sums if totals is None else jax.tree_util.tree_map(jnp.add, totals, sums)
    if totals is None:
      raise TrainingError(f"the validation split of {data_dir} is empty: prepare the data "
                          "with some validation tracks (--valid_tracks)")
    return jax.device_get(totals)

  def write(self, step: int, scalars: dict[str, float]) -> None:
    if self.writer is None:
      return
    with self.writer.as_default(step=step):
      for name, value in scalars.items():
        tf.summary.scalar(name, value)
    self.writer.flush()

  def listen(self, step: int, state: steps.TrainState) -> None:
    """Audio and spectrograms of a validation excerpt to TensorBoard (`listening`),
    where process 0 writes; the excerpt is read and its forward pass compiled once."""
    if self.writer is None:
      return
    if self.listening is None:
      model, rate = self.model, self.config.data.sample_rate
      predict = jax.jit(lambda variables, mix: model.apply(variables, mix, train=False))
      excerpt = self.data.validation_excerpt(
          listening.excerpt_tiles(rate, self.lengths.output_length))
      self.listening = listening.Listening(excerpt, model.sources, rate, self.lengths.offset,
                                           self.lengths.output_length, predict)
    variables = listening.local_copy({"params": state.inference_params,
                                      "batch_stats": state.batch_stats})
    with self.writer.as_default():
      self.listening.write(step, variables)
    self.writer.flush()

  # -- the run -----------------------------------------------------------------

  def run(self, callback: Callable[[int, dict[str, float]], None] | None = None
          ) -> steps.TrainState:
    """Trains to the end, or raises Interrupted after saving the step a signal stopped."""
    with self.stop:
      return self._run(callback)

  def stop_agreed(self, step: int) -> bool:
    """Whether every process stops after `step`: at once with one process; with
    several, all must stop at the same step, so they agree only at log boundaries
    (where the loop waits for the device anyway)."""
    self.stop.announce()
    if jax.process_count() == 1:
      return self.stop.signum is not None
    if step % self.config.log_every_steps:
      return False
    wanted = multihost_utils.process_allgather(np.int32(self.stop.signum is not None))
    return bool(np.any(wanted))

  def _run(self, callback: Callable[[int, dict[str, float]], None] | None
           ) -> steps.TrainState:
    config = self.config
    state, tx = self.new_state(0)
    progress = workdir_lib.Progress()
    latest = self.workdir.latest_step()
    if latest is not None:
      # The stage decides the optimiser (its learning rate), so read progress first.
      progress = self.workdir.read_progress()
      state, tx = self.new_state(progress.stage)
      state, progress = self.workdir.restore(latest, state)
      logging.info("resuming at step %d, stage %d", latest, progress.stage)
    if progress.done:
      logging.info("training finished before (step %d); nothing to do", int(state.step))
      return state
    self.compile_steps(tx)
    data = self.sampler(progress, state)
    if latest is not None:
      data = self.data.resumed(data, progress, self.workdir.data_state_dir(latest), latest)

    batch_size, learning_rate = steps.stage_settings(config, progress.stage)
    audio_per_step = batch_size * self.lengths.output_length / config.data.sample_rate
    step = saved = int(state.step)
    window_loss, window_start, window_steps = jnp.zeros(()), time.perf_counter(), 0
    bar = None  # the steps to the next log line, on a terminal
    while step < config.num_train_steps:
      if bar is None:
        bar = console.progress(min(config.log_every_steps - step % config.log_every_steps,
                                   config.num_train_steps - step),
                               f"step {step + 1}", unit="step")
      state, metrics = self.train_step(state, data.batch(step))
      step += 1
      bar.update()
      window_loss, window_steps = window_loss + metrics["loss"], window_steps + 1
      if step % config.log_every_steps == 0 or step % config.checkpoint_every_steps == 0:
        bar.close()
        bar = None
        loss = float(window_loss) / window_steps
        if not np.isfinite(loss):
          last = self.workdir.latest_step()
          kept = (f"The last good checkpoint (step {last}) is in {self.workdir.checkpoints_dir}"
                  if last is not None else "No checkpoint was saved before it")
          raise TrainingError(
              f"the training loss is {loss} at step {step}: stopping. {kept}; lower "
              "config.optim.learning_rate, set config.optim.grad_clip_norm, or lower the loss's "
              "weights (config.loss.scale, config.loss.stft_weight)")
        seconds = time.perf_counter() - window_start
        # The rate of this step: the stage's optimiser counts from the stage's start.
        rate = float(optim.learning_rate_schedule(config, learning_rate)(
            step - 1 - progress.stage_start_step))
        scalars = {"train/loss": loss, "train/learning_rate": rate,
                   "train/steps_per_second": window_steps / seconds,
                   "train/audio_seconds_per_second": window_steps * audio_per_step / seconds}
        logging.info("step %d (stage %d): loss %.5f, %.2f steps/s, %.1f audio s/s", step,
                     progress.stage, loss, scalars["train/steps_per_second"],
                     scalars["train/audio_seconds_per_second"])
        self.write(step, scalars)
        if callback:
          callback(step, scalars)
        window_loss, window_start, window_steps = jnp.zeros(()), time.perf_counter(), 0

      stage_over = False
      if step % config.eval_every_steps == 0:
        results = self.validate(state, progress.stage)
        logging.info("step %d validation: %s", step,
                     ", ".join(f"{k} {v:.4f}" for k, v in results.items()))
        self.write(step, {f"valid/{k}": v for k, v in results.items()})
        self.listen(step, state)
        if callback:
          callback(step, {f"valid/{k}": v for k, v in results.items()})
        if results["loss"] < progress.best_loss:
          progress.best_loss, progress.best_step, progress.bad_validations = results["loss"], step, 0
          self.workdir.save_best(step, state, progress)
        else:
          progress.bad_validations += 1
        stage_over = progress.bad_validations >= config.patience

      if stage_over and (progress.stage == 1 or not config.fine_tune.enabled):
        progress.done = True
        self.workdir.save(state, progress, data)
        logging.info("no improvement in %d validations: training done at step %d",
                     config.patience, step)
        break
      if stage_over:
        # The paper's second stage: from the best parameters, new batch size and rate
        # (the average's, where one is kept: it is what validation chose; the stage's
        # average starts from them too).
        best_state, _ = self.workdir.restore(progress.best_step, state, best=True)
        progress = dataclasses.replace(progress, stage=1, stage_start_step=step,
                                       bad_validations=0)
        state, tx = self.new_state(1, best_state.inference_params, best_state.batch_stats,
                                   step)
        self.compile_steps(tx)
        data = self.sampler(progress, state)
        batch_size, learning_rate = steps.stage_settings(config, 1)
        audio_per_step = batch_size * self.lengths.output_length / config.data.sample_rate
        logging.info("step %d: fine-tune stage from the best step %d (batch %d, lr %g)",
                     step, progress.best_step, batch_size, learning_rate)
        self.workdir.save(state, progress, data)
        saved = step
      elif step % config.checkpoint_every_steps == 0 or step == config.num_train_steps:
        self.workdir.save(state, progress, data)
        saved = step
      if self.stop_agreed(step) and step < config.num_train_steps:
        if bar is not None:
          bar.close()
        if saved != step:
          self.workdir.save(state, progress, data)
        self.workdir.wait_until_finished()
        raise signals.Interrupted(step, self.stop.signum or signal.SIGTERM)
    if bar is not None:
      bar.close()
    self.workdir.wait_until_finished()
    return state

  def close(self) -> None:
    self.workdir.close()


def check_batch_size(batch_size: int, field: str) -> None:
  devices, processes = jax.device_count(), jax.process_count()
  if batch_size % devices:
    raise TrainingError(f"{field}={batch_size} does not divide across the {devices} devices; "
                        f"use a multiple of {devices}")
  if batch_size % processes:
    raise TrainingError(f"{field}={batch_size} does not divide across the {processes} "
                        "processes")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | os.PathLike, *,
                       callback: Callable[[int, dict[str, float]], None] | None = None
                       ) -> steps.TrainState:
  """Trains `config` in `workdir`, resuming from its checkpoints if there are any.

  `callback(step, scalars)` is called with the logged metrics (a notebook hook).
  A workdir that holds a run of another config is refused (workdir.WorkdirError)
  before anything in it changes; a start that fails leaves no workdir it created behind.
  SIGINT or SIGTERM stops the run cleanly after the current step with a checkpoint
  (raises signals.Interrupted); a second one raises KeyboardInterrupt at once.
  """
  workdir = workdir_lib.Workdir(workdir)
  # First: until they agree, processes may not wait on each other.
  distributed.check_same_run(config, workdir.path)
  with workdir.removed_if_start_fails():
    # Check what can be checked before anything slow, and before writing anything; each
    # once: the trainer takes what is built here.
    models.check_finite(config)
    model = models.from_config(config)
    loss = steps.Loss.from_config(
        config, models.lengths(model, config.data.output_length).output_length)
    optim.ema_decay(config)
    stages = ("config.batch_size", "config.fine_tune.batch_size")
    for stage, field in enumerate(stages[:2 if config.fine_tune.enabled else 1]):
      check_batch_size(steps.stage_settings(config, stage)[0], field)
    batches.check(config)
    start = workdir.start(config)
    config = batches.ensure_data(config, workdir)
    # The data is there, before compiling anything.
    data = batches.TrainingData(config, parallel.data_parallel())
    trainer = Trainer(config, workdir, start, model=model, loss=loss, data=data)
  # The run starts: only now does the workdir describe it.
  workdir.save_config(config, trainer.started_from)
  try:
    return trainer.run(callback)
  finally:
    trainer.close()

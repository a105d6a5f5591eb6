"""Stopping a run cleanly on a signal: SIGINT (Ctrl-C) or SIGTERM (a preempted VM).

Training runs inside `StopOnSignal`: the first signal only asks the loop to stop after
its current step, which it does with a checkpoint of that step (`Interrupted`); a
second one quits at once (KeyboardInterrupt), without saving.
"""

from __future__ import annotations

import signal
import threading

from absl import logging


class Interrupted(Exception):
  """The run stopped on a signal after `step`, with a checkpoint of that step saved;
  re-running the same command resumes from it."""

  def __init__(self, step: int, signum: int):
    self.step, self.signum = step, signum
    super().__init__(f"stopped at step {step} on {signal.Signals(signum).name}, "
                     "with a checkpoint of that step")


class StopOnSignal:
  """While active (a context manager), the first SIGINT or SIGTERM only records itself
  in `.signum`, for the loop to stop after its current step; a second one raises
  KeyboardInterrupt at once. Does nothing outside the main thread, where Python
  cannot take signals."""

  SIGNALS = (signal.SIGINT, signal.SIGTERM)

  def __init__(self):
    self.signum: int | None = None
    self._announced = False
    self._previous = {}

  def __enter__(self) -> StopOnSignal:
    if threading.current_thread() is threading.main_thread():
      self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
    return self

  def __exit__(self, *exc) -> None:
    for s, handler in self._previous.items():
      # None: a handler installed outside Python, which cannot be put back.
      signal.signal(s, signal.SIG_DFL if handler is None else handler)
    self._previous = {}

  def _handle(self, signum: int, frame) -> None:
    del frame
    if self.signum is not None:
      self.__exit__()  # a third one gets Python's own handling
      raise KeyboardInterrupt(f"{signal.Signals(signum).name} again: quitting without saving")
    self.signum = signum  # said by `announce`: a log call here could land inside a
    # write to stderr that the signal interrupted ("reentrant call inside BufferedWriter")

  def announce(self) -> None:
    """Logs, once, that a signal came and the run stops after this step (from the loop,
    not from the handler)."""
    if self.signum is not None and not self._announced:
      self._announced = True
      logging.warning("%s: stopping after this step with a checkpoint (again to quit at "
                      "once, without saving)", signal.Signals(self.signum).name)

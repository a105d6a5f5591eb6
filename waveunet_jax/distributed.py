"""Multi-host start-up: joining the processes of one run, and checking they run the same.

Several processes (the hosts of a TPU slice or a GPU cluster, or one process per GPU)
run the same command. `connect` joins them (`jax.distributed`) before anything uses
JAX, refusing flags that cannot work in one line; `check_same_run` then refuses to
start, on every process, if their configs or workdirs differ. What each process does
afterwards (its devices' data shards, process 0 writing config.json and TensorBoard)
is training's (`train.py`).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pathlib
import socket
import time

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from waveunet_jax.workdir import config_differences


class DistributedError(RuntimeError):
  """The run's processes cannot be joined or do not run the same run; the message names
  the flag or the process and what to do."""


def connect(coordinator_address: str | None = None, num_processes: int | None = None,
            process_id: int | None = None, heartbeat_timeout: int = 100,
            coordinator_timeout: int = 300) -> None:
  """Joins this process to the others of a multi-process run (`jax.distributed`),
  before anything uses JAX. With no arguments, JAX detects the cluster (Cloud TPU,
  SLURM, Open MPI); otherwise all three are needed. A process that stays silent for
  `heartbeat_timeout` seconds (killed, crashed, its host gone) ends the others' run,
  instead of leaving them waiting in a collective forever.

  Named flags are checked here first, each refused in one line: JAX itself indexes a
  malformed address (IndexError), crashes the interpreter when process 0's port is
  taken, and aborts one that finds no coordinator within `coordinator_timeout`
  seconds. So process 0 binds the port once itself, and the others wait for the
  coordinator's port to answer before JAX connects to it."""
  named = (coordinator_address, num_processes, process_id)
  if any(v is not None for v in named) and not all(v is not None for v in named):
    raise DistributedError("--coordinator_address, --num_processes and --process_id go together: "
                        "give all three (or none, on a cluster JAX detects)")
  if num_processes is not None and not 0 <= process_id < num_processes:
    raise DistributedError(f"--process_id={process_id} is not in [0, --num_processes="
                        f"{num_processes})")
  if coordinator_address is not None:
    host, port = _coordinator(coordinator_address)
    if process_id == 0:
      _check_port_free(coordinator_address, port)
    else:
      _wait_for_coordinator(coordinator_address, host, port, coordinator_timeout)
  # Collectives between CPU devices of different processes (tests, CPU clusters);
  # TPUs and GPUs have their own.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  try:
    jax.distributed.initialize(coordinator_address, num_processes, process_id,
                               initialization_timeout=coordinator_timeout,
                               heartbeat_timeout_seconds=heartbeat_timeout)
  except ValueError as e:  # nothing detected, or given values JAX refuses
    if coordinator_address is None:
      raise DistributedError("--distributed: JAX detected no cluster to join (Cloud TPU, SLURM, "
                          "Open MPI); elsewhere give --coordinator_address, --num_processes "
                          "and --process_id") from None
    raise DistributedError(f"cannot join the run's processes: {e}") from None
  except RuntimeError as e:  # e.g. no coordinator at the address within the timeout
    message = str(e).splitlines()[0] if str(e) else type(e).__name__
    raise DistributedError(f"cannot join the run's processes ({message}): process 0 must run "
                        "at --coordinator_address, reachable from every process") from None


def _coordinator(address: str) -> tuple[str, int]:
  """(host, port) of --coordinator_address=HOST:PORT (HOST may be `[IPv6]`), or a
  DistributedError naming the flag; the host must resolve, as every process dials it."""
  host, _, port = address.rpartition(":")
  host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
  if not host or not (port.isascii() and port.isdigit()) or not 1 <= int(port) <= 65535:
    raise DistributedError(f"--coordinator_address={address}: not HOST:PORT with a port from 1 "
                        "to 65535 (e.g. node0:8476); name process 0's host and a free port")
  try:
    socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
  except (socket.gaierror, UnicodeError) as e:
    raise DistributedError(f"--coordinator_address={address}: cannot resolve the host {host!r} "
                        f"({getattr(e, 'strerror', None) or e}); name process 0's host") from None
  return host, int(port)


def _check_port_free(address: str, port: int) -> None:
  """Raises DistributedError unless process 0 can bind `port` as JAX's coordinator will:
  on every address (`[::]`, IPv4 too; `0.0.0.0` where this host has no IPv6), with
  SO_REUSEADDR as gRPC sets it. Skipped when JAX_COORDINATOR_BIND_ADDRESS tells JAX to
  bind elsewhere."""
  if "JAX_COORDINATOR_BIND_ADDRESS" in os.environ:
    return
  for family, host in ((socket.AF_INET6, "::"), (socket.AF_INET, "0.0.0.0")):
    try:
      s = socket.socket(family)
    except OSError:  # no such address family here
      continue
    with s:
      s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
      if family == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
      try:
        s.bind((host, port))
        return
      except OSError as e:
        if e.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):  # IPv6 off: as gRPC, try IPv4
          continue
        hint = {errno.EADDRINUSE: "; another program or run uses it?",
                errno.EACCES: "; a port below 1024 needs root"}.get(e.errno, "")
        raise DistributedError(f"--coordinator_address={address}: process 0 cannot listen on "
                            f"port {port} ({e.strerror}{hint}); choose a free port, the "
                            "same for every process") from None


def _wait_for_coordinator(address: str, host: str, port: int, timeout: int) -> None:
  """Returns once the coordinator's port accepts a connection, or raises DistributedError
  after `timeout` seconds (JAX would abort the interpreter instead)."""
  logging.info("waiting up to %d s (--coordinator_timeout) for the coordinator, process 0, "
               "at %s", timeout, address)
  deadline = time.monotonic() + timeout
  while True:
    left = deadline - time.monotonic()
    try:
      with socket.create_connection((host, port), timeout=max(min(left, 5.0), 0.1)):
        return
    except OSError:
      if left <= 0:
        break
      time.sleep(min(0.5, max(left, 0)))
  raise DistributedError(f"--coordinator_address={address}: no coordinator answered within "
                      f"{timeout} s (--coordinator_timeout); start process 0 (it listens "
                      "there), or check the address and that this host can reach the port")


def check_same_run(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> None:
  """Raises DistributedError, on every process, unless all processes were started with
  the same config and workdir (a run whose hosts disagree would hang or diverge)."""
  if jax.process_count() == 1:
    return
  mine = json.dumps({"workdir": str(workdir), "config": json.loads(config.to_json_best_effort())},
                    sort_keys=True).encode()
  digests = multihost_utils.process_allgather(
      np.frombuffer(hashlib.sha256(mine).digest(), np.uint8))
  others = [i for i, d in enumerate(digests) if not np.array_equal(d, digests[0])]
  if not others:
    return
  # Process 0's run to every process, which names what differs from its own.
  length = int(np.max(multihost_utils.process_allgather(np.int64(len(mine)))))
  padded = np.zeros(length, np.uint8)
  padded[:len(mine)] = np.frombuffer(mine, np.uint8)
  first = json.loads(bytes(np.asarray(multihost_utils.broadcast_one_to_all(padded))).rstrip(b"\0"))
  what = "start every process with the same --config, --config.* overrides and --workdir"
  if jax.process_index() == 0:
    raise DistributedError(f"process(es) {', '.join(map(str, others))} of {jax.process_count()} "
                        f"were started with another config or --workdir than this one; {what}")
  if jax.process_index() not in others:
    raise DistributedError(f"process(es) {', '.join(map(str, others))} of {jax.process_count()} "
                        f"were started with another config or --workdir than process 0; {what}")
  fields = [f"config.{name} ({json.dumps(old)} on process 0, {json.dumps(new)} here)"
            for name, old, new in config_differences(
                ml_collections.ConfigDict(first["config"]), config, may_change=())]
  if first["workdir"] != str(workdir):
    fields.append(f"--workdir ({first['workdir']} on process 0, {workdir} here)")
  raise DistributedError(f"process {jax.process_index()} was started with another run than "
                      f"process 0: {', '.join(fields[:4])} differ; {what}")

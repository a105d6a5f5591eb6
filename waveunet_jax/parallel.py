"""The one place that lays devices out for data parallelism: a 1-D mesh over the
`data` axis, with the sharding of replicated values (parameters, optimiser state) and of
batches (split on their first axis). Training, the JAX separation engine and the
compile-only accelerator checks all build theirs here, so they cannot disagree.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

AXIS = "data"


@dataclasses.dataclass(frozen=True)
class DataParallel:
  """A 1-D device mesh and its two shardings."""

  mesh: Mesh
  replicated: NamedSharding  # the same value on every device
  sharded: NamedSharding  # split over the devices along the first axis

  @property
  def size(self) -> int:
    return self.mesh.devices.size


def data_parallel(devices: Sequence[jax.Device] | None = None) -> DataParallel:
  """`devices` (default: every device of every process) as one data-parallel mesh;
  device d of the mesh is `devices[d]`."""
  devices = jax.devices() if devices is None else list(devices)
  mesh = Mesh(np.array(devices), (AXIS,))
  return DataParallel(mesh, NamedSharding(mesh, PartitionSpec()),
                      NamedSharding(mesh, PartitionSpec(AXIS)))

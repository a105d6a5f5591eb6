"""What the accelerators users rent can do, per chip: memory and dense peak FLOP/s.

Figures are the vendors' published dense peaks (no structured sparsity) per chip.
Utilisation anywhere in the project is a FLOP count that does not come from a GPU
cost analysis (see `flops.py`) divided by time and by one of these peaks. TPUs publish
no float32 matmul peak (XLA runs float32 matmuls as passes of bfloat16 at default
precision), so `f32` is None there; on GPUs `tf32` is the tensor-core float32 peak
that XLA uses for float32 convolutions by default, `f32` the CUDA-core one.
"""

from __future__ import annotations

import dataclasses

GiB = 1 << 30
TERA = 1e12


@dataclasses.dataclass(frozen=True)
class Chip:
  name: str
  memory_bytes: int  # HBM per chip
  bf16: float  # dense peak FLOP/s
  tf32: float | None = None
  f32: float | None = None
  # The name jax.experimental.topologies uses for its TPU topologies ("v5e:2x2").
  topology_prefix: str | None = None


CHIPS: dict[str, Chip] = {c.name: c for c in (
    # Cloud TPU (cloud.google.com/tpu/docs/system-architecture-tpu-vm, per chip).
    Chip("TPU v4", 32 * GiB, 275 * TERA, topology_prefix="v4"),
    Chip("TPU v5e", 16 * GiB, 197 * TERA, topology_prefix="v5e"),
    Chip("TPU v5p", 95 * GiB, 459 * TERA, topology_prefix="v5p"),
    Chip("TPU v6e", 32 * GiB, 918 * TERA, topology_prefix="v6e"),
    # NVIDIA data sheets (SXM parts; dense, i.e. half the "with sparsity" figures).
    Chip("A100", 80 * 10**9, 312 * TERA, tf32=156 * TERA, f32=19.5 * TERA),
    Chip("H100", 80 * 10**9, 989 * TERA, tf32=494.7 * TERA, f32=66.9 * TERA),
    Chip("H200", 141 * 10**9, 989 * TERA, tf32=494.7 * TERA, f32=66.9 * TERA),
    Chip("L4", 24 * 10**9, 121 * TERA, tf32=60 * TERA, f32=30.3 * TERA),
)}


def peak(chip: Chip, dtype: str) -> float | None:
  """The dense peak for a network computing in `dtype` ('bfloat16' or 'float32'):
  bf16; for float32 TF32 where the chip has it (XLA's default on GPUs), else f32."""
  if dtype == "bfloat16":
    return chip.bf16
  return chip.tf32 if chip.tf32 is not None else chip.f32


def find(device_kind: str) -> Chip | None:
  """The chip a `jax.Device.device_kind` names ('NVIDIA H100 80GB HBM3', 'TPU v5 lite',
  ...), or None if it is not in the table."""
  kind = device_kind.lower()
  aliases = {"tpu v5 lite": "TPU v5e", "tpu v5": "TPU v5p", "tpu v6 lite": "TPU v6e",
             "tpu v4": "TPU v4"}
  for alias, name in aliases.items():
    if kind.startswith(alias):
      return CHIPS[name]
  for name in ("A100", "H100", "H200", "L4"):
    if name.lower() in kind.split() or f" {name.lower()}" in f" {kind}":
      return CHIPS[name]
  return None

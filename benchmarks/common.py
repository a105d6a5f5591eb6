"""What the benchmark scripts share: their configs (by name, or `PATH[:VARIANT]` as the
programs' --config takes them) and the tiny smoke versions of them, the facts of the
machine a figure was measured on, and the measurements several scripts take (the timed
train step, the reference matmul, a synthetic song, a separator at random weights).

Each script imports this module and no other script: `python benchmarks/SCRIPT.py`
puts benchmarks/ first on sys.path, and the package (`pip install -e .`) provides
`waveunet_jax` and `experiments` from any folder.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import platform
import time

import experiments
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import flags

from waveunet_jax import flops, models, parallel, separate
from waveunet_jax import steps as train_steps
from waveunet_jax.data import generator
from waveunet_jax.separation import jax_engine

# --------------------------------------------------------------------------- #
# Configs.
# --------------------------------------------------------------------------- #

# The configs the scripts measure, as --config takes them, by the names their tables and
# JSON use (`label`).
CONFIGS = {"shallow": "experiments/shallow.py", "deep M4": "experiments/deep.py:M4",
           "small": "experiments/small.py"}
SHALLOW, DEEP_M4, SMALL = CONFIGS.values()
# The two networks most scripts measure: the paper's shallow one and its deep M4.
NETWORKS = (SHALLOW, DEEP_M4)


def label(spec: str) -> str:
  """The name tables and JSON give the config `spec` (CONFIGS' key; else `spec`)."""
  return next((name for name, known in CONFIGS.items() if known == spec), spec)


def load_config(spec: str, flag: str = "--config") -> ml_collections.ConfigDict:
  """`PATH[:VARIANT]`, as the programs' --config takes it (experiments/deep.py:M4), -> the
  config its `get_config` returns. A relative experiments/... path that is not there
  from the current folder is the installed `experiments` package's file. ValueError:
  one line, naming `flag`, or the config's own line (which names the file)."""
  path, _, variant = spec.partition(":")
  file = pathlib.Path(path)
  if not file.is_file() and not file.is_absolute() and file.parts[:1] == ("experiments",):
    file = _installed(file)
  if not file.is_file():
    # precision.py took MODULE[:VARIANT] (shallow:smoke) before this loader.
    guess = pathlib.Path("experiments", f"{path}.py")
    hint = (f"; did you mean {guess}{spec[len(path):]}?"
            if len(file.parts) == 1 and _installed(guess).is_file() else "")
    raise ValueError(f"{flag}: {path}: no such file (configs live in experiments/){hint}")
  module_spec = importlib.util.spec_from_file_location(f"_config_{file.stem}", file)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  try:
    return module.get_config(variant) if variant else module.get_config()
  except ValueError as e:
    if str(e).startswith("--config"):  # the config's own line names the file and variants
      raise
    raise ValueError(f"{flag}: {spec}: {e}") from e


def _installed(path: pathlib.Path) -> pathlib.Path:
  """experiments/NAME.py -> that file of the installed `experiments` package."""
  return pathlib.Path(experiments.__file__).parent.joinpath(*path.parts[1:])


def get_config(spec: str, smoke: bool = False) -> ml_collections.ConfigDict:
  """The config `spec` (`PATH[:VARIANT]`), or with `smoke` the tiny version of it
  (`smoke_config`)."""
  return smoke_config(spec) if smoke else load_config(spec)


def smoke_config(spec: str) -> ml_collections.ConfigDict:
  """A tiny network of the same design as the config `spec`, for --smoke: shallow.py's
  :smoke on 8192 output samples; any other (M4, small.py) at 4 levels of 8, 16, 24, 32
  features on 1024 output samples."""
  if pathlib.Path(spec.partition(":")[0]).name == "shallow.py":
    config = load_config(f"{spec.partition(':')[0]}:smoke")
    config.data.output_length, config.loss.central_length = 8192, 4096
    return config
  config = load_config(spec)
  levels = 4
  config.model.features = tuple(8 * (i + 1) for i in range(levels))
  config.model.bottleneck_features = 8 * (levels + 1)
  for field in ("down_kernel_sizes", "up_kernel_sizes", "downsampling_factors"):
    config.model[field] = tuple(config.model[field][:levels])
  config.data.output_length = 1024
  return config


def valid_configs(specs: str | list[str]) -> bool:
  """absl validator of a flag of one config or a list of them (`PATH[:VARIANT]` each):
  one that does not load is a usage error, with `load_config`'s line."""
  for spec in [specs] if isinstance(specs, str) else specs:
    try:
      load_config(spec, "")
    except ValueError as e:
      raise flags.ValidationError(str(e).removeprefix(": ")) from e
  return True


# --------------------------------------------------------------------------- #
# The machine.
# --------------------------------------------------------------------------- #


def machine() -> dict:
  """The CPU, its cores, jax's version, the backend and its first device (with the
  device's memory limit where the backend reports one)."""
  cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
              if line.startswith("model name")), platform.processor())
  out = {"cpu": cpu, "cores": os.cpu_count(), "jax": jax.__version__,
         "backend": jax.default_backend(), "device": str(jax.devices()[0].device_kind)}
  limit = device_memory_limit()
  if limit:
    out["device_memory_limit_gib"] = round(limit / 2 ** 30, 1)
    out["xla_mem_fraction"] = os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION", "default")
  return out


def device_memory_limit() -> int | None:
  """Bytes the first device's allocator may use (None where the backend does not say,
  as on the CPU)."""
  try:
    stats = jax.devices()[0].memory_stats()
  except Exception:  # not implemented on some backends
    return None
  return (stats or {}).get("bytes_limit")


# --------------------------------------------------------------------------- #
# Timings.
# --------------------------------------------------------------------------- #


def best_time(fn, reps: int) -> float:
  times = []
  for _ in range(reps):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return min(times)


def matmul_flops(dtype=jnp.float32, n: int = 4096, reps: int = 3, calls: int = 1) -> float:
  """FLOP/s of a jitted n x n @ n x n product on random data: the best of `reps`
  timings of `calls` products in a row."""
  a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n)), dtype)
  f = jax.jit(lambda x, y: x @ y)
  jax.block_until_ready(f(a, a))

  def some():
    for _ in range(calls):
      out = f(a, a)
    return out

  return 2 * n ** 3 * calls / best_time(some, reps)


def matmul_size(on_accelerator: bool) -> tuple[int, int]:
  """(n, calls per timing) of the reference matmul."""
  return (8192, 10) if on_accelerator else (4096, 1)


def init_variables(model: models.WaveUNet, seed: int = 0):
  x = jnp.zeros((1, models.lengths(model, 1).input_length, model.num_channels))
  return jax.jit(model.init)(jax.random.key(seed), x)


# --------------------------------------------------------------------------- #
# Training.
# --------------------------------------------------------------------------- #


def compiled_train_step(config, batch_size: int):
  """The train step training runs (`train_steps.jit_steps`, on this process's first device),
  compiled for `batch_size`, with a state and a random batch for it."""
  model = models.from_config(config)
  size = models.lengths(model, config.data.output_length)
  state, tx = train_steps.initial_state(config, model)
  layout = parallel.data_parallel(jax.local_devices()[:1])
  step, _ = train_steps.jit_steps(config, model, tx, layout)
  rng = np.random.default_rng(0)
  shapes = train_steps.abstract_batch(model, config.data.output_length, layout, batch_size)
  batch = {name: jnp.asarray(rng.uniform(-.5, .5, shape.shape), jnp.float32)
           for name, shape in shapes.items()}  # mix, then sources
  return step.lower(state, batch).compile(), state, batch, size


def step_runner(step, state, batch):
  """A call with no arguments that runs one more train step and returns its metrics:
  the step donates its state, so each call passes on the last call's."""
  box = [state]

  def one_step():
    box[0], metrics = step(box[0], batch)
    return metrics

  return one_step


def train_figures(config, batch_size: int, steps: int) -> dict:
  """Steps/s of the compiled train step at `batch_size` (after a warm-up step), its
  audio s/s, FLOP/s by `flops.py` and compiled memory."""
  start = time.perf_counter()
  step, state, batch, size = compiled_train_step(config, batch_size)
  compile_s = time.perf_counter() - start
  one_step = step_runner(step, state, batch)
  jax.block_until_ready(one_step())  # warm-up
  start = time.perf_counter()
  for _ in range(steps):
    metrics = one_step()
  jax.block_until_ready(metrics)
  step_s = (time.perf_counter() - start) / steps
  step_flops = flops.train_step_flops(config, batch_size)
  return {"batch": batch_size, "steps": steps, "dtype": config.model.dtype,
          "compile_s": compile_s, "step_s": step_s, "steps_per_s": 1 / step_s,
          "audio_s_per_s": batch_size * size.output_length / config.data.sample_rate / step_s,
          "step_gflop": step_flops / 1e9, "flops_per_s": step_flops / step_s,
          "peak_share": flops.utilisation(step_flops / step_s, jax.devices()[0].device_kind,
                                          config.model.dtype),
          "compiled_bytes": compiled_bytes(step)}


def compiled_bytes(compiled) -> int | None:
  """Device memory a compiled step needs by XLA's own account (arguments, outputs
  not aliased to them, temporaries); None where the backend does not say."""
  try:
    m = compiled.memory_analysis()
    return int(m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
               + m.temp_size_in_bytes)
  except Exception:  # no memory analysis on this backend or version
    return None


class TimedTrainer:
  """The real trainer (`train.Trainer`: the same step, batches and loop calls as
  `main`) with `pipeline`, compiled and warmed up, ready to time its loop body."""

  def __init__(self, config, pipeline: str, workdir: pathlib.Path):
    # Here, not at the top: the trainer imports TensorFlow, which a GPU host running
    # the other scripts may lack.
    from waveunet_jax import train
    from waveunet_jax import workdir as workdir_lib

    config.data.pipeline = pipeline
    self.trainer = train.Trainer(config, workdir_lib.Workdir(workdir))
    try:
      self.state, tx = self.trainer.new_state(0)
      self.trainer.compile_steps(tx)
      self.data = self.trainer.sampler(workdir_lib.Progress(), self.state)
      self.step = 0
      self.steps_per_s(1)  # warm-up: compiles
    except BaseException:
      self.trainer.close()
      raise

  def steps_per_s(self, steps: int) -> float:
    """Steps/s of the next `steps` steps of the loop body (batch, step)."""
    start = time.perf_counter()
    for _ in range(steps):
      self.state, metrics = self.trainer.train_step(self.state, self.data.batch(self.step))
      self.step += 1
    jax.block_until_ready(metrics)
    return steps / (time.perf_counter() - start)

  def close(self) -> None:
    self.trainer.close()


# --------------------------------------------------------------------------- #
# Separation.
# --------------------------------------------------------------------------- #

FILE_RATE = 44100  # the rate of the songs the scripts separate


def song(seconds: float) -> np.ndarray:
  """[T, 2] float32 at 44.1 kHz: one synthetic 60 s mix repeated."""
  mix = generator.make_track(0, min(seconds, 60.0), FILE_RATE)["mixture"]
  n = round(seconds * FILE_RATE)
  return np.tile(mix, (-(-n // len(mix)), 1))[:n]


def write_wav(path: pathlib.Path, seconds: float) -> None:
  """`song(seconds)` as a 16-bit stereo wav at 44.1 kHz, written a minute at a time."""
  import soundfile

  block = song(min(seconds, 60.0))
  with soundfile.SoundFile(str(path), "w", FILE_RATE, 2, subtype="PCM_16") as f:
    left = round(seconds * FILE_RATE)
    while left > 0:
      f.write(block[:left])
      left -= len(block)


def make_separator(config, smoke: bool = False) -> separate.Separator:
  """The config's network at random weights on the JAX engine; with `smoke`, 2 s
  windows instead of the default 30 s."""
  model = models.from_config(config)
  return jax_engine.separator_from_model(model, init_variables(model), config.data.sample_rate,
                                         window_seconds=2.0 if smoke else None)

"""Exports a trained Wave-U-Net to run without this project's JAX code.

  python -m waveunet_jax.export --workdir=runs/m4 --format=onnx --output=m4.onnx
  python -m waveunet_jax.export --workdir=runs/m4 --checkpoint=latest --format=tflite \\
      --float16 --output=m4.tflite
  waveunet-separate --model=m4.onnx song.wav --output_dir=separated

The formats (stablehlo, saved_model, tflite, onnx) and how each is written and loaded:
`model_formats.MODEL_FORMATS`. `export` writes one, `metadata` is what goes beside it.
For users: docs/export.md.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import sys
from typing import Any

from absl import flags

import waveunet_jax
from waveunet_jax import console, files, shared_flags
from waveunet_jax.separation import model_formats


class ExportError(ValueError):
  """An export that cannot be made; the message says why and what to do."""


def metadata(engine, fmt: str, config=None, batch_size: int | None = None,
             **extra) -> dict[str, Any]:
  """What a consumer of the export needs, as JSON: the sources (in output order), the
  sample rate (Hz), channels, output type ('difference': the last source is the mix
  minus the others), the input and output length of one window, the offset of the
  output's first sample in the input, the tiling the separator uses with them, the
  batch size (None: any), the residual source for full-band separation, the
  project version, where the parameters came from, and the training config. It goes
  beside the model (`model.onnx.json`; `waveunet_jax.json` inside a SavedModel folder:
  `model_formats.metadata_path`)."""
  from waveunet_jax import models

  model = engine.model
  size = models.Lengths(engine.tiling.input_length,
                        models.output_length_for(model, engine.tiling.input_length))
  return {
      "schema": model_formats.SCHEMA,
      "format": fmt,
      "project": "waveunet_jax",
      "version": waveunet_jax.__version__,
      "sources": list(engine.sources),
      "sample_rate": engine.sample_rate,
      "num_channels": engine.num_channels,
      "output_type": engine.output,
      "input_length": size.input_length,
      "output_length": size.output_length,
      "output_offset": size.offset,
      "input": {"name": "mix", "shape": ["batch" if batch_size is None else batch_size,
                                         size.input_length, engine.num_channels],
                "dtype": "float32", "range": [-1.0, 1.0]},
      "output": {"name": "sources",
                 "shape": ["batch" if batch_size is None else batch_size,
                           len(engine.sources), size.output_length, engine.num_channels],
                 "dtype": "float32"},
      "batch_size": batch_size,
      "tiling": dataclasses.asdict(engine.tiling),
      "residual_source": engine.residual_source,
      "source_model": dict(engine.identity),
      "config": json.loads(config.to_json_best_effort()) if config is not None else None,
      **extra,
  }


def check_output(fmt: str, output: str | os.PathLike, overwrite: bool = False) -> pathlib.Path:
  """`output` as a path if a `fmt` export may be written there, ExportError else: the
  name must fit the format, and what is there already (the model or its metadata) is
  replaced only with `overwrite`, and only if it is what an export writes there (a
  file, or a SavedModel folder holding this project's metadata)."""
  if fmt not in model_formats.MODEL_FORMATS:
    raise ExportError(f"--format={fmt}: use one of {', '.join(model_formats.MODEL_FORMATS)}")
  if not str(output).strip():  # "" would be the current folder
    raise ExportError("--output is empty: name the file or SavedModel folder to write")
  output = pathlib.Path(output)
  expected = model_formats.MODEL_FORMATS[fmt].extension
  if expected and output.suffix.lower() != expected:
    raise ExportError(f"--output={output}: a {fmt} export's name ends in {expected}")
  targets = ([(output, model_formats.is_export_folder)] if expected is None else  # a folder
             [(output, None), (model_formats.metadata_path(output, fmt), None)])
  for path, ours in targets:
    try:
      files.check_target(path, ours)
    except files.WriteError as e:  # its message starts with the path
      raise ExportError(f"--output={e}" if path == output else f"--output={output}: {e}"
                        ) from None
    if (path.exists() or path.is_symlink()) and not overwrite:
      raise ExportError(f"--output={output}: {path} exists; add --overwrite to replace it")
  return output


def export(engine, fmt: str, output: str | os.PathLike, *, config=None,
           batch_size: int | None = None, float16: bool = False, int8: bool = False,
           overwrite: bool = False) -> pathlib.Path:
  """Writes `engine`'s model (a `jax_engine.JaxEngine`) as `fmt` to `output`, and its
  metadata beside it (inside a SavedModel folder, before it is renamed into place).
  An existing export there is replaced only if `overwrite` (see `check_output`).
  Returns the model's path.

  Each format exports the network's forward pass on the separator's window: the time
  length is fixed (the window `separate` uses, `--window_seconds`), the batch dimension
  symbolic where the format allows it, else `batch_size`. The model and its metadata
  are both written under temporary names and renamed when complete."""
  output = check_output(fmt, output, overwrite)
  options = {"float16": float16, "int8": int8}  # the `reduced` options of the formats
  for option, wanted in options.items():
    owner = next(name for name, f in model_formats.MODEL_FORMATS.items() if f.reduced == option)
    if wanted and fmt != owner:
      raise ExportError(f"--{option} is for --format={owner}")
  kind = model_formats.MODEL_FORMATS[fmt]
  if kind.fixed_batch:  # its converter refuses a symbolic batch
    batch_size = batch_size or 1
  reduced = bool(kind.reduced and options[kind.reduced])
  extra = {**kind.metadata,
           **({"weights": kind.reduced if reduced else "float32"} if kind.reduced else {})}
  meta = metadata(engine, fmt, config, batch_size, **extra)
  model_formats.check_metadata(meta, fmt)  # what separation will accept; a failure is a bug here
  text = json.dumps(meta, indent=2) + "\n"
  if kind.extension is None:  # a folder, the metadata inside it
    with files.atomic_path(output, ours=model_formats.is_export_folder) as temp:
      kind.write(engine, temp, batch_size, reduced)
      (temp / model_formats.METADATA_NAME).write_text(text)
    return output
  with files.atomic_path(output, suffix=kind.extension) as temp:  # converters go by it
    kind.write(engine, temp, batch_size, reduced)
  files.write_text_atomic(model_formats.metadata_path(output, fmt), text)
  return output


# --------------------------------------------------------------------------- #
# Command line.
# --------------------------------------------------------------------------- #


def _define_flags() -> None:
  # Defined only when run as a program (shared_flags says why).
  shared_flags.define(
      "workdir", "checkpoint", "window_seconds", "overlap", "batch_size", "overwrite",
      batch_size="Windows per call (default: any, where the format allows it).",
      overwrite="Replace an earlier export at --output.")
  flags.DEFINE_enum("format", None, list(model_formats.MODEL_FORMATS), "The export format.")
  flags.DEFINE_string("output", None, "The model file (.onnx, .tflite, .stablehlo) or "
                      "SavedModel folder to write.")
  flags.DEFINE_bool("float16", False, "tflite: float16 weights.")
  flags.DEFINE_bool("int8", False, "onnx: int8 weights (ONNX Runtime dynamic quantisation).")
  flags.mark_flags_as_required(["workdir", "format", "output"])


def check_flags(args) -> None:
  """ExportError naming the flag that cannot work: the output (`check_output`), the
  batch or the window."""
  from waveunet_jax.separation import jax_engine as engine_lib

  check_output(args.format, args.output, args.overwrite)
  if args.batch_size is not None and args.batch_size < 1:
    raise ExportError(f"--batch_size={args.batch_size}: must be a positive number of windows "
                      "(or left out: any batch, where the format allows it)")
  try:
    engine_lib.check_window_seconds(args.window_seconds)
  except ValueError as e:
    raise ExportError(str(e)) from None


def main(argv: list[str]) -> None:
  from waveunet_jax import workdir as workdir_lib
  from waveunet_jax.separation import jax_engine as engine_lib

  console.no_arguments(argv)
  args = flags.FLAGS
  try:
    check_flags(args)  # before the model loads
    engine = engine_lib.JaxEngine.from_workdir(
        args.workdir, args.checkpoint, window_seconds=args.window_seconds,
        overlap=args.overlap, batch_size=args.batch_size or 1)
    config = workdir_lib.load_config(args.workdir)
    path = export(engine, args.format, args.output, config=config,
                  batch_size=args.batch_size, float16=args.float16, int8=args.int8,
                  overwrite=args.overwrite)
  except ValueError as e:  # ExportError, SeparationError, ConfigError, a too short window
    sys.exit(f"error: {e}")
  console.done(f"done: wrote {path} and {model_formats.metadata_path(path, args.format)}; separate "
               f"with: {console.python()} -m waveunet_jax.separate --model={path} "
               "--output_dir=OUT SONG.wav")


def cli() -> None:
  """The program `python -m waveunet_jax.export` (and the console script
  waveunet-export)."""
  console.run_program(main, _define_flags, install=("export", "export"))


if __name__ == "__main__":
  cli()

"""Exports a trained Wave-U-Net to run without this project's JAX code.

  python -m waveunet_jax.export --workdir=runs/m4 --format=onnx --output=m4.onnx
  python -m waveunet_jax.export --workdir=runs/m4 --checkpoint=latest --format=tflite \\
      --float16 --output=m4.tflite
  waveunet-separate --model=m4.onnx song.wav --output_dir=separated

Formats (`exported.FORMATS`):

* `stablehlo`: `jax.export`'s serialised module (runs with `jax.export.deserialize`);
* `saved_model`: a TensorFlow SavedModel folder (`jax2tf`), serving signature
  `mix [batch, input_length, channels] -> sources [batch, sources, output_length, channels]`;
* `tflite`: LiteRT's flatbuffer of that SavedModel (float32, or float16 weights);
* `onnx`: an ONNX model (`jax2onnx`), `OPSET` (optionally with int8 weights,
  ONNX Runtime's dynamic quantisation).

Each exports the network's forward pass on the separator's window: the time length is
fixed (the window `separate` uses, `--window_seconds`), the batch dimension symbolic
where the format allows it, else `--batch_size`. The metadata goes beside the model
(`model.onnx.json`; `waveunet_jax.json` inside a SavedModel folder): see `metadata`.
Both are written under temporary names and renamed when complete.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import sys
import tempfile
from typing import Any

import numpy as np
from absl import app, flags

import waveunet_jax
from waveunet_jax import exported, files
from waveunet_jax.separator import SeparationError

OPSET = 17


class ExportError(ValueError):
  """An export that cannot be made; the message says why and what to do."""


def metadata(engine, fmt: str, config=None, batch_size: int | None = None,
             **extra) -> dict[str, Any]:
  """What a consumer of the export needs, as JSON: the sources (in output order), the
  sample rate (Hz), channels, output type ('difference': the last source is the mix
  minus the others), the input and output length of one window, the offset of the
  output's first sample in the input, the tiling the separator uses with them, the
  batch size (None: any), the residual source for full-band separation, the
  project version, where the parameters came from, and the training config."""
  from waveunet_jax import models

  model = engine.model
  size = models.Lengths(engine.tiling.input_length,
                        models.output_length_for(model, engine.tiling.input_length))
  return {
      "schema": exported.SCHEMA,
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


def forward_function(engine):
  """The network's inference forward pass with its variables as constants."""
  model, variables = engine.model, engine.variables
  return lambda mix: model.apply(variables, mix, train=False)


def export_stablehlo(engine, batch_size: int | None) -> bytes:
  import jax
  import jax.numpy as jnp

  batch = jax.export.symbolic_shape("batch")[0] if batch_size is None else batch_size
  shape = (batch, engine.tiling.input_length, engine.num_channels)
  return jax.export.export(jax.jit(forward_function(engine)))(
      jax.ShapeDtypeStruct(shape, jnp.float32)).serialize()


def export_onnx(engine, batch_size: int | None) -> bytes:
  """ONNX through jax2onnx at `OPSET`, input `mix`, output `sources`."""
  import jax2onnx

  batch = "batch" if batch_size is None else batch_size
  proto = jax2onnx.to_onnx(
      forward_function(engine),
      inputs=[(batch, engine.tiling.input_length, engine.num_channels)],
      model_name="waveunet", opset=OPSET, input_names=["mix"], output_names=["sources"])
  return proto.SerializeToString()


def save_saved_model(engine, folder: pathlib.Path, batch_size: int | None) -> None:
  """A TensorFlow SavedModel through jax2tf (native serialisation: the network is one
  XlaCallModule op holding its StableHLO), the weights as TF variables, and the serving
  signature `mix -> {"sources": ...}` with a symbolic batch unless `batch_size`."""
  import jax
  import tensorflow as tf
  from jax.experimental import jax2tf

  model, channels = engine.model, engine.num_channels
  length = engine.tiling.input_length
  leaves, treedef = jax.tree_util.tree_flatten(engine.variables)
  module = tf.Module()
  module.weights = [tf.Variable(np.asarray(leaf), trainable=False) for leaf in leaves]
  apply = jax2tf.convert(
      lambda leaves, mix: model.apply(jax.tree_util.tree_unflatten(treedef, leaves), mix,
                                      train=False),
      polymorphic_shapes=[None, None if batch_size else f"(b, {length}, {channels})"],
      with_gradient=False)

  @tf.function(autograph=False, input_signature=[
      tf.TensorSpec([batch_size, length, channels], tf.float32, name="mix")])
  def serve(mix):
    return {"sources": apply(module.weights, mix)}

  module.serve = serve
  tf.saved_model.save(module, str(folder), signatures={"serving_default": serve})


def convert_tflite(saved_model: pathlib.Path, float16: bool) -> bytes:
  """LiteRT's flatbuffer of a fixed-batch SavedModel: the converter legalises the
  StableHLO inside jax2tf's XlaCallModule to builtin ops (no TF ops needed at run
  time). float16: weights stored as float16, computed in float32."""
  import tensorflow as tf

  converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
  converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
  if float16:
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.target_spec.supported_types = [tf.float16]
  return converter.convert()


def quantize_onnx(path: pathlib.Path) -> None:
  """ONNX Runtime's dynamic quantisation in place: int8 weights, activations quantised
  per call."""
  from onnxruntime.quantization import QuantType, quantize_dynamic

  with files.atomic_path(path, suffix=".onnx") as temp:
    quantize_dynamic(str(path), str(temp), weight_type=QuantType.QInt8)


def check_output(fmt: str, output: str | os.PathLike, overwrite: bool = False) -> pathlib.Path:
  """`output` as a path if a `fmt` export may be written there, ExportError else: the
  name must fit the format, and what is there already (the model or its metadata) is
  replaced only with `overwrite`, and only if it is what an export writes there (a
  file, or a SavedModel folder holding this project's metadata)."""
  if fmt not in exported.FORMATS:
    raise ExportError(f"--format={fmt}: use one of {', '.join(exported.FORMATS)}")
  if not str(output).strip():  # "" would be the current folder
    raise ExportError("--output is empty: name the file or SavedModel folder to write")
  output = pathlib.Path(output)
  expected = {"onnx": ".onnx", "tflite": ".tflite", "stablehlo": ".stablehlo"}.get(fmt)
  if expected and output.suffix.lower() != expected:
    raise ExportError(f"--output={output}: a {fmt} export's name ends in {expected}")
  targets = ([(output, exported.is_export_folder)] if fmt == "saved_model" else
             [(output, None), (exported.metadata_path(output, fmt), None)])
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
  """Writes `engine`'s model (a `engine.JaxEngine`) as `fmt` to `output`, and its
  metadata beside it (inside a SavedModel folder, before it is renamed into place).
  An existing export there is replaced only if `overwrite` (see `check_output`).
  Returns the model's path."""
  output = check_output(fmt, output, overwrite)
  if float16 and fmt != "tflite":
    raise ExportError("--float16 is for --format=tflite")
  if int8 and fmt != "onnx":
    raise ExportError("--int8 is for --format=onnx")
  if fmt == "tflite":  # a fixed batch (LiteRT's converter refuses a symbolic one)
    batch_size = batch_size or 1
  extra = {"onnx": {"opset": OPSET, "weights": "int8" if int8 else "float32"},
           "tflite": {"weights": "float16" if float16 else "float32"}}.get(fmt, {})
  meta = metadata(engine, fmt, config, batch_size, **extra)
  exported.check_metadata(meta, fmt)  # what separation will accept; a failure is a bug here
  text = json.dumps(meta, indent=2) + "\n"
  if fmt == "saved_model":
    with files.atomic_path(output, ours=exported.is_export_folder) as temp:
      save_saved_model(engine, temp, batch_size)
      (temp / exported.METADATA_NAME).write_text(text)
    return output
  with files.atomic_path(output) as temp:
    if fmt == "stablehlo":
      temp.write_bytes(export_stablehlo(engine, batch_size))
    elif fmt == "onnx":
      temp.write_bytes(export_onnx(engine, batch_size))
    else:
      with tempfile.TemporaryDirectory() as folder:
        save_saved_model(engine, pathlib.Path(folder) / "saved_model", batch_size)
        temp.write_bytes(convert_tflite(pathlib.Path(folder) / "saved_model", float16))
  if int8:
    quantize_onnx(output)
  files.write_text_atomic(exported.metadata_path(output, fmt), text)
  return output


# --------------------------------------------------------------------------- #
# Command line.
# --------------------------------------------------------------------------- #


def _define_flags() -> None:
  flags.DEFINE_string("workdir", None, "Training workdir of the model.")
  flags.DEFINE_string("checkpoint", "best", "best, latest or a step number.")
  flags.DEFINE_enum("format", None, list(exported.FORMATS), "The export format.")
  flags.DEFINE_string("output", None, "The model file (.onnx, .tflite, .stablehlo) or "
                      "SavedModel folder to write.")
  flags.DEFINE_float("window_seconds", None, "Output seconds per window (default: what "
                     "separate uses).")
  flags.DEFINE_float("overlap", 0.0, "As for separate.")
  flags.DEFINE_integer("batch_size", None, "Windows per call (default: any, where the "
                       "format allows it).")
  flags.DEFINE_bool("float16", False, "tflite: float16 weights.")
  flags.DEFINE_bool("int8", False, "onnx: int8 weights (ONNX Runtime dynamic quantisation).")
  flags.DEFINE_bool("overwrite", False, "Replace an earlier export at --output.")
  flags.mark_flags_as_required(["workdir", "format", "output"])


def check_flags(args) -> None:
  """ExportError naming the flag that cannot work: the output (`check_output`), the
  batch or the window."""
  from waveunet_jax import engine as engine_lib

  check_output(args.format, args.output, args.overwrite)
  if args.batch_size is not None and args.batch_size < 1:
    raise ExportError(f"--batch_size={args.batch_size}: must be a positive number of windows "
                      "(or left out: any batch, where the format allows it)")
  try:
    engine_lib.check_window_seconds(args.window_seconds)
  except ValueError as e:
    raise ExportError(str(e)) from None


def main(argv: list[str]) -> None:
  from waveunet_jax import checkpoints, console, engine as engine_lib, models

  console.setup()
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  args = flags.FLAGS
  try:
    check_flags(args)  # before the model loads
    engine = engine_lib.JaxEngine.from_workdir(
        args.workdir, args.checkpoint, window_seconds=args.window_seconds,
        overlap=args.overlap, batch_size=args.batch_size or 1)
    config = checkpoints.load_config(args.workdir)
    path = export(engine, args.format, args.output, config=config,
                  batch_size=args.batch_size, float16=args.float16, int8=args.int8,
                  overwrite=args.overwrite)
  except ValueError as e:  # ExportError, SeparationError, ConfigError, a too short window
    sys.exit(f"error: {e}")
  console.done(f"done: wrote {path} and {exported.metadata_path(path, args.format)}; separate "
               f"with: {console.python()} -m waveunet_jax.separate --model={path} "
               "--output_dir=OUT SONG.wav")


def cli() -> None:
  """The program `python -m waveunet_jax.export` (and a console script's entry)."""
  with waveunet_jax.needs("export", "export"):
    _define_flags()
    waveunet_jax.run(main, __name__)


if __name__ == "__main__":
  cli()

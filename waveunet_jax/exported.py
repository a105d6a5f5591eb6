"""Engines for exported models: the `separator.Separator` on ONNX Runtime, LiteRT,
TensorFlow or a serialised `jax.export` module, with the same tiling, streaming,
resampling and file handling as on the JAX engine.

  from waveunet_jax import exported, separator
  sep = separator.Separator(exported.load("model.onnx"))   # imports neither JAX nor TF

An export is the model file and its metadata (`metadata_path`: `model.onnx.json` beside
a file, `waveunet_jax.json` inside a SavedModel folder), which holds everything a
consumer needs (see `export.py` and the README's Export section): sources, sample
rate, channels, output type, the window's input and output lengths and the offset of
the output in the input, the tiling, the batch size (null: any), the config and the
project version. This module imports each runtime only when it loads a model of its
format: ONNX needs `onnxruntime` alone (`pip install 'waveunet_jax[onnx]'`), LiteRT
`ai-edge-litert` (`[tflite]`; else TensorFlow's deprecated copy of it), StableHLO JAX
(`[jax]`), a SavedModel TensorFlow (`[export]`).
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any, Callable

import numpy as np

from waveunet_jax.separator import SeparationError, Tiling

FORMATS = ("stablehlo", "saved_model", "tflite", "onnx")
EXTENSIONS = {".onnx": "onnx", ".tflite": "tflite", ".stablehlo": "stablehlo"}
METADATA_NAME = "waveunet_jax.json"  # inside a SavedModel folder
SCHEMA = "waveunet_jax.export/1"


def format_of(path: str | os.PathLike) -> str:
  """The export format of `path`, from its extension (a folder: a SavedModel)."""
  path = pathlib.Path(path)
  if path.is_dir():
    return "saved_model"
  if path.suffix.lower() in EXTENSIONS:
    return EXTENSIONS[path.suffix.lower()]
  raise SeparationError(f"--model={path}: not an export (.onnx, .tflite, .stablehlo or a "
                        "SavedModel folder)")


def metadata_path(path: str | os.PathLike, fmt: str | None = None) -> pathlib.Path:
  path = pathlib.Path(path)
  if (fmt or format_of(path)) == "saved_model":
    return path / METADATA_NAME
  return path.with_name(path.name + ".json")


def is_export_folder(path: str | os.PathLike) -> bool:
  """Whether `path` is a folder that an export wrote: it holds this project's metadata
  (`METADATA_NAME`, of `SCHEMA`). Only such a folder may be replaced by a new export."""
  try:
    return json.loads((pathlib.Path(path) / METADATA_NAME).read_text()).get("schema") == SCHEMA
  except (OSError, ValueError, AttributeError):  # none, unreadable, or not a JSON object
    return False


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
  meta = metadata_path(path)
  try:
    data = json.loads(meta.read_text())
  except OSError:
    raise SeparationError(f"--model={path}: no metadata {meta}; export the model with "
                          "python -m waveunet_jax.export") from None
  except ValueError as e:
    raise SeparationError(f"--model={path}: cannot read {meta} ({e})") from None
  if data.get("schema") != SCHEMA:
    raise SeparationError(f"--model={path}: {meta} is not {SCHEMA} metadata")
  return data


class ExportedEngine:
  """A `separator.Engine` over an exported model's forward function."""

  def __init__(self, metadata: dict[str, Any], forward: Callable[[np.ndarray], np.ndarray],
               batch_size: int):
    self.metadata = metadata
    self.sources = tuple(metadata["sources"])
    self.num_channels = int(metadata["num_channels"])
    self.sample_rate = int(metadata["sample_rate"])
    self.output = metadata["output_type"]
    self.residual_source = metadata.get("residual_source")
    self.tiling = Tiling(**metadata["tiling"])
    self.batch_size = batch_size
    # What evaluation records: the exported model's origin, run on this format.
    self.identity = {**metadata.get("source_model", {}), "engine": metadata["format"],
                     "weights": metadata.get("weights", "float32")}
    self._forward = forward

  def forward(self, windows: np.ndarray) -> np.ndarray:
    return self._forward(np.ascontiguousarray(windows, np.float32))


def load(path: str | os.PathLike, batch_size: int | None = None) -> ExportedEngine:
  """The engine of an export. `batch_size`: windows per call (default: the export's
  fixed batch, else 1)."""
  path = pathlib.Path(path)
  if not path.exists():
    raise SeparationError(f"--model={path}: no such file or folder")
  fmt = format_of(path)
  metadata = read_metadata(path)
  fixed = metadata.get("batch_size")
  if fixed is not None and batch_size not in (None, fixed):
    raise SeparationError(f"--batch_size={batch_size}: {path} was exported for batches of "
                          f"{fixed}")
  batch_size = batch_size or fixed or 1
  loaders = {"onnx": _onnx, "tflite": _tflite, "saved_model": _saved_model,
             "stablehlo": _stablehlo}
  try:
    forward = loaders[fmt](path, metadata, batch_size)
  except ImportError as e:
    package = {"onnx": "onnxruntime (pip install 'waveunet_jax[onnx]')",
               "tflite": "ai-edge-litert (pip install 'waveunet_jax[tflite]')",
               "saved_model": "tensorflow (pip install 'waveunet_jax[export]')",
               "stablehlo": "jax (pip install 'waveunet_jax[jax]')"}[fmt]
    raise SeparationError(f"--model={path}: running a {fmt} export needs {package} ({e})"
                          ) from None
  return ExportedEngine(metadata, forward, batch_size)


def _onnx(path: pathlib.Path, metadata: dict[str, Any], batch_size: int):
  import onnxruntime

  options = onnxruntime.SessionOptions()
  options.log_severity_level = 3  # errors only
  session = onnxruntime.InferenceSession(str(path), options,
                                         providers=["CPUExecutionProvider"])
  name = session.get_inputs()[0].name
  return lambda x: session.run(None, {name: x})[0]


def _tflite(path: pathlib.Path, metadata: dict[str, Any], batch_size: int):
  try:  # LiteRT's own runtime; TensorFlow's copy of it is deprecated
    from ai_edge_litert.interpreter import Interpreter
  except ImportError:
    import tensorflow as tf

    Interpreter = tf.lite.Interpreter
  # LiteRT takes one thread unless told; JAX and ONNX Runtime take every core.
  interpreter = Interpreter(model_path=str(path), num_threads=os.cpu_count())
  inp = interpreter.get_input_details()[0]
  if inp["shape"][0] != batch_size:
    interpreter.resize_tensor_input(inp["index"], [batch_size, *inp["shape"][1:]])
  interpreter.allocate_tensors()
  out = interpreter.get_output_details()[0]

  def forward(x):
    interpreter.set_tensor(inp["index"], x)
    interpreter.invoke()
    return interpreter.get_tensor(out["index"]).copy()

  return forward


def _saved_model(path: pathlib.Path, metadata: dict[str, Any], batch_size: int):
  import tensorflow as tf

  tf.config.set_visible_devices([], "GPU")  # the export runs where JAX is not
  module = tf.saved_model.load(str(path))
  function = module.signatures["serving_default"]
  name = list(function.structured_outputs)[0]
  return lambda x: function(mix=tf.constant(x))[name].numpy()


def _stablehlo(path: pathlib.Path, metadata: dict[str, Any], batch_size: int):
  import jax

  exported = jax.export.deserialize(bytearray(path.read_bytes()))
  call = jax.jit(exported.call)
  return call

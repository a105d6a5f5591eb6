"""Export formats: how each is written (for `export`) and the engines that run them,
the `separator.Separator` on ONNX Runtime, LiteRT, TensorFlow or a serialised
`jax.export` module, with the same tiling, streaming, resampling and file handling as on
the JAX engine.

  from waveunet_jax.separation import model_formats, separator
  sep = separator.Separator(model_formats.load("model.onnx"))   # imports neither JAX nor TF

`MODEL_FORMATS` is the one registry of formats: a new one is an entry there (a
`ModelFormat`), which `export`, `load` and the command lines all follow. An export is
the model file and its metadata (`metadata_path`), whose schema this module owns and
checks on every load (`check_metadata`, `check_shapes`). For users: docs/export.md.
"""

from __future__ import annotations

import dataclasses
import json
import logging as std_logging
import os
import pathlib
import struct
import tempfile
from collections.abc import Mapping
from typing import Any, Callable

import numpy as np

from waveunet_jax.separation.separator import SeparationError, Tiling

# The ONNX opset of onnx exports.
OPSET = 17
METADATA_NAME = "waveunet_jax.json"  # inside a SavedModel folder
SCHEMA = "waveunet_jax.export/1"


def format_of(path: str | os.PathLike) -> str:
  """The export format of `path`, from its extension (a folder: a SavedModel)."""
  path = pathlib.Path(path)
  for name, fmt in MODEL_FORMATS.items():
    if (fmt.extension is None if path.is_dir()
        else fmt.extension is not None and path.suffix.lower() == fmt.extension):
      return name
  extensions = [f.extension for f in MODEL_FORMATS.values() if f.extension is not None]
  raise SeparationError(f"--model={path}: not an export ({', '.join(extensions)} or a "
                        "SavedModel folder)")


def metadata_path(path: str | os.PathLike, fmt: str | None = None) -> pathlib.Path:
  path = pathlib.Path(path)
  if MODEL_FORMATS[fmt or format_of(path)].extension is None:  # a folder
    return path / METADATA_NAME
  return path.with_name(path.name + ".json")


def is_export_folder(path: str | os.PathLike) -> bool:
  """Whether `path` is a folder that an export wrote: it holds this project's metadata
  (`METADATA_NAME`, of `SCHEMA`). Only such a folder may be replaced by a new export."""
  try:
    return json.loads((pathlib.Path(path) / METADATA_NAME).read_text()).get("schema") == SCHEMA
  except (OSError, ValueError, AttributeError):  # none, unreadable, or not a JSON object
    return False


def read_metadata(path: str | os.PathLike, fmt: str | None = None) -> dict[str, Any]:
  """The metadata of the export at `path`, checked by `check_metadata`; SeparationError
  naming the file (and the field) for metadata that is missing, unreadable or wrong."""
  fmt = fmt or format_of(path)
  meta = metadata_path(path, fmt)
  try:
    data = json.loads(meta.read_text())
  except OSError:
    raise SeparationError(f"--model={path}: no metadata {meta}; export the model with "
                          "python -m waveunet_jax.export") from None
  except ValueError as e:
    raise SeparationError(f"--model={path}: cannot read {meta} ({e})") from None
  try:
    check_metadata(data, fmt)
  except _Invalid as e:
    raise SeparationError(f"--model={path}: {meta}: {e}; export the model again (python -m "
                          "waveunet_jax.export)") from None
  return data


class _Invalid(ValueError):
  """A metadata field that cannot be: the message names it."""


# export.metadata writes these; separation reads them. `models.OUTPUTS` owns the output
# types, but importing models would import JAX, which an ONNX-only install lacks.
_OUTPUT_TYPES = ("direct", "difference")


def check_metadata(data: Any, fmt: str) -> None:
  """Raises ValueError naming the first field of export metadata `data` whose presence,
  type or range cannot be, for an export of format `fmt`: the schema of what
  `export.metadata` writes, as far as separation reads it (the model's shapes are
  checked against it when it is loaded, `check_shapes`). Fields only for people
  (`input`, `output`, `config`, `version`) are not checked.

  The metadata (`model.onnx.json` beside a file, `waveunet_jax.json` inside a SavedModel
  folder) holds everything a consumer needs: sources, sample rate, channels, output
  type, the window's input and output lengths and the offset of the output in the
  input, the tiling, the batch size (null: any), the config and the project version.
  Checked on every load, with the model's real shapes, an edited or foreign export is
  one error naming the file and the field."""
  if not isinstance(data, dict):
    raise _Invalid(f"holds a JSON {_json_type(data)}, not an object of {SCHEMA} fields")
  if data.get("schema") != SCHEMA:
    raise _Invalid(f"schema is {_show(data.get('schema'))}: not {SCHEMA} metadata")
  if data.get("format") != fmt:
    raise _Invalid(f"format is {_show(data.get('format'))}, but the model is a {fmt} export")
  output_type = _field(data, "output_type")
  if output_type not in _OUTPUT_TYPES:
    raise _Invalid(f"output_type is {_show(output_type)}, not one of {', '.join(_OUTPUT_TYPES)}")
  sources = _field(data, "sources")
  if (not isinstance(sources, list) or not sources
      or not all(isinstance(s, str) and s for s in sources)):
    raise _Invalid(f"sources is {_show(sources)}, not a list of source names")
  if len(set(sources)) != len(sources):
    raise _Invalid(f"sources {_show(sources)} repeats a name")
  if output_type == "difference" and len(sources) < 2:
    raise _Invalid(f"sources {_show(sources)}: a difference output has at least two")
  for name in ("sample_rate", "num_channels", "input_length", "output_length"):
    _whole(data, name, 1)
  _whole(data, "output_offset", 0)
  if data["output_offset"] + data["output_length"] > data["input_length"]:
    raise _Invalid(f"output_offset {data['output_offset']} + output_length "
                   f"{data['output_length']} exceed input_length {data['input_length']}")
  if data.get("batch_size") is not None:
    _whole(data, "batch_size", 1)
  residual = data.get("residual_source")
  if residual is not None and residual not in sources:
    raise _Invalid(f"residual_source is {_show(residual)}, not one of sources "
                   f"({', '.join(sources)})")
  tiling = _field(data, "tiling")
  if not isinstance(tiling, dict):
    raise _Invalid(f"tiling is {_show(tiling)}, not an object")
  names = [f.name for f in dataclasses.fields(Tiling)]
  if set(tiling) != set(names):
    extra, missing = sorted(set(tiling) - set(names)), sorted(set(names) - set(tiling))
    raise _Invalid(f"tiling {'has the unknown key(s) ' + ', '.join(extra) if extra else ''}"
                   f"{' and ' if extra and missing else ''}"
                   f"{'lacks ' + ', '.join(missing) if missing else ''} (its keys are "
                   f"{', '.join(names)})")
  for name in names:
    _whole(tiling, name, 1 if name == "hop" else 0, "tiling.")
  if tiling["input_length"] != data["input_length"]:
    raise _Invalid(f"tiling.input_length {tiling['input_length']} differs from input_length "
                   f"{data['input_length']}")
  kept = tiling["keep_start"] + tiling["hop"] + tiling["overlap"]
  if kept > data["output_length"]:
    raise _Invalid(f"tiling keeps output samples up to {kept} (keep_start + hop + overlap), "
                   f"past output_length {data['output_length']}")
  for name, kind in (("source_model", dict), ("weights", str)):
    if not isinstance(data.get(name, kind()), kind):
      raise _Invalid(f"{name} is {_show(data[name])}, not a JSON {_json_type(kind())}")


def _field(data: dict[str, Any], name: str, prefix: str = "") -> Any:
  if name not in data:
    raise _Invalid(f"{prefix}{name} is missing")
  return data[name]


def _whole(data: dict[str, Any], name: str, low: int, prefix: str = "") -> None:
  """Raises _Invalid unless data[name] is a whole number (a JSON integer) >= low."""
  value = _field(data, name, prefix)
  if not isinstance(value, int) or isinstance(value, bool) or value < low:
    raise _Invalid(f"{prefix}{name} is {_show(value)}, not a whole number "
                   f"{'above 0' if low == 1 else 'from 0'}")


def _show(value: Any) -> str:
  text = json.dumps(value)
  return text if len(text) <= 60 else text[:57] + "..."


def _json_type(value: Any) -> str:
  return {dict: "object", list: "array", str: "string", bool: "boolean", int: "number",
          float: "number", type(None): "null"}.get(type(value), type(value).__name__)


def check_shapes(data: dict[str, Any], batch_size: int,
                 inputs: list[tuple[int | None, ...]],
                 outputs: list[tuple[int | None, ...]]) -> None:
  """Raises ValueError naming the metadata field that the model's real input and
  output shapes (None: a dimension of any size) contradict: the model must take one
  mix [batch, input_length, num_channels] and give sources [batch, len(sources),
  output_length, num_channels] first."""
  for role, shapes, want in (
      ("input", inputs, (("batch_size", batch_size), ("input_length", data["input_length"]),
                         ("num_channels", data["num_channels"]))),
      ("output", outputs, (("batch_size", batch_size), ("sources", len(data["sources"])),
                           ("output_length", data["output_length"]),
                           ("num_channels", data["num_channels"])))):
    if (role == "input" and len(shapes) != 1) or not shapes:
      raise _Invalid(f"the model has {len(shapes)} {role}s; an export takes one mix and "
                     "gives the sources first")
    shape = shapes[0]
    if len(shape) != len(want):
      raise _Invalid(f"the model's {role} has shape {_shape(shape)}, not [" + ", ".join(
          name for name, _ in want) + "]")
    for size, (name, value) in zip(shape, want):
      if size is not None and size != value:
        shown = {"batch_size": value,
                 "sources": f"{_show(data['sources'])} ({value} sources)"}.get(
                     name, data.get(name))
        raise _Invalid(f"{name} is {shown}, but the model's {role} has {size} there (its "
                       f"shape: {_shape(shape)})")


def _shape(shape: tuple[int | None, ...]) -> str:
  return "[" + ", ".join("any" if d is None else str(d) for d in shape) + "]"


# --------------------------------------------------------------------------- #
# Writing, for `export.export`: each writer puts the model of an `jax_engine.JaxEngine`
# at `path` (a file, or a folder for a SavedModel), with a symbolic batch unless
# `batch_size`; the last argument is the format's `reduced` option.
# --------------------------------------------------------------------------- #


def forward_function(engine):
  """The network's inference forward pass with its variables as constants."""
  model, variables = engine.model, engine.variables
  return lambda mix: model.apply(variables, mix, train=False)


def _write_stablehlo(engine, path: pathlib.Path, batch_size: int | None, reduced: bool) -> None:
  del reduced  # not an option of this format
  path.write_bytes(_stablehlo_bytes(engine, batch_size))


def _stablehlo_bytes(engine, batch_size: int | None) -> bytes:
  import jax
  import jax.numpy as jnp

  batch = jax.export.symbolic_shape("batch")[0] if batch_size is None else batch_size
  shape = (batch, engine.tiling.input_length, engine.num_channels)
  return jax.export.export(jax.jit(forward_function(engine)))(
      jax.ShapeDtypeStruct(shape, jnp.float32)).serialize()


def _write_onnx(engine, path: pathlib.Path, batch_size: int | None, int8: bool) -> None:
  """ONNX through jax2onnx at `OPSET`, input `mix`, output `sources`; `int8`: ONNX
  Runtime's dynamic quantisation of that (int8 weights, activations quantised per
  call)."""
  if not int8:
    path.write_bytes(_onnx_bytes(engine, batch_size))
    return
  from onnxruntime.quantization import QuantType, quantize_dynamic

  with tempfile.TemporaryDirectory() as folder:
    float32 = pathlib.Path(folder) / "float32.onnx"
    float32.write_bytes(_onnx_bytes(engine, batch_size))
    quantize_dynamic(str(float32), str(path), weight_type=QuantType.QInt8)


def _onnx_bytes(engine, batch_size: int | None) -> bytes:
  import jax2onnx

  batch = "batch" if batch_size is None else batch_size
  proto = jax2onnx.to_onnx(
      forward_function(engine),
      inputs=[(batch, engine.tiling.input_length, engine.num_channels)],
      model_name="waveunet", opset=OPSET, input_names=["mix"], output_names=["sources"])
  return proto.SerializeToString()


def _write_saved_model(engine, folder: pathlib.Path, batch_size: int | None,
                       reduced: bool) -> None:
  del reduced  # not an option of this format
  save_saved_model(engine, folder, batch_size)


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
  # TensorFlow's save sets absl's logger to WARNING: the caller's INFO lines would vanish.
  absl_logger = std_logging.getLogger("absl")
  level = absl_logger.level
  try:
    tf.saved_model.save(module, str(folder), signatures={"serving_default": serve})
  finally:
    absl_logger.setLevel(level)


def _write_tflite(engine, path: pathlib.Path, batch_size: int | None, float16: bool) -> None:
  with tempfile.TemporaryDirectory() as folder:
    save_saved_model(engine, pathlib.Path(folder) / "saved_model", batch_size)
    path.write_bytes(convert_tflite(pathlib.Path(folder) / "saved_model", float16))


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


# --------------------------------------------------------------------------- #
# Loading.
# --------------------------------------------------------------------------- #


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
  fixed batch, else 1). SeparationError, naming the file, for an export that cannot
  run: its metadata, a model file its runtime cannot load, or shapes that disagree."""
  path = pathlib.Path(path)
  if not path.exists():
    raise SeparationError(f"--model={path}: no such file or folder")
  fmt = format_of(path)
  metadata = read_metadata(path, fmt)
  fixed = metadata.get("batch_size")
  if fixed is not None and batch_size not in (None, fixed):
    raise SeparationError(f"--batch_size={batch_size}: {path} was exported for batches of "
                          f"{fixed}")
  batch_size = batch_size or fixed or 1
  try:
    forward, inputs, outputs = MODEL_FORMATS[fmt].load(path, batch_size)
  except ImportError as e:
    raise SeparationError(f"--model={path}: running a {fmt} export needs "
                          f"{MODEL_FORMATS[fmt].runtime} ({e})") from None
  except _Invalid as e:
    raise SeparationError(f"--model={path}: {e}") from None
  except Exception as e:  # each runtime raises its own errors for a file it cannot read
    lines = str(e).strip().splitlines()
    reason = (lines[0][:200] if lines else type(e).__name__)
    raise SeparationError(f"--model={path}: cannot load this {fmt} model ({reason}); is it "
                          "damaged or cut short? export the model again (python -m "
                          "waveunet_jax.export)") from None
  try:
    check_shapes(metadata, batch_size, inputs, outputs)
  except _Invalid as e:
    raise SeparationError(f"--model={path}: {metadata_path(path, fmt)}: {e}; export the "
                          "model again (python -m waveunet_jax.export)") from None
  return ExportedEngine(metadata, forward, batch_size)


def _dims(shape) -> tuple[int | None, ...]:
  """A runtime's shape as ints, None for a dimension of any size (a name, -1, None)."""
  return tuple(int(d) if isinstance(d, (int, np.integer)) and d >= 0 else None for d in shape)


def _onnx(path: pathlib.Path, batch_size: int):
  import onnxruntime

  options = onnxruntime.SessionOptions()
  options.log_severity_level = 3  # errors only
  session = onnxruntime.InferenceSession(str(path), options,
                                         providers=["CPUExecutionProvider"])
  name = session.get_inputs()[0].name
  return (lambda x: session.run(None, {name: x})[0],
          [_dims(i.shape) for i in session.get_inputs()],
          [_dims(o.shape) for o in session.get_outputs()])


def _tflite(path: pathlib.Path, batch_size: int):
  try:  # LiteRT's own runtime; TensorFlow's copy of it is deprecated
    from ai_edge_litert.interpreter import Interpreter
  except ImportError:
    import tensorflow as tf

    Interpreter = tf.lite.Interpreter
  # LiteRT takes one thread unless told; JAX and ONNX Runtime take every core.
  interpreter = Interpreter(model_path=str(path), num_threads=os.cpu_count())
  shapes = lambda details: [_dims(d.get("shape_signature", d["shape"])) for d in details]
  inputs, outputs = (shapes(interpreter.get_input_details()),
                     shapes(interpreter.get_output_details()))
  inp = interpreter.get_input_details()[0]
  if inp["shape"][0] != batch_size:
    interpreter.resize_tensor_input(inp["index"], [batch_size, *inp["shape"][1:]])
  interpreter.allocate_tensors()
  out = interpreter.get_output_details()[0]

  def forward(x):
    interpreter.set_tensor(inp["index"], x)
    interpreter.invoke()
    return interpreter.get_tensor(out["index"]).copy()

  return forward, inputs, outputs


def _saved_model(path: pathlib.Path, batch_size: int):
  if not any((path / name).is_file() for name in ("saved_model.pb", "saved_model.pbtxt")):
    raise _Invalid("is not a SavedModel folder (it holds no saved_model.pb); name an export's "
                   "folder, or export the model again (python -m waveunet_jax.export)")
  import tensorflow as tf

  tf.config.set_visible_devices([], "GPU")  # the export runs where JAX is not
  module = tf.saved_model.load(str(path))
  function = module.signatures["serving_default"]
  name = list(function.structured_outputs)[0]
  shape = lambda spec: (_dims(spec.shape.as_list()) if spec.shape.rank is not None else ())
  args, kwargs = function.structured_input_signature
  return (lambda x: function(mix=tf.constant(x))[name].numpy(),
          [shape(s) for s in [*args, *kwargs.values()]],
          [shape(function.structured_outputs[name])])


def _stablehlo(path: pathlib.Path, batch_size: int):
  data = path.read_bytes()
  if not _looks_like_flatbuffer(data):
    raise _Invalid("is not a jax.export serialisation (it does not start as a flatbuffer); "
                   "export the model again (python -m waveunet_jax.export)")
  import jax

  exported = jax.export.deserialize(bytearray(data))
  return (jax.jit(exported.call), [_dims(a.shape) for a in exported.in_avals],
          [_dims(a.shape) for a in exported.out_avals])


def _looks_like_flatbuffer(data: bytes) -> bool:
  """Whether `data` starts as a flatbuffer (jax.export's serialisation, which has no
  magic number) does: a root table and its vtable inside the data. Garbage almost never
  does, and jax.export.deserialize would follow its offsets anywhere."""
  if len(data) < 12:
    return False
  (root,) = struct.unpack_from("<I", data, 0)
  if root % 4 or not 4 <= root <= len(data) - 4:
    return False
  vtable = root - struct.unpack_from("<i", data, root)[0]
  if not 0 <= vtable <= len(data) - 4:
    return False
  vtable_size, table_size = struct.unpack_from("<HH", data, vtable)
  return (vtable_size >= 4 and vtable_size % 2 == 0 and vtable + vtable_size <= len(data)
          and 4 <= table_size and root + table_size <= len(data))


# --------------------------------------------------------------------------- #
# The formats.
# --------------------------------------------------------------------------- #


@dataclasses.dataclass(frozen=True)
class ModelFormat:
  """An export format: its file, how it is written and loaded, and what runs it.

  Each runtime is imported only when a model of its format loads: ONNX needs
  `onnxruntime` alone (`pip install 'waveunet_jax[onnx]'`), LiteRT `ai-edge-litert`
  (`[tflite]`; else TensorFlow's deprecated copy of it), StableHLO JAX (`[jax]`), a
  SavedModel TensorFlow (`[export]`); writing imports JAX and the format's converter
  the same way."""

  extension: str | None  # the model file's name ends in it; None: a folder
  # (engine, path, batch_size, reduced) -> None: writes the model at `path`.
  write: Callable[[Any, pathlib.Path, int | None, bool], None]
  # (path, batch_size) -> (forward, input shapes, output shapes), the shapes as `_dims`.
  load: Callable[[pathlib.Path, int], tuple[Callable, list, list]]
  runtime: str  # what loading it needs, for the error when that is missing
  fixed_batch: bool = False  # its converter takes no symbolic batch: 1 unless given
  reduced: str | None = None  # the option (and --flag) storing smaller weights
  metadata: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # extra fields


# stablehlo: `jax.export`'s serialised module (runs with `jax.export.deserialize`);
# saved_model: a TensorFlow SavedModel folder (`jax2tf`), serving signature
#   `mix [batch, input_length, channels] -> sources [batch, sources, output_length, channels]`;
# tflite: LiteRT's flatbuffer of that SavedModel (float32, or float16 weights);
# onnx: an ONNX model (`jax2onnx`) of opset OPSET (optionally with int8 weights, ONNX
#   Runtime's dynamic quantisation).
MODEL_FORMATS = {
    "stablehlo": ModelFormat(".stablehlo", _write_stablehlo, _stablehlo,
                        "jax (pip install 'waveunet_jax[jax]')"),
    "saved_model": ModelFormat(None, _write_saved_model, _saved_model,
                          "tensorflow (pip install 'waveunet_jax[export]')"),
    "tflite": ModelFormat(".tflite", _write_tflite, _tflite,
                     "ai-edge-litert (pip install 'waveunet_jax[tflite]')", fixed_batch=True,
                     reduced="float16"),
    "onnx": ModelFormat(".onnx", _write_onnx, _onnx,
                   "onnxruntime (pip install 'waveunet_jax[onnx]')", reduced="int8",
                   metadata={"opset": OPSET}),
}

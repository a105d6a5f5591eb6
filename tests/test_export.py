"""Exports: every format's forward pass and whole-song separation equal the JAX ones.

Tiny networks of both designs (the paper's: valid padding, decimation, linear or learned
upsampling; the seed's: same padding, max pooling, BatchNorm with running statistics)
at 8 kHz, exported at a short window so that a song takes many windows.
"""

import argparse
import functools
import json
import logging as std_logging
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from helpers import SHORT, noise, tiny_model_config, tones
from helpers import separator as tiny_separator
from waveunet_jax import export, models, separate
from waveunet_jax.separation import model_formats
from waveunet_jax.separation import jax_engine
from waveunet_jax.separation import separator

ROOT = pathlib.Path(__file__).resolve().parent.parent
RATE = 8000
DESIGNS = {
    "deep": dict(),
    "deep-learned": dict(upsampling="learned", output="direct"),
    "shallow": dict(padding="same", downsampling="maxpool", downsampling_factors=(1, 4, 4),
                    normalization="batchnorm"),
}


@functools.cache
def tiny_engine(design: str) -> jax_engine.JaxEngine:
  """A tiny random network; BatchNorm's running statistics made far from 0 and 1, so
  that an export which ignored them would show."""
  model = models.WaveUNet(**tiny_model_config(**DESIGNS[design]))
  mix = np.zeros((1, models.lengths(model, 1).input_length, 2), np.float32)
  variables = jax.jit(model.init)(jax.random.key(3), mix)
  if "batch_stats" in variables:
    rng = np.random.default_rng(0)
    variables = {**variables, "batch_stats": jax.tree_util.tree_map(
        lambda x: rng.uniform(0.5, 2.0, x.shape).astype(np.float32), variables["batch_stats"])}
  return jax_engine.JaxEngine(model, variables, RATE, window_seconds=0.05)


def export_to(tmp_path, design, fmt, **kwargs) -> pathlib.Path:
  path = tmp_path / f"{design}{model_formats.MODEL_FORMATS[fmt].extension or ''}"  # '': a folder
  return export.export(tiny_engine(design), fmt, path, **kwargs)


@pytest.mark.parametrize("design", list(DESIGNS))
@pytest.mark.parametrize("fmt", model_formats.MODEL_FORMATS)
def test_exported_forward_and_separation_equal_jax(tmp_path, design, fmt):
  absl_level = std_logging.getLogger("absl").level
  path = export_to(tmp_path, design, fmt)
  assert std_logging.getLogger("absl").level == absl_level  # TF's save changes it
  meta = json.loads(model_formats.metadata_path(path, fmt).read_text())
  jax_side = tiny_engine(design)
  assert meta["sources"] == list(jax_side.sources) and meta["sample_rate"] == RATE
  assert meta["input_length"] == jax_side.tiling.input_length
  assert meta["output_offset"] == (meta["input_length"] - meta["output_length"]) // 2
  batch = meta["batch_size"] or 3  # LiteRT's batch is fixed at export
  loaded = model_formats.load(path, batch_size=batch)
  windows = np.random.default_rng(1).uniform(
      -1, 1, (batch, meta["input_length"], 2)).astype(np.float32)
  want = np.asarray(jax_side.forward(windows))
  got = np.asarray(loaded.forward(windows))
  assert got.shape == want.shape == (batch, 2, meta["output_length"], 2)
  assert np.abs(got - want).max() < 1e-4
  song = np.random.default_rng(2).uniform(-0.5, 0.5, (22050, 2)).astype(np.float32)
  a = separator.Separator(loaded).separate(song, 22050)
  b = separator.Separator(jax_side).separate(song, 22050)
  for name in a:
    assert np.abs(a[name] - b[name]).max() < 1e-4


def test_bad_exports_are_one_line(tmp_path):
  with pytest.raises(export.ExportError, match="a onnx export's name ends in .onnx"):
    export.export(tiny_engine("deep"), "onnx", tmp_path / "m.bin")
  with pytest.raises(export.ExportError, match="--float16 is for --format=tflite"):
    export.export(tiny_engine("deep"), "stablehlo", tmp_path / "m.stablehlo", float16=True)
  (tmp_path / "m.onnx").write_bytes(b"not a model")
  with pytest.raises(separator.SeparationError, match="no metadata .*m.onnx.json"):
    model_formats.load(tmp_path / "m.onnx")
  with pytest.raises(separator.SeparationError, match="not an export"):
    model_formats.format_of(tmp_path / "m.bin")


def test_an_export_replaces_only_an_earlier_export_and_only_with_overwrite(tmp_path,
                                                                          monkeypatch):
  engine_ = tiny_engine("deep")
  mine = tmp_path / "mine"
  mine.mkdir()
  (mine / "notes.txt").write_text("my own files")
  for overwrite in (False, True):
    with pytest.raises(export.ExportError, match=r"mine: is a folder holding what this "
                                                 r"program did not write there"):
      export.export(engine_, "saved_model", mine, overwrite=overwrite)
  assert [p.name for p in mine.iterdir()] == ["notes.txt"]
  monkeypatch.chdir(mine)  # the working folder and those above it, never
  for output in (".", "..", str(tmp_path)):
    with pytest.raises(export.ExportError, match="is the current folder or one above it"):
      export.export(engine_, "saved_model", output, overwrite=True)
  assert [p.name for p in mine.iterdir()] == ["notes.txt"]
  (tmp_path / "m.onnx").mkdir()
  with pytest.raises(export.ExportError, match="m.onnx: is a folder, where this file output"):
    export.export(engine_, "onnx", tmp_path / "m.onnx", overwrite=True)
  # An earlier export: kept without --overwrite, replaced with it.
  path = export.export(engine_, "stablehlo", tmp_path / "m.stablehlo")
  path.write_bytes(b"an earlier export")
  with pytest.raises(export.ExportError, match=r"m.stablehlo exists; add --overwrite"):
    export.export(engine_, "stablehlo", path)
  assert path.read_bytes() == b"an earlier export"
  export.export(engine_, "stablehlo", path, overwrite=True)
  assert model_formats.load(path).forward is not None and path.read_bytes() != b"an earlier export"
  folder = export.export(engine_, "saved_model", tmp_path / "sm")
  (folder / "stale.txt").write_text("from an earlier export")
  with pytest.raises(export.ExportError, match=r"sm exists; add --overwrite"):
    export.export(engine_, "saved_model", folder)
  export.export(engine_, "saved_model", folder, overwrite=True)
  assert not (folder / "stale.txt").exists() and model_formats.is_export_folder(folder)
  assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("flag, value, message", [
    ("batch_size", 0, "--batch_size=0: must be a positive number of windows"),
    ("batch_size", -2, "--batch_size=-2: must be a positive number of windows"),
    ("window_seconds", 0.0, "--window_seconds=0: use a positive number of seconds"),
    ("window_seconds", 1e12, "--window_seconds=1e+12: use a positive number of seconds, at "
                             "most 3600"),
    ("output", "", "--output is empty: name the file or SavedModel folder to write"),
])
def test_export_flags_that_cannot_work_are_refused_before_loading(tmp_path, flag, value,
                                                                  message):
  import types

  args = dict(format="onnx", output=str(tmp_path / "m.onnx"), overwrite=False,
              batch_size=None, window_seconds=None)
  with pytest.raises(export.ExportError) as error:
    export.check_flags(types.SimpleNamespace(**{**args, flag: value}))
  assert str(error.value).startswith(message) and "\n" not in str(error.value)
  result = subprocess.run(  # the command line: one line, before any workdir is read
      [sys.executable, "-m", "waveunet_jax.export", f"--workdir={tmp_path / 'none'}",
       "--format=onnx", f"--output={tmp_path / 'm.onnx'}", f"--{flag}={value}"],
      cwd=ROOT, capture_output=True, text=True, timeout=300) if flag == "batch_size" else None
  if result is not None:
    assert result.stderr.strip().splitlines()[-1] == f"error: {message} (or left out: any " \
                                                     "batch, where the format allows it)"


NO_JAX = """
import sys

class Blocked:
  def find_spec(self, name, path=None, target=None):
    if name.split(".")[0] in ("jax", "jaxlib", "flax", "tensorflow", "optax", "orbax"):
      raise ImportError(f"{name} is blocked: the ONNX path must not import it")

sys.meta_path.insert(0, Blocked())
from waveunet_jax import separate
separate.cli()
"""


def test_separate_on_onnx_imports_neither_jax_nor_tensorflow(tmp_path):
  import soundfile as sf

  path = export_to(tmp_path, "shallow", "onnx")
  song = np.random.default_rng(4).uniform(-0.5, 0.5, (30000, 2)).astype(np.float32)
  sf.write(tmp_path / "song.wav", song, 44100, subtype="FLOAT")
  result = subprocess.run(
      [sys.executable, "-c", NO_JAX, f"--model={path}", str(tmp_path / "song.wav"),
       f"--output_dir={tmp_path / 'out'}", "--format=float", "--batch_size=2"],
      cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-3000:]
  want = separator.Separator(tiny_engine("shallow")).separate(song, 44100)
  for name, audio in want.items():
    got = sf.read(tmp_path / "out" / "song" / f"{name}.wav", dtype="float32")[0]
    assert np.abs(got - audio).max() < 1e-4
  # A --model with the flags that only a workdir's model takes is one line.
  result = subprocess.run(
      [sys.executable, "-c", NO_JAX, f"--model={path}", "--window_seconds=3",
       str(tmp_path / "song.wav"), f"--output_dir={tmp_path / 'out'}"],
      cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert result.returncode == 1
  assert result.stderr.strip().splitlines()[-1] == (
      "error: --window_seconds and --overlap are fixed when a model is exported "
      "(python -m waveunet_jax.export)")


def test_the_averaging_flags_reach_either_engine(tmp_path, monkeypatch):
  import soundfile as sf

  # A workdir's model: the flags go to its Separator.
  seen = {}
  monkeypatch.setattr(jax_engine, "separator_from_workdir",
                      lambda workdir, checkpoint, **kwargs: seen.update(kwargs))
  args = dict(workdir="RUN", model=None, checkpoint="best", residual_source="default",
              window_seconds=None, overlap=0.0, batch_size=None, shifts=2, flip=True, seed=5)
  separate.load_separator(argparse.Namespace(**args))
  assert (seen["shifts"], seen["flip"], seen["seed"]) == (2, True, 5)
  # An export, through the command line: the stems are the API's averaged ones.
  path = export.export(tiny_separator(window_seconds=SHORT).engine, "stablehlo",
                       tmp_path / "m.stablehlo")
  sf.write(tmp_path / "a.wav", tones(0.2, 44100) + noise(8820, peak=0.2), 44100,
           subtype="FLOAT")
  result = subprocess.run(
      [sys.executable, "-m", "waveunet_jax.separate", f"--model={path}", "--shifts=2", "--flip",
       "--seed=5", "--format=float", str(tmp_path / "a.wav"), f"--output_dir={tmp_path}/out"],
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr
  mix = sf.read(tmp_path / "a.wav", dtype="float32")[0]
  want = separate.Separator(model_formats.load(path), shifts=2, flip=True, seed=5).separate(mix, 44100)
  plain = separate.Separator(model_formats.load(path)).separate(mix, 44100)
  for name, stem in want.items():
    got = sf.read(tmp_path / "out" / "a" / f"{name}.wav", dtype="float32")[0]
    np.testing.assert_allclose(got, stem, rtol=0, atol=1e-6)
    assert np.abs(got - plain[name]).max() > 1e-3


@pytest.mark.parametrize("fmt, option, weights", [("onnx", "int8", "int8"),
                                                 ("tflite", "float16", "float16")])
def test_reduced_precision_exports_run_close_to_float(tmp_path, fmt, option, weights):
  path = export_to(tmp_path, "deep", fmt, **{option: True})
  meta = json.loads(model_formats.metadata_path(path).read_text())
  assert meta["weights"] == weights
  batch = meta["batch_size"] or 2
  windows = np.random.default_rng(5).uniform(-1, 1, (batch, meta["input_length"], 2)
                                              ).astype(np.float32)
  want = np.asarray(tiny_engine("deep").forward(windows))
  got = model_formats.load(path, batch_size=batch).forward(windows)
  error = np.sqrt(np.mean((got - want) ** 2) / np.mean(want ** 2))
  assert 0 < error < 0.1  # close, not equal


def test_export_command_from_a_trained_workdir(tmp_path, tiny_workdir):
  """The command line on a tiny trained run: export, then separate with the export as
  with the workdir."""
  command = [sys.executable, "-m", "waveunet_jax.export", f"--workdir={tiny_workdir}",
             "--format=onnx", f"--output={tmp_path / 'm.onnx'}", "--window_seconds=0.1"]
  result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  # The command names the Python that ran the export (relative where it lies below).
  python = os.path.relpath(sys.executable, ROOT)
  python = sys.executable if python.startswith("..") else python
  assert (f"separate with: {python} -m waveunet_jax.separate --model={tmp_path / 'm.onnx'}"
          in result.stdout)
  meta = json.loads((tmp_path / "m.onnx.json").read_text())
  assert meta["source_model"]["step"] == 3 and meta["config"]["data"]["sample_rate"] == RATE
  song = np.random.default_rng(6).uniform(-0.5, 0.5, (5000, 2)).astype(np.float32)
  a = separator.Separator(model_formats.load(tmp_path / "m.onnx")).separate(song, 44100)
  b = separator.Separator(jax_engine.JaxEngine.from_workdir(tiny_workdir,
                                                        window_seconds=0.1)).separate(song, 44100)
  for name in a:
    assert np.abs(a[name] - b[name]).max() < 1e-4
  result = subprocess.run(command[:-2] + ["--format=nope", f"--output={tmp_path / 'x'}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode != 0 and "Traceback" not in result.stderr


@pytest.fixture(scope="module")
def onnx_export(tmp_path_factory) -> pathlib.Path:
  """One real tiny ONNX export (and a song), for the tampered copies made of it."""
  import soundfile as sf

  folder = tmp_path_factory.mktemp("onnx_export")
  sf.write(folder / "song.wav", np.zeros((1000, 2), np.float32), RATE)
  return export.export(tiny_engine("deep"), "onnx", folder / "m.onnx")


def _edit(**fields):
  def edit(meta):
    for key, value in fields.items():
      if value is None:
        del meta[key]
      else:
        meta[key] = value
    return meta
  return edit


def _tiling(**fields):
  return lambda meta: {**meta, "tiling": {**meta["tiling"], **fields}}


def _retiled(meta):
  # A window of another length, consistent within the metadata: only the model says no.
  meta["input_length"] = meta["tiling"]["input_length"] = meta["input_length"] + 64
  return meta


# (name, model file name, a change of the metadata, of the model's bytes, the error's end)
TAMPERED = [
    ("truncated onnx", "m.onnx", None, lambda b: b[:len(b) // 2],
     "m.onnx: cannot load this onnx model ("),
    ("sample_rate 0", "m.onnx", _edit(sample_rate=0), None,
     "m.onnx.json: sample_rate is 0, not a whole number above 0"),
    ("sample_rate negative", "m.onnx", _edit(sample_rate=-8000), None,
     "m.onnx.json: sample_rate is -8000, not a whole number above 0"),
    ("1 source", "m.onnx", _edit(sources=["vocals"]), None,
     'm.onnx.json: sources ["vocals"]: a difference output has at least two'),
    ("3 sources", "m.onnx", _edit(sources=["bass", "drums", "vocals"]), None,
     'm.onnx.json: sources is ["bass", "drums", "vocals"] (3 sources), but the model\'s '
     "output has 2 there"),
    ("no sources", "m.onnx", _edit(sources=None), None, "m.onnx.json: sources is missing"),
    ("a list", "m.onnx", lambda meta: [meta], None,
     "m.onnx.json: holds a JSON array, not an object of waveunet_jax.export/1 fields"),
    ("hop 0", "m.onnx", _tiling(hop=0), None,
     "m.onnx.json: tiling.hop is 0, not a whole number above 0"),
    ("unknown tiling key", "m.onnx", _tiling(stride=400), None,
     "m.onnx.json: tiling has the unknown key(s) stride (its keys are input_length, hop, "
     "overlap, keep_start, pad_left)"),
    ("input_length", "m.onnx", _retiled, None,
     "m.onnx.json: input_length is 521, but the model's input has 457 there"),
    ("not a SavedModel", "sm", _edit(format="saved_model"), None,
     "sm: is not a SavedModel folder (it holds no saved_model.pb)"),
    ("garbage stablehlo", "m.stablehlo", _edit(format="stablehlo"),
     lambda b: b"\xff" * 4096, "m.stablehlo: is not a jax.export serialisation"),
]


@pytest.mark.parametrize("name, model, edit_metadata, edit_model, message", TAMPERED,
                         ids=[case[0] for case in TAMPERED])
def test_a_tampered_or_foreign_export_is_one_line_naming_the_file(
    tmp_path, onnx_export, name, model, edit_metadata, edit_model, message):
  path = tmp_path / model
  meta = json.loads(model_formats.metadata_path(onnx_export, "onnx").read_text())
  if model == "sm":
    path.mkdir()
  else:
    data = onnx_export.read_bytes()
    path.write_bytes(edit_model(data) if edit_model else data)
  meta = edit_metadata(meta) if edit_metadata else meta
  model_formats.metadata_path(path).write_text(json.dumps(meta))
  result = subprocess.run(
      [sys.executable, "-m", "waveunet_jax.separate", f"--model={path}",
       str(onnx_export.parent / "song.wav"), f"--output_dir={tmp_path / 'out'}"],
      cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert result.returncode == 1, result.stderr[-3000:]
  [line] = result.stderr.strip().splitlines()
  assert line.startswith(f"error: --model={path}: ") and message in line, line
  assert not (tmp_path / "out").exists()


def test_each_format_is_one_registry_entry_that_names_and_paths_follow(tmp_path):
  for name, fmt in model_formats.MODEL_FORMATS.items():
    path = tmp_path / f"m{fmt.extension or ''}"
    assert export.check_output(name, path) == path
    if fmt.extension is None:  # a folder, its metadata inside
      path.mkdir()
      assert model_formats.metadata_path(path) == path / model_formats.METADATA_NAME
    else:
      assert model_formats.metadata_path(path) == tmp_path / f"{path.name}.json"
    assert model_formats.format_of(path) == name
  assert [f.reduced for f in model_formats.MODEL_FORMATS.values() if f.reduced] == ["float16", "int8"]

"""notebooks/quickstart.ipynb, run top to bottom as on Colab.

The environment is Colab's situation: another TensorFlow (2.19, the `tensorflow`
distribution), matplotlib and a Jupyter kernel are installed first
(helpers.COLAB_PACKAGES, built while the other tests run); the notebook's own first
cells then install this project from the clone, train the smoke config, separate,
plot and evaluate. QUICK = True keeps training to 20 steps on 8 s songs.
"""

import json
import os
import pathlib
import subprocess
import textwrap

import helpers

ROOT = pathlib.Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "notebooks" / "quickstart.ipynb"

# Executes a notebook with the parameters given, papermill's way: a cell of them
# inserted after the cell tagged "parameters"; writes the executed notebook out.
RUNNER = textwrap.dedent("""
    import sys
    import nbclient, nbformat

    source, executed, folder, parameters = sys.argv[1:]
    notebook = nbformat.read(source, as_version=4)
    at = next(i for i, cell in enumerate(notebook.cells)
              if "parameters" in cell.metadata.get("tags", []))
    notebook.cells.insert(at + 1, nbformat.v4.new_code_cell(
        parameters, metadata={"tags": ["injected-parameters"]}))
    try:
      nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                              resources={"metadata": {"path": folder}}).execute()
    finally:
      nbformat.write(notebook, executed)
    """)


def tensorflow_distributions(python: str) -> dict[str, str]:
  listed = subprocess.run([python, "-m", "pip", "list", "--format=json",
                           "--disable-pip-version-check"],
                          capture_output=True, text=True, check=True).stdout
  return {p["name"].lower(): p["version"] for p in json.loads(listed)
          if p["name"].lower().replace("_", "-") in ("tensorflow", "tensorflow-cpu",
                                                     "tensorflow-gpu", "tf-nightly")}


def test_quickstart_runs_where_another_tensorflow_was_installed_first(tmp_path):
  python = helpers.COLAB_ENVIRONMENT.python()
  before = tensorflow_distributions(python)
  assert list(before) == ["tensorflow"] and before["tensorflow"].startswith("2.19."), before

  runner = tmp_path / "run_notebook.py"
  runner.write_text(RUNNER)
  executed = tmp_path / "executed.ipynb"
  workdir = tmp_path / "work"
  # As a user's machine: JAX looks for accelerators (no JAX_PLATFORMS).
  env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
  result = subprocess.run(
      [python, str(runner), str(NOTEBOOK), str(executed), str(ROOT),
       f"QUICK = True\nWORKDIR = {str(workdir)!r}"],
      capture_output=True, text=True, timeout=900, env=env)
  assert result.returncode == 0, (result.stdout + result.stderr)[-5000:]

  # The install kept Colab's TensorFlow: one distribution, the same name, importable.
  after = tensorflow_distributions(python)
  assert list(after) == ["tensorflow"], after
  subprocess.run([python, "-c", "import tensorflow, waveunet_jax"], check=True, timeout=300)

  # Every step left its output: a trained workdir, the stems, players, plots, a report.
  cells = json.loads(executed.read_text())["cells"]
  outputs = [o for cell in cells if cell["cell_type"] == "code" for o in cell["outputs"]]
  assert not [o for o in outputs if o["output_type"] == "error"]
  text = "".join("".join(o.get("text", "")) for o in outputs)
  assert "done: checkpoints and TensorBoard logs are in" in text
  assert "Could not find cuda drivers" not in text and "absl::InitializeLog" not in text
  html = ["".join(o["data"]["text/html"]) for o in outputs if "text/html" in o.get("data", {})]
  assert sum("<audio" in h for h in html) >= 4  # the mix, the true vocals, both estimates
  assert any("<svg" in h for h in html)  # evaluate's report, shown inline
  assert any("image/png" in o.get("data", {}) for o in outputs)  # waveforms and spectrograms
  assert sorted(p.name for p in (workdir / "separated").iterdir()) == [
      "accompaniment.wav", "vocals.wav"]
  assert (workdir / "evaluation" / "report.html").is_file()

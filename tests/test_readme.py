"""The README's commands are the ones CI runs."""

import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_ci_runs_the_readme_test_command():
  readme = (ROOT / "README.md").read_text()
  ci = (ROOT / ".ci" / "run").read_text()
  command = ci.strip().splitlines()[-1]
  assert "pytest" in command
  assert f"\n{command}\n" in readme, "README and .ci/run must give the same test command"

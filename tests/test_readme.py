"""The README's commands are the ones CI runs."""

import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_ci_runs_the_readme_test_command():
  readme = (ROOT / "README.md").read_text()
  ci = (ROOT / ".ci" / "run").read_text()
  command = ci.strip().splitlines()[-1]
  assert "pytest" in command
  assert f"\n{command}\n" in readme, "README and .ci/run must give the same test command"


def load_colab_link():
  import importlib.util

  spec = importlib.util.spec_from_file_location("colab_link", ROOT / "notebooks" / "colab_link.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_the_colab_badge_comes_from_the_github_remote():
  link = load_colab_link()
  for remote in ("git@github.com:someone/waveunet_jax.git", "https://github.com/someone/waveunet_jax",
                 "ssh://git@github.com/someone/waveunet_jax.git",
                 "https://token@github.com/someone/waveunet_jax.git/"):
    assert link.github_repository(remote) == ("someone", "waveunet_jax"), remote
    assert link.repo_url(remote) == "https://github.com/someone/waveunet_jax.git"
  block = link.readme_block("git@github.com:someone/waveunet_jax.git", "main")
  assert ("(https://colab.research.google.com/github/someone/waveunet_jax/blob/main/"
          "notebooks/quickstart.ipynb)") in block
  for remote in (None, "/work/main", "https://gitlab.com/someone/waveunet_jax.git"):
    assert link.github_repository(remote) is None
    assert "colab.research.google.com/github" not in link.readme_block(remote, "main")
  notebook = link.updated_notebook((ROOT / "notebooks" / "quickstart.ipynb").read_text(),
                                   "https://github.com/someone/waveunet_jax.git")
  assert "REPO_URL = 'https://github.com/someone/waveunet_jax.git'" in notebook


def test_readme_and_notebook_link_this_clone_s_remote():
  link = load_colab_link()
  readme = (ROOT / "README.md").read_text()
  if link.github_repository(link.current_remote()):
    assert link.main(["--check"]) == 0  # run python notebooks/colab_link.py
  else:  # a clone of a clone: the block is one that colab_link writes, for some remote
    block = readme[readme.index(link.BEGIN) + len(link.BEGIN):readme.index(link.END)].strip()
    assert block.startswith(("[![Open In Colab](", "[`notebooks/quickstart.ipynb`]")), block

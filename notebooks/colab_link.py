"""Writes the README's "Open in Colab" badge and the notebook's REPO_URL from the git remote.

  python notebooks/colab_link.py           # from `git remote get-url origin`
  python notebooks/colab_link.py --check   # exit 1 if the README or notebook disagree

Colab opens a notebook of a GitHub repository by its path there, so the badge is
known only once the clone has a GitHub remote; without one the README links the
notebook by its path in the repository, and REPO_URL stays None (the notebook then
runs only from a clone). Run it again after a fork or a move.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
NOTEBOOK = ROOT / "notebooks" / "quickstart.ipynb"
NOTEBOOK_PATH = "notebooks/quickstart.ipynb"
BEGIN, END = "<!-- colab-link: begin -->", "<!-- colab-link: end -->"
BADGE = "https://colab.research.google.com/assets/colab-badge.svg"
# git@github.com:owner/repo.git, ssh://git@github.com/owner/repo, https://github.com/owner/repo.git
_GITHUB = re.compile(r"^(?:git@github\.com:|ssh://git@github\.com/|https?://(?:[^@/]+@)?"
                     r"github\.com/)(?P<owner>[\w.-]+)/(?P<repo>[\w.-]+?)(?:\.git)?/?$")


def github_repository(remote: str | None) -> tuple[str, str] | None:
  """(owner, repository) of a GitHub remote URL; None for any other remote or none."""
  match = _GITHUB.match(remote.strip()) if remote else None
  return (match["owner"], match["repo"]) if match else None


def git(*args: str) -> str | None:
  result = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
  return result.stdout.strip() if result.returncode == 0 else None


def current_remote() -> str | None:
  return git("remote", "get-url", "origin")


def current_branch() -> str:
  """The remote's default branch if git knows it, else the branch checked out, else main."""
  head = git("symbolic-ref", "--short", "refs/remotes/origin/HEAD")
  if head:
    return head.split("/", 1)[1]
  branch = git("rev-parse", "--abbrev-ref", "HEAD")
  return branch if branch and branch != "HEAD" else "main"


def readme_block(remote: str | None, branch: str) -> str:
  """The README lines between the markers."""
  found = github_repository(remote)
  if not found:
    return (f"[`{NOTEBOOK_PATH}`]({NOTEBOOK_PATH}): its \"Open in Colab\" badge appears here "
            "once this repository has a GitHub remote (`python notebooks/colab_link.py`).")
  owner, repo = found
  url = f"https://colab.research.google.com/github/{owner}/{repo}/blob/{branch}/{NOTEBOOK_PATH}"
  return f"[![Open In Colab]({BADGE})]({url}) [`{NOTEBOOK_PATH}`]({NOTEBOOK_PATH})"


def repo_url(remote: str | None) -> str | None:
  found = github_repository(remote)
  return f"https://github.com/{found[0]}/{found[1]}.git" if found else None


def updated_readme(text: str, block: str) -> str:
  start, end = text.find(BEGIN), text.find(END)
  if start < 0 or end < start:
    raise SystemExit(f"error: {README}: no {BEGIN} ... {END} block to write the link into")
  return f"{text[:start + len(BEGIN)]}\n{block}\n{text[end:]}"


def updated_notebook(text: str, url: str | None) -> str:
  notebook = json.loads(text)
  for cell in notebook["cells"]:
    if "parameters" in cell.get("metadata", {}).get("tags", []):
      source = "".join(cell["source"])
      new = re.sub(r"(?m)^REPO_URL = .*$", f"REPO_URL = {url!r}", source)
      cell["source"] = new.splitlines(keepends=True)
  return json.dumps(notebook, indent=1, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--check", action="store_true", help="only check, change nothing")
  args = parser.parse_args(argv)
  remote = current_remote()
  wanted = {README: updated_readme(README.read_text(), readme_block(remote, current_branch())),
            NOTEBOOK: updated_notebook(NOTEBOOK.read_text(), repo_url(remote))}
  stale = [path for path, text in wanted.items() if path.read_text() != text]
  if args.check:
    for path in stale:
      print(f"{path.relative_to(ROOT)} does not link the remote {remote or '(none)'}: run "
            "python notebooks/colab_link.py", file=sys.stderr)
    return 1 if stale else 0
  for path in stale:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(wanted[path])
    tmp.replace(path)
    print(f"wrote {path.relative_to(ROOT)}")
  return 0


if __name__ == "__main__":
  sys.exit(main())

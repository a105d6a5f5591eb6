"""Outputs written complete or not at all, and only where the program may (`files`)."""

import os
import subprocess
import sys

import pytest

from waveunet_jax import files


def test_an_output_replaces_only_what_this_program_wrote_there(tmp_path, monkeypatch):
  mine = tmp_path / "mine"
  mine.mkdir()
  (mine / "notes.txt").write_text("the user's")
  ours = lambda folder: (folder / "ours.json").is_file()
  for path, kind, reason in ((mine, ours, "holding what this program did not write there"),
                             (mine, None, "is a folder, where this file output goes"),
                             (mine / "notes.txt", ours, "is a file or a link, where this "
                                                        "folder output goes")):
    with pytest.raises(files.WriteError, match=reason):
      with files.atomic_path(path, ours=kind) as temp:
        temp.mkdir() if kind else temp.write_text("new")
  monkeypatch.chdir(mine)
  for path in (".", "..", "/"):
    with pytest.raises(files.WriteError, match="is the current folder or one above it"):
      files.write_text_atomic(path, "new")
  assert [p.name for p in mine.iterdir()] == ["notes.txt"]
  # What the program wrote is replaced: a file by a file, its own folder by a folder.
  files.write_text_atomic(mine / "notes.txt", "new")
  for version in ("old", "new"):
    with files.atomic_path(tmp_path / "out", ours=ours) as temp:
      temp.mkdir()
      (temp / "ours.json").write_text(version)
  assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
  assert (tmp_path / "out" / "ours.json").read_text() == "new"


def test_a_folder_that_cannot_be_made_is_a_write_error_naming_it(tmp_path):
  # A workdir's config.json or an exported model under a regular file: not an audio error.
  (tmp_path / "plain").write_text("a file")
  with pytest.raises(files.WriteError) as error:
    files.write_text_atomic(tmp_path / "plain" / "run" / "config.json", "{}")
  assert str(error.value).startswith(f"{tmp_path / 'plain' / 'run'}: cannot create this folder (")
  assert sorted(p.name for p in tmp_path.iterdir()) == ["plain"]


def test_stale_temporaries_go_unless_their_process_runs(tmp_path):
  target = tmp_path / "out.txt"
  dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                            capture_output=True, text=True, check=True).stdout)
  stale = [tmp_path / (files.part_name(target, dead) + suffix) for suffix in ("", ".spool")]
  running = tmp_path / files.part_name(target, os.getppid())
  other = tmp_path / files.part_name(tmp_path / "other.txt", dead)
  for p in stale + [running, other]:
    p.write_text("half")
  (tmp_path / files.part_name(target, dead + 1_000_000_000)).mkdir()  # no such process
  files.remove_stale_parts(target)
  assert sorted(p.name for p in tmp_path.iterdir()) == sorted([running.name, other.name])

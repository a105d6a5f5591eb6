"""Writing outputs complete or not at all, and only where the program may.

Every output, a text file, an audio file, a model or a folder, is written under a
hidden temporary name beside its target (`atomic_path`) and renamed into place when
complete, so a crash, a kill or a full disk never leaves a half-written file under a
real name; a re-run removes such temporaries left by processes that no longer run
(`remove_stale_parts`). An output replaces only what the program wrote there
(`check_target`): never a user's folder, nor the current folder.

Errors are `WriteError`s whose message names the file or folder and says why.
Encoding audio is `audio`'s job, which writes through this module.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pathlib
import shutil
from collections.abc import Callable, Iterator


class WriteError(ValueError):
  """An output that cannot be written where asked; the message names it and says why."""


def part_name(path: pathlib.Path, pid: int) -> str:
  """The hidden name of process `pid`'s temporaries of `path` (a suffix may follow)."""
  return f".{path.name}.part-{pid}"


def remove_stale_parts(path: pathlib.Path) -> None:
  """Removes the temporaries of `path` left by killed processes: those of processes
  that still run (another job writing the same file) are kept."""
  prefix = f".{path.name}.part-"  # `part_name` without the pid
  if not path.parent.is_dir():
    return
  for part in path.parent.glob(f"{glob.escape(prefix)}*"):
    pid = part.name[len(prefix):].split(".", 1)[0]
    if pid.isdigit() and int(pid) != os.getpid() and not _running(int(pid)):
      _remove(part)


def _running(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # another user's process
    return True
  return True


def _remove(path: pathlib.Path) -> None:
  if path.is_dir() and not path.is_symlink():
    shutil.rmtree(path, ignore_errors=True)
  else:
    path.unlink(missing_ok=True)


def _is_working_folder(path: pathlib.Path) -> bool:
  """Whether `path` is the current folder or one above it."""
  cwd = pathlib.Path.cwd().resolve()
  return path.resolve() in (cwd, *cwd.parents)


def check_output_dir(output_dir: str | os.PathLike | None, contents: str) -> None:
  """WriteError for an empty --output_dir (it would be the current folder), saying
  what goes into it (`contents`: 'the stems', 'the scores')."""
  if not str(output_dir or "").strip():
    raise WriteError(f"--output_dir is empty: name the folder {contents} go into "
                     "(--output_dir=. for the current folder)")


def check_target(path: str | os.PathLike,
                 ours: Callable[[pathlib.Path], bool] | None = None) -> None:
  """Raises WriteError unless an output may be written to `path`, replacing only what
  this program wrote there: nothing there, or for a file output (`ours` None) a file,
  or for a folder output a folder that `ours` recognises as its own (or an empty
  one). Never the current folder or one above it."""
  path = pathlib.Path(path)
  if _is_working_folder(path):
    raise WriteError(f"{path}: is the current folder or one above it; name a new file "
                     "or folder for this output")
  if ours is None and path.is_dir():
    raise WriteError(f"{path}: is a folder, where this file output goes; move the folder "
                     "away or choose another name")
  if ours is not None and (path.is_symlink() or path.exists() and not path.is_dir()):
    raise WriteError(f"{path}: is a file or a link, where this folder output goes; move it "
                     "away or choose another name")
  if ours is not None and path.is_dir() and any(path.iterdir()) and not ours(path):
    raise WriteError(f"{path}: is a folder holding what this program did not write there; "
                     "move it away or choose another name")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "", *,
                ours: Callable[[pathlib.Path], bool] | None = None) -> Iterator[pathlib.Path]:
  """Yields a hidden temporary name beside `path` (ending in `suffix`, for tools that
  choose a container by extension); on a clean exit it is renamed to `path`, on an
  exception removed. A file output replaces a file; a folder output (`ours` given:
  whether a folder already at `path` is this program's) replaces only a folder `ours`
  recognises. Anything else at `path` is refused (`check_target`) before and again
  after the work. Stale temporaries of `path` from killed processes are removed first."""
  path = pathlib.Path(path)
  check_target(path, ours)
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
  except OSError as e:  # e.g. a parent that is a regular file
    raise WriteError(f"{path.parent}: cannot create this folder ({e.strerror or e})") from None
  remove_stale_parts(path)
  temp = path.parent / (part_name(path, os.getpid()) + suffix)
  old = path.parent / (part_name(path, os.getpid()) + ".old")
  _remove(temp)
  try:
    yield temp
    check_target(path, ours)  # what appeared meanwhile is refused as well
    moved = ours is not None and path.is_dir()
    if moved:  # os.replace cannot replace a folder that is not empty
      os.replace(path, old)
    try:
      os.replace(temp, path)
    except BaseException:
      if moved:
        os.replace(old, path)
      raise
  finally:
    for leftover in (temp, old):
      if leftover.exists() or leftover.is_symlink():
        _remove(leftover)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
  """Writes `text` to `path`, complete or not at all."""
  with atomic_path(path) as temp:
    temp.write_text(text)

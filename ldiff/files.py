"""Writing output files: atomically, and with a one-line error for a path that cannot
take a file.

Every file ldiff writes (stores, reconstruction files, checkpoints, Gaussian fits, JSON
tables) goes through :func:`atomic_write`: the content is written to a hidden temporary
name beside the target and renamed over it (``os.replace``, atomic on POSIX), so a
reader sees the old file or the new one and an interrupted write leaves no half file.
:func:`check_output` refuses, before any work, a target that is a directory, lies
under a file, sits in a directory that cannot be written, or is one of the command's
own inputs, naming the path.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable


def check_output(path: str | os.PathLike, inputs: dict[str, str | os.PathLike | None] | None = None) -> Path:
    """``ValueError`` naming ``path`` unless a file can be written there: it is no
    directory, its nearest existing ancestor is a writable directory (the missing ones
    are made when the file is written), and it is none of ``inputs`` (name -> path: the
    files the command reads, which an output must never overwrite). Creates nothing;
    returns ``path`` as a Path."""
    path = Path(path)
    for name, source in (inputs or {}).items():
        if source is not None and same_file(path, source):
            raise ValueError(f"{path}: is this command's input ({name}); name another file to write")
    if path.is_dir():
        raise ValueError(f"{path}: is a directory; name a file to write")
    ancestor = next(a for a in (path.parent.absolute(), *path.parent.absolute().parents) if a.exists())
    if not ancestor.is_dir():
        raise ValueError(f"{path}: cannot write under {_shown(ancestor, path)}, which is a file")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ValueError(f"{path}: the directory {_shown(ancestor, path)} is not writable")
    return path


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """True when ``a`` and ``b`` name one file (the same inode, or the same absolute path
    when either does not exist yet)."""
    a, b = Path(a), Path(b)
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return a.absolute() == b.absolute()


def _shown(ancestor: Path, path: Path) -> Path:
    """``ancestor`` as the user wrote it (relative if ``path`` was)."""
    return ancestor if path.is_absolute() else Path(os.path.relpath(ancestor))


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """``write(tmp)`` to a temporary name beside ``path``, then rename it to ``path``;
    the temporary file is removed whatever happens. A path that cannot take a file is a
    ``ValueError`` naming it (:func:`check_output`)."""
    path = check_output(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ValueError(f"{path}: cannot create its directory ({error.strerror or error})") from None
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        try:
            tmp.touch()  # an unwritable directory fails here, as an OSError, whatever ``write`` raises
            write(tmp)
            os.replace(tmp, path)
        except OSError as error:
            raise ValueError(f"{path}: cannot write ({error.strerror or error})") from None
    finally:
        tmp.unlink(missing_ok=True)
    return path

"""Atomic writes: the target holds the old content or the new, never half of one."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def atomic_write(path: str | os.PathLike[str], write: Callable[[str], None]) -> Path:
    """Call `write(tmp)` on a temporary file beside `path`, then rename it over `path`.

    A writer killed mid-way leaves at most a `.NAME.*.tmp` file (see `stale_temporaries`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes the file private; give it the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def stale_temporaries(path: str | os.PathLike[str]) -> list[Path]:
    """Temporary files that killed writers of `path` left behind."""
    path = Path(path)
    return list(path.parent.glob(f".{path.name}.*.tmp")) if path.parent.exists() else []


def atomic_directory(path: str | os.PathLike[str], write: Callable[[Path], None]) -> Path:
    """Call `write(tmp_dir)` on a fresh directory beside `path`, then swap it in for `path`. A failed or
    killed write leaves the old directory as it was (and at most a `.NAME.*.tmp` folder). Directories
    cannot be swapped in one step: between moving the old one aside (to `.NAME.old`) and moving the new
    one in, `path` is briefly absent; if that second move fails, the old one is put back."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    old = path.parent / f".{path.name}.old"
    moved = False
    try:
        write(tmp)
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes the folder private; give it the usual permissions
        if path.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            moved = True
        os.replace(tmp, path)
    except BaseException:
        if moved and not path.exists():
            os.replace(old, path)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask

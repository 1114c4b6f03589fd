"""Atomic file writes on any filesystem: a reader (or a resume after a kill) sees the old bytes
or the new ones, never a truncated file.

The temp file lives beside the target, so the final `os.replace` is a rename within one
filesystem. A temp file in `$TMPDIR` (fsspec's transaction, which Lightning's `_atomic_save`
uses) is moved with a truncating copy when `$TMPDIR` is another mount (EXDEV): a kill during that
copy left a 0-byte `last.ckpt` and the old one gone.
"""

from __future__ import annotations

import os
from pathlib import Path

#: Suffix of the temp file beside a target; a kill mid-write leaves at most one per target,
#: which the next write of that target replaces (`remove_partial` clears them at start-up).
PARTIAL_SUFFIX = ".partial"


def partial_path(path: Path) -> Path:
    """The temp file a write of `path` goes through (hidden, same directory)."""
    return path.with_name(f".{path.name}{PARTIAL_SUFFIX}")


def atomic_write(path: str | Path, data: bytes) -> None:
    """Write `data` to `path`: temp file beside it, fsync, rename, fsync the directory."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = partial_path(path)
    with temp.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temp, path)
    _fsync_dir(path.parent)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, text.encode())


def remove_partial(directory: str | Path) -> list[Path]:
    """Delete temp files a killed writer left in `directory`; return what was removed."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    stale = sorted(directory.glob(f".*{PARTIAL_SUFFIX}"))
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def _fsync_dir(directory: Path) -> None:
    # the rename itself is durable only once the directory entry is on disk
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

"""Filesystem set-ups for tests that promise something "on any filesystem"."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def other_filesystem_tmpdir(near: Path) -> Path:
    """A fresh directory on another filesystem than `near` (/dev/shm, a tmpfs), for `$TMPDIR`:
    a rename from there to `near` fails with EXDEV. Skips, saying why, where there is none."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(near).st_dev:
        pytest.skip("needs /dev/shm on another filesystem than the test's tmp dir (EXDEV case)")
    path = shm / f"mlpipe-test-{os.getpid()}-{near.name}"
    path.mkdir()
    return path

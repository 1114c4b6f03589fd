"""Where a number came from: file hashes, the git revision, the machine.

One home for what the ONNX metadata (export), the bench JSON and the report all record, so the
three never disagree on how a lock file is hashed or how a dirty checkout is marked.
"""

from __future__ import annotations

import hashlib
import logging
import platform
import subprocess
from pathlib import Path

log = logging.getLogger(__name__)


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, streamed (lock files and models can be large)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def git_revision(root: Path) -> str:
    """``HEAD`` commit, suffixed ``-dirty`` when tracked files differ; ``unknown`` outside git."""
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root, capture_output=True, text=True, check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError) as err:
        log.warning("git revision unavailable (%s); provenance records 'unknown'", err)
        return "unknown"
    return f"{rev}-dirty" if dirty else rev


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (``platform`` only knows the architecture)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()

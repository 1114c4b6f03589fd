"""Where a number came from: file hashes, the data version, the git revision, the machine.

One home for what the ONNX metadata (export), the bench JSON and the report all record, so they
never disagree on how a lock file is hashed, how the data version is read or how a dirty checkout
is marked. No torch import: library versions come from package metadata.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from mlpipe.common.errors import DataError, DataMissingError

log = logging.getLogger(__name__)

#: Libraries whose versions every measurement records.
LIBRARIES: tuple[str, ...] = ("numpy", "torch", "onnxruntime", "relu-module")
#: nvidia-smi answers in well under a second; a hung driver must not hang a report or a bench.
NVIDIA_SMI_TIMEOUT_S = 10.0


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, streamed (lock files and models can be large)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def md5_file(path: Path) -> str:
    """Hex md5 of a file, as DVC records it."""
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


def dvc_dir_hash(data_dir: Path) -> tuple[str, dict[str, str]]:
    """Hash a folder exactly as DVC 3 does for `dvc add <dir>`: md5 of its sorted JSON manifest.

    Returns the `<md5>.dir` folder hash and the per-file md5s keyed by relative path.
    """
    files = {
        p.relative_to(data_dir).as_posix(): md5_file(p)
        for p in sorted(data_dir.rglob("*"))
        if p.is_file()
    }
    manifest = [{"md5": md5, "relpath": rel} for rel, md5 in sorted(files.items())]
    digest = hashlib.md5(json.dumps(manifest, sort_keys=True).encode("utf-8")).hexdigest()
    return f"{digest}.dir", files


def data_version(dvc_file: Path) -> dict[str, Any]:
    """`path`, `md5`, `size` and `nfiles` that a `.dvc` file records for its one tracked folder."""
    if not dvc_file.is_file():
        raise DataMissingError(
            f"{dvc_file} not found: it records the data version; restore it with "
            f"`git checkout {dvc_file.name}`"
        )
    try:
        outs = (yaml.safe_load(dvc_file.read_text()) or {}).get("outs") or []
    except (yaml.YAMLError, AttributeError) as err:
        raise DataError(
            f"{dvc_file} is not a valid .dvc file ({err}); restore it with git"
        ) from None
    if len(outs) != 1 or not str(outs[0].get("md5", "")).endswith(".dir"):
        raise DataError(
            f"{dvc_file} must track exactly one folder (as written by `dvc add data`), got "
            f"outs={outs}"
        )
    return {k: outs[0].get(k) for k in ("path", "md5", "size", "nfiles")}


def recorded_dir_hash(dvc_file: Path) -> str:
    """The folder hash recorded in a `.dvc` file for its single tracked folder."""
    return str(data_version(dvc_file)["md5"])


def git_revision(root: Path) -> str:
    """``HEAD`` commit, suffixed ``-dirty`` when tracked source files differ; ``unknown``
    outside git.

    The source tree's state, not the pipeline's: ``dvc.lock`` files and the committed outputs
    that dvc.yaml files declare (metrics, plots) are rewritten by the very run that asks, so
    changes to them never make the revision dirty.
    """
    try:
        rev = _git(root, "rev-parse", "HEAD")
        changed = subprocess.run(  # not _git: stripping would eat the status column's space
            ["git", "status", "--porcelain", "-z", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError) as err:
        log.warning("git revision unavailable (%s); provenance records 'unknown'", err)
        return "unknown"
    managed = dvc_managed_paths(root)
    dirty = [p for p in _porcelain_paths(changed) if p not in managed]
    return f"{rev}-dirty" if dirty else rev


def _porcelain_paths(z_output: str) -> list[str]:
    """Paths of `git status --porcelain -z` entries (a rename's source entry is skipped)."""
    entries, paths, skip = z_output.split("\0"), [], False
    for entry in entries:
        if skip or len(entry) < 4:
            skip = False
            continue
        paths.append(entry[3:])
        skip = entry[0] in "RC"  # the next entry is the rename's original path
    return paths


def dvc_managed_paths(root: Path) -> set[str]:
    """Repo-relative paths that DVC writes: every dvc.lock and every declared out, metric and
    plot of every dvc.yaml (resolved through the stage's ``wdir``)."""
    managed: set[str] = set()
    for dvc_yaml in root.rglob("dvc.yaml"):
        if any(part.startswith(".") for part in dvc_yaml.relative_to(root).parts):
            continue
        managed.add((dvc_yaml.parent / "dvc.lock").relative_to(root).as_posix())
        for path in declared_outputs(dvc_yaml):
            if path.is_relative_to(root.resolve()):
                managed.add(path.relative_to(root.resolve()).as_posix())
    return managed


def declared_outputs(dvc_yaml: Path) -> list[Path]:
    """Every out, metric and plot that one dvc.yaml's stages declare, resolved through each
    stage's ``wdir`` (none for an unreadable file)."""
    try:
        stages = (yaml.safe_load(dvc_yaml.read_text()) or {}).get("stages") or {}
    except yaml.YAMLError:
        return []
    found = []
    for stage in stages.values():
        wdir = (dvc_yaml.parent / stage.get("wdir", ".")).resolve()
        for key in ("outs", "metrics", "plots"):
            for entry in stage.get(key) or []:
                name = next(iter(entry)) if isinstance(entry, dict) else str(entry)
                found.append((wdir / name).resolve())
    return found


def source_digest(root: Path, paths: list[str]) -> str:
    """sha256 over the files under ``paths`` (relative to ``root``): names and contents, sorted,
    skipping what .dvcignore skips (bytecode, build metadata). A content hash, not a commit: it
    stays the same across commits that do not touch those files, so an artifact that records it
    is rebuilt byte for byte from any later commit."""
    digest = hashlib.sha256()
    for rel in sorted(paths):
        base = root / rel
        files = [base] if base.is_file() else sorted(p for p in base.rglob("*") if p.is_file())
        for path in files:
            if "__pycache__" in path.parts or path.suffix == ".pyc" or ".egg-info" in str(path):
                continue
            digest.update(path.relative_to(root).as_posix().encode() + b"\0")
            digest.update(sha256_file(path).encode() + b"\n")
    return digest.hexdigest()


def _git(root: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=root, capture_output=True, text=True, check=True
    ).stdout.strip()


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (``platform`` only knows the architecture)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpu_name(timeout_s: float = NVIDIA_SMI_TIMEOUT_S) -> str | None:
    """GPU name and memory from nvidia-smi (no torch or CUDA import); None without one."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            check=True,
            timeout=timeout_s,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return out or None


def library_versions() -> dict[str, str | None]:
    """Installed versions of :data:`LIBRARIES` (None where absent), without importing them."""
    versions: dict[str, str | None] = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def machine_info() -> dict[str, Any]:
    """CPU model, core count, GPU, OS, Python and library versions: the header of every result."""
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "gpu": gpu_name(),
        "os": platform.platform(),
        "python": platform.python_version(),
        **library_versions(),
    }

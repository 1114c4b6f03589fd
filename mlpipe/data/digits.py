"""The DVC-tracked digits data: integrity check, stratified splits and eval-time arrays.

Nothing here imports Lightning or the kernel, so export, serving and benchmarks can call
`load_split` cheaply. Integrity is checked against `data.dvc` itself: the folder hash DVC writes
there is recomputed from the files, so a changed file is caught without running `dvc`.
"""

from __future__ import annotations

import configparser
import gzip
import json
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from mlpipe.common.config import is_int, require
from mlpipe.common.errors import ConfigError, DataCorruptedError, DataMissingError
from mlpipe.common.provenance import dvc_dir_hash, md5_file, recorded_dir_hash

SPLITS: tuple[str, ...] = ("train", "val", "test")


@dataclass(frozen=True)
class Digits:
    """All labelled images of the data set, as stored (pixel counts 0..pixel_max)."""

    images: np.ndarray  # (N, 1, H, W) float32, raw intensities
    labels: np.ndarray  # (N,) int64
    data_md5: str  # DVC folder hash from data.dvc, e.g. "3585...e914ad.dir"


def validate_data_cfg(data_cfg: Mapping[str, Any], prefix: str = "data") -> None:
    """Check the values of a `cfg.data` node; errors name the full key (e.g. data.batch_size)."""
    split, augment = data_cfg["split"], data_cfg["augment"]
    require(
        is_int(split["seed"]) and split["seed"] >= 0,
        f"{prefix}.split.seed",
        f"must be an integer >= 0, got {split['seed']!r}",
    )
    val_f, test_f = float(split["val_fraction"]), float(split["test_fraction"])
    require(0.0 < val_f < 1.0, f"{prefix}.split.val_fraction", f"must be in (0, 1), got {val_f}")
    require(0.0 < test_f < 1.0, f"{prefix}.split.test_fraction", f"must be in (0, 1), got {test_f}")
    require(
        val_f + test_f < 1.0,
        f"{prefix}.split",
        f"val_fraction + test_fraction must be < 1, got {val_f + test_f}",
    )
    require(
        float(data_cfg["pixel_max"]) > 0,
        f"{prefix}.pixel_max",
        f"must be > 0, got {data_cfg['pixel_max']}",
    )
    require(
        float(augment["noise_std"]) >= 0,
        f"{prefix}.augment.noise_std",
        f"must be >= 0, got {augment['noise_std']}",
    )
    jitter = float(augment["scale_jitter"])
    require(
        0.0 <= jitter < 1.0, f"{prefix}.augment.scale_jitter", f"must be in [0, 1), got {jitter}"
    )
    for key in ("batch_size", "eval_batch_size"):
        value = data_cfg[key]
        require(
            is_int(value) and value > 0, f"{prefix}.{key}", f"must be an integer > 0, got {value!r}"
        )
    workers = data_cfg["num_workers"]
    require(
        is_int(workers) and workers >= 0,
        f"{prefix}.num_workers",
        f"must be an integer >= 0, got {workers!r}",
    )


def _object_path(root: Path, md5: str) -> Path:
    return root / "files" / "md5" / md5[:2] / md5[2:]


def _recorded_manifest(dvc_file: Path, dir_md5: str) -> dict[str, str] | None:
    """Per-file md5s for `dir_md5` from the DVC cache or a local remote, if either holds them."""
    repo = dvc_file.parent
    stores = [repo / ".dvc" / "cache"]
    config = configparser.ConfigParser()
    config.read(repo / ".dvc" / "config")
    for section in config.sections():
        url = config[section].get("url", "")
        if section.strip("'\"").startswith("remote") and url and "://" not in url:
            stores.append((repo / ".dvc" / url).resolve())
    for store in stores:
        path = _object_path(store, dir_md5)
        if path.is_file():
            return {entry["relpath"]: entry["md5"] for entry in json.loads(path.read_text())}
    return None


def _changes(data_dir: Path, recorded: dict[str, str], files: dict[str, str]) -> list[str]:
    problems = [
        f"{data_dir / rel} changed (md5 {files[rel]}, recorded {md5})"
        for rel, md5 in recorded.items()
        if rel in files and files[rel] != md5
    ]
    problems += [f"{data_dir / rel} missing" for rel in recorded if rel not in files]
    problems += [
        f"{data_dir / rel} is not in the recorded version" for rel in files if rel not in recorded
    ]
    return problems


def _damaged_cache(dvc_file: Path, recorded: dict[str, str] | None) -> list[Path]:
    """Cache objects of the recorded version that are absent or whose bytes do not hash to
    their name (a corrupt object pulled before the remote had `verify = true`)."""
    cache = dvc_file.parent / ".dvc" / "cache"
    if recorded is None:
        return [cache]
    objects = {md5: _object_path(cache, md5) for md5 in recorded.values()}
    return [obj for md5, obj in objects.items() if not _intact(obj, md5)]


def _intact(path: Path, md5: str) -> bool:
    return path.is_file() and md5_file(path) == md5


def recovery(dvc_file: Path, recorded: dict[str, str] | None) -> str:
    """The commands that restore the recorded data version, given the state of the DVC cache."""
    damaged = _damaged_cache(dvc_file, recorded)
    if not damaged:
        return f"Restore the recorded version with `dvc checkout --force {dvc_file.name}`"
    return (
        f"The DVC cache lacks the recorded version (or holds damaged copies): "
        f"`rm -rf {' '.join(str(p) for p in damaged)}`, then `dvc pull --force {dvc_file.name}` "
        "(the in-repo remote verifies what it sends; if it refuses a damaged object, "
        "`git checkout -- dvc-remote` first)"
    )


def verify_data(data_dir: Path, dvc_file: Path, required: tuple[str, ...] = ()) -> str:
    """Check `data_dir` against `dvc_file`; return the folder hash.

    Raises DataMissingError (naming `dvc pull`) when the data is absent and DataCorruptedError
    naming each changed, missing or extra file, and the recovery that works from the cache's
    state, when it differs from the recorded version.
    """
    missing = [name for name in required if not (data_dir / name).is_file()]
    if not data_dir.is_dir() or missing:
        what = (
            f"{data_dir}"
            if not data_dir.is_dir()
            else ", ".join(str(data_dir / m) for m in missing)
        )
        raise DataMissingError(
            f"data not found: {what}. The data is versioned with DVC; fetch it with `dvc pull` "
            "(or `make data`) in the repository root."
        )
    expected = recorded_dir_hash(dvc_file)
    actual, files = dvc_dir_hash(data_dir)
    if actual == expected:
        return expected
    recorded = _recorded_manifest(dvc_file, expected)
    if recorded is None:
        problems = [f"{data_dir / rel} (md5 {md5})" for rel, md5 in files.items()]
        detail = (
            "cannot tell which file changed (no DVC cache of the recorded version); files: "
            + ", ".join(problems)
        )
    else:
        detail = "; ".join(_changes(data_dir, recorded, files))
    raise DataCorruptedError(
        f"data in {data_dir} does not match {dvc_file} (folder md5 {actual}, recorded "
        f"{expected}): {detail}. {recovery(dvc_file, recorded)}; "
        "or, if the change is intended, record it with `dvc add data` and commit data.dvc."
    )


def committed_data_hash(dvc_file: Path) -> str | None:
    """The folder hash that the committed (`HEAD`) version of `dvc_file` records; None outside
    git or when `dvc_file` is not committed."""
    try:
        text = subprocess.run(
            ["git", "show", f"HEAD:./{dvc_file.name}"],
            cwd=dvc_file.parent,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        outs = (yaml.safe_load(text) or {}).get("outs") or []
        return str(outs[0]["md5"]) if len(outs) == 1 else None
    except (OSError, subprocess.CalledProcessError, yaml.YAMLError, KeyError, AttributeError):
        return None


def verify_committed(dvc_file: Path) -> None:
    """Refuse a `dvc_file` that records other data than its committed version.

    `dvc repro` re-records changed data in the workspace's data.dvc before running the train
    stage, so in the pipeline the check against data.dvc alone passed changed data silently.
    """
    committed = committed_data_hash(dvc_file)
    current = recorded_dir_hash(dvc_file)
    if committed is None or committed == current:
        return
    raise DataCorruptedError(
        f"{dvc_file} records data {current}, the committed one {committed} (dvc repro "
        f"re-records changed data before training). Restore the committed data: `git checkout "
        f"{dvc_file.name} && dvc checkout --force {dvc_file.name}`; or, if the change is "
        f"intended, commit it first (`git commit {dvc_file.name}`)"
    )


def read_digits(path: Path, image_size: int, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Parse the gzipped CSV: one row per image, `image_size**2` pixels then the label."""
    try:
        with gzip.open(path, "rt") as fh:
            table = np.loadtxt(fh, delimiter=",", dtype=np.float32, ndmin=2)
    except (OSError, ValueError, EOFError) as err:
        raise DataCorruptedError(
            f"cannot parse {path}: {err}. Restore it with `dvc checkout --force data.dvc`."
        ) from err
    pixels = image_size * image_size
    if table.shape[1] != pixels + 1:
        raise DataCorruptedError(
            f"{path}: expected {pixels + 1} columns per row, got {table.shape[1]}"
        )
    labels = table[:, -1].astype(np.int64)
    if labels.min() < 0 or labels.max() >= num_classes:
        raise DataCorruptedError(f"{path}: labels must lie in 0..{num_classes - 1}")
    images = np.ascontiguousarray(
        table[:, :pixels].reshape(-1, 1, image_size, image_size)
    )  # (N, 1, H, W)
    return images, labels


def load_digits(data_cfg: Mapping[str, Any]) -> Digits:
    """Verify the DVC-tracked folder, then read every image and label."""
    data_dir, dvc_file = Path(data_cfg["data_dir"]), Path(data_cfg["dvc_file"])
    data_md5 = verify_data(data_dir, dvc_file, required=(data_cfg["filename"],))
    images, labels = read_digits(
        data_dir / data_cfg["filename"], int(data_cfg["image_size"]), int(data_cfg["num_classes"])
    )
    return Digits(images=images, labels=labels, data_md5=data_md5)


def stratified_split(
    labels: np.ndarray, val_fraction: float, test_fraction: float, seed: int
) -> dict[str, np.ndarray]:
    """Deterministic stratified split: each class is shuffled with `seed` and cut by the fractions.

    Returns sorted index arrays for "train", "val" and "test" that partition `range(len(labels))`.
    """
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {name: [] for name in SPLITS}
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        n_test = int(round(len(idx) * test_fraction))
        n_val = int(round(len(idx) * val_fraction))
        parts["test"].append(idx[:n_test])
        parts["val"].append(idx[n_test : n_test + n_val])
        parts["train"].append(idx[n_test + n_val :])
    return {name: np.sort(np.concatenate(chunks)) for name, chunks in parts.items()}


def split_indices(data_cfg: Mapping[str, Any], labels: np.ndarray) -> dict[str, np.ndarray]:
    """The configured split (`data.split.*`) of `labels`."""
    split = data_cfg["split"]
    return stratified_split(
        labels, float(split["val_fraction"]), float(split["test_fraction"]), int(split["seed"])
    )


def scale(images: np.ndarray, pixel_max: float) -> np.ndarray:
    """Eval-time preprocessing: raw counts to [0, 1]. The Dataset uses this same expression."""
    return images / np.float32(pixel_max)


def load_split(data_cfg: Mapping[str, Any], split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels of one split exactly as the model sees them at eval time (no augmentation).

    Returns `(images float32 (N, 1, H, W), labels int64 (N,))`; `data_cfg` is the composed
    `cfg.data`.
    """
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; choose one of {list(SPLITS)}")
    validate_data_cfg(data_cfg)
    digits = load_digits(data_cfg)
    idx = split_indices(data_cfg, digits.labels)[split]
    images = scale(digits.images[idx], float(data_cfg["pixel_max"])).astype(np.float32, copy=False)
    return np.ascontiguousarray(images), digits.labels[idx]

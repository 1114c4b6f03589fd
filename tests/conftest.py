"""Shared fixtures: the real Hydra config, composed and shrunk; the real DVC data; a trained
checkpoint.

Everything writes under pytest's tmp dirs; only `data/` (restored with a real `dvc pull` when
missing) is shared with the checkout.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from helpers.compose import ROOT, compose_app
from omegaconf import DictConfig


def run_dvc(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run the real `dvc` CLI of this environment; on failure, raise with its output."""
    proc = subprocess.run(
        [sys.executable, "-m", "dvc", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise AssertionError(
            f"dvc {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


def compose_train(tmp_dir: Path, overrides: Sequence[str] = ()) -> DictConfig:
    """Compose conf/train.yaml with every output under `tmp_dir`, on CPU, without loader workers."""
    return compose_app(
        "train",
        tmp_dir,
        "data.num_workers=0",
        "trainer=cpu",
        "trainer.enable_model_summary=false",
        *overrides,
    )


# A few batches per phase: exercises every code path in seconds.
SHRINK: tuple[str, ...] = (
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=3",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def dvc_cli():
    """`dvc_cli(*args, cwd=...)`: the real dvc CLI; fails the test with its output on error."""
    return run_dvc


@pytest.fixture(scope="session")
def shrink_overrides() -> tuple[str, ...]:
    """Overrides that cut training to a few batches (for CLI runs in subprocesses)."""
    return SHRINK


@pytest.fixture(scope="session")
def dvc_data() -> Path:
    """The DVC-tracked data folder; fetched with a real `dvc pull data.dvc` when absent."""
    data_dir = ROOT / "data"
    if not (data_dir / "digits.csv.gz").is_file():
        run_dvc("pull", "data.dvc", cwd=ROOT)
    return data_dir


@pytest.fixture
def cfg_train(tmp_path: Path, dvc_data: Path) -> DictConfig:
    """The real train config, shrunk to a few batches, writing under tmp_path."""
    return compose_train(tmp_path, SHRINK)


@pytest.fixture
def compose_cfg(tmp_path: Path, dvc_data: Path):
    """Factory: compose the real train config with extra overrides (outputs under tmp_path)."""

    def _compose(*overrides: str, shrink: bool = True, tmp_dir: Path | None = None) -> DictConfig:
        return compose_train(tmp_dir or tmp_path, [*(SHRINK if shrink else ()), *overrides])

    return _compose


@dataclass(frozen=True)
class TrainedCheckpoint:
    """A real, briefly trained DigitsClassifier and the config that made it."""

    ckpt_path: Path  # <checkpoint_dir>/best.ckpt
    checkpoint_dir: Path
    metrics_path: Path  # reports/train/metrics.json of that run
    cfg: DictConfig  # the composed train config (paths point into the tmp dir)
    metrics: dict[str, Any]


@pytest.fixture(scope="session")
def trained_checkpoint(
    tmp_path_factory: pytest.TempPathFactory, dvc_data: Path
) -> TrainedCheckpoint:
    """Train the default model for a few epochs on the real data (a few seconds, once per session).

    For the export/serve/bench tests: `trained_checkpoint.ckpt_path` is a real Lightning
    checkpoint that `mlpipe.train.module.load_network` loads with weights_only=True.
    """
    from mlpipe.train.run import train

    tmp_dir = tmp_path_factory.mktemp("trained")
    cfg = compose_train(tmp_dir, ["trainer.max_epochs=3", "callbacks.early_stopping.patience=3"])
    metrics = train(cfg)
    ckpt = Path(cfg.outputs.best_checkpoint)
    assert ckpt.is_file(), f"training did not write {ckpt}"
    return TrainedCheckpoint(ckpt, ckpt.parent, Path(cfg.outputs.metrics), cfg, metrics)

"""Compose the real Hydra configs with every output redirected under a test's tmp dir."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

ROOT = Path(__file__).resolve().parents[2]
CONF_DIR = ROOT / "conf"
#: Free ephemeral ports for every server a test starts (never the fixed defaults 8000-8002).
EPHEMERAL = ("serve.http_port=0", "serve.grpc_port=0", "serve.metrics_port=0")


def tmp_path_overrides(tmp_dir: Path) -> list[str]:
    """`paths.*` overrides that keep the checkout's conf/ and data/ but write nothing into it."""
    return [
        f"paths.root_dir={ROOT}",
        f"paths.log_dir={tmp_dir}/logs",
        f"paths.artifacts_dir={tmp_dir}/artifacts",
        f"paths.reports_dir={tmp_dir}/reports",
        f"paths.model_repository={tmp_dir}/model_repository",
        f"paths.model_repository_native={tmp_dir}/model_repository_native",
    ]


def compose_app(name: str, tmp_dir: Path, *overrides: str) -> DictConfig:
    """The real primary config `conf/<name>.yaml` with outputs under `tmp_dir`, then `overrides`."""
    with initialize_config_dir(
        version_base="1.3", config_dir=str(CONF_DIR), job_name=f"test_{name}"
    ):
        return compose(config_name=name, overrides=[*tmp_path_overrides(tmp_dir), *overrides])

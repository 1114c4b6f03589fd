"""One export of the trained checkpoint per session, shared by the serving hardening tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from helpers.compose import compose_app

from mlpipe.export.run import export


@pytest.fixture(scope="session")
def hardening_export(tmp_path_factory: pytest.TempPathFactory, trained_checkpoint: Any) -> Path:
    """A tmp root holding an export (ONNX + repositories) of the session's trained checkpoint."""
    tmp = tmp_path_factory.mktemp("hardening")
    export(
        compose_app(
            "export",
            tmp,
            f"export.checkpoint_path={trained_checkpoint.ckpt_path}",
            f"export.provenance.train_metrics={trained_checkpoint.metrics_path}",
            "export.onnx.dynamo=false",
        )
    )
    return tmp

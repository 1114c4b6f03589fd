"""The one ONNX Runtime reference: every served or benchmarked figure is held against it.

The export's parity check, mlpipe-client's accuracy, the soak's expected answers, the serving
targets' in-process floor and the bench's ORT rows all open the exported file here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from mlpipe.common.errors import ArtifactMissingError


def ort_session(
    onnx_path: Path | str,
    providers: Sequence[str],
    options: Mapping[str, Any] | None = None,
) -> ort.InferenceSession:
    """An ONNX Runtime session on ``providers`` (the reference runs on
    ``export.parity.providers``); ``options`` are ``SessionOptions`` attributes."""
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise ArtifactMissingError(
            f"ONNX model not found at {onnx_path}; create it with `mlpipe-export` (or `make "
            "export`)"
        )
    session_options = ort.SessionOptions()
    for key, value in (options or {}).items():
        setattr(session_options, key, value)
    return ort.InferenceSession(str(onnx_path), session_options, providers=list(providers))


def run_ort(session: ort.InferenceSession, images: np.ndarray, batch_size: int) -> np.ndarray:
    """Logits for ``images`` (N, C, H, W) in batches of ``batch_size``; returns (N, classes)."""
    name = session.get_inputs()[0].name
    outs = [
        session.run(None, {name: images[i : i + batch_size]})[0]
        for i in range(0, len(images), batch_size)
    ]
    return np.concatenate(outs, axis=0)


def reference_logits(
    onnx_path: Path | str, providers: Sequence[str], images: np.ndarray, batch_size: int
) -> np.ndarray:
    """ONNX Runtime's logits for ``images`` on the exported file: the reference (N, classes)."""
    return run_ort(ort_session(onnx_path, providers), images, batch_size)

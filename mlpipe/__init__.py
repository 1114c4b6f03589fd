"""mlpipe: versioned data -> trained model -> ONNX/TensorRT -> Triton -> measured report."""

from __future__ import annotations

import os
from importlib import metadata
from pathlib import Path

try:  # one version, one place: pyproject.toml's [project] version (as relu_module does)
    __version__ = metadata.version("mlpipe")
except metadata.PackageNotFoundError:  # a checkout on sys.path without an install
    __version__ = "0+unknown"


def config_dir() -> str:
    """Absolute path of the checkout's conf/, for every `@hydra.main` in the package.

    Hydra resolves a relative `config_path` as a Python package when the app is started through a
    console script (`mlpipe-train`), which fails for a plain folder; an absolute path works for
    `python -m` and console scripts alike. Next to the package (checkout / editable install) first,
    else `$MLPIPE_ROOT/conf` or `./conf` (a wheel install run from a checkout). Lives here, not in
    a stage module, so that finding the config never imports Lightning or torch.
    """
    beside = Path(__file__).resolve().parents[1] / "conf"
    if beside.is_dir():
        return str(beside)
    return str(Path(os.environ.get("MLPIPE_ROOT", ".")).resolve() / "conf")

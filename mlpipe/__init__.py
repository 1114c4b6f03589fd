"""mlpipe: versioned data -> trained model -> ONNX/TensorRT -> Triton -> measured report."""

from __future__ import annotations

import os
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

try:  # one version, one place: pyproject.toml's [project] version (as relu_module does)
    __version__ = metadata.version("mlpipe")
except metadata.PackageNotFoundError:  # a checkout on sys.path without an install
    __version__ = "0+unknown"

#: `${pid:}` in conf/hydra/default.yaml: with sub-second time, two runs started together never
#: share a run directory. Registered on import: every entry point imports `config_dir` from here.
OmegaConf.register_new_resolver("pid", os.getpid, replace=True)


def run_output(pipeline: bool, tracked: str, name: str) -> str:
    """`${run_output:${pipeline},<tracked dir>,<name>}` in conf/wiring/train.yaml: where a run
    writes, decided by the config so that `--cfg job --resolve` shows the paths the run writes.

    `pipeline=true` in a single run (the DVC stage): `tracked`, the checkout's tracked path. Any
    other run, and every job of a `-m` sweep: `<its Hydra output dir>/<name>`, so that quick runs,
    experiments and sweeps never overwrite the pipeline's outputs nor each other's. Outside a
    Hydra app (a library or test call of `train(cfg)`): `tracked`, the caller's `paths.*`.
    """
    from hydra.core.hydra_config import HydraConfig  # lazily: `import mlpipe` stays light
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return tracked
    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    if pipeline and not multirun:
        return tracked
    return f"{_output_dir(hydra_cfg, multirun)}/{name}"


def _output_dir(hydra_cfg: Any, multirun: bool) -> str:
    """The job's output dir; before the job starts (`--cfg job`), the run or sweep dir it gets."""
    output_dir = OmegaConf.select(hydra_cfg, "runtime.output_dir", default=None)
    if output_dir is not None and output_dir != "???":
        return str(output_dir)
    if multirun:
        return f"{hydra_cfg.sweep.dir}/{hydra_cfg.sweep.subdir}"
    return str(hydra_cfg.run.dir)


OmegaConf.register_new_resolver("run_output", run_output, replace=True)


def config_dir() -> str:
    """Absolute path of the conf/ of the working tree the command runs in, for every `@hydra.main`.

    `$MLPIPE_ROOT/conf` when that is set, else `./conf`: the tree the command runs in, never the
    one the package was imported from. `dvc exp run --queue`/`--temp` run a stage in a copy of
    the checkout (`.dvc/tmp/exps/...`) whose conf/ holds the `-S` values, while an editable
    install imports the package from the main checkout. Absolute: Hydra resolves a relative
    `config_path` as a Python package under a console script. Lives here, not in a stage module,
    so that finding the config never imports Lightning or torch.

    A console script (or `python -m mlpipe...`) started in a tree without conf/ stops here with
    one line; a plain import gets the path and never fails.
    """
    root = Path(os.environ.get("MLPIPE_ROOT", ".")).resolve()
    conf = root / "conf"
    if not conf.is_dir() and _started_as_command():
        name = Path(sys.argv[0]).name
        print(
            f"{name}: error: no conf/ in {root}: run it from the root of an mlpipe checkout, or "
            "set MLPIPE_ROOT=<checkout>",
            file=sys.stderr,
            flush=True,
        )
        raise SystemExit(1)
    return str(conf)


def _started_as_command() -> bool:
    """True in a console script (`mlpipe-train`) or `python -m mlpipe.<module>`."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    module = spec.name if spec is not None else ""
    return Path(sys.argv[0]).name.startswith("mlpipe-") or module.startswith("mlpipe.")

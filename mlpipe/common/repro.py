"""The CPU contract of the deterministic stages (train, export, analytic profile).

torch's libraries pick kernels by the CPU's ISA when they load: ATen (``ATEN_CPU_CAPABILITY``),
oneDNN (``ONEDNN_MAX_CPU_ISA``) and MKL (``MKL_CBWR``), each with its own float rounding. The
contract (``conf/repro/``, node ``cfg.repro``) pins them, with the thread counts, so every x86-64
CPU with AVX2 computes the same bytes. They are read once, at load, so :func:`apply` re-executes
the process with them set when they are not (``mlpipe.common.cli.entry_point`` calls it for every
app whose config has a ``repro`` node); :func:`record` says what is in force, measured, for the
provenance (checkpoint, ONNX metadata, ``dvc.lock.cpu.json``).

    python -m mlpipe.common.repro > dvc.lock.cpu.json   # `make record-cpu`
"""

from __future__ import annotations

import json
import logging
import os
import platform
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, NoReturn

from omegaconf import DictConfig

from mlpipe.common.config import is_int, require
from mlpipe.common.errors import UserError
from mlpipe.common.provenance import declared_outputs

log = logging.getLogger(__name__)

#: Set in the re-executed process to the variables it was given: re-exec with the same ones
#: again would loop.
REEXEC_MARK = "MLPIPE_REPRO_REEXEC"
#: ATEN_CPU_CAPABILITY values of x86-64 builds of torch.
ATEN_LEVELS = ("default", "avx2", "avx512")
X86_64 = ("x86_64", "amd64")


class ReproError(UserError, RuntimeError):
    """The CPU contract is not in force where it must be (tracked outputs)."""


def validate(node: DictConfig) -> None:
    """Reject a malformed contract before anything runs; each error names its key."""
    require(
        node.aten_cpu_capability in ATEN_LEVELS,
        "repro.aten_cpu_capability",
        f"must be one of {list(ATEN_LEVELS)}, got {node.aten_cpu_capability!r}",
    )
    threads = node.threads
    require(
        threads is None or (is_int(threads) and threads > 0),
        "repro.threads",
        f"must be null (torch's default) or an integer > 0, got {threads!r}",
    )


def contract_env(node: DictConfig) -> dict[str, str]:
    """The variables the libraries read at load, as the contract sets them."""
    env = {
        "ATEN_CPU_CAPABILITY": str(node.aten_cpu_capability),
        "ONEDNN_MAX_CPU_ISA": str(node.onednn_max_cpu_isa),
        "MKL_CBWR": str(node.mkl_cbwr),
    }
    if node.threads is not None:
        env |= {"OMP_NUM_THREADS": str(node.threads), "MKL_NUM_THREADS": str(node.threads)}
    return env


def cpu_flags() -> set[str] | None:
    """The CPU's feature flags from /proc/cpuinfo; None where there is none (not Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        return None
    return None


def unable(node: DictConfig) -> str | None:
    """Why this CPU cannot honour the contract (its bytes will differ), or None."""
    machine = platform.machine().lower()
    if machine not in X86_64:
        return f"this CPU is {machine}, not x86-64: torch's kernels and their rounding differ"
    flags = cpu_flags()
    if flags is not None and str(node.cpu_flag) not in flags:
        return f"this x86-64 CPU lacks {node.cpu_flag}: torch falls back to other kernels"
    return None


def cpu_capability() -> str:
    """The kernel level ATen dispatches to in this process (AVX2, AVX512, DEFAULT, ...)."""
    import torch

    return str(torch.backends.cpu.get_cpu_capability())


def env_in_force(node: DictConfig) -> bool:
    """Whether this process started with the contract's variables (they are read at load)."""
    return all(os.environ.get(k) == v for k, v in contract_env(node).items())


def in_force(node: DictConfig) -> bool:
    """The contract is on, its variables were set at start, and ATen dispatches its level."""
    return (
        bool(node.enabled)
        and env_in_force(node)
        and cpu_capability() == str(node.aten_cpu_capability).upper()
    )


def apply(node: DictConfig) -> None:
    """Put the contract in force: re-execute this process with its variables if they are not
    set (never returns then), check that ATen took them, set torch's thread count.

    A contract switched off (``repro=off``) or one this CPU cannot honour logs one line and the
    run goes on; :func:`guard` keeps such a run off the tracked outputs.
    """
    validate(node)
    reason = unable(node) if node.enabled else None
    if not node.enabled:
        log.warning("CPU contract off (repro=off): bytes follow this CPU, not dvc.lock")
    elif reason:
        log.warning(
            "CPU contract %s not honoured: %s; its bytes will differ from dvc.lock",
            node.name,
            reason,
        )
    elif not env_in_force(node):
        _reexec(contract_env(node))
    elif cpu_capability() != str(node.aten_cpu_capability).upper():
        log.warning(
            "CPU contract %s not honoured: ATen dispatches %s on this CPU; its bytes will "
            "differ from dvc.lock",
            node.name,
            cpu_capability(),
        )
    set_threads(node)


def set_threads(node: DictConfig) -> None:
    """torch's intra-op threads, as the contract says (null: torch's default). Unlike the
    variables this can change at any time, so in-process callers of a stage call it too."""
    if node.threads is not None:
        import torch

        torch.set_num_threads(int(node.threads))


def _reexec(env: Mapping[str, str]) -> NoReturn:
    """Start this very command again (same interpreter, flags and arguments) with ``env``."""
    mark = " ".join(f"{k}={v}" for k, v in env.items())
    if os.environ.get(REEXEC_MARK) == mark:  # this process is the re-exec: something unset them
        raise ReproError(
            f"the CPU contract's variables ({mark}) were set at start but changed before the "
            "stage ran; nothing in mlpipe changes them: check sitecustomize or a .pth file"
        )
    log.info("re-executing under the CPU contract: %s", mark)
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    argv = [sys.executable, *sys.orig_argv[1:], *_same_output_dir(sys.argv[1:])]
    os.execve(sys.executable, argv, {**os.environ, **env, REEXEC_MARK: mark})


def _same_output_dir(args: list[str]) -> list[str]:
    """The Hydra override that makes the re-executed run write into the directory this process
    already made: its name holds the time and the pid, both of which change across the exec, and
    two directories per run would break "one run, one directory". Nothing where Hydra is not
    running or the user named the directory."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
    except (ImportError, ValueError):  # not under @hydra.main (a library call)
        return []
    output_dir = Path(hc.runtime.output_dir)
    if hc.mode == RunMode.MULTIRUN:  # <sweep dir>/<job subdir>: every job of the re-run sweep
        key, value = "hydra.sweep.dir", output_dir.parent
    else:
        key, value = "hydra.run.dir", output_dir
    if any(a.lstrip("+").startswith(f"{key}=") for a in args):
        return []
    quoted = str(value).replace("\\", "\\\\").replace("'", "\\'")
    return [f"{key}='{quoted}'"]


def record(node: DictConfig) -> dict[str, Any]:
    """The contract and what this process measured of it: the provenance every stage writes."""
    return {
        "contract": str(node.name),
        "env": contract_env(node) if node.enabled else {},
        "threads": node.threads,
        "cpu_capability": cpu_capability(),
        "in_force": in_force(node),
    }


def guard(node: DictConfig, root: Path, outputs: Iterable[str | Path]) -> None:
    """Refuse to write the root dvc.yaml's tracked outputs unless the contract is in force (or
    this CPU cannot honour it, which :func:`apply` has said): their md5s are committed."""
    dvc_yaml = Path(root) / "dvc.yaml"
    # On (its variables set at start, or this CPU cannot honour it, which apply() has said):
    # allowed. ATen below the requested level with the variables set is such a CPU too.
    if not dvc_yaml.is_file() or (node.enabled and (env_in_force(node) or unable(node))):
        return
    tracked = declared_outputs(dvc_yaml)
    hits = [str(p) for p in outputs if any(Path(p).resolve().is_relative_to(t) for t in tracked)]
    if not hits:
        return
    why = (
        "it is off (repro=off); drop repro=off, or write elsewhere (without pipeline=true, "
        "mlpipe-train writes under logs/)"
        if not node.enabled
        else "this process did not start under it; run the stage's console script "
        "(mlpipe-train, mlpipe-export, mlpipe-profile), which re-executes under it"
    )
    raise ReproError(
        f"{hits[0]} is a tracked output of dvc.yaml and needs the CPU contract, but {why}"
    )


def main() -> None:
    """Print the record of the train config's contract, measured under it (re-executes)."""
    from hydra import compose, initialize_config_dir

    from mlpipe import config_dir

    with initialize_config_dir(version_base="1.3", config_dir=config_dir(), job_name="repro"):
        node = compose(config_name="train").repro
    apply(node)
    print(json.dumps(record(node), indent=1, sort_keys=True))


if __name__ == "__main__":
    main()

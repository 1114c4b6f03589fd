"""Every console script, driven as a user would with bad values: one line naming the problem and
the fix on stderr, a non-zero exit, no traceback (the entry-point wrapper, mlpipe.common.cli).

Each case runs the real installed script in a subprocess, with every output under tmp_path.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[1]

#: (script, bad override(s) separated by spaces, a fragment the one-line message must contain)
CASES: list[tuple[str, str, str]] = [
    ("mlpipe-train", "optimizer.lr=abc", "optimizer.lr: must be a number, got 'abc'"),
    ("mlpipe-train", "data.batch_size=0", "data.batch_size: must be an integer > 0"),
    ("mlpipe-train", "ckpt_path=/nonexistent/last.ckpt", "drop the ckpt_path override"),
    ("mlpipe-train", "optimizer.lr='1e-3'", "optimizer.lr: must be a number, got '1e-3'"),
    ("mlpipe-train", "optimizer.weight_decay=-1", "optimizer.weight_decay: must be >= 0"),
    ("mlpipe-train", "optimizer=sgd optimizer.momentum=-1", "optimizer.momentum: must be >= 0"),
    ("mlpipe-train", "+optimizer.lrr=0.1", "optimizer.lrr: torch.optim.AdamW has no such argument"),
    ("mlpipe-train", "data.split.seed=-1", "data.split.seed: must be an integer >= 0"),
    ("mlpipe-train", "model.net.channels=[]", "model.net.channels: must be a non-empty list"),
    *(
        []
        if torch.cuda.is_available()  # there trainer=gpu is no mistake
        else [
            (
                "mlpipe-train",
                "trainer=gpu",
                "trainer.accelerator=gpu: this machine has no CUDA device",
            )
        ]
    ),
    ("mlpipe-verify-data", "data.dvc_file=/nonexistent/data.dvc", "`git checkout data.dvc`"),
    ("mlpipe-verify-data", "data.filename=nope.csv.gz", "fetch it with `dvc pull`"),
    ("mlpipe-verify-data", "verify.out=/proc/no/v.json", "set verify.out to a writable path"),
    ("mlpipe-train-throughput", "optimizer.lr=-1", "optimizer.lr: must be > 0"),
    ("mlpipe-train-throughput", "bench.passes=0", "bench.passes: must be an integer >= 1"),
    ("mlpipe-train-throughput", "data.batch_size=abc", "data.batch_size: must be an integer > 0"),
    ("mlpipe-export", "export.parity.batch_size=0", "export.parity.batch_size"),
    ("mlpipe-export", "export.checkpoint_path=/nonexistent/best.ckpt", "mlpipe-train"),
    ("mlpipe-export", "export.triton.max_batch_size=0", "export.triton.max_batch_size: must be an"),
    ("mlpipe-serve", "serve.host=0.0.0.0", "through the gateway: gateway=nginx gateway.host="),
    ("mlpipe-serve", "serve.model_repository=/nonexistent/repo", "mlpipe-export"),
    ("mlpipe-serve", "serve.http_port=abc", "serve.http_port: must be a port number"),
    ("mlpipe-serve", "gateway.grpc_port=abc", "gateway.grpc_port: must be a port number"),
    ("mlpipe-serve", "serve.watchdog.max_restarts=-1", "serve.watchdog.max_restarts: must be"),
    ("mlpipe-client", "client.batch_size=0", "client.batch_size: must be an integer >= 1"),
    ("mlpipe-client", "client.protocol=udp", "client.protocol: must be one of ['http', 'grpc']"),
    (
        "mlpipe-client",
        "client.split=holdout",
        "client.split: must be one of ['train', 'val', 'test']",
    ),
    ("mlpipe-client", "client.timeout_s=abc", "client.timeout_s: must be a number, got 'abc'"),
    ("mlpipe-serve-targets", "targets.concurrency=0", "targets.concurrency"),
    ("mlpipe-serve-targets", "targets.load.processes=0", "targets.load.processes"),
    ("mlpipe-serve-targets", "targets.rounds=0", "targets.rounds: must be an integer >= 1"),
    ("mlpipe-serve-targets", "targets.split=holdout", "targets.split: must be one of"),
    ("mlpipe-serve-soak", "soak.clients=0", "soak.clients: must be an integer >= 1"),
    ("mlpipe-serve-soak", "serve.grpc_port=-1", "serve.grpc_port: must be a port number"),
    ("mlpipe-serve-soak", "soak.load.mode=carrier_pigeon", "soak.load.mode: must be one of"),
    ("mlpipe-serve-soak", "soak.bad_every=1", "soak.bad_every: must be an integer >= 2"),
    ("mlpipe-bench", "bench.backends=[warp_drive]", "valid choices"),
    ("mlpipe-bench", "bench.batch_sizes=[0]", "bench.batch_sizes: must be a non-empty list"),
    ("mlpipe-bench", "bench.load.processes=0", "bench.load.processes: must be an integer >= 1"),
    ("mlpipe-bench", "bench.stability.rel_tol=abc", "bench.stability.rel_tol: must be a number"),
    ("mlpipe-profile", "profile.batch_size=0", "profile.batch_size: must be an integer >= 1"),
    ("mlpipe-profile", "profile.devices=[abacus]", "valid choices"),
    ("mlpipe-profile", "profile.devices=abacus", "unknown device preset(s) ['abacus']"),
    ("mlpipe-profile", "profile.dtype=int4", "unknown dtype 'int4'"),
    ("mlpipe-knee", "profile.knee.max_batch=0", "profile.knee.max_batch: must be an integer >= 1"),
    ("mlpipe-knee", "profile.knee.peak_fraction=2", "profile.knee.peak_fraction"),
    ("mlpipe-knee", "profile.knee.stability.min_rounds=0", "knee.stability.min_rounds: must be"),
    ("mlpipe-tune", "tune.p99_budget_ms=-1", "tune.p99_budget_ms: must be > 0"),
    ("mlpipe-tune", "tune.select_concurrency=3", "must be one of tune.concurrency [1, 16]"),
    ("mlpipe-tune", "tune.stability.max_rounds=0", "tune.stability.max_rounds: must be an integer"),
    ("mlpipe-tune", "tune.load.mode=carrier_pigeon", "tune.load.mode: must be one of"),
    ("mlpipe-relu-bench", "relu_bench.sizes=[0]", "relu_bench.sizes: must be a non-empty list"),
    ("mlpipe-relu-bench", "relu_bench.dtypes=[int8]", "must be float32 and/or float64"),
    ("mlpipe-relu-bench", "relu_bench.min_sample_s=abc", "relu_bench.min_sample_s"),
    ("mlpipe-train", "repro.threads=0", "repro.threads: must be null"),
    (
        "mlpipe-export",
        "repro.aten_cpu_capability=avx3",
        "repro.aten_cpu_capability: must be one of",
    ),
    ("mlpipe-report", "report.output=/proc/no/REPORT.md", "set report.output to a writable path"),
    ("mlpipe-report", "report.lock_files=3", "report.lock_files: must be a list"),
    ("mlpipe-report", "report.write=maybe", "report.write: must be true or false"),
]


def run_script(script: str, tmp: Path, *overrides: str) -> subprocess.CompletedProcess[str]:
    """The installed console script, run from the checkout as a user would, with its outputs and
    Hydra run dir under `tmp`."""
    outputs = [
        f"paths.log_dir={tmp}/logs",
        f"paths.artifacts_dir={tmp}/artifacts",
        f"paths.reports_dir={tmp}/reports",
    ]
    return subprocess.run(
        [str(BIN / script), *outputs, *overrides],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    ("script", "override", "fragment"), CASES, ids=[f"{c[0]}:{c[1]}" for c in CASES]
)
def test_user_mistake_is_one_line_with_the_fix(
    script: str, override: str, fragment: str, tmp_path: Path
) -> None:
    proc = run_script(script, tmp_path, *override.split(" "))
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(f"{script}: error: ")]
    assert len(errors) == 1, lines
    assert fragment in errors[0], errors[0]


def test_every_console_script_is_covered() -> None:
    """A new entry point must come with its bad-value cases here."""
    import tomllib

    scripts = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    declared = set(scripts["project"]["scripts"])
    covered = {script for script, _, _ in CASES}
    assert declared == covered, f"untested: {declared - covered}, unknown: {covered - declared}"
    for script in declared:
        assert sum(case[0] == script for case in CASES) >= 3, script


def test_a_bug_keeps_its_traceback(tmp_path: Path) -> None:
    """Not a user mistake: the wrapper lets it through with its traceback."""
    code = (
        "from omegaconf import OmegaConf\n"
        "from mlpipe.common.cli import entry_point\n"
        "@entry_point\n"
        "def task(cfg):\n"
        "    raise KeyError('a bug')\n"
        "task(OmegaConf.create({}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert (
        proc.returncode != 0 and "Traceback" in proc.stderr and "KeyError: 'a bug'" in proc.stderr
    )

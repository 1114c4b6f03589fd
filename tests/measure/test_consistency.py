"""The report's self-checks: the report fixtures pass them; each planted contradiction is named in
the "Consistency checks" section and stops mlpipe-report with one line (exit 1) naming it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from mlpipe.common.errors import ConsistencyError
from mlpipe.measure import consistency
from mlpipe.report import report

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "report"


def _cfg(root: Path, *overrides: str) -> DictConfig:
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        return compose(config_name="report", overrides=[f"paths.root_dir={root}", *overrides])


@pytest.fixture
def fixture_root(tmp_path: Path) -> Path:
    root = tmp_path / "checkout"
    shutil.copytree(FIXTURES, root)
    return root


def _edit(root: Path, rel: str, change: Callable[[Any], None]) -> None:
    path = root / "reports" / rel
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def _knee_point(batch: int, achieved_gflops: float, nbytes: float) -> dict[str, Any]:
    """A measured knee point of a Linear layer at 2 FLOP/B."""
    return {
        "batch": batch,
        "flops": 2 * nbytes,
        "bytes": nbytes,
        "intensity": 2.0,
        "achieved_flops": achieved_gflops * 1e9,
    }


def _bench_row(data: Any, backend: str, concurrency: int) -> dict[str, Any]:
    return next(
        r
        for r in data["rows"]
        if r["backend"] == backend and r.get("concurrency") == concurrency and r["batch"] == 1
    )


# (check, input, the planted contradiction, a fragment of the violation's line)
PLANTED: list[tuple[str, str, Callable[[Any], None], str]] = [
    (
        consistency.MFU,
        "bench/results.json",
        lambda d: _bench_row(d, "ort_cpu", 1).update(mfu=1.55),
        "bench ort_cpu batch 1 × 1: MFU 155 %",
    ),
    (
        consistency.ROOF,  # 30 GFLOP/s at 2 FLOP/B needs 15 GB/s: the fixture's DRAM roof is 10
        "profile_measured/tiny.json",
        lambda d: d["layers"][0]["points"].append(_knee_point(1, 30.0, 4 * 2**20)),
        "knee tiny 1 (Linear) batch 1: 30 GFLOP/s at 2 FLOP/B, bound ≤ 20 GFLOP/s (DRAM roof",
    ),
    (
        consistency.ROOF,
        "bench/results.json",
        lambda d: _bench_row(d, "ort_cpu", 1).update(p50_over_roofline=0.4),
        "bench ort_cpu batch 1 × 1: p50 0.4× its roofline time",
    ),
    (
        consistency.PERCENTILES,
        "bench/results.json",
        lambda d: _bench_row(d, "triton_grpc:digits", 1).update(p90_ms=1.2),
        "bench triton_grpc:digits batch 1 × 1: p50 1.316 ms ≤ p90 1.200 ms ≤ p99 3.783 ms",
    ),
    (
        consistency.OVERHEAD,
        "serve/measure.json",
        lambda d: d["http_batch1"].update(overhead_vs_ort_p50_ms=-0.05),
        "serve http batch 1 − in-process ORT: -0.050 ms",
    ),
    (
        consistency.LITTLE,  # 4 clients at p50 2 ms complete at most 2000 req/s (+ 15 % spread)
        "bench/results.json",
        lambda d: _bench_row(d, "triton_grpc:digits", 4).update(throughput_req_s=3000.0),
        "bench triton_grpc:digits batch 1 × 4: 3000 req/s, bound ≤ 4 / 2.000 ms (p50) × (1 + 0.15)",
    ),
    (
        consistency.LITTLE,
        "tune/results.json",
        lambda d: d["rows"][2].update(throughput_rps=3000.0),
        "tune i1_q0_pnone at 16 clients: 3000 req/s, bound ≤ 16 / 7.000 ms (p50) × (1 + 0.10)",
    ),
    (
        consistency.ACCURACY,
        "serve/client.json",
        lambda d: d.update(served_acc=0.9777),
        "client grpc on 359 images: served 0.9777, bound = ORT 0.9805",
    ),
]


def test_fixtures_pass_every_check(fixture_root: Path, capsys: pytest.CaptureFixture) -> None:
    text = report(_cfg(fixture_root)).read_text()
    assert "## Consistency checks" in text
    assert "No violation: every figure lies within its bound." in text
    for check in (consistency.MFU, consistency.PERCENTILES, consistency.LITTLE):
        assert f"| {check}" in text
    assert "figures checked, no violation" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("check", "rel", "plant", "line"), PLANTED, ids=[f"{c} {r}" for c, r, _, _ in PLANTED]
)
def test_each_planted_violation_is_named_and_fails(
    fixture_root: Path, check: str, rel: str, plant: Callable[[Any], None], line: str
) -> None:
    _edit(fixture_root, rel, plant)
    with pytest.raises(ConsistencyError, match="contradict their bounds") as err:
        report(_cfg(fixture_root))
    assert check in str(err.value) and line in str(err.value)
    assert "\n" not in str(err.value)
    text = (fixture_root / "reports" / "REPORT.md").read_text()  # written before the error
    section = text.split("## Consistency checks")[1].split("## Provenance")[0]
    assert f"- **{check}: {line}" in section
    assert section.count("- **") == 1  # the planted figure alone


def test_report_without_fail_on_violation_names_it_and_returns(fixture_root: Path) -> None:
    _edit(fixture_root, "serve/client.json", lambda d: d.update(served_acc=0.5))
    out = report(_cfg(fixture_root, "report.fail_on_violation=false"))
    assert f"- **{consistency.ACCURACY}: client grpc" in out.read_text()


def test_littles_law_takes_the_mean_where_it_is_below_the_p50() -> None:
    # 4 clients, half the requests 0.5 ms, half 2.0 ms: p50 2.0 ms, mean 1.25 ms, 3200 req/s
    row = {"throughput_rps": 3200.0, "p50_ms": 2.0, "mean_ms": 1.25, "concurrency": 4}
    (finding,) = consistency.little("bimodal", row, 0.05)
    assert finding.ok and "4 / 1.250 ms (mean)" in finding.bound
    (finding,) = consistency.little("bimodal", {**row, "throughput_rps": 3400.0}, 0.05)
    assert not finding.ok


def test_the_roof_of_the_cache_level_the_working_set_fits_applies() -> None:
    # 4 MiB at 30 GFLOP/s and 2 FLOP/B is above a 10 GB/s DRAM roof but under a 32 MiB L3's
    device = {
        "peak_flops": 50e9,
        "peak_bandwidth": 10e9,
        "roofs": [
            {"level": "L2", "max_bytes": 2**20, "bandwidth": 40e9},
            {"level": "L3", "max_bytes": 32 * 2**20, "bandwidth": 20e9},
        ],
    }
    knee = {
        "model": "m",
        "device": device,
        "layers": [
            {
                "name": "fc",
                "type": "Linear",
                "kind": "compute",
                "points": [_knee_point(1, 30.0, 4 * 2**20), _knee_point(64, 30.0, 64 * 2**20)],
            }
        ],
    }
    roofs = [f for f in consistency.knee_findings(knee) if f.check == consistency.ROOF]
    assert [f.ok for f in roofs] == [True, False]
    assert "(L3 roof, 4 MiB)" in roofs[0].bound and "(DRAM roof, 64 MiB)" in roofs[1].bound


def test_mlpipe_report_stops_with_one_line(fixture_root: Path) -> None:
    _edit(fixture_root, "serve/client.json", lambda d: d.update(served_acc=0.5))
    proc = subprocess.run(
        [
            str(Path(sys.executable).parent / "mlpipe-report"),
            f"paths.root_dir={fixture_root}",
            f"hydra.run.dir={fixture_root}/hydra",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert proc.returncode == 1
    errors = [ln for ln in proc.stderr.splitlines() if "error" in ln.lower()]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "served accuracy = ONNX Runtime: client grpc" in errors[0]
    assert (fixture_root / "reports" / "REPORT.md").is_file()

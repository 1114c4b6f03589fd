"""mlpipe.report: the report builds from the fixtures in tests/fixtures/report/, every missing
or broken input becomes a clear line, and provenance hashes are the files' real hashes."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from mlpipe.measure.tables import PlotStyle, bench_plots
from mlpipe.report import report

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures" / "report"


def _cfg(root: Path) -> DictConfig:
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        return compose(config_name="report", overrides=[f"paths.root_dir={root}"])


@pytest.fixture
def fixture_root(tmp_path: Path) -> Path:
    root = tmp_path / "checkout"
    shutil.copytree(FIXTURES, root)
    return root


def test_report_builds_from_fixtures(fixture_root: Path, capsys: pytest.CaptureFixture) -> None:
    reports = fixture_root / "reports"
    bench = json.loads((reports / "bench" / "results.json").read_text())
    bench_plots(
        bench["rows"], reports / "bench", PlotStyle(7.5, 5, 120)
    )  # the real plot code makes the linked PNGs
    out = report(_cfg(fixture_root))
    assert out == reports / "REPORT.md"
    text = out.read_text()
    for heading in (
        "## Data and training",
        "## Export parity",
        "## Serving latency and throughput",
        "## Roofline per layer",
        "## Measured knee vs analytic flip batch",
        "## Triton config chosen by measurement",
        "## relu_module benchmark",
        "## GPU results",
        "## Provenance",
    ):
        assert heading in text
    assert "3585fe091615bb9ca159fef4b9e914ad.dir" in text  # data.dvc md5
    assert "| test_acc     | 0.9833" in text
    assert "2.4e-07" in text and "100.0000%" in text  # export parity
    assert "## Served model" in text and "0.9805, offline ORT 0.9805, equal: **True**" in text
    assert re.search(
        r"\| grpc batch-1 p50 − in-process ORT p50 \[ms\] +\| 1\.150 +\| ≤ 1\.0 +\| no", text
    )
    assert re.search(
        r"\| tuned config \(i1_q0_pnone\) on the tuner's measured Pareto front +"
        r"\| True +\| True +\| yes",
        text,
    )
    assert re.search(
        r"\| throughput tuned / untuned at 16 clients "
        r"\(batched, unbatched; median of 3 interleaved rounds, range\) +"
        r"\| 1\.10 \(1\.00–1\.30\) / 2\.06 \(2\.00–2\.20\) +\| ≥ 1\.0 each, within the measured "
        r"spread \(± half the rounds' range\) +\| yes",
        text,
    )
    _check_knee_and_tune_sections(text)
    # bench rows, formatted: each Triton row names the served config it measured
    assert (
        "| triton_grpc:digits       | batcher on, delay 1000 µs, 1 inst. | 1       | 4      "
        in text
    )
    assert "| triton_grpc:digits_tuned | batcher on, delay 0 µs, 1 inst.    | 1       | 1 " in text
    assert "| ort_cpu                  | in-process " in text
    assert "**tensorrt**: unavailable: import tensorrt failed" in text
    assert "![latency vs batch](bench/latency_vs_batch.png)" in text
    assert "_(plot tiny_h100_sxm.png missing)_" in text  # linked only when the file exists
    # roofline rows: Linear(64, 256) at ridge 17.2 flips at ceil(17.2*66560/(32768-17.2*1280)) = 107
    assert (
        "| 1       | Linear  | 2.097e+06 | 16640    | 1.485e+05 | 14.1     | memory / 107" in text
    )
    assert "| 2       | ReLU    |" in text
    assert "memory / never" in text and "ridge 17.2 FLOP/B" in text
    assert "| time vs faster of numpy/torch" in text and "MISS" in text
    digest = hashlib.sha256((fixture_root / "constraints.txt").read_bytes()).hexdigest()
    assert f"| sha256 constraints.txt | {digest} |" in text
    assert "| sha256 dvc.lock        | absent" in text
    assert "| git revision           | unknown" in text  # the copy is not a git checkout
    screen = capsys.readouterr().out
    assert "test acc 0.9833" in screen and "relu_module targets 1/2 pass" in screen
    # the headline's batch-1 latency is a config without queue delay, and it says so
    assert (
        "batch-1 p50: ort_cpu 0.131 ms, triton_grpc:digits_tuned 0.580 ms (Triton configs "
        "without a queue delay; digits left out: batch 1 alone waits its full queue delay)"
    ) in screen
    assert "serving targets met 4/5" in screen
    assert "tiny flip→knee: 1 8→64, 3 4→>128" in screen
    assert (
        "tuned i1_q0_pnone: 2000 req/s, p99 10.0 ms at 16 clients, on front True, beats untuned "
        "True, hand-written untuned_digits replaced (ε 8.0%)"
    ) in screen
    assert "tiny flip batches: h100_sxm [" in screen


def _check_knee_and_tune_sections(text: str) -> None:
    # analytic vs measured knee: 64 / 8 = 8x; layer 3 flips at 4 analytically, never measured
    assert (
        "On cpu_measured, the measured knee (≥ 80 % of peak) of 1 matmul/conv layer(s) is 8× the "
        "analytic flip batch; 1 predicted to turn compute-bound never reach 80 %: 3 (flip batch 4)"
    ) in text
    assert "| 1       | Linear | 8                     | 64 " in text
    assert "| 3       | Linear | 4                     | > 128 " in text
    assert "93 % copy B/s (batch 256)" in text and "128 (time_budget)" in text
    assert "_(plot tiny_cpu_measured.png missing)_" in text
    assert "10 GB/s DRAM, L2 (≤ 1 MiB) 40 GB/s: fixture)" in text  # the knee's cache roof
    assert "**i1_q0_pnone** (1 instance(s), dynamic batching on, max queue delay 0 µs" in text
    assert "untuned_digits 1.67x, untuned_digits_nobatch 2.22x (≥ both: **True**)" in text
    assert (
        "Decision (replaces the hand-written config): i1_q0_pnone vs hand-written untuned_digits: "
        "throughput +66.7%, p99 -50.0%, beyond the measured spread ε = 8.0%." in text
    )
    assert "not measured (time budget): i2_q300_p8_16" in text
    # the front table lists only the front, the chosen point marked
    assert "| i1_q0_pnone | 2000    | 7.00     | 10.00    | 5.40" in text and "**chosen**" in text
    assert "| i2_off      | 1800" in text and "| untuned_digits " not in text


def test_missing_sections_say_how_to_make_them(tmp_path: Path) -> None:
    (tmp_path / "reports").mkdir()
    text = report(_cfg(tmp_path)).read_text()
    for line in (
        "Training metrics: not run: `make train (mlpipe-train)`",
        "Served accuracy: not run: `make client (mlpipe-client)`",
        "Serving targets: not run: `make serve-targets (mlpipe-serve-targets)`",
        "not run: `make export (mlpipe-export)` writes parity.json",
        "not run: `make bench-serving (mlpipe-bench)` writes results.json",
        "not run: `make profile (mlpipe-profile)`",
        "not run: `dvc repro -f -s measurements/dvc.yaml:knee (mlpipe-knee -m model=cnn,mlp_wide)`",
        "not run: `make tune (mlpipe-tune)` writes results.json",
        "not run: `dvc repro -f -s measurements/dvc.yaml:relu_bench (quick sweep; make bench "
        "runs the full one into reports/relu/)`",
        "data.dvc not found: it records the data version",
    ):
        assert line in text, line


def test_unreadable_input_is_named_and_the_rest_still_reports(fixture_root: Path) -> None:
    (fixture_root / "reports" / "export" / "parity.json").write_text("{not json")
    (fixture_root / "reports" / "relu" / "quick" / "results.json").write_text('{"mode": "quick"}')
    (fixture_root / "data.dvc").write_text("outs: [broken")
    text = report(_cfg(fixture_root)).read_text()
    assert f"Data: {fixture_root / 'data.dvc'} is not a valid .dvc file" in text
    assert "unreadable: " in text and "parity.json" in text and "rerun `make export" in text
    assert "no summary.targets" in text
    assert "| test_acc     | 0.9833" in text  # other sections unaffected


def test_gpu_results_are_included_when_committed(fixture_root: Path) -> None:
    gpu = fixture_root / "reports" / "gpu"
    gpu.mkdir()
    (gpu / "h100.md").write_text("Measured on NVIDIA H100 80GB HBM3.\n\n| backend | p50 ms |\n")
    (gpu / "profile").mkdir()
    (gpu / "profile" / "cnn.md").write_text("### cnn\n\n![roofline](cnn_cuda_measured.png)\n")
    text = report(_cfg(fixture_root)).read_text()
    assert "#### h100.md" in text and "Measured on NVIDIA H100 80GB HBM3." in text
    # an image link inside a nested file is rewritten relative to REPORT.md
    assert (
        "#### profile/cnn.md" in text and "![roofline](gpu/profile/cnn_cuda_measured.png)" in text
    )


def test_summary_only_leaves_the_report_alone(
    fixture_root: Path, capsys: pytest.CaptureFixture
) -> None:
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        cfg = compose(
            config_name="report", overrides=[f"paths.root_dir={fixture_root}", "report.write=false"]
        )
    out = report(cfg)
    assert not out.exists()
    assert "test acc 0.9833" in capsys.readouterr().out


def test_a_kept_hand_written_config_is_marked(fixture_root: Path) -> None:
    """When the tuner kept `digits`, its tuned/untuned cell says the two are the same config."""
    path = fixture_root / "reports" / "serve" / "measure.json"
    measured = json.loads(path.read_text())
    measured["tuning"]["same_config_as"] = "batched"
    path.write_text(json.dumps(measured))
    text = report(_cfg(fixture_root)).read_text()
    assert re.search(r"\| 1\.10 \(1\.00–1\.30\) same config / 2\.06 \(2\.00–2\.20\) +\|", text)

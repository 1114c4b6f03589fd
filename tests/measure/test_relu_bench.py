"""The relu_module benchmark app (mlpipe.measure.relu_bench): the real config, a tiny sweep."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers.compose import compose_app

from mlpipe.common.errors import ConfigError
from mlpipe.measure import relu_bench

TINY = (
    "relu_bench=quick",
    "relu_bench.sizes=[10,300000]",
    "relu_bench.dtypes=[float32]",
    "relu_bench.references=false",
    "relu_bench.warm.rounds=2",
    "relu_bench.warm.calls=3",
    "relu_bench.idle.sleep_s=0.2",
    "relu_bench.repeats=[{min_bytes: 0, repeats: 3}]",
    "relu_bench.tensor_path.sizes=[10,300000]",
    "relu_bench.tensor_path.dtypes=[float64]",
    "relu_bench.tensor_path.repeats=3",
)


@pytest.mark.parametrize("group", ["quick", "full"])
def test_config_groups_compose(group: str, tmp_path: Path) -> None:
    cfg = compose_app("relu_bench", tmp_path, f"relu_bench={group}").relu_bench
    assert cfg.mode == group and cfg.out_dir.startswith(str(tmp_path))
    relu_bench.check_config(cfg)


@pytest.mark.timeout(300)
def test_tiny_run_writes_every_column(tmp_path: Path) -> None:
    cfg = compose_app("relu_bench", tmp_path, *TINY).relu_bench
    result = relu_bench.run(cfg)
    on_disk = json.loads((Path(cfg.out_dir) / "results.json").read_text())
    assert on_disk["mode"] == "quick" and (Path(cfg.out_dir) / "bench.png").stat().st_size > 0
    assert len(result["ratios"]) == 2 * 3  # sizes x forms
    for cell in result["ratios"]:
        for key in ("ratio_min", "ratio_median", "warm_ratio_min", "warm_ratio_median"):
            assert cell[key] > 0, key
    names = [t["name"] for t in result["summary"]["targets"]]
    assert any("(min)" in n for n in names) and any("(median)" in n for n in names)
    idle = result["idle_cpu_s"]
    assert set(idle["by_library"]) == {"relu_module", "torch", "numpy"}
    assert all(0 <= v < 10 * idle["sleep_s"] for v in idle["by_library"].values())
    summary = (Path(cfg.out_dir) / "summary.md").read_text()
    assert "warm med" in summary and "CPU time of an idle process" in summary
    assert on_disk["machine"]["policy"]["parallel_min_bytes"] > 0


def test_tensor_path_cells_ratios_targets_and_policy(tmp_path: Path) -> None:
    from mlpipe.measure.relu_torch_bench import run_tensor_path, table_lines

    cfg = compose_app("relu_bench", tmp_path, *TINY).relu_bench.tensor_path
    result = run_tensor_path(cfg)
    cells = {(c["n"], c["form"]): c for c in result["cells"]}
    forms = ("out-of-place", "in-place", "out=")
    assert set(cells) == {(n, f) for n in (10, 300000) for f in forms}
    for c in cells.values():
        assert set(c["min_s"]) == {"relu_module.torch", "torch", "numpy"}
        assert c["ratio_vs_torch"] > 0 and c["ratio_vs_best"] > 0 and c["ours_gbps"] > 0
    small, large = result["targets"]
    assert small["where"].endswith(forms) and "n=1e+01" in small["where"]
    assert "n=3e+05" in large["where"] and large["limit"] == 1.0
    policy = result["policy"]
    assert policy["parallel_min_bytes"] == policy["l2_bytes"] // 2 and policy["why"]
    assert any(line.startswith(("[PASS]", "[MISS]")) for line in table_lines(result))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("relu_bench.sizes=[0]", "relu_bench.sizes: must be a non-empty list of positive int"),
        ("relu_bench.sizes=[abc]", "relu_bench.sizes: must be a non-empty list of positive int"),
        ("relu_bench.dtypes=[int8]", "relu_bench.dtypes: must be float32"),
        ("relu_bench.warm.calls=0", "relu_bench.warm.calls: must be an integer >= 1"),
        ("relu_bench.min_sample_s=abc", "relu_bench.min_sample_s: must be a number, got 'abc'"),
    ],
)
def test_bad_values_are_one_line_errors(override: str, message: str, tmp_path: Path) -> None:
    cfg = compose_app("relu_bench", tmp_path, override).relu_bench
    with pytest.raises(ConfigError, match=message):
        relu_bench.run(cfg)

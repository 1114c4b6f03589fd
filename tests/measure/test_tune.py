"""mlpipe.measure.tune: the search space, the Pareto front and the choice on hand-made points,
bad config, and a short sweep on the real tritonserver end to end."""

from __future__ import annotations

import filecmp
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers.compose import EPHEMERAL, compose_app
from omegaconf import DictConfig

from mlpipe.common.config import plain
from mlpipe.common.errors import ArtifactError, ArtifactMissingError, ConfigError, UserError
from mlpipe.common.provenance import sha256_file
from mlpipe.export.run import export, export_onnx
from mlpipe.export.triton_repo import SHA256_PARAMETER, build_python_repository, parse_pbtxt
from mlpipe.measure.decision import checks, decide, select
from mlpipe.measure.pareto import choose, eps_dominates, on_front, pareto_front, spread
from mlpipe.measure.tune import (
    build_sweep_repository,
    candidate,
    candidates,
    check_tune_config,
    tune,
    write_tuned_repository,
)
from mlpipe.serving.repository import check_repository
from mlpipe.serving.server import TritonServer
from mlpipe.train.nets import CNN

TRITON = {
    "instance_group": {"count": 1},
    "dynamic_batching": {"max_queue_delay_microseconds": 1000, "preferred_batch_size": [16, 32]},
    "models": {"digits": True, "digits_nobatch": False},
}


def _pt(name: str, rps: float, p99: float, status: str = "ok", conc: int = 16) -> dict[str, Any]:
    return {
        "config": name,
        "concurrency": conc,
        "status": status,
        "throughput_rps": rps,
        "p99_ms": p99,
    }


def test_space_puts_the_baselines_first_and_measures_each_config_once() -> None:
    space = {
        "instance_count": [1, 2],
        "dynamic_batching": [False, True],
        "max_queue_delay_microseconds": [0, 1000],
        "preferred_batch_size": [[], [16, 32]],
    }
    cands = candidates(space, TRITON)
    names = [c.name for c in cands]
    assert names[:2] == ["untuned_digits", "untuned_digits_nobatch"]
    assert [c.untuned for c in cands[:2]] == ["digits", "digits_nobatch"]
    # i1_off and i1_q1000_p16_32 are the baselines: not measured twice
    assert "i1_off" not in names and "i1_q1000_p16_32" not in names
    assert len(names) == len(set(names)) == 2 + (2 * (1 + 4) - 2)
    batched = next(c for c in cands if c.name == "i2_q0_pnone")
    assert batched.batcher() == {"preferred_batch_size": [], "max_queue_delay_microseconds": 0}
    assert next(c for c in cands if c.name == "i2_off").batcher() is None


def test_pareto_front_and_choice_on_hand_made_points() -> None:
    pts = [
        _pt("fast_slowtail", 2500, 60.0),
        _pt("best_in_budget", 2000, 12.0),
        _pt("lowest_p99", 900, 3.0),
        _pt("dominated", 1500, 20.0),
        _pt("tie_worse_p99", 2000, 15.0),
        _pt("failed", 9999, 1.0, status="error"),
    ]
    assert pareto_front(pts) == ["lowest_p99", "best_in_budget", "fast_slowtail"]
    assert choose(pts, 40.0)["config"] == "best_in_budget"  # tie on throughput: lower p99
    assert choose(pts, 100.0)["config"] == "fast_slowtail"
    assert choose(pts, 1.0) is None
    pts += [_pt("untuned_a", 1500, 20.0), _pt("untuned_b", 2100, 70.0)]
    res = checks(pts, choose(pts, 40.0))
    assert res["on_front"] is True and res["beats_untuned"] is False  # untuned_b: more req/s
    assert res["throughput_vs_untuned"]["untuned_a"] == pytest.approx(2000 / 1500)


def _runs(name: str, runs: list[float], p99: float) -> dict[str, Any]:
    """A confirmed point: its median throughput and every interleaved window's figure."""
    return {**_pt(name, sorted(runs)[len(runs) // 2], p99), "throughput_rps_runs": runs}


def test_spread_and_eps_dominance() -> None:
    assert spread([90.0, 100.0, 110.0]) == pytest.approx(0.2)
    assert spread([100.0]) == 0.0 and spread([]) == 0.0
    a, b = _pt("a", 1100, 10.0), _pt("b", 1000, 10.0)
    assert eps_dominates(a, b, 0.05) and not eps_dominates(a, b, 0.10)
    assert not eps_dominates(_pt("a", 1100, 12.0), b, 0.05)  # 20 % worse p99 is beyond ε


def test_a_candidate_within_the_measured_spread_keeps_the_hand_written_config() -> None:
    # the run that flipped between configs: 0.92x-1.04x rounds for a 3 % median gain
    hand = _runs("untuned_digits", [1000.0, 1050.0, 950.0], 12.0)  # spread 10 %
    cand = _runs("i1_q300_p8_16", [1030.0, 1000.0, 1070.0], 11.0)  # spread 7 %
    points = [hand, cand, _runs("untuned_digits_nobatch", [700.0, 720.0, 710.0], 9.0)]
    chosen, decision = decide(points, choose(points, 40.0), 40.0)
    assert chosen["config"] == "untuned_digits" and decision["replaced"] is False
    assert decision["epsilon"] == pytest.approx(0.10)
    assert decision["reason"] == (
        "i1_q300_p8_16 vs hand-written untuned_digits: throughput +3.0%, p99 -8.3%, within the "
        "measured spread ε = 10.0%: untuned_digits kept"
    )


def test_a_candidate_beyond_the_measured_spread_replaces_it() -> None:
    hand = _runs("untuned_digits", [1000.0, 1020.0, 980.0], 12.0)  # spread 4 %
    cand = _runs("i2_q0_pnone", [1500.0, 1480.0, 1520.0], 12.2)  # p99 +1.7 %: within ε
    chosen, decision = decide([hand, cand], cand, 40.0)
    assert chosen["config"] == "i2_q0_pnone" and decision["replaced"] is True
    assert "throughput +50.0%" in decision["reason"] and "beyond" in decision["reason"]
    # no hand-written config within the budget: the candidate, and the reason says so
    chosen, decision = decide([_pt("untuned_digits", 900, 80.0), cand], cand, 40.0)
    assert chosen is cand and decision["reason"].endswith(
        "no hand-written config meets the p99 budget"
    )


def test_a_kept_config_is_on_the_front_within_its_epsilon() -> None:
    pts = [_pt("untuned_digits", 1000, 12.0), _pt("i1_q0", 1030, 11.0)]
    assert pareto_front(pts) == ["i1_q0"]
    assert on_front(pts, "untuned_digits", 0.10) and not on_front(pts, "untuned_digits", 0.01)


def test_no_config_within_budget_says_what_to_change(tmp_path: Path) -> None:
    cfg = compose_app("tune", tmp_path, "tune.p99_budget_ms=5")
    with pytest.raises(UserError, match=r"no configuration met p99 <= 5 ms at 16 clients.*12\.0"):
        select(cfg, [_pt("a", 100, 12.0), _pt("b", 200, 30.0)])


@pytest.mark.parametrize(
    "override,match",
    [
        ("tune.space.instance_count=[0]", "tune.space.instance_count"),
        ("tune.space.dynamic_batching=[yes_please]", "tune.space.dynamic_batching"),
        ("tune.space.preferred_batch_size=[[128]]", r"preferred_batch_size.*\[1, 64\]"),
        ("tune.select_concurrency=8", r"select_concurrency: must be one of tune.concurrency"),
        ("tune.p99_budget_ms=0", "tune.p99_budget_ms: must be > 0"),
        ("tune.confirm.rounds=-1", "tune.confirm.rounds: must be an integer >= 0"),
        ("tune.load.mode=carrier_pigeon", r"tune.load.mode: must be one of \[.thread.,"),
        ("tune.stability.max_rounds=0", "tune.stability.max_rounds: must be an integer >= 1"),
    ],
)
def test_bad_config_names_the_key(tmp_path: Path, override: str, match: str) -> None:
    cfg = compose_app("tune", tmp_path, override)
    with pytest.raises(ConfigError, match=match):
        check_tune_config(cfg.tune, int(cfg.export.triton.max_batch_size))


def test_missing_export_names_the_command(tmp_path: Path, dvc_data: Path) -> None:
    cfg = compose_app("tune", tmp_path, *EPHEMERAL)
    with pytest.raises(ArtifactMissingError, match=r"model.onnx not found.*mlpipe-export"):
        tune(cfg)


@pytest.fixture
def small_export(tmp_path: Path) -> DictConfig:
    """The tune config on an untrained small CNN's ONNX and its exported python repository."""
    cfg = compose_app("tune", tmp_path, *EPHEMERAL, "export.onnx.dynamo=false")
    torch.manual_seed(0)
    net = CNN(1, 8, 10, [4], 3, 2, 16, 0.0, "torch").eval()
    export_onnx(net, torch.rand(2, 1, 8, 8), Path(cfg.export.onnx_path), cfg.export.onnx)
    build_python_repository(Path(cfg.export.onnx_path), cfg.export.triton)
    return cfg


def _swap_model(model_dir: Path) -> str:
    """Put other bytes in a model's ONNX file; returns the sha256 the config recorded."""
    config = parse_pbtxt((model_dir / "config.pbtxt").read_text())
    onnx_file = model_dir / "1" / config.parameters["onnx_file"].string_value
    recorded = config.parameters[SHA256_PARAMETER].string_value
    assert recorded == sha256_file(onnx_file)
    onnx_file.write_bytes(onnx_file.read_bytes() + b"\0")
    return recorded


def test_every_sweep_model_carries_and_checks_its_sha256(small_export: DictConfig) -> None:
    cfg = small_export
    cands = candidates(cfg.tune.space, cfg.export.triton)
    sweep = Path(cfg.tune.sweep_repository)
    build_sweep_repository(cands, Path(cfg.export.onnx_path), cfg.export.triton, sweep)
    check_repository(sweep, [c.name for c in cands])  # every candidate passes as written
    recorded = _swap_model(sweep / cands[-1].name)
    with pytest.raises(ArtifactError, match=f"recorded {recorded}"):
        check_repository(sweep, [c.name for c in cands])


def test_tampered_tuned_model_is_refused(small_export: DictConfig) -> None:
    """The tuned model is served only if its ONNX is the exported one, like every other."""
    cfg = small_export
    model_dir = write_tuned_repository(cfg, candidate(2, True, 300, [8]))
    recorded = _swap_model(model_dir)
    serve = {**plain(cfg.serve), "model_repository": cfg.tune.repository}
    serve["models"] = {**serve["models"], str(cfg.tune.tuned_model): True}
    server = TritonServer.from_config(serve)
    with pytest.raises(ArtifactError, match=f"recorded {recorded} .*refusing to serve"):
        server.start()
    assert server.process is None  # refused before anything was launched


@pytest.mark.slow
def test_short_sweep_on_the_real_server(
    tmp_path: Path, trained_checkpoint: Any, dvc_data: Path
) -> None:
    """Two baselines and two candidates at 1 and 4 clients: figures are reported, not asserted."""
    export_cfg = compose_app(
        "export",
        tmp_path,
        f"export.checkpoint_path={trained_checkpoint.ckpt_path}",
        f"export.provenance.train_metrics={trained_checkpoint.metrics_path}",
        "export.onnx.dynamo=false",
    )
    export(export_cfg)
    exported = Path(export_cfg.export.triton.python_repository)
    before = {p: p.read_bytes() for p in exported.rglob("*") if p.is_file()}
    cfg = compose_app(
        "tune",
        tmp_path,
        *EPHEMERAL,
        "tune.space.instance_count=[2]",
        "tune.space.dynamic_batching=[false,true]",
        "tune.space.max_queue_delay_microseconds=[0]",
        "tune.space.preferred_batch_size=[[]]",
        "tune.concurrency=[1,4]",
        "tune.select_concurrency=4",
        "tune.p99_budget_ms=1000",
        "tune.requests_per_slot=10",
        "tune.warmup=2",
        "tune.confirm.top=1",
        "tune.confirm.rounds=1",
    )
    result = tune(cfg)
    names = ["untuned_digits", "untuned_digits_nobatch", "i2_off", "i2_q0_pnone"]
    assert sorted((r["config"], r["concurrency"]) for r in result["rows"]) == sorted(
        (n, c) for n in names for c in (1, 4)
    )
    # confirmed at 4 clients: both baselines and the fastest, until the choice is a confirmed one
    confirmed = {r["config"]: r for r in result["rows"] if r.get("runs")}
    assert {"untuned_digits", "untuned_digits_nobatch"} <= set(confirmed)
    assert result["chosen"]["config"] in confirmed
    for r in confirmed.values():
        assert r["concurrency"] == 4 and r["runs"] == 2
        assert r["throughput_rps"] == pytest.approx(sum(r["throughput_rps_runs"]) / 2)
    assert all(
        r["status"] == "ok" and r["requests"] >= 10 * r["concurrency"] for r in result["rows"]
    )
    off = next(r for r in result["rows"] if r["config"] == "i2_off" and r["concurrency"] == 4)
    assert off["mean_server_batch"] == 1.0  # batcher off: one request per execution
    chosen, decision = result["chosen"], result["decision"]
    at4 = [r for r in result["rows"] if r["concurrency"] == 4]
    best = max(at4, key=lambda r: r["throughput_rps"])
    assert decision["candidate"] == best["config"]
    if decision["replaced"] or best["config"].startswith("untuned_"):
        assert chosen["config"] == best["config"]
    else:  # within the measured spread of the best hand-written config: that one is kept
        assert chosen["config"] == decision["hand_written"] and decision["reason"].endswith("kept")
    assert result["checks"]["on_front"] and result["checks"]["beats_untuned"]
    tuned = Path(cfg.tune.repository) / "digits_tuned"
    config = parse_pbtxt((tuned / "config.pbtxt").read_text())
    assert config.name == "digits_tuned"
    assert config.instance_group[0].count == chosen["instance_count"]
    assert config.HasField("dynamic_batching") == chosen["dynamic_batching"]
    # the export's repository is untouched; the tuned one holds a byte-identical copy of it
    assert {p: p.read_bytes() for p in exported.rglob("*") if p.is_file()} == before
    assert not filecmp.dircmp(exported / "digits", Path(cfg.tune.repository) / "digits").diff_files
    out = Path(cfg.tune.out_dir)
    assert json.loads((out / "results.json").read_text()) == json.loads(json.dumps(result))
    assert "Pareto front" in (out / "results.md").read_text()
    assert (out / "pareto.png").stat().st_size > 0

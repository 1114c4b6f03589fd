"""mlpipe.measure.knee: the measured knee per layer.

The knee logic is checked on a synthetic device with known peaks whose timing is simulated (a
launch overhead plus the roofline time), against knees solved from that simulation here; the
real sweep runs on this CPU end to end; the GPU path runs where torch sees CUDA.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from helpers.compose import compose_app
from torch import nn

from mlpipe.common.errors import ConfigError
from mlpipe.measure.knee import (
    KneeSettings,
    knee,
    knee_peak,
    knee_time,
    layer_costs,
    sweep_layer,
)
from mlpipe.measure.profile import profile_network
from mlpipe.measure.roofline import DevicePeaks
from mlpipe.measure.rounds import Stability

# A synthetic accelerator: 100 TFLOP/s, 2 TB/s (ridge 50 FLOP/B), 6 us per call.
SYNTH = DevicePeaks("synthetic", "fp32", 100e12, 2e12, "test: known peaks", "measured")
LAUNCH_S = 6e-6
SETTINGS = KneeSettings(
    max_batch=1 << 16,
    time_budget_s=1e9,
    memory_budget_bytes=1e12,
    warmup=0,
    repeats=3,
    min_sample_s=0.0,
    max_inner=1,
    stability=Stability(0.01, 2, 4),
    peak_fraction=0.8,
    time_step=0.1,
)
F, W, C = 2 * 1024 * 1024, 4 * (1024 * 1024 + 1024), 4 * 2048  # Linear(1024, 1024), fp32


def simulated_seconds(batch: int) -> float:
    """What the synthetic device takes for one call: launch + roofline time."""
    return LAUNCH_S + max(F * batch / SYNTH.peak_flops, (W + C * batch) / SYNTH.peak_bandwidth)


def noisy_sampler(batch: int):
    """Every round's first sample is 60 % slow (a cold cache); best-of-rounds must see past it."""
    calls = iter(range(10**6))

    def sample() -> float:
        slow = next(calls) % SETTINGS.repeats == 0
        return simulated_seconds(batch) * (1.6 if slow else 1.0)

    return sample


def linear_layer():
    res = profile_network(nn.Sequential(nn.Linear(1024, 1024)), [1024], 64, "fp32", [SYNTH])
    (layer,) = layer_costs(res, SYNTH, {"Linear": "compute"})
    return layer


def test_profile_costs_are_the_hand_counted_linear() -> None:
    layer = linear_layer()
    assert (layer.cost.flops(1), layer.cost.weight_bytes) == (F, W)
    assert layer.cost.activation_bytes_per_sample == C
    assert layer.flip_batch is not None and layer.flip_batch > 1


def test_linear_knee_on_a_synthetic_device_falls_where_the_simulation_says() -> None:
    res = sweep_layer(linear_layer(), noisy_sampler, SYNTH, SETTINGS)
    # Solved here from the simulation, not by the code under test. Compute-bound share of peak:
    # F*B / (P * (launch + F*B/P)) >= 0.8  <=>  B >= 4 * P * launch / F (the ridge is long passed).
    b_star = 4 * SYNTH.peak_flops * LAUNCH_S / F
    expected_peak_knee = 1 << math.ceil(math.log2(b_star))
    assert res["knee_peak"] == expected_peak_knee == 2048  # b_star = 1144
    # time per sample t(B)/B = launch/B + F/P (compute-bound): once doubling gains < 10 % it never
    # gains 10 % again, so the knee is the first B with launch/(2B) < 0.1*(launch/B + F/P).
    per_sample = {b: simulated_seconds(b) / b for b in (1 << i for i in range(17))}
    expected_time_knee = next(
        b
        for b in per_sample
        if min(v for k, v in per_sample.items() if k > b) > 0.9 * per_sample[b]
    )
    assert res["knee_time"] == expected_time_knee
    by_batch = {p["batch"]: p for p in res["points"]}
    assert list(by_batch) == [1 << i for i in range(17)]
    for b, p in by_batch.items():
        assert p["seconds"] == pytest.approx(simulated_seconds(b))  # best-of saw past the slow
        assert p["achieved_flops"] == pytest.approx(F * b / simulated_seconds(b))
        assert p["achieved_bandwidth"] == pytest.approx((W + C * b) / simulated_seconds(b))
        assert p["fraction_of_peak"] == pytest.approx(p["achieved_flops"] / SYNTH.peak_flops)
        assert p["stable"]
    # the measured knee is far past the analytic prediction, as a launch overhead makes it
    assert res["knee_peak"] > 10 * res["flip_batch"]


def test_budgets_end_the_sweep_and_say_which() -> None:
    layer = linear_layer()
    small_memory = KneeSettings(**{**SETTINGS.__dict__, "memory_budget_bytes": W + C * 100})
    res = sweep_layer(layer, noisy_sampler, SYNTH, small_memory)
    assert (res["largest_batch"], res["stopped_by"]) == (64, "memory_budget")
    ticks = iter(range(1000))
    short = KneeSettings(**{**SETTINGS.__dict__, "time_budget_s": 2.5})
    res = sweep_layer(layer, noisy_sampler, SYNTH, short, clock=lambda: float(next(ticks)))
    assert (res["largest_batch"], res["stopped_by"]) == (4, "time_budget")
    assert res["knee_peak"] is None  # not reached within the cap: the table says "> 4"


def test_knees_on_hand_made_points() -> None:
    pts = [
        {"batch": b, "fraction_of_peak": f, "seconds_per_sample": s}
        for b, f, s in [
            (1, 0.1, 10.0),
            (2, 0.5, 9.5),
            (4, 0.79, 5.0),
            (8, 0.8, 4.8),
            (16, 0.9, 4.7),
        ]
    ]
    assert knee_peak(pts, 0.8) == 8 and knee_peak(pts, 0.95) is None
    # 1 -> 2 gains only 5 %, but 4 gains 50 %: the fall has not stopped at 1
    assert knee_time(pts, 0.1) == 4
    assert knee_time(pts[:3], 0.1) is None


@pytest.mark.parametrize(
    "key,value,match",
    [
        ("peak_fraction", 1.5, "peak_fraction: must lie in"),
        ("time_step", 0, "time_step: must lie in"),
        ("max_batch", 0, "max_batch: must be an integer >= 1"),
    ],
)
def test_bad_settings_name_the_key(tmp_path: Path, key: str, value: float, match: str) -> None:
    cfg = compose_app("knee", tmp_path, f"profile.knee.{key}={value}")
    with pytest.raises(ConfigError, match=match):
        KneeSettings.from_config(cfg.profile.knee)


def test_a_datasheet_preset_is_refused(tmp_path: Path) -> None:
    cfg = compose_app("knee", tmp_path, "profile.knee.device=h100_sxm")
    with pytest.raises(ConfigError, match="h100_sxm.*not a preset measured at run time"):
        knee(cfg)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without CUDA")
def test_gpu_preset_without_cuda_says_so(tmp_path: Path) -> None:
    cfg = compose_app("knee", tmp_path, "profile/knee=gpu")
    with pytest.raises(ConfigError, match="CUDA GPU and torch sees none"):
        knee(cfg)


QUICK = (
    "profile.knee.max_batch=8",
    "profile.knee.peak_repeats=3",
    "profile.knee.peak_matmul_sizes=[256]",
    "profile.knee.repeats=2",
    "profile.knee.min_sample_s=0.0005",
)


def _check_outputs(cfg, result) -> None:
    out = Path(cfg.profile.knee.out_dir)
    stem = out / str(cfg.profile.model_name)
    assert json.loads(stem.with_suffix(".json").read_text()) == json.loads(json.dumps(result))
    md = stem.with_suffix(".md").read_text()
    assert "analytic flip batch" in md and "measured knee" in md
    assert (out / f"{cfg.profile.model_name}_{result['device']['name']}.png").stat().st_size > 0


def test_real_sweep_on_this_cpu(tmp_path: Path) -> None:
    cfg = compose_app("knee", tmp_path, "model=mlp", "profile.model_name=mlp", *QUICK)
    result = knee(cfg)
    assert result["timing_device"] == "cpu" and result["clock"] == "perf_counter"
    kinds = {r["type"]: r["kind"] for r in result["layers"]}
    assert kinds == {"Linear": "compute", "ReLU": "elementwise"}
    for r in result["layers"]:
        assert [p["batch"] for p in r["points"]] == [1, 2, 4, 8]
        assert all(p["seconds"] > 0 and p["fraction_of_peak"] > 0 for p in r["points"])
        assert r["knee_peak"] == knee_peak(r["points"], 0.8)
        if r["kind"] == "elementwise":
            assert all(p["copy_bandwidth"] > 0 for p in r["points"])
    # the peaks carry a roof per cache level; each point names the one its working set fits
    device = result["device"]
    levels = [roof["level"] for roof in device["roofs"]]
    for p in (p for r in result["layers"] for p in r["points"]):
        assert p["roof_level"] in (*levels, "DRAM") and p["fraction_of_roof"] > 0
    assert result["observed"]["peak_flops"] == device["peak_flops"]
    _check_outputs(cfg, result)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; torch sees none here")
def test_real_sweep_on_the_gpu(tmp_path: Path) -> None:
    cfg = compose_app(
        "knee",
        tmp_path,
        "model=mlp_wide",
        "profile.model_name=mlp_wide",
        "profile/knee=gpu",
        *QUICK,
    )
    result = knee(cfg)
    assert result["timing_device"] == "cuda" and result["clock"] == "cuda events"
    assert all(r["points"] for r in result["layers"])
    _check_outputs(cfg, result)

"""mlpipe.measure.profile / roofline / peaks: hand-computed FLOPs and bytes, the flip_batch
formula, device presets, peaks measured at run time with a roof per cache level, bad input, and
the Hydra app end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from torch import nn

from mlpipe.common.config import positive_ints
from mlpipe.common.errors import ConfigError
from mlpipe.measure.peaks import cache_levels, device_peaks, observed_vs_peak
from mlpipe.measure.profile import profile, profile_network, resolve_devices
from mlpipe.measure.roofline import (
    DTYPES,
    CacheRoof,
    DevicePeaks,
    available_presets,
    flip_batch,
)

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf"
DEVICE_DIR = CONF / "profile" / "device"
# H100 SXM fp32 figures measured for this project: ridge 17.2 FLOP/B.
H100_FP32 = DevicePeaks("h100", "fp32", 51.6e12, 3.00e12, "test", "measured")
CPU_LIKE = DevicePeaks("cpu", "fp32", 40e9, 10e9, "test", "measured")  # ridge 4


def tiny_net() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(64, 10)
    )


@pytest.mark.parametrize("dtype,itemsize", [("fp32", 4), ("bf16", 2), ("fp16", 2)])
def test_tiny_model_flops_and_bytes_match_hand_computation(dtype: str, itemsize: int) -> None:
    b = 2
    res = profile_network(tiny_net(), [1, 8, 8], b, dtype, [H100_FP32])
    rows = {r["name"]: r for r in res["layers"]}
    # conv 1->4, 3x3, pad 1 on 8x8: 4*8*8 outputs x 9 MACs, x2 FLOPs/MAC, x batch
    conv_macs = 4 * 8 * 8 * 9
    expected = {
        #        flops               params   states   in numel     out numel
        "0": (2 * conv_macs * b, 4 * 9 + 4, 40, b * 64, b * 256),
        "1": (b * 256, 0, 0, b * 256, b * 256),  # ReLU: 1/elem
        "2": (b * 256, 0, 0, b * 256, b * 64),  # max-pool: 1/input
        "3": (0, 0, 0, b * 64, b * 64),  # Flatten: a view
        "4": (2 * 64 * 10 * b, 650, 650, b * 64, b * 10),
    }
    assert set(rows) == set(expected)
    for name, (flops, params, states, n_in, n_out) in expected.items():
        row = rows[name]
        assert row["flops"] == flops, name
        assert row["params"] == params, name
        assert row["weight_bytes"] == states * itemsize, name
        assert row["bytes"] == (states + n_in + n_out) * itemsize, name
        assert row["intensity"] == pytest.approx(flops / row["bytes"]), name
    totals = res["totals"]
    assert totals["flops"] == sum(e[0] for e in expected.values())
    # fvcore x2 on matmul/conv equals torch's FlopCounterMode exactly
    assert (
        totals["mac_flops_fvcore_x2"]
        == totals["mac_flops_torch_flop_counter"]
        == (2 * conv_macs * b + 2 * 64 * 10 * b)
    )
    assert totals["cross_check_ratio"] == 1.0
    assert totals["params"] == 690


def test_flip_batch_of_one_linear_equals_formula() -> None:
    n_in, n_out, itemsize = 1024, 1024, 4
    f = 2 * n_in * n_out  # FLOPs per sample
    w = (n_in * n_out + n_out) * itemsize  # weight + bias bytes, read once per batch
    c = (n_in + n_out) * itemsize  # activation bytes per sample
    ridge = H100_FP32.ridge
    expected = math.ceil(ridge * w / (f - ridge * c))
    assert expected == 37  # 72212480 / 1956249.6 = 36.9...

    net = nn.Sequential(nn.Linear(n_in, n_out))
    res = profile_network(net, [n_in], 8, "fp32", [H100_FP32])
    (row,) = res["layers"]
    assert row["flip_batch"]["h100"] == expected
    assert row["bound"]["h100"] == "memory"
    # the profile at the flip batch is compute-bound, one below it memory-bound
    at = profile_network(net, [n_in], expected, "fp32", [H100_FP32])["layers"][0]
    below = profile_network(net, [n_in], expected - 1, "fp32", [H100_FP32])["layers"][0]
    assert at["bound"]["h100"] == "compute"
    assert below["bound"]["h100"] == "memory"
    assert below["intensity"] < ridge <= at["intensity"]


def test_flip_batch_edge_cases() -> None:
    # intensity limit f/c equal to the ridge: approached, never reached -> None
    assert flip_batch(8.0, 100.0, 2.0, 4.0) is None
    assert flip_batch(0.0, 0.0, 8.0, 1.0) is None  # no FLOPs
    assert flip_batch(10.0, 0.0, 1.0, 4.0) == 1  # no weights, f/c above ridge: from batch 1
    # exact integer threshold: ridge*w/(f - ridge*c) = 4*30/(10-4*1) = 20 -> 20, not 21
    assert flip_batch(10.0, 30.0, 1.0, 4.0) == 20


def test_elementwise_layers_never_flip() -> None:
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 512), nn.ReLU(), nn.Linear(512, 10))
    res = profile_network(net, [1, 8, 8], 4, "fp32", [H100_FP32, CPU_LIKE])
    relu = next(r for r in res["layers"] if r["type"] == "ReLU")
    flatten = next(r for r in res["layers"] if r["type"] == "Flatten")
    for dev in ("h100", "cpu"):
        assert relu["flip_batch"][dev] is None
        assert flatten["flip_batch"][dev] is None
        assert relu["bound"][dev] == "memory"
    # the 64->512 Linear flips on both devices, later on the one with the higher ridge
    lin = res["layers"][1]
    assert lin["flip_batch"]["cpu"] < lin["flip_batch"]["h100"]


def test_every_device_preset_loads_with_sources() -> None:
    names = available_presets(DEVICE_DIR)
    assert {"h100_sxm", "a100", "t4", "rtx3090", "cpu_measured"} <= set(names)
    for name in names:
        cfg = OmegaConf.load(DEVICE_DIR / f"{name}.yaml")
        assert cfg.name == name
        if cfg.use == "runtime":
            continue
        for kind in ("measured", "datasheet"):
            if kind in cfg:
                assert cfg[kind].source.strip(), f"{name}.{kind} needs a source"
                assert "http" in cfg[kind].source or kind == "measured"
        for dtype in cfg[cfg.use].flops:
            peaks = device_peaks(cfg, dtype)
            assert peaks.peak_flops > 1e12 and peaks.peak_bandwidth > 1e11
    h100 = OmegaConf.load(DEVICE_DIR / "h100_sxm.yaml")
    assert dict(h100.measured.flops) == {
        "fp32": 51.6e12,
        "tf32": 409e12,
        "bf16": 786e12,
        "fp16": 759e12,
    }
    assert h100.measured.bandwidth == 3.00e12


def test_cpu_measured_preset_measures_this_machine() -> None:
    cfg = OmegaConf.load(DEVICE_DIR / "cpu_measured.yaml")
    cfg.measure.matmul_sizes, cfg.measure.copy_bytes = [128, 256], 1 << 22
    cfg.measure.repeats, cfg.measure.rounds, cfg.measure.cache_fills = 2, 2, [0.25]
    peaks = device_peaks(cfg, "fp32")
    assert peaks.kind == "runtime" and peaks.peak_flops > 1e8 and peaks.peak_bandwidth > 1e8
    threads = f"{torch.get_num_threads()} thread(s) and 1 thread(s)"
    assert threads in peaks.source and "[128, 256]" in peaks.source and "3x3 convs" in peaks.source
    # one roof per cache level sysfs lists, smallest first, none under the DRAM roof
    assert [(r.level, r.max_bytes) for r in peaks.roofs] == cache_levels()
    assert all(r.bandwidth >= peaks.peak_bandwidth for r in peaks.roofs)
    assert [r.bandwidth for r in peaks.roofs] == sorted(
        (r.bandwidth for r in peaks.roofs), reverse=True
    )
    back = DevicePeaks.from_dict(json.loads(json.dumps(peaks.as_dict())))
    assert back == peaks  # a results JSON gives the same peaks, roofs included


@pytest.mark.parametrize(
    ("key", "bad", "match"),
    [
        ("conv_probes", [[8, 256]], r"cpu_measured.measure.conv_probes: must be \[batch, channels"),
        ("cache_fills", [1.5], r"cpu_measured.measure.cache_fills: must be shares in \(0, 1\]"),
        ("matmul_sizes", [0], r"cpu_measured.measure.matmul_sizes"),
    ],
)
def test_bad_peak_settings_name_the_key(key: str, bad: Any, match: str) -> None:
    cfg = OmegaConf.load(DEVICE_DIR / "cpu_measured.yaml")
    cfg.measure[key] = bad
    with pytest.raises(ConfigError, match=match):
        device_peaks(cfg, "fp32")


def test_cache_levels_are_read_from_sysfs(tmp_path: Path) -> None:
    for index, (level, kind, size) in enumerate(
        [
            (1, "Data", "48K"),
            (1, "Instruction", "32K"),
            (2, "Unified", "1024K"),
            (3, "Unified", "32M"),
        ]
    ):
        d = tmp_path / f"index{index}"
        d.mkdir()
        (d / "level").write_text(f"{level}\n")
        (d / "type").write_text(f"{kind}\n")
        (d / "size").write_text(f"{size}\n")
    assert cache_levels(tmp_path) == [("L1d", 48 << 10), ("L2", 1 << 20), ("L3", 32 << 20)]
    assert cache_levels(tmp_path / "absent") == []


def test_the_roof_that_applies_is_the_smallest_level_the_working_set_fits() -> None:
    roofs = (CacheRoof("L2", 1 << 20, 80e9), CacheRoof("L3", 32 << 20, 40e9))
    peaks = DevicePeaks("cpu", "fp32", 1e11, 2e10, "test", "runtime", roofs)
    assert peaks.bandwidth_for(1 << 20) == 80e9
    assert peaks.bandwidth_for(4 << 20) == 40e9
    assert peaks.bandwidth_for(64 << 20) == 2e10  # beyond the last level: DRAM
    assert observed_vs_peak([5e10, 1.2e11], peaks)["bounded"] is False
    assert observed_vs_peak([], peaks) == {"best_flops": 0.0, "peak_flops": 1e11, "bounded": True}


@pytest.mark.parametrize("bad", [[], [0, 8], [-1], ["8"], 0, [1.5], None])
def test_invalid_batch_list_is_rejected_with_an_example(bad) -> None:
    with pytest.raises(ConfigError, match=r"non-empty list of positive integers.*\[1,8,64\]"):
        positive_ints(bad, "batch_sizes")


@pytest.mark.parametrize("bad", [0, -3, 2.5, "8", True])
def test_invalid_profile_batch_size_is_rejected(bad) -> None:
    with pytest.raises(ConfigError, match=r"profile.batch_size: must be an integer >= 1"):
        profile_network(tiny_net(), [1, 8, 8], bad, "fp32", [H100_FP32])


def test_unknown_device_preset_lists_valid_choices() -> None:
    with pytest.raises(ConfigError) as err:
        resolve_devices(["h100_sxm", "tpu_v9"], DEVICE_DIR, "fp32")
    msg = str(err.value)
    assert "tpu_v9" in msg
    for name in available_presets(DEVICE_DIR):
        assert name in msg


def test_a_preset_figure_set_can_be_picked_by_name() -> None:
    measured, datasheet = resolve_devices(["h100_sxm", "h100_sxm:datasheet"], DEVICE_DIR, "bf16")
    assert (measured.peak_flops, measured.kind) == (786e12, "measured")
    assert (datasheet.name, datasheet.peak_flops, datasheet.peak_bandwidth) == (
        "h100_sxm:datasheet",
        989.4e12,
        3.35e12,
    )
    assert "nvidia-tensor-core-gpu-datasheet" in datasheet.source
    with pytest.raises(ConfigError, match=r"use='guess'.*valid choices: \['datasheet'\]"):
        resolve_devices(["a100:guess"], DEVICE_DIR, "fp32")


def test_unknown_dtype_and_missing_preset_dtype_list_valid_choices() -> None:
    with pytest.raises(ConfigError, match="fp8") as err:
        profile_network(tiny_net(), [1, 8, 8], 1, "fp8", [H100_FP32])
    assert all(d in str(err.value) for d in DTYPES)
    with pytest.raises(ConfigError, match=r"'t4'.*'tf32'.*\['fp16', 'fp32'\]"):
        resolve_devices(["t4"], DEVICE_DIR, "tf32")


def _compose(overrides: list[str]):
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        return compose(config_name="profile", overrides=overrides)


def test_profile_app_writes_json_table_and_plots(tmp_path: Path) -> None:
    cfg = _compose(
        [
            "profile.devices=[h100_sxm,t4]",
            f"profile.out_dir={tmp_path}",
            "profile.model_name=cnn",
            "profile.batch_size=64",
        ]
    )
    result = profile(cfg)
    saved = json.loads((tmp_path / "cnn.json").read_text())
    assert saved["layers"] == json.loads(json.dumps(result["layers"]))
    assert saved["totals"]["cross_check_ratio"] == 1.0
    for row in saved["layers"]:
        assert set(row) >= {
            "name",
            "type",
            "flops",
            "params",
            "bytes",
            "intensity",
            "bound",
            "flip_batch",
        }
        assert set(row["bound"]) == {"h100_sxm", "t4"}
    for dev in ("h100_sxm", "t4"):
        assert (tmp_path / f"cnn_{dev}.png").stat().st_size > 10_000
    table = (tmp_path / "cnn.md").read_text()
    assert "| name" in table and "flip_batch" in table


def test_profile_app_rejects_unknown_preset_from_config(tmp_path: Path) -> None:
    cfg = _compose(
        ["profile.devices=[nope]", f"profile.out_dir={tmp_path}", "profile.model_name=cnn"]
    )
    with pytest.raises(ConfigError, match=r"valid choices: \[.*'h100_sxm'"):
        profile(cfg)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_cuda_measured_peaks_are_plausible() -> None:
    cfg = OmegaConf.load(DEVICE_DIR / "cuda_measured.yaml")
    for dtype in ("fp32", "bf16"):
        peaks = device_peaks(cfg, dtype)
        assert peaks.peak_flops > 1e12 and peaks.peak_bandwidth > 1e11


def test_relu_module_activation_counts_like_torch_relu() -> None:
    """The kernel's ReLU traces as the operator relu_module::relu: elementwise, as nn.ReLU."""
    from relu_module.torch import ReLU as KernelReLU

    def net(act: type[nn.Module]) -> nn.Sequential:
        torch.manual_seed(0)
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), act(), nn.Linear(32, 10))

    ours = profile_network(net(KernelReLU), [1, 8, 8], 4, "fp32", [H100_FP32])
    ref = profile_network(net(nn.ReLU), [1, 8, 8], 4, "fp32", [H100_FP32])
    strip = lambda rows: [{k: v for k, v in r.items() if k != "type"} for r in rows]  # noqa: E731
    assert strip(ours["layers"]) == strip(ref["layers"])
    assert ours["layers"][2]["flops"] == 4 * 32

"""mlpipe-export on a real trained checkpoint: ONNX checked, parity on the real test split,
provenance."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
import yaml
from helpers.compose import ROOT, compose_app
from omegaconf import DictConfig

from mlpipe.common import repro
from mlpipe.common.errors import ParityError
from mlpipe.common.provenance import sha256_file, source_digest
from mlpipe.export.reference import ort_session, run_ort
from mlpipe.export.run import check_parity, export, export_onnx
from mlpipe.export.tensorrt import TensorRTUnavailable
from mlpipe.train.module import load_network


def compose_export(tmp: Path, trained: Any, *overrides: str) -> DictConfig:
    """The real export config, every output under ``tmp``, reading the session's trained
    checkpoint."""
    return compose_app(
        "export",
        tmp,
        f"export.checkpoint_path={trained.ckpt_path}",
        f"export.provenance.train_metrics={trained.metrics_path}",
        *overrides,
    )


@pytest.fixture(scope="module", params=[True, False], ids=["dynamo", "torchscript"])
def exported(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    trained_checkpoint: Any,
):
    cfg = compose_export(
        tmp_path_factory.mktemp("export"), trained_checkpoint, f"export.onnx.dynamo={request.param}"
    )
    return cfg, export(cfg)


def test_parity_on_the_real_test_split(exported: tuple[DictConfig, dict]) -> None:
    cfg, report = exported
    parity = report["onnx_vs_torch"]
    assert report["passed"] is True
    assert parity["max_abs_diff"] <= 1e-5
    assert parity["argmax_agreement"] == 1.0
    assert parity["reference_acc"] == parity["candidate_acc"]
    assert parity["n"] > 300  # the whole test split, not a sample
    assert json.loads(Path(cfg.export.report_path).read_text()) == report


def test_onnx_is_valid_with_named_tensors_and_dynamic_batch(
    exported: tuple[DictConfig, dict],
) -> None:
    cfg, _ = exported
    path = Path(cfg.export.onnx_path)
    onnx.checker.check_model(str(path), full_check=True)
    model = onnx.load(str(path))
    assert [i.name for i in model.graph.input] == [cfg.export.onnx.input_name]
    assert [o.name for o in model.graph.output] == [cfg.export.onnx.output_name]
    assert {opset.version for opset in model.opset_import if opset.domain in ("", "ai.onnx")} == {
        cfg.export.onnx.opset
    }
    session = ort_session(path, ["CPUExecutionProvider"])
    for batch in (1, 5, 64):
        out = session.run(None, {"images": np.zeros((batch, 1, 8, 8), np.float32)})[0]
        assert out.shape == (batch, 10)


def test_provenance_in_metadata_props(
    exported: tuple[DictConfig, dict], trained_checkpoint: Any
) -> None:
    cfg, report = exported
    props = {p.key: p.value for p in onnx.load(str(cfg.export.onnx_path)).metadata_props}
    # a content hash of the export's sources, never a commit id: the ONNX is rebuilt byte for
    # byte from later commits (dvc.lock records its md5)
    sources = list(cfg.export.provenance.source_paths)
    assert props["mlpipe.source_sha256"] == source_digest(ROOT, sources)
    assert "mlpipe.git_rev" not in props and "mlpipe.sha256.dvc.lock" not in props
    # nor anything that names where the checkout lives (exporter stack traces are dropped)
    model = onnx.load(str(cfg.export.onnx_path))
    node_props = [p.value for n in model.graph.node for p in n.metadata_props]
    assert not any(str(ROOT) in v for v in node_props)
    assert (
        props["mlpipe.data_md5"]
        == yaml.safe_load((ROOT / "data.dvc").read_text())["outs"][0]["md5"]
    )
    assert json.loads(props["mlpipe.train_metrics"]) == json.loads(
        trained_checkpoint.metrics_path.read_text()
    )
    assert props["mlpipe.sha256.constraints.txt"] == sha256_file(ROOT / "constraints.txt")
    for lock in ("flake.lock",):
        if (ROOT / lock).is_file():
            assert props[f"mlpipe.sha256.{lock}"] == sha256_file(ROOT / lock)
    assert "provenance" not in report, "provenance lives in model.onnx, not in a DVC metrics file"
    # the CPU contract as this process ran it (in-process here, in force only if pytest was
    # started under it; the stage's own re-exec is tested in tests/common/test_repro.py)
    contract = json.loads(props["mlpipe.cpu_contract"])
    assert contract["contract"] == cfg.repro.name
    assert contract["in_force"] == repro.in_force(cfg.repro)
    assert contract["cpu_capability"] == torch.backends.cpu.get_cpu_capability()


def test_triton_repositories_written(exported: tuple[DictConfig, dict]) -> None:
    cfg, report = exported
    for flavour in ("python", "native"):
        assert sorted(Path(p).name for p in report["triton"][flavour]) == sorted(
            cfg.export.triton.models
        )
        for model_dir in map(Path, report["triton"][flavour]):
            assert (model_dir / "config.pbtxt").is_file()
            assert (model_dir / str(cfg.export.triton.version) / "model.onnx").read_bytes() == Path(
                cfg.export.onnx_path
            ).read_bytes()


@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "torchscript"])
def test_relu_module_activation_exports_a_standard_relu(
    tmp_path: Path, trained_checkpoint: Any, dynamo: bool
) -> None:
    """The kernel's torch module must become ONNX ``Relu`` (no custom op), with the same numbers."""
    net = load_network(trained_checkpoint.ckpt_path, activation="relu_module")
    assert any(type(m).__module__.startswith("relu_module") for m in net.modules())
    path = tmp_path / "relu_module.onnx"
    onnx_cfg = {
        "input_name": "images",
        "output_name": "logits",
        "batch_axis_name": "batch",
        "opset": 18,
        "dynamo": dynamo,
    }
    images = torch.rand(9, 1, 8, 8)
    export_onnx(net, images[:2], path, onnx_cfg)
    model = onnx.load(str(path))
    ops = {(n.domain or "ai.onnx", n.op_type) for n in model.graph.node}
    assert ("ai.onnx", "Relu") in ops
    assert all(domain == "ai.onnx" for domain, _ in ops), ops
    with torch.no_grad():
        expected = net(images).numpy()
    np.testing.assert_allclose(
        run_ort(ort_session(path, ["CPUExecutionProvider"]), images.numpy(), 4),
        expected,
        atol=1e-5,
        rtol=0,
    )


def test_missing_checkpoint_names_path_and_command(tmp_path: Path, trained_checkpoint: Any) -> None:
    missing = tmp_path / "nowhere" / "best.ckpt"
    cfg = compose_export(tmp_path, trained_checkpoint, f"export.checkpoint_path={missing}")
    with pytest.raises(FileNotFoundError, match=rf"{missing}.*mlpipe-train"):
        export(cfg)


def test_parity_failure_names_numbers_and_limits() -> None:
    result = {"n": 359, "max_abs_diff": 3e-4, "argmax_agreement": 0.997}
    with pytest.raises(
        ParityError, match=r"max abs diff 0.0003 \(limit 1e-05\).*agreement 0.9970 \(limit 1\)"
    ):
        check_parity(result, 1e-5, 1.0, "ONNX Runtime vs torch")
    check_parity({"n": 1, "max_abs_diff": 1e-6, "argmax_agreement": 1.0}, 1e-5, 1.0, "ok")


def test_trace_batch_of_one_is_refused(tmp_path: Path) -> None:
    net = torch.nn.Linear(3, 2)
    with pytest.raises(ValueError, match="export.onnx.trace_batch_size: must be >= 2"):
        export_onnx(
            net,
            torch.zeros(1, 3),
            tmp_path / "x.onnx",
            {
                "input_name": "x",
                "output_name": "y",
                "batch_axis_name": "b",
                "opset": 18,
                "dynamo": True,
            },
        )


def _tensorrt_missing_reason() -> str | None:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "TensorRT is not installed (`import tensorrt` fails)"
    if not torch.cuda.is_available():
        return "no CUDA GPU visible to torch"
    return None


@pytest.mark.skipif(
    _tensorrt_missing_reason() is None,
    reason="TensorRT and a GPU are present: the engine test runs instead",
)
def test_tensorrt_unavailable_stops_with_a_clear_message(
    tmp_path: Path, trained_checkpoint: Any
) -> None:
    cfg = compose_export(tmp_path, trained_checkpoint, "export=tensorrt")
    with pytest.raises(TensorRTUnavailable, match=r"export=tensorrt needs .*export=onnx"):
        export(cfg)
    assert not Path(cfg.export.onnx_path).exists()  # stopped before doing any work


@pytest.mark.tensorrt
def test_tensorrt_engine_parity(tmp_path: Path, trained_checkpoint: Any) -> None:
    reason = _tensorrt_missing_reason()
    if reason:
        pytest.skip(f"needs TensorRT 10.x and a CUDA GPU: {reason}")
    cfg = compose_export(tmp_path, trained_checkpoint, "export=tensorrt")
    report = export(cfg)
    assert Path(cfg.export.tensorrt.plan_path).is_file()
    trt = report["tensorrt_vs_ort"]
    assert trt["max_abs_diff"] <= cfg.export.tensorrt.parity.atol
    assert trt["argmax_agreement"] >= cfg.export.tensorrt.parity.min_argmax_agreement
    assert any(
        p.endswith(cfg.export.triton.native.tensorrt_suffix) for p in report["triton"]["native"]
    )

"""Generated Triton repositories: every config.pbtxt parses against Triton's ModelConfig schema.

No server here (see test_serve.py); these are the offline checks of what mlpipe-export writes.
"""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
import torch
from google.protobuf import text_format
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf
from tritonclient.grpc import model_config_pb2 as mc

from mlpipe.export import triton_repo
from mlpipe.export.run import export_onnx
from mlpipe.train.nets import CNN

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


@pytest.fixture(scope="module")
def export_cfg(tmp_path_factory: pytest.TempPathFactory) -> DictConfig:
    tmp = tmp_path_factory.mktemp("repo")
    with initialize_config_dir(
        version_base="1.3", config_dir=str(CONF_DIR), job_name="test_triton_repo"
    ):
        return compose(
            config_name="export", overrides=[f"paths.root_dir={tmp}", "export.onnx.dynamo=false"]
        )


@pytest.fixture(scope="module")
def onnx_path(export_cfg: DictConfig) -> Path:
    """A small CNN exported with the configured names and a dynamic batch axis."""
    torch.manual_seed(0)
    net = CNN(1, 8, 10, [4], 3, 2, 16, 0.0, "torch").eval()
    path = Path(export_cfg.export.onnx_path)
    export_onnx(net, torch.rand(2, 1, 8, 8), path, export_cfg.export.onnx)
    return path


def _parse(path: Path) -> mc.ModelConfig:
    return text_format.Parse(path.read_text(), mc.ModelConfig())


def test_signature_comes_from_the_onnx_graph(onnx_path: Path, export_cfg: DictConfig) -> None:
    sig = triton_repo.onnx_signature(onnx_path)
    assert sig.input == triton_repo.TensorSpec(
        export_cfg.export.onnx.input_name, "TYPE_FP32", (-1, 1, 8, 8)
    )
    assert sig.output == triton_repo.TensorSpec(
        export_cfg.export.onnx.output_name, "TYPE_FP32", (-1, 10)
    )


def test_every_generated_config_parses_against_the_schema(
    onnx_path: Path, export_cfg: DictConfig
) -> None:
    tcfg = export_cfg.export.triton
    written = triton_repo.build_repositories(onnx_path, tcfg)
    names = list(tcfg.models)
    assert [Path(p).name for p in written["python"]] == names
    assert [Path(p).name for p in written["native"]] == names
    for flavour, dirs in written.items():
        for model_dir in map(Path, dirs):
            config = _parse(model_dir / "config.pbtxt")
            assert config.name == model_dir.name
            assert config.max_batch_size == tcfg.max_batch_size
            assert [
                (i.name, list(i.dims), mc.DataType.Name(i.data_type)) for i in config.input
            ] == [("images", [1, 8, 8], "TYPE_FP32")]
            assert [
                (o.name, list(o.dims), mc.DataType.Name(o.data_type)) for o in config.output
            ] == [("logits", [10], "TYPE_FP32")]
            (group,) = config.instance_group
            assert (group.count, mc.ModelInstanceGroup.Kind.Name(group.kind)) == (
                tcfg.instance_group.count,
                tcfg.instance_group.kind,
            )
            if tcfg.models[model_dir.name]:
                assert config.HasField("dynamic_batching")
                assert list(config.dynamic_batching.preferred_batch_size) == list(
                    tcfg.dynamic_batching.preferred_batch_size
                )
                assert (
                    config.dynamic_batching.max_queue_delay_microseconds
                    == tcfg.dynamic_batching.max_queue_delay_microseconds
                )
            else:
                assert not config.HasField("dynamic_batching")
            version_dir = model_dir / str(tcfg.version)
            if flavour == "python":
                assert config.backend == "python"
                assert (
                    version_dir / "model.py"
                ).read_text() == triton_repo.PYTHON_MODEL_TEMPLATE.read_text()
                assert config.parameters["onnx_file"].string_value == tcfg.python_backend.onnx_file
                assert (
                    onnx.load(str(version_dir / tcfg.python_backend.onnx_file)).graph.input[0].name
                    == "images"
                )
            else:
                assert config.platform == "onnxruntime_onnx"
                assert (version_dir / "model.onnx").read_bytes() == onnx_path.read_bytes()


def test_tensorrt_plan_config_parses(onnx_path: Path, export_cfg: DictConfig) -> None:
    """The tensorrt_plan flavour's config (the engine itself needs a GPU: see test_export.py)."""
    tcfg = export_cfg.export.triton
    config = triton_repo.build_model_config(
        "digits_trt",
        triton_repo.onnx_signature(onnx_path),
        platform="tensorrt_plan",
        max_batch_size=tcfg.max_batch_size,
        instance_count=1,
        instance_kind=tcfg.native.tensorrt_instance_kind,
        dynamic_batching=tcfg.dynamic_batching,
    )
    parsed = triton_repo.parse_pbtxt(triton_repo.config_to_pbtxt(config))
    assert parsed.platform == "tensorrt_plan"
    assert mc.ModelInstanceGroup.Kind.Name(parsed.instance_group[0].kind) == "KIND_GPU"


def test_regeneration_replaces_stale_files(onnx_path: Path, export_cfg: DictConfig) -> None:
    tcfg = export_cfg.export.triton
    triton_repo.build_python_repository(onnx_path, tcfg)
    stale = Path(tcfg.python_repository) / "digits" / "1" / "stale.bin"
    stale.write_bytes(b"old")
    triton_repo.build_python_repository(onnx_path, tcfg)
    assert not stale.exists()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            {
                "dynamic_batching": {
                    "preferred_batch_size": [128],
                    "max_queue_delay_microseconds": 100,
                }
            },
            "preferred_batch_size [128]",
        ),
        ({"max_batch_size": 0}, "max_batch_size must be >= 1"),
        ({"instance_group": {"count": 1, "kind": "KIND_TPU"}}, "KIND_TPU"),
        ({"instance_group": {"count": 0, "kind": "KIND_CPU"}}, "instance_group.count"),
    ],
)
def test_bad_repository_config_is_named(
    onnx_path: Path, export_cfg: DictConfig, override: dict, message: str
) -> None:
    tcfg = OmegaConf.merge(export_cfg.export.triton, override)
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        triton_repo.build_python_repository(onnx_path, tcfg)


def test_malformed_pbtxt_is_rejected_by_the_schema() -> None:
    with pytest.raises(text_format.ParseError):
        triton_repo.parse_pbtxt('name: "x"\nmax_batch_sise: 4\n')


def test_missing_onnx_names_the_command(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"mlpipe-export"):
        triton_repo.onnx_signature(tmp_path / "absent.onnx")

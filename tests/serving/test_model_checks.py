"""Model-side checks (the python backend's model.py) and the repository checks at start.

Cases 11-15 of the hardening issue: model errors are INVALID_ARG (HTTP 400 / gRPC
INVALID_ARGUMENT); finite inputs that overflow give an error, never NaN in a 200; a model file
that is not the exported one is refused naming both hashes (by mlpipe-serve before launch, and by
model.py itself for servers mlpipe does not start); a corrupt ONNX quotes ONNX Runtime's own
error; a bad config.pbtxt names its path.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
import tritonclient.grpc as tg
import tritonclient.http as th
from helpers.compose import EPHEMERAL, compose_app
from helpers.serving import raw_request
from omegaconf import OmegaConf
from tritonclient.utils import InferenceServerException

from mlpipe.common.errors import ArtifactError, ServerError
from mlpipe.common.provenance import sha256_file
from mlpipe.export.triton_repo import SHA256_PARAMETER, config_to_pbtxt, parse_pbtxt
from mlpipe.serving.repository import TensorSignature
from mlpipe.serving.server import TritonServer
from mlpipe.serving.supervisor import Supervisor, WatchdogSettings


@pytest.fixture(scope="module")
def server(hardening_export: Path) -> Iterator[TritonServer]:
    with TritonServer.from_config(compose_app("serve", hardening_export, *EPHEMERAL).serve) as s:
        yield s


def _json_infer(value: float) -> bytes:
    data = [value] * 64
    body = {"inputs": [{"name": "images", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": data}]}
    return json.dumps(body).encode()


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (float("nan"), "contains NaN or Inf"),  # case 11
        (3e38, "non-finite logits"),  # case 12
        (-3e38, "non-finite logits"),
    ],
)
def test_model_errors_are_invalid_argument(
    server: TritonServer, value: float, message: str
) -> None:
    array = np.full((1, 1, 8, 8), value, np.float32)
    for module, address, status in (
        (th, server.http_address, "400"),
        (tg, server.grpc_address, "StatusCode.INVALID_ARGUMENT"),
    ):
        client = module.InferenceServerClient(address)
        tensor = module.InferInput("images", [1, 1, 8, 8], "FP32")
        tensor.set_data_from_numpy(array)
        try:
            with pytest.raises(InferenceServerException) as caught:
                client.infer("digits", [tensor])
        finally:
            client.close()
        assert caught.value.status() == status and message in caught.value.message()


def test_case12_json_answer_never_holds_nan(server: TritonServer) -> None:
    status, text = raw_request(
        server.http_address, "POST", "/v2/models/digits/infer", _json_infer(3e38)
    )
    assert status == 400 and b"NaN" not in text, text
    assert "non-finite logits" in json.loads(text)["error"]


def _copy_repository(server: TritonServer, tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    shutil.copytree(server.model_repository, repo)
    return repo


def _server_on(server: TritonServer, repo: Path, tmp_path: Path) -> TritonServer:
    cfg = compose_app("serve", tmp_path, *EPHEMERAL)
    return TritonServer.from_config(OmegaConf.merge(cfg.serve, {"model_repository": str(repo)}))


def _different_model(source: Path, target: Path) -> None:
    """A valid ONNX with other weights (what case 13 dropped into the repository)."""
    model = onnx.load(str(source))
    init = model.graph.initializer[0]
    array = onnx.numpy_helper.to_array(init) * 0.5
    init.CopyFrom(onnx.numpy_helper.from_array(array.astype(array.dtype), init.name))
    onnx.save(model, str(target))


def test_case13_other_model_is_refused_before_launch(server: TritonServer, tmp_path: Path) -> None:
    repo = _copy_repository(server, tmp_path)
    onnx_path = repo / "digits" / "1" / "model.onnx"
    recorded = sha256_file(onnx_path)
    _different_model(server.model_repository / "digits" / "1" / "model.onnx", onnx_path)
    other = _server_on(server, repo, tmp_path)
    with pytest.raises(
        ArtifactError, match=rf"sha256 {sha256_file(onnx_path)}.*recorded {recorded}"
    ):
        other.start()
    assert other.process is None


def _set_recorded_sha(repo: Path, model: str, sha: str) -> None:
    config_path = repo / model / "config.pbtxt"
    config = parse_pbtxt(config_path.read_text())
    config.parameters[SHA256_PARAMETER].string_value = sha
    config_path.write_text(config_to_pbtxt(config))


@pytest.mark.slow
def test_case13_model_py_refuses_on_its_own(server: TritonServer, tmp_path: Path) -> None:
    """A tritonserver mlpipe does not pre-check (NVIDIA's container) still refuses to load."""
    repo = _copy_repository(server, tmp_path)
    _set_recorded_sha(repo, "digits_nobatch", "0" * 64)
    other = _server_on(server, repo, tmp_path)
    other.resolve_ports()  # skip mlpipe-serve's own pre-check: launch tritonserver directly
    other._launch()
    s = other.settings
    with pytest.raises(ServerError) as caught:
        other.wait_ready(time.perf_counter(), s.ready_timeout_s, s.poll_interval_s, other._ready)
    first = str(caught.value).splitlines()[0]
    assert "failed to load 'digits_nobatch'" in first and f"recorded {'0' * 64}" in first, first
    assert other.process is None


@pytest.mark.slow
@pytest.mark.parametrize(
    ("content", "ort_error"),
    [(b"", "No graph was found in the protobuf"), (b"not an ONNX protobuf", "INVALID_PROTOBUF")],
    ids=["empty", "corrupt"],
)
def test_case14_load_failure_quotes_onnx_runtime(
    server: TritonServer, tmp_path: Path, content: bytes, ort_error: str
) -> None:
    repo = _copy_repository(server, tmp_path)
    onnx_path = repo / "digits" / "1" / "model.onnx"
    onnx_path.write_bytes(content)
    _set_recorded_sha(repo, "digits", sha256_file(onnx_path))  # past the hash check, into ORT
    other = _server_on(server, repo, tmp_path)
    with pytest.raises(ServerError) as caught:
        other.start()
    first = str(caught.value).splitlines()[0]  # what mlpipe-serve prints
    assert "failed to load 'digits' version 1" in first, first
    assert f"ONNX Runtime cannot load {onnx_path}" in first and ort_error in first, first
    assert "At:" not in first  # the stub's traceback stays out of the one-line reason
    assert other.process is None


def test_case15_bad_config_names_its_path(server: TritonServer, tmp_path: Path) -> None:
    repo = _copy_repository(server, tmp_path)
    config_path = repo / "digits" / "config.pbtxt"
    config_path.write_text(config_path.read_text() + "\nmax_batch_sise: 3\n")
    other = _server_on(server, repo, tmp_path)
    with pytest.raises(ArtifactError, match=rf"{config_path} is not a valid Triton config.pbtxt"):
        other.start()
    assert other.process is None


def _lie_input_dims(config) -> None:
    config.input[0].dims[-1] += 1


def _lie_input_dtype(config) -> None:
    from tritonclient.grpc import model_config_pb2 as mc

    config.input[0].data_type = mc.TYPE_FP64


def _lie_output_dims(config) -> None:
    del config.output[0].dims[:]
    config.output[0].dims.append(5)


@pytest.mark.parametrize("lie", [_lie_input_dims, _lie_input_dtype, _lie_output_dims])
def test_config_that_lies_about_the_onnx_is_refused_before_launch(
    server: TritonServer, tmp_path: Path, lie
) -> None:
    """The sha256 still matches (the ONNX is the exported one), config.pbtxt does not describe
    it: refused in one line naming both signatures, before tritonserver starts."""
    repo = _copy_repository(server, tmp_path)
    config_path = repo / "digits" / "config.pbtxt"
    config = parse_pbtxt(config_path.read_text())
    lie(config)
    config_path.write_text(config_to_pbtxt(config))
    other = _server_on(server, repo, tmp_path)
    with pytest.raises(ArtifactError) as caught:
        other.start()
    message = str(caught.value)
    assert "\n" not in message and f"{config_path} declares" in message, message
    assert "images FP32 [1, 8, 8]; logits FP32 [10]" in message, message
    assert other.process is None


@pytest.mark.skipif(os.geteuid() != 0, reason="reading as another uid needs root to switch user")
def test_shm_regions_are_unreadable_to_other_users(server: TritonServer, tmp_path: Path) -> None:
    """Request tensors pass through the python backend's /dev/shm regions: 0600, and `nobody`
    (the nginx workers' user) cannot read them. A 0644 file beside them shows it could."""
    assert server.shm
    control = Path("/dev/shm") / f"mlpipe-test-{os.getpid()}"
    control.write_bytes(b"x")
    control.chmod(0o644)
    try:
        # the control: `nobody` reads a 0644 file, so the test can fail (a 0644 region would be
        # read). Where no program runs as `nobody` (PATH in a root-only folder, as in the Nix
        # check's sandbox-like host) the comparison means nothing: skip with that reason.
        try:
            readable = subprocess.run(
                ["head", "-c", "1", str(control)], user="nobody", capture_output=True, text=True
            )
        except OSError as err:
            pytest.skip(f"cannot run a program as `nobody` here: {err}")
        if readable.returncode != 0:
            pytest.skip(f"cannot run a program as `nobody` here: {readable.stderr.strip()}")
        for region in server.shm:
            assert stat.S_IMODE(region.stat().st_mode) == 0o600, region
            read = subprocess.run(
                ["head", "-c", "1", str(region)], user="nobody", capture_output=True, text=True
            )
            assert read.returncode != 0 and "Permission denied" in read.stderr, read
    finally:
        control.unlink()


def test_watchdog_probe_holds_the_answer_to_the_signature(
    server: TritonServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An answer whose shape is not the signature's fails the probe (the issue's server that
    answered [N, 10] while its metadata said [-1, 5])."""
    cfg = compose_app("serve", tmp_path, *EPHEMERAL)
    supervisor = Supervisor(server, None, WatchdogSettings.from_config(cfg.serve.watchdog))
    try:
        assert supervisor.probe() is None
        spec = server.specs["digits"]
        lying = dataclasses.replace(spec, outputs=(TensorSignature("logits", "FP32", (5,)),))
        monkeypatch.setitem(server.specs, "digits", lying)
        reason, timed_out = supervisor._probe_model("digits")
        assert not timed_out and "shape (1, 10) (its signature: (1, 5))" in reason, reason
    finally:
        supervisor._close_clients()

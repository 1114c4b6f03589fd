"""The real tritonserver (nvidia-pytriton wheel) on the generated repository, ephemeral loopback
ports.

One server per module serves the correctness and bad-input tests; the CLI tests start their own
to check SIGINT/SIGTERM shutdown. Every server is stopped by the test that started it, and the
module checks that no tritonserver or python stub outlives it.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import signal
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
import tritonclient.grpc as tg
import tritonclient.http as th
from helpers.compose import EPHEMERAL, compose_app, tmp_path_overrides
from helpers.serving import Seen, children_of, start_cli
from omegaconf import DictConfig, OmegaConf
from tritonclient.utils import InferenceServerException

from mlpipe.common.errors import PortInUseError
from mlpipe.data import load_split
from mlpipe.export.reference import ort_session, run_ort
from mlpipe.export.run import export
from mlpipe.serving.client import TritonClient
from mlpipe.serving.network import check_port_free, free_port, is_loopback
from mlpipe.serving.server import TritonServer


def server_processes() -> list[Seen]:
    """tritonserver / python-stub processes descended from this test process."""
    return children_of(os.getpid(), ("tritonserver", "triton_python_backend_stub"))


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, trained_checkpoint: Any
) -> Iterator[tuple[DictConfig, TritonServer]]:
    """Export the trained checkpoint (TorchScript exporter: fast) and serve it."""
    tmp = tmp_path_factory.mktemp("serve")
    ckpt = [
        f"export.checkpoint_path={trained_checkpoint.ckpt_path}",
        f"export.provenance.train_metrics={trained_checkpoint.metrics_path}",
    ]
    export(compose_app("export", tmp, *ckpt, "export.onnx.dynamo=false"))
    cfg = compose_app("client", tmp, *EPHEMERAL)
    server = TritonServer.from_config(cfg.serve)
    with server:
        yield cfg, server
    assert not server_processes(), "tritonserver or a python stub outlived TritonServer.stop()"
    for which, port in server.ports.items():
        check_port_free(server.host, port, f"{which}_port")  # nothing listens any more


@pytest.fixture(scope="module")
def test_split(served: tuple[DictConfig, TritonServer]) -> tuple[np.ndarray, np.ndarray]:
    cfg, _ = served
    return load_split(cfg.data, "test")


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize("model", ["digits", "digits_nobatch"])
def test_served_logits_equal_onnx_runtime(
    served: tuple[DictConfig, TritonServer],
    test_split: tuple[np.ndarray, np.ndarray],
    protocol: str,
    model: str,
) -> None:
    cfg, server = served
    images, labels = test_split
    expected = run_ort(
        ort_session(Path(cfg.export.onnx_path), ["CPUExecutionProvider"]), images, 64
    )
    address = server.http_address if protocol == "http" else server.grpc_address
    with TritonClient(protocol, address, model, 30.0) as client:
        assert (client.input_name, client.datatype, client.output_name) == (
            "images",
            "FP32",
            "logits",
        )
        got = np.concatenate([client.infer(images[i : i + 37]) for i in range(0, len(images), 37)])
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    assert np.array_equal(got.argmax(1), expected.argmax(1))


def _http_post(server: TritonServer, model: str, body: bytes) -> tuple[int, str]:
    request = urllib.request.Request(
        f"{server.http_url}/v2/models/{model}/infer",
        data=body,
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read().decode())["error"]


def _bad_request_cases() -> list[tuple[str, Any, str]]:
    """(description, sender kind, expected message fragment) for each kind of bad request."""
    ok = np.zeros((2, 1, 8, 8), np.float32)
    return [
        (
            "wrong input name",
            ("imagez", ok, "FP32", "digits"),
            "unexpected inference input 'imagez'",
        ),
        (
            "wrong sample shape",
            ("images", np.zeros((2, 1, 8, 7), np.float32), "FP32", "digits"),
            "unexpected shape for input 'images'",
        ),
        (
            "missing batch axis",
            ("images", np.zeros((1, 8, 8), np.float32), "FP32", "digits"),
            "unexpected shape for input 'images'",
        ),
        (
            "wrong dtype",
            ("images", ok.astype(np.float64), "FP64", "digits"),
            "data-type is 'FP64', but model 'digits' expects 'FP32'",
        ),
        (
            "batch above max_batch_size",
            ("images", np.zeros((65, 1, 8, 8), np.float32), "FP32", "digits"),
            "batch-size must be <= 64",
        ),
        (
            "NaN pixels",
            ("images", np.full((2, 1, 8, 8), np.nan, np.float32), "FP32", "digits"),
            "contains NaN or Inf",
        ),
        ("unknown model", ("images", ok, "FP32", "nope"), "'nope' is not found"),
        (
            "malformed JSON body",
            b'{"inputs": [{"name": "ima',
            "failed to parse the request JSON buffer",
        ),
        (
            "JSON data length does not match shape",
            json.dumps(
                {
                    "inputs": [
                        {
                            "name": "images",
                            "shape": [1, 1, 8, 8],
                            "datatype": "FP32",
                            "data": [1.0, 2.0],
                        }
                    ]
                }
            ).encode(),
            "Unable to parse 'data'",
        ),
    ]


def test_100_bad_requests_get_clear_errors_and_the_server_keeps_serving(
    served: tuple[DictConfig, TritonServer],
) -> None:
    _, server = served
    cases = _bad_request_cases()
    clients = {
        "http": th.InferenceServerClient(server.http_address),
        "grpc": tg.InferenceServerClient(server.grpc_address),
    }
    modules = {"http": th, "grpc": tg}
    try:
        for i in range(100):
            what, spec, expected = cases[i % len(cases)]
            if isinstance(spec, bytes):
                status, message = _http_post(server, "digits", spec)
                assert status >= 400, (
                    what
                )  # Triton 2.51 answers 400 or 500 here; the message is what matters
            else:
                protocol = "http" if (i // len(cases)) % 2 == 0 else "grpc"
                name, array, dtype, model = spec
                tensor = modules[protocol].InferInput(name, list(array.shape), dtype)
                tensor.set_data_from_numpy(array)
                with pytest.raises(InferenceServerException) as caught:
                    clients[protocol].infer(model, [tensor])
                message = caught.value.message()
            assert expected in message, f"{what}: {message!r}"
        assert server.is_running()
        good = np.random.default_rng(0).random((3, 1, 8, 8), dtype=np.float32)
        for protocol in ("http", "grpc"):
            tensor = modules[protocol].InferInput("images", [3, 1, 8, 8], "FP32")
            tensor.set_data_from_numpy(good)
            assert clients[protocol].infer("digits", [tensor]).as_numpy("logits").shape == (3, 10)
    finally:
        for client in clients.values():
            client.close()


def test_bad_and_good_requests_in_one_dynamic_batch(
    served: tuple[DictConfig, TritonServer], test_split: tuple[np.ndarray, np.ndarray]
) -> None:
    """Concurrent NaN and valid requests share executions; each valid one gets ORT's answer."""
    cfg, server = served
    images, _ = test_split
    expected = run_ort(
        ort_session(Path(cfg.export.onnx_path), ["CPUExecutionProvider"]), images[:48], 48
    )
    with TritonClient(
        "http", server.http_address, "digits", 30.0, server.admin_headers
    ) as stats_client:
        before = stats_client.batch_stats()
    client = tg.InferenceServerClient(server.grpc_address)
    results: dict[int, Any] = {}
    done = threading.Semaphore(0)

    def callback(index: int, result: Any, error: Any) -> None:
        results[index] = error if error is not None else result.as_numpy("logits")
        done.release()

    try:
        for i in range(48):
            sample = images[i : i + 1] if i % 3 else np.full((1, 1, 8, 8), np.nan, np.float32)
            tensor = tg.InferInput("images", [1, 1, 8, 8], "FP32")
            tensor.set_data_from_numpy(sample)
            client.async_infer("digits", [tensor], functools.partial(callback, i))
        for _ in range(48):
            assert done.acquire(timeout=30)
    finally:
        client.close()
    for i in range(48):
        if i % 3:
            np.testing.assert_allclose(results[i], expected[i : i + 1], atol=1e-5, rtol=0)
        else:
            assert "contains NaN or Inf" in results[i].message()
    with TritonClient(
        "http", server.http_address, "digits", 30.0, server.admin_headers
    ) as stats_client:
        after = stats_client.batch_stats()
    executions = after["execution_count"] - before["execution_count"]
    assert (
        after["inference_count"] - before["inference_count"] > executions
    )  # batch-1 requests were grouped


def test_listens_on_loopback_only(served: tuple[DictConfig, TritonServer]) -> None:
    _, server = served
    listening = [
        c
        for c in psutil.Process(server.process.pid).net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN
    ]
    assert {c.laddr.port for c in listening} >= set(server.ports.values())
    assert all(is_loopback(c.laddr.ip) for c in listening), listening


def test_non_loopback_host_is_refused_and_points_to_the_gateway(tmp_path: Path) -> None:
    """tritonserver itself listens on loopback only; beyond loopback means through the gateway."""
    cfg = compose_app("serve", tmp_path, "serve.host=0.0.0.0")
    with pytest.raises(
        ValueError,
        match=r"serve.host='0.0.0.0' is not a loopback.*gateway=nginx gateway.host=0.0.0.0",
    ):
        TritonServer.from_config(cfg.serve)


def test_port_in_use_is_named(served: tuple[DictConfig, TritonServer], tmp_path: Path) -> None:
    cfg, _ = served
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        conf = OmegaConf.merge(cfg.serve, {"grpc_port": port, "log_dir": str(tmp_path)})
        server = TritonServer.from_config(conf)
        with pytest.raises(
            PortInUseError, match=rf"port {port} on 127.0.0.1 is already in use \(serve.grpc_port\)"
        ):
            server.start()
    assert server.process is None


def test_missing_repository_names_the_command(tmp_path: Path) -> None:
    cfg = compose_app("serve", tmp_path, *EPHEMERAL)
    server = TritonServer.from_config(cfg.serve)
    with pytest.raises(
        FileNotFoundError, match=rf"{tmp_path}/model_repository/digits/config.pbtxt.*mlpipe-export"
    ):
        server.start()
    assert server.process is None  # nothing was launched


def test_missing_model_file_names_the_path(
    served: tuple[DictConfig, TritonServer], tmp_path: Path
) -> None:
    cfg, _ = served
    repo = tmp_path / "repo"
    shutil.copytree(cfg.serve.model_repository, repo)
    (repo / "digits_nobatch" / "1" / "model.onnx").unlink()
    server = TritonServer.from_config(OmegaConf.merge(cfg.serve, {"model_repository": str(repo)}))
    with pytest.raises(
        FileNotFoundError, match=rf"{repo}/digits_nobatch/1/model.onnx is missing.*mlpipe-export"
    ):
        server.start()
    assert server.process is None


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_cli_stops_cleanly_on_signal(served: tuple[DictConfig, TritonServer], signum: int) -> None:
    """`mlpipe-serve` in a subprocess: ready banner, a request, then a signal -> exit 0, no
    orphans, ports freed."""
    cfg, _ = served
    root = Path(cfg.paths.artifacts_dir).parent
    ports = {which: free_port("127.0.0.1") for which in ("http", "grpc", "metrics")}
    overrides = [
        *tmp_path_overrides(root),
        *(f"serve.{k}_port={v}" for k, v in ports.items()),
        "gateway.http_port=0",
        "gateway.grpc_port=0",
    ]
    proc, text = start_cli(overrides)
    try:
        assert "tritonserver ready" in text, text
        assert re.search(r"log\s+\S+tritonserver-\d+\.log", text), text
        seen = children_of(proc.pid)
        assert {"tritonserver", "nginx"} <= {p.name for p in seen}
        client = th.InferenceServerClient(f"127.0.0.1:{ports['http']}")
        assert client.is_model_ready("digits")
        client.close()
        proc.send_signal(signum)
        assert proc.wait(timeout=60) == 0, proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    gone, alive = psutil.wait_procs([p.process for p in seen], timeout=10)
    assert not alive, f"orphans after {signal.Signals(signum).name}: {alive}"
    for which, port in ports.items():
        check_port_free("127.0.0.1", port, f"{which}_port")

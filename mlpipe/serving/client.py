"""The one Triton client of mlpipe: used by the accuracy check, the serving targets, the bench
and the load generator.

:class:`TritonClient` is one tritonclient connection to one model. Its tensor names and dtype
come from the server's model metadata (the exported signature), never from literals. HTTP uses
the binary tensor extension both ways (no JSON number formatting). :class:`TritonCaller` is the
picklable factory the load generator gives each worker: it opens one client per worker.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from mlpipe.common.errors import ConfigError, ServerError

PROTOCOLS = ("http", "grpc")


def client_module(protocol: str) -> ModuleType:
    """`tritonclient.http` or `tritonclient.grpc`."""
    if protocol == "http":
        import tritonclient.http as module
    elif protocol == "grpc":
        import tritonclient.grpc as module
    else:
        raise ConfigError(f"unknown protocol {protocol!r}; valid choices: {list(PROTOCOLS)}")
    return module


class TritonClient:
    """One connection that sends batches to one model and returns its output as numpy."""

    def __init__(
        self,
        protocol: str,
        address: str,
        model: str,
        timeout_s: float,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.module = client_module(protocol)
        self.protocol, self.model, self.timeout_s = protocol, model, timeout_s
        # Sent with the admin calls only (statistics): TritonServer.admin_headers opens them.
        self.headers = dict(headers or {})
        if protocol == "http":
            self.client = self.module.InferenceServerClient(
                address, connection_timeout=timeout_s, network_timeout=timeout_s
            )
        else:
            self.client = self.module.InferenceServerClient(address)
        self.input_name, self.datatype, self.output_name = self._signature()
        from tritonclient.utils import triton_to_np_dtype

        self.np_dtype = np.dtype(triton_to_np_dtype(self.datatype))
        binary = {"binary_data": True} if protocol == "http" else {}
        self._outputs = [self.module.InferRequestedOutput(self.output_name, **binary)]

    def _signature(self) -> tuple[str, str, str]:
        """(input name, input datatype, output name) from the server's model metadata."""
        try:
            if self.protocol == "http":
                meta = self.client.get_model_metadata(self.model)
            else:
                meta = self.client.get_model_metadata(self.model, as_json=True)
        except Exception as err:  # InferenceServerException, connection refused, ...
            self.client.close()
            raise ServerError(
                f"model {self.model!r} metadata unavailable ({str(err).splitlines()[0]}); is the "
                "server running and the model in its repository?"
            ) from None
        (inp,), (out,) = meta["inputs"], meta["outputs"]  # mlpipe exports one input, one output
        return inp["name"], inp["datatype"], out["name"]

    def _inputs(self, batch: np.ndarray) -> list[Any]:
        tensor = self.module.InferInput(self.input_name, list(batch.shape), self.datatype)
        data = np.ascontiguousarray(batch, dtype=self.np_dtype)
        if self.protocol == "http":
            tensor.set_data_from_numpy(data, binary_data=True)
        else:
            tensor.set_data_from_numpy(data)
        return [tensor]

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """The model's output (B, classes) for a (B, C, H, W) batch."""
        kwargs = {} if self.protocol == "http" else {"client_timeout": self.timeout_s}
        result = self.client.infer(self.model, self._inputs(batch), outputs=self._outputs, **kwargs)
        return result.as_numpy(self.output_name)

    def submit(self, batch: np.ndarray, callback: Callable[[Any, Any], None]) -> None:
        """Send one request without waiting; gRPC calls `callback(result, error)` on its thread."""
        if self.protocol != "grpc":
            raise ConfigError("asynchronous requests need protocol grpc; set the mode or protocol")
        self.client.async_infer(
            self.model,
            self._inputs(batch),
            callback,
            outputs=self._outputs,
            client_timeout=self.timeout_s,
        )

    def batch_stats(self) -> dict[str, float]:
        """Triton's own counters: inferences vs executions (ratio: the mean server batch).

        Statistics are a restricted API: construct the client with ``headers=`` the server's
        ``admin_headers``."""
        if self.protocol == "http":
            stats = self.client.get_inference_statistics(self.model, headers=self.headers)
        else:
            stats = self.client.get_inference_statistics(
                self.model, headers=self.headers, as_json=True
            )
        model_stats = stats["model_stats"][0]
        # gRPC's JSON leaves out zero counters (proto3), e.g. before the first request
        inferences = int(model_stats.get("inference_count", 0))
        executions = int(model_stats.get("execution_count", 0))
        return {
            "inference_count": inferences,
            "execution_count": executions,
            "mean_server_batch": inferences / executions if executions else 0.0,
        }

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> TritonClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _BoundCall:
    """One worker's request: a fixed batch on its own client (blocking call or `submit`)."""

    def __init__(self, client: TritonClient, batch: np.ndarray) -> None:
        self.client, self.batch = client, batch

    def __call__(self) -> np.ndarray:
        return self.client.infer(self.batch)

    def submit(self, callback: Callable[[Any, Any], None]) -> None:
        self.client.submit(self.batch, callback)


@dataclass(frozen=True)
class TritonCaller:
    """Picklable caller factory for the load generator: one client per worker; each call
    serializes, sends, waits and decodes (client-observed latency)."""

    protocol: str
    address: str
    model: str
    images: np.ndarray
    timeout_s: float

    def __call__(self) -> _BoundCall:
        return _BoundCall(
            TritonClient(self.protocol, self.address, self.model, self.timeout_s), self.images
        )

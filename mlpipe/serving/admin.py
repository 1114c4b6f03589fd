"""Admin APIs closed by default: tritonserver's own ``--http-restricted-api`` and
``--grpc-restricted-protocol``, behind a key made for each start.

Restricted (``serve.admin.restricted``): shared memory, model repository, logging, trace,
statistics, model configuration. Inference, health and metadata stay open. A restricted call
needs the header ``serve.admin.header: <key>``; without it tritonserver answers HTTP 403. On gRPC
the metadata key is ``triton-grpc-protocol-<header>`` and 2.51 answers UNAVAILABLE ("This
protocol is restricted") rather than PERMISSION_DENIED.

The key comes from the environment variable ``serve.admin.key_env`` when set (a deployment's
secret), else it is generated per start. Either way it is written with mode 0600 to
``serve.admin.key_file`` so that the local operator (and nobody else) can read it.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlpipe.common.config import positive_int, require

# Triton's names for what --http-restricted-api / --grpc-restricted-protocol can restrict.
TRITON_APIS = (
    "health",
    "metadata",
    "inference",
    "shared-memory",
    "model-config",
    "model-repository",
    "statistics",
    "trace",
    "logging",
)
ALWAYS_OPEN = ("health", "metadata", "inference")
# tritonserver 2.51 reads a restricted gRPC call's key from the metadata key
# "triton-grpc-protocol-<header>" (and answers UNAVAILABLE "This protocol is restricted").
GRPC_HEADER_PREFIX = "triton-grpc-protocol-"
_HEADER = re.compile(r"^[a-z0-9-]+$")  # gRPC metadata keys are lower case


@dataclass(frozen=True)
class AdminSettings:
    """``serve.admin``: what is restricted, the header that carries the key, where the key is."""

    restricted: tuple[str, ...]
    header: str
    key_env: str
    key_file: Path
    key_bytes: int

    @classmethod
    def from_config(cls, node: Mapping[str, Any]) -> AdminSettings:
        restricted = tuple(str(api) for api in node["restricted"])
        for api in restricted:
            require(
                api in TRITON_APIS and api not in ALWAYS_OPEN,
                "serve.admin.restricted",
                f"{api!r} is not one of {[a for a in TRITON_APIS if a not in ALWAYS_OPEN]}",
            )
        header = str(node["header"])
        require(bool(_HEADER.match(header)), "serve.admin.header", "use lower-case a-z, 0-9, -")
        return cls(
            restricted,
            header,
            str(node["key_env"]),
            Path(str(node["key_file"])),
            positive_int(node["key_bytes"], "serve.admin.key_bytes", minimum=16),
        )


def make_key(settings: AdminSettings) -> str:
    """The key from ``$<key_env>`` if set, else a fresh random one; written 0600 to key_file."""
    key = os.environ.get(settings.key_env) or secrets.token_urlsafe(settings.key_bytes)
    require(
        bool(re.fullmatch(r"[A-Za-z0-9_.~-]+", key)),
        settings.key_env,
        "the admin key may hold only letters, digits and _ . ~ -",
    )
    write_private(settings.key_file, key)
    return key


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by its owner only (0600 from the first byte)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)  # an older file may have been created with other bits
        os.write(fd, f"{text}\n".encode())
    finally:
        os.close(fd)


def restricted_args(restricted: Sequence[str], header: str, key: str) -> list[str]:
    """tritonserver options restricting ``restricted`` on HTTP and gRPC to ``header: key``."""
    if not restricted:
        return []
    apis = ",".join(restricted)
    return [
        f"--http-restricted-api={apis}:{header}={key}",
        f"--grpc-restricted-protocol={apis}:{header}={key}",
    ]

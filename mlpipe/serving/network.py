"""Addresses and ports: loopback detection, free ephemeral ports, a busy port named early."""

from __future__ import annotations

import errno
import ipaddress
import socket
from collections.abc import Mapping
from typing import Any

from mlpipe.common.config import is_int, require
from mlpipe.common.errors import PortInUseError


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1, IPv4-mapped loopback (``::ffff:127.0.0.1``) and ``localhost``."""
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return address.is_loopback or (mapped is not None and mapped.is_loopback)


def port_number(node: Mapping[str, Any], key: str, group: str) -> int:
    """A TCP port from config: an integer in [0, 65535] (0: a free one), or ConfigError naming
    ``<group>.<key>`` (``serve.http_port=abc`` is a user mistake, not a traceback)."""
    value = node[key]
    require(
        is_int(value) and 0 <= value <= 65535,
        f"{group}.{key}",
        f"must be a port number in [0, 65535] (0: a free one), got {value!r}",
    )
    return int(value)


def free_port(host: str) -> int:
    """An ephemeral port the OS reports free on ``host`` (for ``port: 0`` in config)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def check_port_free(host: str, port: int, key: str, group: str = "serve") -> None:
    """Raise :class:`PortInUseError` naming ``port`` if something listens there already."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(
            socket.SOL_SOCKET, socket.SO_REUSEADDR, 1
        )  # ignore TIME_WAIT, as tritonserver does
        try:
            sock.bind((host, port))
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                raise PortInUseError(
                    errno.EADDRINUSE,
                    f"port {port} on {host} is already in use ({group}.{key}); stop whatever "
                    f"listens there (`ss -ltnp 'sport = :{port}'`) or pick another port, e.g. "
                    f"{group}.{key}=0 for a free one",
                ) from err
            raise


def bracketed(host: str) -> str:
    """``[::1]`` for an IPv6 address (URLs, nginx ``listen``), the host unchanged otherwise."""
    return f"[{host}]" if ":" in host else host

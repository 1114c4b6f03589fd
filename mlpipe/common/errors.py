"""One error hierarchy for every stage.

A :class:`UserError` is a mistake the user can fix (a config value, a missing file, a busy port):
its message says what went wrong and how to fix it, and :func:`mlpipe.common.cli.entry_point`
prints it as one line with no traceback. Anything else is a bug and keeps its traceback.
The builtin bases (``ValueError``, ``FileNotFoundError``, ...) stay, so callers that catch those
keep working.
"""

from __future__ import annotations


class UserError(Exception):
    """A mistake the user can fix; the message names the problem and the fix."""


class ConfigError(UserError, ValueError):
    """An invalid configuration value; the message names the key and a valid range."""


class DataError(UserError, RuntimeError):
    """The data on disk cannot be used (missing, changed or malformed)."""


class DataMissingError(DataError, FileNotFoundError):
    """The DVC-tracked data is not in the workspace."""


class DataCorruptedError(DataError):
    """A data file differs from the version recorded in data.dvc."""


class ArtifactError(UserError, ValueError):
    """A file an earlier stage makes (checkpoint, ONNX, model repository) is unusable."""


class ArtifactMissingError(ArtifactError, FileNotFoundError):
    """A file an earlier stage makes is absent; the message names the command that makes it."""


class ParityError(UserError, RuntimeError):
    """ONNX Runtime (or TensorRT) disagrees with the reference beyond the configured tolerance."""


class UnavailableError(UserError, RuntimeError):
    """A component this machine lacks (TensorRT, CUDA) was asked for; the message names it."""


class ServerError(UserError, RuntimeError):
    """tritonserver could not start, died, or did not become ready; the message names the log."""


class PortInUseError(UserError, OSError):
    """A configured port is taken; the message names the port and the config key to change."""


class ConsistencyError(UserError, RuntimeError):
    """Measured figures contradict their bounds (MFU over 100 %, a point above its roof, ...);
    the message names the first and the report section that lists them all."""


class NonFiniteLossError(UserError, FloatingPointError):
    """Training produced a NaN/Inf loss; the message names the step and likely fixes."""

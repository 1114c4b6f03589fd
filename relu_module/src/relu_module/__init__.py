"""ReLU at memory bandwidth for numpy arrays and CPU torch tensors.

Results are bit-identical to ``torch.relu``: ``-0.0`` stays ``-0.0`` and every NaN passes
through with its payload (``np.maximum(x, 0)`` turns ``-0.0`` into ``+0.0``). The work happens
in the compiled ``relu_module._ext``; this module only turns Python sequences into arrays, so
the fast path for ndarrays adds two ``type()`` checks. Torch tensors go to the torch operators
of ``relu_module.torch`` (``torch.ops.relu_module.*``), which run the same kernels.
"""

from __future__ import annotations

import logging
import operator
import sys
from array import array as array_type
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _dist_version
from typing import Any

import numpy as np

from . import _ext
from ._ext import cached_bytes, empty_cache, get_num_threads, simd_level

try:
    __version__ = _dist_version("relu-module")
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"

_log = logging.getLogger(__name__)


# The C++ side parses RELU_MODULE_NUM_THREADS and RELU_MODULE_CACHE_MB once (settings.cpp); each
# value it ignores comes back as one line saying so and naming the value used instead.
for _line in _ext.settings_warnings():
    _log.warning("%s", _line)
MAX_THREADS: int = _ext.MAX_THREADS


def set_num_threads(n: int) -> None:
    """Threads used for large arrays, ``1 <= n <= MAX_THREADS`` (1024)."""
    if isinstance(n, bool) or not hasattr(n, "__index__"):
        raise TypeError(f"set_num_threads: n must be an integer, got {type(n).__name__}")
    n = operator.index(n)
    if not 1 <= n <= MAX_THREADS:
        raise ValueError(f"set_num_threads: n must be in [1, {MAX_THREADS}], got {n}")
    _ext.set_num_threads(n)


__all__ = [
    "relu",
    "relu_",
    "relu_backward",
    "get_num_threads",
    "set_num_threads",
    "MAX_THREADS",
    "simd_level",
    "empty_cache",
    "cached_bytes",
    "__version__",
]

_ndarray = np.ndarray
_ACCEPTED = "float32 and float64"
_PY_SEQUENCES = (list, tuple, range, int, float)
_BUFFERS = (memoryview, bytearray, array_type)


def _torch_tensor_type() -> Any:
    """torch.Tensor if torch is already imported (a tensor cannot exist otherwise), else None."""
    torch = sys.modules.get("torch")
    return getattr(torch, "Tensor", None)


_TORCH_INTEGRATION: Any = None


def _torch_integration() -> Any:
    """relu_module.torch (the torch operators), imported on first use: it imports torch."""
    global _TORCH_INTEGRATION
    if _TORCH_INTEGRATION is None:
        from . import torch as integration

        _TORCH_INTEGRATION = integration
    return _TORCH_INTEGRATION


def _require_tensor(t: Any, fn: str, arg: str) -> None:
    tensor_type = _torch_tensor_type()
    if not isinstance(t, tensor_type):
        raise TypeError(
            f"{fn}: {arg} must be a torch tensor like the other arguments, got "
            f"{type(t).__name__}; pass tensors throughout (torch.from_numpy(a) views an array)"
        )


def _as_array(x: Any, fn: str, arg: str, writeable: bool) -> np.ndarray:
    """ndarray view of x (never a copy of an ndarray), or of a sequence of numbers."""
    if isinstance(x, _ndarray):
        return x
    tensor_type = _torch_tensor_type()
    if tensor_type is not None and isinstance(x, tensor_type):
        raise TypeError(
            f"{fn}: {arg} is a torch tensor but the other arguments are not; pass tensors "
            "throughout (torch.from_numpy(a) views an array without a copy)"
        )
    if writeable:
        raise TypeError(
            f"{fn}: {arg} must be a writeable numpy.ndarray or CPU torch tensor, got "
            f"{type(x).__name__}; there is nothing to write into. Use relu_module.relu(x), which "
            "returns a new array"
        )
    array_like = (
        isinstance(x, _PY_SEQUENCES + _BUFFERS)
        or hasattr(x, "__array__")
        or hasattr(x, "__array_interface__")
    )
    if isinstance(x, bool) or not array_like:
        raise TypeError(
            f"{fn}: {arg} must be a numpy array, a CPU torch tensor, a buffer or a sequence of "
            f"numbers; got {type(x).__name__}"
        )
    try:
        arr = np.asarray(x)
    except (ValueError, TypeError, RuntimeError) as err:  # RuntimeError: a list of tensors
        raise TypeError(
            f"{fn}: {arg} of type {type(x).__name__} is not array-like ({err})"
        ) from err
    if isinstance(x, _PY_SEQUENCES) and arr.dtype.kind in "iu":
        arr = arr.astype(np.float64)  # the original project's list of Python ints/floats
    if arr.dtype.kind not in "f":
        raise TypeError(
            f"{fn}: {arg} of type {type(x).__name__} converts to dtype {arr.dtype}; "
            "accepted dtypes are "
            f"{_ACCEPTED} (a sequence must hold only real numbers)"
        )
    return arr


def _is_tensor(x: Any) -> bool:
    tensor_type = _torch_tensor_type()
    return tensor_type is not None and isinstance(x, tensor_type)


def relu(x: Any, out: Any = None) -> Any:
    """max(x, 0) elementwise, bit-identical to ``torch.relu`` (keeps -0.0 and NaN payloads).

    ``x``: ndarray or CPU torch tensor of float32/float64 (any shape and strides), or a
    sequence of numbers (becomes float64). ``out``: optional array or tensor of the same shape
    and dtype to write into; it may be ``x`` itself. Returns ``out``, or a new array (a tensor
    for tensor input) with x's memory layout when x is contiguous, else C order.
    """
    if type(x) is _ndarray and (out is None or type(out) is _ndarray):
        return _ext.relu(x, out)
    if _is_tensor(x):  # the torch operator: autograd, version counters, every torch mode
        if out is None:
            return _torch_integration().relu(x)
        _require_tensor(out, "relu", "out")
        return _torch_integration().relu_out(x, out)
    arr = _as_array(x, "relu", "x", writeable=False)
    if out is None:
        return _ext.relu(arr, None)
    return _ext.relu(arr, _as_array(out, "relu", "out", writeable=True))


def relu_(x: Any) -> Any:
    """In-place ReLU of a writeable ndarray or CPU tensor; returns ``x``.

    Works on the strided view itself (never through a temporary), so non-contiguous views such
    as ``a[:, ::2]`` update ``a``.
    """
    if type(x) is _ndarray:
        return _ext.relu_(x)
    if _is_tensor(x):
        return _torch_integration().relu(x, inplace=True)
    return _ext.relu_(_as_array(x, "relu_", "x", writeable=True))


def relu_backward(grad: Any, x: Any, out: Any = None) -> Any:
    """Gradient of ReLU: ``grad`` where ``x > 0``, else ``+0.0``.

    Bit-identical to torch's autograd (``threshold_backward``): where ``x`` is NaN the gradient
    passes unchanged, and an infinite ``grad`` at ``x <= 0`` gives 0 (``grad * (x > 0)`` would
    give NaN in both cases). ``grad``, ``x`` and ``out`` must share one shape and dtype; ``out``
    may be ``grad`` or ``x``.
    """
    if type(grad) is _ndarray and type(x) is _ndarray and (out is None or type(out) is _ndarray):
        return _ext.relu_backward(grad, x, out)
    if _is_tensor(grad) or _is_tensor(x):
        for name, t in (("grad", grad), ("x", x)) + ((("out", out),) if out is not None else ()):
            _require_tensor(t, "relu_backward", name)
        # x > 0 exactly where relu(x) > 0 (a NaN passes in both): the op's `result` may be x.
        if out is None:
            return _torch_integration().ops.relu_backward.default(grad, x)
        _torch_integration().ops.relu_backward.out(grad, x, out=out)
        return out
    g_arr = _as_array(grad, "relu_backward", "grad", writeable=False)
    x_arr = _as_array(x, "relu_backward", "x", writeable=False)
    if out is None:
        return _ext.relu_backward(g_arr, x_arr, None)
    return _ext.relu_backward(g_arr, x_arr, _as_array(out, "relu_backward", "out", writeable=True))

"""ReLU at memory bandwidth for numpy arrays and CPU torch tensors.

Results are bit-identical to ``torch.relu``: ``-0.0`` stays ``-0.0`` and every NaN passes
through with its payload (``np.maximum(x, 0)`` turns ``-0.0`` into ``+0.0``). The work happens
in the compiled ``relu_module._ext``; this module only turns torch tensors and Python sequences
into zero-copy ndarray views, so the fast path for ndarrays adds two ``type()`` checks.
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


_INFERENCE_INPLACE = (
    "Inplace update to inference tensor outside InferenceMode is not allowed.You can make a clone "
    "to get a normal tensor before doing inplace update.See "
    "https://github.com/pytorch/rfcs/pull/17 for more details."
)


def _tensor_to_array(t: Any, fn: str, arg: str, written: bool = False) -> np.ndarray:
    """Zero-copy ndarray view of a CPU float tensor, or a clear error saying what to change.

    ``written``: the call writes into ``t``, so torch's in-place rules apply first.
    """
    import torch

    if t.device.type != "cpu":
        raise ValueError(
            f"{fn}: {arg} is a torch tensor on device '{t.device}'; relu_module computes on the "
            f"CPU only. Move it first with {arg}.cpu() (or use torch.relu on that device)"
        )
    if t.layout != torch.strided:
        raise TypeError(
            f"{fn}: {arg} has layout {t.layout}; only dense (strided) tensors are supported, "
            f"call {arg}.to_dense()"
        )
    if t.dtype not in (torch.float32, torch.float64):
        raise TypeError(
            f"{fn}: {arg} has unsupported dtype {t.dtype}; accepted dtypes are {_ACCEPTED}. "
            f"Convert first, e.g. {arg}.float()"
        )
    if t.requires_grad and torch.is_grad_enabled():
        raise ValueError(
            f"{fn}: {arg} requires grad; relu_module.{fn} does not record autograd history. Use "
            "relu_module.torch.relu / relu_module.torch.ReLU for autograd, or call inside "
            "torch.no_grad()"
        )
    if written and t.is_inference() and not torch.is_inference_mode_enabled():
        raise RuntimeError(f"{fn}: {_INFERENCE_INPLACE}")  # torch's own words for torch.relu_
    try:
        return t.detach().numpy()
    except (RuntimeError, TypeError) as err:  # e.g. a tensor with the negative/conjugate bit set
        raise ValueError(
            f"{fn}: cannot view {arg} as a numpy array without a copy ({err})"
        ) from err


def _as_array(x: Any, fn: str, arg: str, writeable: bool) -> tuple[np.ndarray, bool]:
    """(ndarray view of x, whether x was a torch tensor). Never copies an ndarray or a tensor."""
    if isinstance(x, _ndarray):
        return x, False
    tensor_type = _torch_tensor_type()
    if tensor_type is not None and isinstance(x, tensor_type):
        return _tensor_to_array(x, fn, arg, written=writeable), True
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
    except (ValueError, TypeError) as err:
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
    return arr, False


def _bump_version(t: Any) -> None:
    """Tell autograd that ``t`` was written (its version counter), as every torch in-place op does.

    The write went through a numpy view that torch cannot see; without this, a tensor saved for
    backward and then rectified in place would give a silently wrong gradient instead of torch's
    "modified by an inplace operation" error.
    """
    import torch

    torch.autograd.graph.increment_version(t)


def relu(x: Any, out: Any = None) -> Any:
    """max(x, 0) elementwise, bit-identical to ``torch.relu`` (keeps -0.0 and NaN payloads).

    ``x``: ndarray or CPU torch tensor of float32/float64 (any shape and strides), or a
    sequence of numbers (becomes float64). ``out``: optional array or tensor of the same shape
    and dtype to write into; it may be ``x`` itself. Returns ``out``, or a new array (a tensor
    for tensor input) with x's memory layout when x is contiguous, else C order.
    """
    if type(x) is _ndarray and (out is None or type(out) is _ndarray):
        return _ext.relu(x, out)
    arr, is_tensor = _as_array(x, "relu", "x", writeable=False)
    if out is None:
        result = _ext.relu(arr, None)
        if is_tensor:
            import torch

            return torch.from_numpy(result)
        return result
    out_arr, out_tensor = _as_array(out, "relu", "out", writeable=True)
    _ext.relu(arr, out_arr)
    if out_tensor:
        _bump_version(out)
    return out


def relu_(x: Any) -> Any:
    """In-place ReLU of a writeable ndarray or CPU tensor; returns ``x``.

    Works on the strided view itself (never through a temporary), so non-contiguous views such
    as ``a[:, ::2]`` update ``a``.
    """
    if type(x) is _ndarray:
        return _ext.relu_(x)
    arr, is_tensor = _as_array(x, "relu_", "x", writeable=True)
    _ext.relu_(arr)
    if is_tensor:
        _bump_version(x)
    return x


def relu_backward(grad: Any, x: Any, out: Any = None) -> Any:
    """Gradient of ReLU: ``grad`` where ``x > 0``, else ``+0.0``.

    Bit-identical to torch's autograd (``threshold_backward``): where ``x`` is NaN the gradient
    passes unchanged, and an infinite ``grad`` at ``x <= 0`` gives 0 (``grad * (x > 0)`` would
    give NaN in both cases). ``grad``, ``x`` and ``out`` must share one shape and dtype; ``out``
    may be ``grad`` or ``x``.
    """
    if type(grad) is _ndarray and type(x) is _ndarray and (out is None or type(out) is _ndarray):
        return _ext.relu_backward(grad, x, out)
    g_arr, g_tensor = _as_array(grad, "relu_backward", "grad", writeable=False)
    x_arr, x_tensor = _as_array(x, "relu_backward", "x", writeable=False)
    if out is None:
        result = _ext.relu_backward(g_arr, x_arr, None)
        if g_tensor or x_tensor:
            import torch

            return torch.from_numpy(result)
        return result
    out_arr, out_tensor = _as_array(out, "relu_backward", "out", writeable=True)
    _ext.relu_backward(g_arr, x_arr, out_arr)
    if out_tensor:
        _bump_version(out)
    return out

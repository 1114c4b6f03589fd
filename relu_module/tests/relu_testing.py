"""Shared helpers of relu_module's tests: bit views, torch references, hypothesis strategies.

Reference semantics: torch.relu keeps -0.0 and NaN payloads; np.maximum(x, 0) agrees up to the
sign of zero. The gradient is torch's threshold_backward.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

DTYPES = (np.float32, np.float64)
UINT = {np.float32: np.uint32, np.float64: np.uint64}
PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def bits(a: np.ndarray) -> np.ndarray:
    """The raw bit patterns of a float array, so that comparisons see NaN payloads and -0.0."""
    return np.ascontiguousarray(a).view(UINT[a.dtype.type])


def torch_relu(x: np.ndarray) -> np.ndarray:
    return torch.relu(torch.from_numpy(x.copy())).numpy()


def torch_relu_grad(grad: np.ndarray, x: np.ndarray) -> np.ndarray:
    t = torch.from_numpy(x.copy()).clone().requires_grad_()
    torch.relu(t).backward(torch.from_numpy(grad.copy()))
    return t.grad.numpy()


def special_values(dtype: type) -> np.ndarray:
    """±0, ±inf, ±denormals, and NaNs of both signs with several payloads, quiet and signalling."""
    if dtype is np.float64:
        nans = [0x7FF8000000000000, 0xFFF8000000000000, 0x7FF8000000000123, 0xFFF0000000000001]
        raw = np.array([*nans, 0x7FF0000000000001], dtype=np.uint64).view(np.float64)
        tiny = [5e-324, -5e-324, 2.2e-308, -1e-310]
    else:
        nans = [0x7FC00000, 0xFFC00000, 0x7FC00123, 0xFF800001, 0x7F800001]
        raw = np.array(nans, dtype=np.uint32).view(np.float32)
        tiny = [1e-45, -1e-45, 1.1e-38, -1e-40]
    base = np.array([0.0, -0.0, np.inf, -np.inf, 1.0, -1.0, *tiny], dtype=dtype)
    return np.concatenate([base, raw])


@st.composite
def float_arrays(draw: st.DrawFn) -> np.ndarray:
    """Arrays of any shape (0-d and empty included) and bit pattern, often as strided views."""
    dtype = draw(st.sampled_from(DTYPES))
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=7))
    if draw(st.booleans()):  # every bit pattern: NaN payloads, denormals, -0.0
        a = draw(hnp.arrays(UINT[dtype], shape)).view(dtype)
    else:
        width = 32 if dtype is np.float32 else 64
        elems = st.floats(width=width, allow_nan=True, allow_infinity=True)
        a = draw(hnp.arrays(dtype, shape, elements=elems))
    if a.ndim and draw(st.booleans()):
        steps = tuple(draw(st.sampled_from([1, 2, -1, -2])) for _ in range(a.ndim))
        a = a[tuple(slice(None, None, s) for s in steps)]
    if a.ndim >= 2 and draw(st.booleans()):
        a = a.T
    return a


def run_python(
    code: str, env: dict[str, str] | None = None, timeout: float = 120, **kwargs: object
) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter (crash and hang cases: a segfault fails one test only)."""
    return subprocess.run(
        [sys.executable, "-X", "faulthandler", "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        **kwargs,
    )

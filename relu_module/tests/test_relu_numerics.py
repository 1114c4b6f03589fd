"""relu, relu_ and relu_backward against torch.relu (bitwise) and numpy: values and layouts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from relu_testing import (
    DTYPES,
    PROPERTY,
    bits,
    float_arrays,
    special_values,
    torch_relu,
    torch_relu_grad,
)

import relu_module
from relu_module import relu, relu_, relu_backward


@given(float_arrays())
@PROPERTY
def test_relu_matches_torch_bitwise(x: np.ndarray) -> None:
    y = relu(x)
    assert y.shape == x.shape and y.dtype == x.dtype
    np.testing.assert_array_equal(bits(y), bits(torch_relu(x)))


@given(float_arrays())
@PROPERTY
def test_relu_matches_numpy_up_to_sign_of_zero(x: np.ndarray) -> None:
    with np.errstate(invalid="ignore"):
        ref = np.maximum(x, 0)
    np.testing.assert_array_equal(relu(x), ref)  # treats -0.0 == +0.0 and NaN == NaN


@given(float_arrays())
@PROPERTY
def test_out_and_in_place_match_torch(x: np.ndarray) -> None:
    ref = bits(torch_relu(x))
    out = np.full(x.shape, 7.0, dtype=x.dtype)
    assert relu(x, out=out) is out
    np.testing.assert_array_equal(bits(out), ref)
    base = x.copy()
    assert relu_(base) is base
    np.testing.assert_array_equal(bits(base), ref)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 15, 16, 17, 1023, 70_001, 1_000_003, 5_000_011])
def test_special_values_at_every_size(dtype: type, n: int) -> None:
    """Sizes cross the vector tails, the thread threshold and the streaming-store threshold."""
    rng = np.random.default_rng(n)
    x = rng.standard_normal(n).astype(dtype)
    sv = special_values(dtype)
    idx = rng.integers(0, n, size=min(n, 64))
    x[idx] = sv[np.arange(idx.size) % sv.size]
    ref = bits(torch_relu(x))
    np.testing.assert_array_equal(bits(relu(x)), ref)
    out = np.empty_like(x)
    relu(x, out=out)
    np.testing.assert_array_equal(bits(out), ref)
    relu_(x)
    np.testing.assert_array_equal(bits(x), ref)


def test_negative_zero_differs_from_numpy() -> None:
    """The documented difference: torch (and we) keep -0.0; np.maximum returns +0.0."""
    x = np.array([-0.0])
    assert np.signbit(relu(x))[0] and np.signbit(torch_relu(x))[0]
    assert not np.signbit(np.maximum(x, 0))[0]


@pytest.mark.parametrize("dtype", DTYPES)
def test_zero_dim_and_empty(dtype: type) -> None:
    y = relu(np.array(-2.5, dtype=dtype))
    assert y.shape == () and y.dtype == dtype and y == 0
    for shape in [(0,), (3, 0, 2)]:
        e = relu(np.empty(shape, dtype=dtype))
        assert e.shape == shape and e.dtype == dtype
        relu_(np.empty(shape, dtype=dtype))


def test_layout_of_result() -> None:
    f = np.asfortranarray(np.arange(-6.0, 6.0).reshape(3, 4))
    assert relu(f).flags.f_contiguous
    v = np.arange(-12.0, 12.0).reshape(4, 6)[:, ::2]
    assert relu(v).flags.c_contiguous
    b = np.broadcast_to(np.array([-1.0, 2.0]), (3, 2))  # zero strides, read-only: fine as input
    np.testing.assert_array_equal(relu(b), [[0.0, 2.0]] * 3)


def test_in_place_on_non_contiguous_view_writes_through() -> None:
    a = np.linspace(-5, 5, 60, dtype=np.float32).reshape(6, 10)
    expect = a.copy()
    expect[1::2, ::3] = np.maximum(expect[1::2, ::3], 0)
    view = a[1::2, ::3]
    assert relu_(view) is view
    np.testing.assert_array_equal(a, expect)


def test_overlapping_out_is_computed_from_the_original_input() -> None:
    x = np.array([-1.0, 2.0, -3.0, 4.0, -5.0])
    relu(x[:-1], out=x[1:])
    np.testing.assert_array_equal(x, [-1.0, 0.0, 2.0, 0.0, 4.0])
    y = np.arange(-8.0, 8.0)
    relu(y[::-1], out=y)  # reversed view of itself
    np.testing.assert_array_equal(y, np.maximum(np.arange(-8.0, 8.0)[::-1], 0))


def test_unaligned_arrays() -> None:
    buf = bytearray(8 * 101 + 1)
    x = np.frombuffer(buf, dtype=np.float64, count=100, offset=1)
    x[:] = np.linspace(-1, 1, 100)
    assert not x.flags.aligned
    np.testing.assert_array_equal(relu(x), np.maximum(np.linspace(-1, 1, 100), 0))
    relu_(x)
    np.testing.assert_array_equal(x, np.maximum(np.linspace(-1, 1, 100), 0))


def test_sequences_return_float64_arrays() -> None:
    y = relu([1, -2, 3.5])
    assert isinstance(y, np.ndarray) and y.dtype == np.float64
    np.testing.assert_array_equal(y, [1.0, 0.0, 3.5])
    np.testing.assert_array_equal(relu(((-1.0, 2.0), (3.0, -4.0))), [[0.0, 2.0], [3.0, 0.0]])


def test_large_outputs_reuse_cached_blocks() -> None:
    """Outputs >= CACHE_MIN_BYTES come from huge-page blocks that return to a bounded cache."""
    from relu_module import _ext

    n = _ext.CACHE_MIN_BYTES // 4 + 1000
    x = np.random.default_rng(4).standard_normal(n).astype(np.float32)
    relu_module.empty_cache()
    assert relu_module.cached_bytes() == 0
    y = relu(x)
    view = y[::2]
    del y
    assert relu_module.cached_bytes() == 0, "a live view must keep the block"
    np.testing.assert_array_equal(view, np.maximum(x[::2], 0))
    del view
    assert 0 < relu_module.cached_bytes() <= _ext.cache_limit_bytes()
    y2 = relu(-x)  # reuses the block: stale contents must be fully overwritten
    assert relu_module.cached_bytes() == 0
    np.testing.assert_array_equal(bits(y2), bits(torch_relu(-x)))
    t = relu(torch.from_numpy(x))
    del y2
    assert relu_module.empty_cache() > 0 and relu_module.cached_bytes() == 0
    torch.testing.assert_close(t, torch.relu(torch.from_numpy(x)), rtol=0, atol=0)


@given(float_arrays(), st.data())
@PROPERTY
def test_backward_matches_torch_autograd_bitwise(x: np.ndarray, data: st.DataObject) -> None:
    elems = st.floats(width=32 if x.dtype == np.float32 else 64)
    grad = data.draw(hnp.arrays(x.dtype, x.shape, elements=elems))
    dx = relu_backward(grad, x)
    assert dx.shape == x.shape and dx.dtype == x.dtype
    np.testing.assert_array_equal(bits(dx), bits(torch_relu_grad(grad, x)))


@pytest.mark.parametrize("dtype", DTYPES)
def test_backward_is_grad_times_mask_for_ordinary_values(dtype: type) -> None:
    rng = np.random.default_rng(3)
    x = rng.standard_normal(2_000_003).astype(dtype)
    g = rng.standard_normal(x.size).astype(dtype)
    np.testing.assert_array_equal(relu_backward(g, x), g * (x > 0))
    out = np.empty_like(x)
    assert relu_backward(g, x, out=out) is out
    np.testing.assert_array_equal(out, g * (x > 0))
    g2 = g.copy()
    relu_backward(g2, x, out=g2)  # in place into the gradient
    np.testing.assert_array_equal(g2, g * (x > 0))


def test_backward_special_cases_follow_torch() -> None:
    """NaN input passes the gradient; an infinite gradient at x <= 0 gives 0, not NaN."""
    x = np.array([np.nan, -1.0, 0.0, -0.0, 2.0])
    g = np.array([3.0, np.inf, np.inf, -np.inf, np.nan])
    np.testing.assert_array_equal(bits(relu_backward(g, x)), bits(torch_relu_grad(g, x)))
    np.testing.assert_array_equal(relu_backward(g, x), [3.0, 0.0, 0.0, 0.0, np.nan])


# ---- flush-denormal mode (issue 10, item 4) ---------------------------------------------------

# Sizes: one element, vector tails, the thread threshold and, at 5e6 float32 (20 MiB), the
# streaming-store path.
DENORMAL_SIZES = [1, 17, 100_003, 5_000_011]


def _denormal_pattern(dtype: type) -> np.ndarray:
    tiny = np.finfo(dtype).smallest_subnormal
    return np.concatenate([special_values(dtype), np.array([-3 * tiny, 5 * tiny], dtype)])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", DENORMAL_SIZES)
def test_flush_denormal_semantics_are_torch_single_thread_on_every_path(
    dtype: type, n: int
) -> None:
    """Under torch.set_flush_denormal(True) (MXCSR DAZ) torch's relu is MAXPS: a denormal reads
    as a zero of its sign. Every path (in place, out=, streaming, strided, pool threads) must
    give that, for arrays made before the flag was set. torch's own multi-threaded result
    depends on which of its threads took an element (its workers keep their own MXCSR), so the
    reference is torch on the pattern, single-threaded.
    """
    pattern = _denormal_pattern(dtype)
    x = np.resize(pattern, n)
    grad = np.resize(np.arange(1.0, pattern.size + 1, dtype=dtype), n)
    torch.set_flush_denormal(True)
    try:
        ref = np.resize(bits(torch_relu(pattern)), n)
        ref_grad = np.resize(bits(torch_relu_grad(np.resize(grad, pattern.size), pattern)), n)
        results = {
            "relu": relu(x),
            "relu_": relu_(x.copy()),
            "out=": relu(x, out=np.empty_like(x)),
            "strided": relu(np.repeat(x, 2)[::2]),
            "0-d": relu(x[-1:].reshape(())).reshape(1),
        }
        dx = relu_backward(grad, x)
    finally:
        torch.set_flush_denormal(False)
    for name, y in results.items():
        expect = ref[-1:] if name == "0-d" else ref
        np.testing.assert_array_equal(bits(y), expect, err_msg=name)
    np.testing.assert_array_equal(bits(dx), ref_grad)


def test_flush_denormal_negative_denormal_gives_negative_zero() -> None:
    """The issue's case: -1e-40 made before the flag, in place and out of place, any size."""
    for n in (10, 1_000_000, 5_000_000):
        x = np.full(n, -1e-40, np.float32)
        torch.set_flush_denormal(True)
        try:
            outs = [relu(x), relu_(x.copy()), relu(x, out=np.empty_like(x))]
        finally:
            torch.set_flush_denormal(False)
        for y in outs:
            assert set(np.unique(bits(y))) == {0x80000000}, n

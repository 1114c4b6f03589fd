"""Tests of the installed relu_module against torch.relu (bitwise) and numpy.

Reference semantics: torch.relu keeps -0.0 and NaN payloads; np.maximum(x, 0) agrees up to the
sign of zero. The gradient is torch's threshold_backward. Crash-prone inputs run in a
subprocess so that a segfault fails one test instead of killing the run.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import relu_module
from relu_module import relu, relu_, relu_backward

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
        nans = [0x7FF8000000000000, 0xFFF8000000000000, 0x7FF8000000000123, 0xFFF0000000000001, 0x7FF0000000000001]
        raw = np.array(nans, dtype=np.uint64).view(np.float64)
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
        elems = st.floats(width=32 if dtype is np.float32 else 64, allow_nan=True, allow_infinity=True)
        a = draw(hnp.arrays(dtype, shape, elements=elems))
    if a.ndim and draw(st.booleans()):
        steps = tuple(draw(st.sampled_from([1, 2, -1, -2])) for _ in range(a.ndim))
        a = a[tuple(slice(None, None, s) for s in steps)]
    if a.ndim >= 2 and draw(st.booleans()):
        a = a.T
    return a


# ---- forward --------------------------------------------------------------------------------


def test_installed_package_is_imported() -> None:
    """The tests must exercise the installed wheel, not the source tree."""
    assert "site-packages" in relu_module.__file__
    assert (Path(relu_module.__file__).parent / "py.typed").exists()
    for stub in ("_ext.pyi", "__init__.pyi"):
        assert (Path(relu_module.__file__).parent / stub).exists(), stub
    assert relu_module.simd_level() in {"avx512f", "avx2", "baseline"}


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


def test_thread_count_does_not_change_results() -> None:
    x = np.random.default_rng(1).standard_normal(3_000_001).astype(np.float32)
    before = relu_module.get_num_threads()
    try:
        relu_module.set_num_threads(1)
        one = relu(x)
        relu_module.set_num_threads(3)
        three = relu(x)
    finally:
        relu_module.set_num_threads(before)
    np.testing.assert_array_equal(bits(one), bits(three))
    with pytest.raises(ValueError, match=">= 1"):
        relu_module.set_num_threads(0)


def test_concurrent_python_threads() -> None:
    """The GIL is released for large arrays; concurrent callers share the pool safely."""
    rng = np.random.default_rng(2)
    xs = [rng.standard_normal(400_000 + i).astype(np.float64) for i in range(6)]
    results: dict[int, np.ndarray] = {}

    def work(i: int) -> None:
        for _ in range(5):
            results[i] = relu(xs[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(xs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, x in enumerate(xs):
        np.testing.assert_array_equal(results[i], np.maximum(x, 0))


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


# ---- backward -------------------------------------------------------------------------------


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


# ---- torch tensors and the torch module -------------------------------------------------------


def test_tensors_are_taken_zero_copy() -> None:
    t = torch.linspace(-1, 1, 11)
    y = relu(t)
    assert isinstance(y, torch.Tensor) and y.dtype == torch.float32
    torch.testing.assert_close(y, torch.relu(t), rtol=0, atol=0)
    assert relu_(t) is t
    assert (t >= 0).all()
    big = torch.randn(100, 50, dtype=torch.float64)
    view = big[:, ::2]
    expect = big.clone()
    expect[:, ::2] = torch.relu(expect[:, ::2])
    relu_(view)
    torch.testing.assert_close(big, expect, rtol=0, atol=0)
    out = torch.empty(11)
    assert relu(torch.linspace(-1, 1, 11), out=out) is out
    g = relu_backward(torch.ones(3), torch.tensor([-1.0, 0.0, 1.0]))
    assert isinstance(g, torch.Tensor) and g.tolist() == [0.0, 0.0, 1.0]


def test_relu_module_torch_gradcheck() -> None:
    from relu_module.torch import ReLU, ReLUFunction

    x = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    x.data[x.data.abs() < 1e-3] = 0.5  # keep finite differences away from the kink
    assert torch.autograd.gradcheck(ReLU(), (x,))
    y = ReLU()(x)
    assert y.grad_fn is not None and y.grad_fn.name() == ReLUFunction.__name__ + "Backward"
    torch.testing.assert_close(y, torch.relu(x), rtol=0, atol=0)
    with torch.no_grad():  # inference skips the Function but computes the same bits
        z = ReLU()(x)
    assert z.grad_fn is None and not z.requires_grad
    np.testing.assert_array_equal(bits(z.numpy()), bits(torch.relu(x.detach()).numpy()))


def test_relu_module_torch_float32_backward_matches_torch() -> None:
    from relu_module.torch import relu as trelu

    x = torch.tensor([-1.0, -0.0, 0.0, 2.0, float("nan")]).requires_grad_()
    trelu(x).sum().backward()  # sum() passes an expanded (stride-0) gradient
    ref = x.detach().clone().requires_grad_()
    torch.relu(ref).sum().backward()
    np.testing.assert_array_equal(bits(x.grad.numpy()), bits(ref.grad.numpy()))


def test_relu_module_torch_inplace_matches_nn_relu_inplace() -> None:
    from relu_module.torch import ReLU

    torch.manual_seed(0)
    lin = torch.nn.Linear(6, 5).double()
    x = torch.randn(4, 6, dtype=torch.float64)
    grads = []
    for act in (ReLU(inplace=True), torch.nn.ReLU(inplace=True)):
        lin.zero_grad()
        h = lin(x)
        y = act(h)
        assert y is h  # same storage, modified in place
        (y * torch.arange(5.0, dtype=torch.float64)).sum().backward()
        grads.append((y.detach().clone(), lin.weight.grad.clone()))
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=0)
    assert torch.autograd.gradcheck(lambda t: ReLU(inplace=True)(t.clone()), (x.clone().requires_grad_(),))
    leaf = torch.randn(3, requires_grad=True)
    with pytest.raises(RuntimeError, match="leaf Variable"):
        ReLU(inplace=True)(leaf)  # same error as torch.relu_ on a leaf
    assert repr(ReLU(inplace=True)) == "ReLU(inplace=True)"


def test_relu_module_torch_falls_back_off_kernel_dtypes() -> None:
    from relu_module.torch import ReLU

    x = torch.tensor([-1.0, 2.0], dtype=torch.bfloat16)
    torch.testing.assert_close(ReLU()(x), torch.relu(x))


@pytest.mark.parametrize("inplace", [False, True], ids=["relu", "relu-inplace"])
@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_onnx_export_is_standard_relu(dynamo: bool, inplace: bool, tmp_path: Path) -> None:
    import warnings

    import onnx
    import onnxruntime as ort

    from relu_module.torch import ReLU

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), ReLU(inplace), torch.nn.Linear(16, 4)).eval()
    x = torch.randn(5, 8)
    path = tmp_path / "m.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # exporter deprecation/progress chatter
        torch.onnx.export(
            model, (x,), str(path), dynamo=dynamo, input_names=["x"], output_names=["y"],
            dynamic_axes=None if dynamo else {"x": {0: "batch"}},
        )
    graph = onnx.load(str(path)).graph
    ops = [n.op_type for n in graph.node]
    assert "Relu" in ops
    assert all(n.domain in ("", "ai.onnx") for n in graph.node), "no custom ops"
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(got, model(x).numpy(), rtol=1e-5, atol=1e-6)


# ---- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [np.arange(3), np.arange(3, dtype=np.uint8), np.array([True]), np.array([1 + 2j]),
     np.array([1.0], dtype=np.float16), np.array([object()]), np.array([1.0], dtype=">f8")],
    ids=["int64", "uint8", "bool", "complex", "float16", "object", "big-endian"],
)
def test_unsupported_dtypes_raise_type_error(bad: np.ndarray) -> None:
    for call in (lambda: relu(bad), lambda: relu_(bad), lambda: relu_backward(bad, bad)):
        with pytest.raises(TypeError, match="float32 and float64"):
            call()


@pytest.mark.parametrize("bad", [None, "abc", {"a": 1}, object(), [[1.0, 2.0], [3.0]], ["a", "b"], [True]])
def test_non_array_like_raises_type_error(bad: object) -> None:
    with pytest.raises(TypeError, match="relu: x"):
        relu(bad)


def test_in_place_needs_a_writeable_array() -> None:
    with pytest.raises(TypeError, match="writeable numpy.ndarray or CPU torch tensor"):
        relu_([1.0, -1.0])
    ro = np.zeros(4)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        relu_(ro)
    with pytest.raises(ValueError, match="read-only"):
        relu_(np.broadcast_to(np.zeros(1), (4,)))


@pytest.mark.parametrize(
    ("out", "message"),
    [(np.zeros(4), "shape"), (np.zeros((3, 1)), "shape"), (np.zeros(3, np.float32), "dtype"),
     (np.zeros(3, np.int64), "dtype"), (np.zeros(3, ">f8"), "dtype")],
)
def test_bad_out_raises_value_error(out: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        relu(np.zeros(3), out=out)
    with pytest.raises(ValueError, match=message):
        relu_backward(np.zeros(3), np.zeros(3), out=out)


def test_read_only_out_raises_value_error() -> None:
    out = np.zeros(3)
    out.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        relu(np.zeros(3), out=out)


def test_backward_operands_must_match() -> None:
    with pytest.raises(ValueError, match="shape"):
        relu_backward(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match="dtype"):
        relu_backward(np.zeros(3, np.float32), np.zeros(3))


def test_non_cpu_tensor_says_call_cpu() -> None:
    t = torch.empty(3, device="meta")
    with pytest.raises(ValueError, match=r"\.cpu\(\)"):
        relu(t)
    with pytest.raises(ValueError, match=r"\.cpu\(\)"):
        relu_(t)


def test_tensor_errors() -> None:
    with pytest.raises(TypeError, match="float32 and float64"):
        relu(torch.arange(3))
    with pytest.raises(ValueError, match="requires grad"):
        relu(torch.zeros(3, requires_grad=True))
    with torch.no_grad():
        relu(torch.zeros(3, requires_grad=True))
    with pytest.raises(TypeError, match="to_dense"):
        relu(torch.zeros(3, 3).to_sparse())


def run_python(code: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-X", "faulthandler", "-c", textwrap.dedent(code)],
        capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})},
    )


@pytest.mark.timeout(180)
def test_crash_prone_inputs_in_subprocess() -> None:
    """Hostile layouts and values must raise or compute, never crash; run out of process."""
    code = """
    import numpy as np, relu_module as rm
    from numpy.lib.stride_tricks import as_strided
    cases = {
        "zero-stride": lambda: rm.relu(np.broadcast_to(np.array([-1.0, 2.0]), (1000, 2))),
        "zero-stride-out": lambda: rm.relu(np.ones(4), out=np.broadcast_to(np.zeros(1), (4,))),
        "32-dims": lambda: rm.relu(np.full((1,) * 31 + (3,), -1.0)),
        "negative-strides": lambda: rm.relu_(np.arange(-50.0, 50.0).reshape(10, 10)[::-1, ::-3]),
        "huge-stride": lambda: rm.relu(as_strided(np.zeros(2), shape=(2,), strides=(8,))),
        "unaligned-f32": lambda: rm.relu(np.frombuffer(bytearray(4 * 999 + 3), np.float32, 999, 3)),
        "non-native": lambda: rm.relu(np.zeros(3, ">f4")),
        "masked": lambda: rm.relu(np.ma.masked_array([-1.0, 2.0], mask=[True, False])),
        "memoryview": lambda: rm.relu(memoryview(np.array([-1.0, 1.0]))),
        "bytearray": lambda: rm.relu(bytearray(b"abc")),
        "out-is-x-transposed": lambda: rm.relu((lambda a: (a, a.T))(np.ones((3, 3)))[0], out=np.ones((3, 3)).T),
        "grad-out-overlap": lambda: (lambda a: rm.relu_backward(a[:-1], a[1:], out=a[:-1]))(np.arange(-5.0, 5.0)),
        "bytes": lambda: rm.relu(b"abc"),
        "big-int-list": lambda: rm.relu([10**400]),
        "nested-object": lambda: rm.relu(np.array([[1.0], None], dtype=object)),
        "raw-ext-list": lambda: rm._ext.relu([1.0]),
        "raw-ext-out-list": lambda: rm._ext.relu(np.zeros(2), [0.0, 0.0]),
    }
    for name, call in cases.items():
        try:
            call()
            print(name, "ok")
        except (TypeError, ValueError) as err:
            print(name, type(err).__name__, str(err)[:60])
    print("DONE")
    """
    proc = run_python(code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("DONE"), proc.stdout + proc.stderr
    lines = dict(line.split(" ", 1) for line in proc.stdout.splitlines()[:-1])
    assert lines["non-native"].startswith("TypeError")
    assert lines["bytes"].startswith("TypeError") and lines["bytearray"].startswith("TypeError")
    assert lines["memoryview"] == "ok"
    assert lines["raw-ext-list"].startswith("TypeError")
    assert lines["zero-stride"] == "ok" and lines["32-dims"] == "ok"


@pytest.mark.timeout(120)
def test_env_var_sets_threads_and_fork_is_safe() -> None:
    """RELU_MODULE_NUM_THREADS is honoured; a forked child (DataLoader workers) rebuilds the pool."""
    code = """
    import os, numpy as np, relu_module as rm
    print(rm.get_num_threads())
    x = np.random.default_rng(0).standard_normal(2_000_000)
    rm.relu(x)  # starts the pool in the parent
    pid = os.fork()
    if pid == 0:
        ok = np.array_equal(rm.relu(x), np.maximum(x, 0))
        os._exit(0 if ok else 3)
    _, status = os.waitpid(pid, 0)
    print(os.waitstatus_to_exitcode(status))
    """
    proc = run_python(code, env={"RELU_MODULE_NUM_THREADS": "3"}, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["3", "0"]


def test_bad_env_var_is_reported() -> None:
    proc = run_python("import relu_module; print(relu_module.get_num_threads() >= 1)",
                      env={"RELU_MODULE_NUM_THREADS": "lots"}, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == "True"
    assert "RELU_MODULE_NUM_THREADS='lots' is not an integer" in proc.stderr


# ---- packaging ------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_build_sdist_and_wheel_then_install_in_fresh_venv(tmp_path: Path) -> None:
    """`python -m build` makes an sdist and, from it, a wheel that installs and imports offline.

    The temp venv gets only the wheel (no network: --no-index --no-deps); numpy and torch come
    from this venv through a .pth line placed after the temp venv's own site-packages, so the
    relu_module imported there is the freshly built one.
    """
    import sysconfig
    import tarfile

    src = Path(__file__).resolve().parents[1] / "relu_module"
    dist = tmp_path / "dist"
    build = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist), str(src)],
        capture_output=True, text=True, timeout=540,
    )
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    (sdist,) = dist.glob("relu_module-*.tar.gz")
    (wheel,) = dist.glob("relu_module-*.whl")
    with tarfile.open(sdist) as tar:
        names = tar.getnames()
    for needed in ("src/bindings.cpp", "src/relu_kernel.cpp", "src/relu_kernel.hpp", "src/thread_pool.hpp",
                   "src/relu_module/_ext.pyi", "src/relu_module/__init__.pyi", "src/relu_module/py.typed", "setup.py", "pyproject.toml"):
        assert any(n.endswith(needed) for n in names), needed

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-index", "--no-deps", str(wheel)], check=True, timeout=120)
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    (Path(site) / "zz_host_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    check = subprocess.run(
        [str(py), "-c", textwrap.dedent(f"""
            import numpy as np, relu_module, relu_module.torch, torch
            assert relu_module.__file__.startswith({str(venv)!r}), relu_module.__file__
            assert relu_module.relu(np.array([-1.0, -0.0, 2.0])).tolist() == [0.0, -0.0, 2.0]
            print(relu_module.__version__, relu_module.simd_level())
        """)],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )
    assert check.returncode == 0, check.stderr
    assert check.stdout.split()[0] == relu_module.__version__

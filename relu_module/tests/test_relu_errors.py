"""Bad input raises a clear TypeError/ValueError (or torch's RuntimeError), never crashes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from relu_testing import run_python

from relu_module import relu, relu_, relu_backward


@pytest.mark.parametrize(
    "bad",
    [
        np.arange(3),
        np.arange(3, dtype=np.uint8),
        np.array([True]),
        np.array([1 + 2j]),
        np.array([1.0], dtype=np.float16),
        np.array([object()]),
        np.array([1.0], dtype=">f8"),
    ],
    ids=["int64", "uint8", "bool", "complex", "float16", "object", "big-endian"],
)
def test_unsupported_dtypes_raise_type_error(bad: np.ndarray) -> None:
    for call in (lambda: relu(bad), lambda: relu_(bad), lambda: relu_backward(bad, bad)):
        with pytest.raises(TypeError, match="float32 and float64"):
            call()


@pytest.mark.parametrize(
    "bad", [None, "abc", {"a": 1}, object(), [[1.0, 2.0], [3.0]], ["a", "b"], [True]]
)
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
    [
        (np.zeros(4), "shape"),
        (np.zeros((3, 1)), "shape"),
        (np.zeros(3, np.float32), "dtype"),
        (np.zeros(3, np.int64), "dtype"),
        (np.zeros(3, ">f8"), "dtype"),
    ],
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


def test_tensors_behave_as_torch_relu() -> None:
    """Tensors go to the torch operator: what torch.relu accepts works (meta, integer and
    requires_grad tensors), and what it refuses raises torch's error."""
    meta = torch.empty(3, device="meta")
    assert relu(meta).device == meta.device and relu_(meta) is meta
    assert relu(torch.arange(-2, 2)).tolist() == [0, 0, 0, 1]
    y = relu(torch.tensor([-1.0, 2.0], requires_grad=True))
    assert y.requires_grad and y.grad_fn is not None
    with pytest.raises(RuntimeError, match="dtype"):
        relu(torch.zeros(3), out=torch.zeros(3, dtype=torch.float64))


def test_tensors_mixed_with_arrays_raise_type_error() -> None:
    with pytest.raises(TypeError, match="pass tensors throughout"):
        relu(torch.zeros(3), out=np.zeros(3))
    with pytest.raises(TypeError, match="pass tensors throughout"):
        relu(np.zeros(3), out=torch.zeros(3))
    with pytest.raises(TypeError, match="pass tensors throughout"):
        relu_backward(torch.zeros(3), np.zeros(3))
    with pytest.raises(TypeError, match="not array-like"):  # the list of a tensor
        relu([torch.ones(2, requires_grad=True)])


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
        "out-is-x-transposed": lambda: rm.relu(np.ones((3, 3)), out=np.ones((3, 3)).T),
        "grad-out-overlap": lambda: (lambda a: rm.relu_backward(a[:-1], a[1:], out=a[:-1]))(
            np.arange(-5.0, 5.0)
        ),
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


def test_writeable_zero_stride_out_is_refused() -> None:
    """A zero-stride output written by several threads would depend on timing: refuse it."""
    from numpy.lib.stride_tricks import as_strided

    shared = as_strided(np.zeros(1), shape=(1000,), strides=(0,))  # writeable, as the case
    overlapping = as_strided(np.zeros(10), shape=(5, 4), strides=(8, 8))
    for out in (shared, overlapping):
        for call in (
            lambda o=out: relu(np.ones(o.shape), out=o),
            lambda o=out: relu_(o),
            lambda o=out: relu_backward(np.ones(o.shape), np.ones(o.shape), out=o),
        ):
            with pytest.raises(ValueError, match="more than one element of the written-to array"):
                call()
    assert not shared.any()

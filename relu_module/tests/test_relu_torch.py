"""relu_module with torch tensors and relu_module.torch: autograd, forward AD, torch.func,
in-place rules, inference mode, tracers and compilers, memory formats; each against torch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from relu_testing import bits

from relu_module import relu, relu_, relu_backward

# torch.jit is deprecated in torch 2.13, but tested here on purpose, and torch's own forward-AD
# decompositions still call torch.jit.script on first use.
pytestmark = pytest.mark.filterwarnings("ignore:`torch\\.jit\\.:DeprecationWarning")


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
    from relu_module.torch import ReLU

    x = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    x.data[x.data.abs() < 1e-3] = 0.5  # keep finite differences away from the kink
    assert torch.autograd.gradcheck(ReLU(), (x,))
    y = ReLU()(x)
    assert y.grad_fn is not None and y.grad_fn.name() == "_ReluBackward"
    torch.testing.assert_close(y, torch.relu(x), rtol=0, atol=0)
    with torch.no_grad():  # nothing to record: the compiled kernel alone, the same bits
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
    assert torch.autograd.gradcheck(
        lambda t: ReLU(inplace=True)(t.clone()), (x.clone().requires_grad_(),)
    )
    leaf = torch.randn(3, requires_grad=True)
    with pytest.raises(RuntimeError, match="leaf Variable"):
        ReLU(inplace=True)(leaf)  # same error as torch.relu_ on a leaf
    assert repr(ReLU(inplace=True)) == "ReLU(inplace=True)"


def test_other_dtypes_are_computed_by_torch() -> None:
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
    model = torch.nn.Sequential(
        torch.nn.Linear(8, 16), ReLU(inplace), torch.nn.Linear(16, 4)
    ).eval()
    x = torch.randn(5, 8)
    path = tmp_path / "m.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # exporter deprecation/progress chatter
        torch.onnx.export(
            model,
            (x,),
            str(path),
            dynamo=dynamo,
            input_names=["x"],
            output_names=["y"],
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


# ---- autograd version counters (issue 10, item 1) ---------------------------------------------


def _saved_then_rectified(write: str) -> torch.Tensor:
    """w.grad after rectifying `t` (saved by `w * t`) through relu_module, then backward."""
    w = torch.ones(3, requires_grad=True)
    t = torch.tensor([-2.0, 3.0, -4.0])
    y = (w * t).sum()
    if write == "relu_":
        relu_(t)
    elif write == "out=":
        relu(torch.tensor([1.0, 1.0, 1.0]), out=t)
    else:
        relu_backward(torch.ones(3), torch.ones(3), out=t)
    y.backward()
    return w.grad


@pytest.mark.parametrize("write", ["relu_", "out=", "relu_backward out="])
def test_writes_into_a_saved_tensor_raise_at_backward_like_torch(write: str) -> None:
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        _saved_then_rectified(write)


def test_every_tensor_write_bumps_the_version_once() -> None:
    leaf = torch.ones(3, requires_grad=True)
    with torch.no_grad():
        relu_(leaf)
    assert leaf._version == 1  # torch.relu_ under no_grad bumps it too
    t = torch.zeros(3)
    relu(torch.ones(3), out=t)
    relu_backward(torch.ones(3), torch.ones(3), out=t)
    assert t._version == 2
    ref = torch.zeros(3)
    torch.relu_(ref)
    assert ref._version == 1


# ---- forward AD and torch.func (item 2) -------------------------------------------------------


def _special_tensor(dtype: torch.dtype = torch.float64) -> torch.Tensor:
    from relu_testing import special_values

    np_dtype = np.float64 if dtype == torch.float64 else np.float32
    rng = np.random.default_rng(7)
    x = np.concatenate([special_values(np_dtype), rng.standard_normal(40).astype(np_dtype)])
    return torch.from_numpy(x)


@pytest.mark.parametrize("inplace", [False, True], ids=["relu", "relu-inplace"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_forward_ad_tangent_matches_torch_bitwise(inplace: bool, dtype: torch.dtype) -> None:
    import torch.autograd.forward_ad as fwad

    from relu_module.torch import ReLU

    x = _special_tensor(dtype)
    tangent = torch.randn(x.shape, dtype=dtype)
    results = []
    for act in (ReLU(inplace=inplace), torch.nn.ReLU(inplace=inplace)):
        with fwad.dual_level():
            dual = fwad.make_dual(x.clone(), tangent.clone())
            primal, tan = fwad.unpack_dual(act(dual))
            assert tan is not None, "the tangent must not be dropped"
            results.append((bits(primal.numpy()), bits(tan.numpy())))
    for ours, theirs in zip(results[0], results[1], strict=True):
        np.testing.assert_array_equal(ours, theirs)


def test_torch_func_jvp_grad_vmap_hessian_match_torch() -> None:
    from relu_module.torch import relu as krelu

    x = torch.randn(4, 6, dtype=torch.float64)
    t = torch.randn(4, 6, dtype=torch.float64)

    def loss(f):
        return lambda v: f(v).pow(2).sum()

    pairs = [
        (torch.func.jvp(krelu, (x,), (t,)), torch.func.jvp(torch.relu, (x,), (t,))),
        (torch.func.grad(loss(krelu))(x), torch.func.grad(loss(torch.relu))(x)),
        (torch.func.vmap(krelu)(x), torch.func.vmap(torch.relu)(x)),
        (
            torch.func.vmap(torch.func.grad(loss(krelu)))(x),
            torch.func.vmap(torch.func.grad(loss(torch.relu)))(x),
        ),
        (torch.func.hessian(loss(krelu))(x[0]), torch.func.hessian(loss(torch.relu))(x[0])),
        (torch.func.jacfwd(krelu)(x[0]), torch.func.jacfwd(torch.relu)(x[0])),
    ]
    for ours, theirs in pairs:
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


def test_double_backward() -> None:
    from relu_module.torch import ReLU

    x = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    x.data[x.data.abs() < 1e-3] = 0.5
    assert torch.autograd.gradgradcheck(ReLU(), (x,))


# ---- in-place rules (items 3 and 6) -----------------------------------------------------------


def _leaf() -> torch.Tensor:
    return torch.tensor([-1.0, 2.0, -3.0, 4.0], requires_grad=True)


INPLACE_CASES = {
    "leaf": lambda: (_leaf(),) * 2,
    "view-of-leaf": lambda: (lambda a: (a, a[1:]))(_leaf()),
    "chunk-output": lambda: (lambda a: (a, a.chunk(2)[0]))(_leaf() * 1),
}


@pytest.mark.parametrize("case", INPLACE_CASES)
def test_inplace_relu_rejected_before_writing_like_torch(case: str) -> None:
    """torch raises first and leaves the data alone; so must ReLU(inplace=True)."""
    from relu_module.torch import ReLU

    errors = []
    for act in (ReLU(inplace=True), torch.nn.ReLU(inplace=True)):
        owner, target = INPLACE_CASES[case]()
        before = owner.detach().clone()
        with pytest.raises(RuntimeError) as err:
            act(target)
        torch.testing.assert_close(owner.detach(), before, rtol=0, atol=0)
        errors.append(str(err.value))
    key = {"leaf": "leaf Variable", "view-of-leaf": "view of a leaf", "chunk-output": "is a view"}
    assert key[case] in errors[0] and key[case] in errors[1]


def test_inference_tensor_written_outside_inference_mode_raises_like_torch() -> None:
    """torch.relu_ writes an inference tensor, then raises as it bumps the version: the same."""
    from relu_module.torch import ReLU

    def inference(values: list[float]) -> torch.Tensor:
        with torch.inference_mode():
            return torch.tensor(values)

    calls = {
        "relu_": lambda t: relu_(t),
        "out=": lambda t: relu(torch.tensor([-1.0, 2.0]), out=t),
        "relu_backward out=": lambda t: relu_backward(torch.ones(2), torch.ones(2), out=t),
        "ReLU(inplace=True)": lambda t: ReLU(inplace=True)(t),
        "torch.relu_ (the oracle)": lambda t: torch.relu_(t),
    }
    after = {}
    for name, call in calls.items():
        t = inference([-1.0, 2.0])
        with pytest.raises(RuntimeError, match="Inplace update to inference tensor"):
            call(t)
        after[name] = t.tolist()
    assert after["relu_"] == after["ReLU(inplace=True)"] == after["torch.relu_ (the oracle)"]
    t = inference([-1.0, 2.0])
    with torch.inference_mode():
        relu_(t)  # allowed inside, as torch allows it
    assert t.tolist() == [0.0, 2.0]


def test_expanded_out_is_refused_like_torch() -> None:
    for call in (
        lambda: relu(torch.ones(3), out=torch.zeros(1).expand(3)),
        lambda: relu_(torch.zeros(1).expand(3)),
        lambda: relu_backward(torch.ones(3), torch.ones(3), out=torch.zeros(1).expand(3)),
    ):
        with pytest.raises(RuntimeError, match="more than one element of the written-to tensor"):
            call()
    with pytest.raises(RuntimeError, match="more than one element of the written-to tensor"):
        torch.relu_(torch.zeros(1).expand(3))


# ---- tracers, compilers, memory formats (items 10 and 11) -------------------------------------


def _model(inplace: bool) -> torch.nn.Module:
    from relu_module.torch import ReLU

    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), ReLU(inplace), torch.nn.Linear(16, 4))


@pytest.mark.parametrize("inplace", [False, True], ids=["relu", "relu-inplace"])
def test_jit_script_and_trace_then_save_and_load(inplace: bool, tmp_path: Path) -> None:
    """Scripted and traced graphs hold relu_module::relu(_); saved, they load where the
    library is loaded (import relu_module.torch) and compute the same bits."""
    model, x = _model(inplace).eval(), torch.randn(5, 8)
    with torch.no_grad():
        ref = model(x)
        for kind, compiled in (
            ("script", torch.jit.script(model)),
            ("trace", torch.jit.trace(model, (x,))),
        ):
            path = tmp_path / f"{kind}.pt"
            torch.jit.save(compiled, str(path))
            loaded = torch.jit.load(str(path))
            torch.testing.assert_close(loaded(x), ref, rtol=0, atol=0)
            assert any(n.startswith("relu_module::relu") for n in torch.jit.export_opnames(loaded))


def test_jit_script_of_the_function() -> None:
    from relu_module.torch import relu as krelu

    scripted = torch.jit.script(krelu)
    x = torch.randn(7)
    torch.testing.assert_close(scripted(x), torch.relu(x), rtol=0, atol=0)
    y = x.clone()
    assert scripted(y, True) is y and torch.equal(y, torch.relu(x))


@pytest.mark.parametrize("inplace", [False, True], ids=["relu", "relu-inplace"])
def test_fx_symbolic_trace_keeps_the_kernel_call(inplace: bool) -> None:
    model, x = _model(inplace), torch.randn(5, 8)
    gm = torch.fx.symbolic_trace(model)
    assert "torch.ops.relu_module.relu" in gm.code
    with torch.no_grad():
        torch.testing.assert_close(gm(x), model(x), rtol=0, atol=0)


def test_torch_compile_and_export() -> None:
    model, x = _model(False), torch.randn(5, 8, requires_grad=True)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(x), model(x), rtol=0, atol=0)
    compiled(x).sum().backward()
    exported = torch.export.export(model.eval(), (x.detach(),))
    targets = {str(n.target) for n in exported.graph.nodes if n.op == "call_function"}
    assert "relu_module.relu.default" in targets, targets
    torch.testing.assert_close(exported.module()(x.detach()), model(x.detach()), rtol=0, atol=0)


def test_channels_last_and_other_dense_layouts_are_kept() -> None:
    from relu_module.torch import ReLU
    from relu_module.torch import relu as krelu

    x = torch.randn(2, 3, 4, 5).to(memory_format=torch.channels_last)
    ref = torch.relu(x)
    outs = {
        "relu_module.relu": relu(x),
        "ReLU()": ReLU()(x),
        "autograd": krelu(x.clone().requires_grad_()),
        "permuted": relu(x.permute(3, 1, 0, 2)),
    }
    for name, y in outs.items():
        expect = ref if name != "permuted" else torch.relu(x.permute(3, 1, 0, 2))
        assert y.stride() == expect.stride(), name
        torch.testing.assert_close(y, expect, rtol=0, atol=0)
    assert relu(x).is_contiguous(memory_format=torch.channels_last)
    a = np.arange(-12.0, 12.0).reshape(2, 3, 4).transpose(2, 0, 1)  # numpy: as order="K"
    assert relu(a).strides == np.maximum(a, 0).strides
    gappy = np.arange(-24.0, 24.0).reshape(4, 12)[:, ::2]  # not dense: C order, as torch
    assert relu(gappy).flags.c_contiguous

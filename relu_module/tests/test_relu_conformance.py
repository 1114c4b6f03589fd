"""Conformance of the relu_module torch operators with torch's own ReLU, modelled on torch's
OpInfo tests and ``torch.library.opcheck``.

Every entry of CASES runs one transform or mode twice: once with ``relu_module.torch`` and once
with torch (``torch.relu``/``torch.relu_``/``nn.ReLU``/``clamp_min(out=)``), the oracle. The two
outcomes must agree: same values bit for bit, same grads, same error (type and message) or none,
same sizes and strides, same output class. docs/relu_module.md's semantics table is generated
from CASES (``python relu_module/tests/test_relu_conformance.py`` prints it) and checked here.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torch.utils import _pytree as pytree

import relu_module.torch as rt
from relu_module.torch import relu as imported_relu  # the README's import style

DOCS = Path(__file__).resolve().parents[2] / "docs" / "relu_module.md"
TABLE_BEGIN, TABLE_END = "<!-- conformance:begin -->", "<!-- conformance:end -->"


@dataclass(frozen=True)
class Impl:
    """One ReLU implementation under test: the functional form, the module, the out= form."""

    name: str
    relu: Callable[..., Tensor]
    module: type[nn.Module]
    relu_out: Callable[[Tensor, Tensor], Any]


TORCH = Impl(
    "torch",
    lambda x, inplace=False: torch.relu_(x) if inplace else torch.relu(x),
    nn.ReLU,
    lambda x, out: torch.clamp_min(x, 0, out=out),
)
OURS = Impl("relu_module", rt.relu, rt.ReLU, lambda x, out: rt.ops.relu(x, out=out))


@dataclass(frozen=True)
class Case:
    name: str  # the row of the docs table
    checks: str  # what the outcome holds, for the docs table
    run: Callable[[Impl], Any]


def _x(*shape: int, dtype: torch.dtype = torch.float32, seed: int = 0) -> Tensor:
    """Values with both signs, -0.0, +0.0 and a NaN: where ReLU implementations differ."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g, dtype=dtype)
    flat = x.view(-1)
    flat[: min(3, flat.numel())] = torch.tensor([-0.0, 0.0, float("nan")], dtype=dtype)[
        : min(3, flat.numel())
    ]
    return x


def _smooth(*shape: int) -> Tensor:
    """float64 values away from the kink, for finite-difference checks."""
    x = _x(*shape, dtype=torch.float64, seed=1).nan_to_num(0.5)
    return torch.where(x.abs() < 1e-2, torch.full_like(x, 0.5), x)


def _grad_of(impl: Impl, fn: Callable[[Tensor], Tensor], x: Tensor) -> tuple[Tensor, Tensor]:
    leaf = x.clone().requires_grad_()
    y = fn(leaf)
    y.backward(torch.linspace(-1, 2, y.numel(), dtype=y.dtype).view_as(y))
    return y.detach(), leaf.grad


# ---- the cases -------------------------------------------------------------------------------


def _linearize(impl: Impl) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch's const_fold chatter
        _, jvp_fn = torch.func.linearize(impl.relu, torch.tensor([-1.0, 2.0, 3.0]))
    return jvp_fn(torch.ones(3)), jvp_fn(torch.tensor([4.0, -5.0, 6.0]))


def _make_fx(mode: str, inplace: bool) -> Callable[[Impl], Any]:
    def run(impl: Impl) -> Any:
        from torch.fx.experimental.proxy_tensor import make_fx

        gm = make_fx(impl.module(inplace), tracing_mode=mode)(torch.tensor([-1.0, 2.0, 3.0]))
        return gm(torch.tensor([5.0, -5.0, 0.5])), gm(_x(3))  # the graph, not a constant

    return run


def _aot_function(impl: Impl) -> Any:
    from functorch.compile import aot_function, nop

    return _grad_of(impl, aot_function(impl.relu, fw_compiler=nop, bw_compiler=nop), _x(4, 3))


def _mutation_on_saved(impl: Impl) -> Any:
    """The issue's item 3: relu_(b) after b was saved, inside allow_mutation_on_saved_tensors."""
    a = torch.tensor([-1.0, 2.0, -3.0, 4.0], requires_grad=True)
    b = torch.tensor([-1.0, 2.0, -3.0, 4.0])
    with torch.autograd.graph.allow_mutation_on_saved_tensors():
        y = (a * b).sum()
        with torch.no_grad():
            impl.relu(b, True)
        y.backward()
    return a.grad, b


def _fake_tensor(impl: Impl) -> Any:
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode() as mode:
        fake = mode.from_tensor(_x(2, 3, 4).permute(2, 0, 1))
        y = impl.relu(fake)
        z = impl.relu(fake.clone(), True)
        return y.shape, y.stride(), y.dtype, type(y).__name__, z.stride()


def _functionalize(inplace: bool) -> Callable[[Impl], Any]:
    def run(impl: Impl) -> Any:
        from torch.fx.experimental.proxy_tensor import make_fx

        def f(t: Tensor) -> Tensor:
            return impl.relu(t.clone(), True) * 2 if inplace else impl.relu(t) * 2

        x = _x(5)
        gm = make_fx(torch.func.functionalize(f))(x)
        calls = [n.target for n in gm.graph.nodes if n.op == "call_function"]
        mutating = [op for op in calls if op._schema.is_mutable]
        return torch.func.functionalize(f)(x), gm(_x(5, seed=3)), len(mutating)

    return run


def _two_tensor(impl: Impl) -> Any:
    from torch.testing._internal.two_tensor import TwoTensor

    t = TwoTensor(torch.tensor([-1.0, 2.0]), torch.tensor([3.0, -4.0]))
    y = impl.relu(t)
    impl.relu(t, True)
    return type(y).__name__, y.a, y.b, type(t).__name__, t.a, t.b


class _Sub(Tensor):
    pass


def _as_subclass(impl: Impl) -> Any:
    x = _x(4).as_subclass(_Sub)
    y, z = impl.relu(x), impl.relu(x.clone(), True)
    return type(y).__name__, type(z).__name__, y.as_subclass(Tensor), z.as_subclass(Tensor)


def _nested(layout: torch.layout) -> Callable[[Impl], Any]:
    def run(impl: Impl) -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # nested tensors are a prototype
            nt = torch.nested.nested_tensor([_x(2), _x(3, seed=1)], layout=layout)
            y = impl.relu(nt)
            impl.relu(nt, True)
        return y.layout, y.is_nested, y.unbind(), nt.unbind()

    return run


def _grads_batched(impl: Impl) -> Any:
    x = _x(3).nan_to_num(1.0).requires_grad_()
    (g,) = torch.autograd.grad(impl.relu(x), x, torch.eye(3), is_grads_batched=True)
    return g


def _jacobian_vectorized(impl: Impl) -> Any:
    return torch.autograd.functional.jacobian(impl.relu, _smooth(4), vectorize=True)


def _gradcheck_batched(impl: Impl) -> Any:
    x = _smooth(3, 2).requires_grad_()
    kw = {"check_batched_grad": True, "check_forward_ad": True, "check_batched_forward_grad": True}
    return torch.autograd.gradcheck(impl.relu, (x,), **kw), torch.autograd.gradgradcheck(
        impl.relu, (x,), check_batched_grad=True
    )


def _neg_bit(impl: Impl) -> Any:
    n = torch.tensor([1 - 2j, -3 + 4j, 5 + 0j]).conj().imag  # a float view with the neg bit
    return n.is_neg(), impl.relu(n)


class _ImportedRelu(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return imported_relu(x) + 1


class _TorchRelu(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(x) + 1


def _symbolic_trace(impl: Impl) -> Any:
    gm = torch.fx.symbolic_trace(_ImportedRelu() if impl is OURS else _TorchRelu())
    calls = [n for n in gm.graph.nodes if n.op == "call_function"]
    return len(calls), gm(_x(4))  # one op node plus the add, and the kernel runs when called


def _compile(impl: Impl) -> Any:
    torch._dynamo.reset()
    fn = torch.compile(impl.module(), backend="aot_eager", fullgraph=True)
    apply = rt.ReLUFunction.apply if impl is OURS else torch.relu
    fn_apply = torch.compile(apply, backend="aot_eager", fullgraph=True)
    return _grad_of(impl, fn, _x(4, 3)), fn_apply(_x(5))


def _export(impl: Impl) -> Any:
    model = nn.Sequential(nn.Linear(3, 4), impl.module(), nn.Linear(4, 2), impl.module(True))
    torch.manual_seed(0)
    for p in model.parameters():
        nn.init.normal_(p)
    ep = torch.export.export(model, (_x(2, 3).nan_to_num(),))
    return ep.module()(_x(5, 3, seed=4).nan_to_num())


def _resize_output(impl: Impl) -> Any:
    y = impl.relu(_x(4))
    y.resize_(10)
    return y.shape, y[:4]


def _refused_inplace_expanded(impl: Impl) -> Any:
    a = torch.ones(1, requires_grad=True)
    e = (a * 2).expand(3)
    version, grad_fn = e._version, e.grad_fn
    with pytest.raises(RuntimeError) as err:
        impl.relu(e, True)
    e.sum().backward()  # the graph is intact
    return str(err.value), e._version - version, e.grad_fn is grad_fn, a.grad


def _refused_inplace(setup: str) -> Callable[[Impl], Any]:
    def run(impl: Impl) -> Any:
        leaf = torch.tensor([-1.0, 2.0, -3.0, 4.0], requires_grad=True)
        if setup == "leaf":
            owner, target = leaf, leaf
        elif setup == "view of a leaf":
            owner, target = leaf, leaf[1:]
        elif setup == "chunk() output":
            owner = leaf * 1
            target = owner.chunk(2)[0]
        else:  # a view made in no_grad of a tensor that requires grad, written with grad on
            owner = leaf * 1
            with torch.no_grad():
                target = owner[1:]
        before = owner.detach().clone()
        with pytest.raises(RuntimeError) as err:
            impl.relu(target, True)
        return str(err.value), torch.equal(owner.detach(), before)

    return run


def _list_input(impl: Impl) -> Any:
    with pytest.raises(TypeError) as err:
        impl.relu([torch.ones(2, requires_grad=True)])
    return str(err.value)


LAYOUT_SHAPES = [(2, 1, 3, 4), (1, 1, 3, 2), (2, 3, 1, 1), (1, 2, 1, 3), (3, 1, 1, 2)]


def _layouts() -> list[Tensor]:
    """Every permutation of shapes with size-1 dimensions, dense and sliced: 240 layouts."""
    out = []
    for shape in LAYOUT_SHAPES:
        base = _x(*shape)
        for perm in itertools.permutations(range(4)):
            t = base.permute(perm)
            out += [t, t[..., ::2] if t.shape[-1] > 1 else t.transpose(0, 1)]
    return out


def _strides(impl: Impl) -> Any:
    rows = []
    for t in _layouts():
        y = impl.relu(t)
        rows.append((y.stride(), torch._prims_common.suggest_memory_format(y), y))
    return rows


def _out_variant(impl: Impl) -> Any:
    out = torch.empty(2, 6).t()  # a transposed out keeps its strides
    version = out._version
    impl.relu_out(_x(6, 2), out)
    small = torch.empty(0)
    impl.relu_out(_x(3), small)  # resized, as out= tensors are
    with pytest.raises(RuntimeError) as err:
        impl.relu_out(_x(3), torch.empty(3, dtype=torch.float64))
    return out, out.stride(), out._version - version, small, "dtype" in str(err.value)


def _saved_then_written(impl: Impl) -> Any:
    w = torch.ones(3, requires_grad=True)
    t = torch.tensor([-2.0, 3.0, -4.0])
    y = (w * t).sum()
    impl.relu(t, True)
    with pytest.raises(RuntimeError) as err:
        y.backward()
    return "modified by an inplace operation" in str(err.value)


def _inference_mode(impl: Impl) -> Any:
    with torch.inference_mode():
        x = _x(4)
        y = impl.relu(x)
        impl.relu(x, True)
    return y.is_inference(), y, x


def _torch_func(impl: Impl) -> Any:
    x, t = _smooth(3, 4), _x(3, 4, dtype=torch.float64, seed=2).nan_to_num()

    def loss(v: Tensor) -> Tensor:
        return impl.relu(v).pow(2).sum()

    fn = torch.func
    inplace = fn.jvp(lambda v: impl.relu(v.clone(), True), (x,), (t,))
    return (
        fn.jvp(impl.relu, (x,), (t,)),
        fn.grad(loss)(x),
        fn.vmap(impl.relu, in_dims=1)(x),
        fn.vmap(fn.grad(loss))(x),
        fn.hessian(loss)(x[0]),
        fn.jacfwd(fn.jacrev(impl.relu))(x[0]),
        inplace,
        fn.grad(lambda v: impl.relu(v.clone(), True).sum())(x),
    )


def _forward_ad(impl: Impl) -> Any:
    import torch.autograd.forward_ad as fwad

    with fwad.dual_level():
        dual = fwad.make_dual(_x(6), _x(6, seed=5))
        out = fwad.unpack_dual(impl.relu(dual))
        inplace = fwad.unpack_dual(impl.relu(dual.clone(), True))
        return out.primal, out.tangent, inplace.primal, inplace.tangent


def _jit(impl: Impl) -> Any:
    model = nn.Sequential(nn.Linear(3, 4), impl.module(), nn.Linear(4, 4), impl.module(True))
    torch.manual_seed(0)
    for p in model.parameters():
        nn.init.normal_(p)
    x = _x(5, 3).nan_to_num()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated
        return torch.jit.script(model)(x), torch.jit.trace(model, (x,))(x)


def _autograd(impl: Impl) -> Any:
    x = _x(4, 5, dtype=torch.float64)
    cl = _x(2, 3, 4, 5).to(memory_format=torch.channels_last)
    return (
        _grad_of(impl, impl.relu, x),
        _grad_of(impl, lambda v: impl.relu(v * 1, True), x),
        _grad_of(impl, impl.relu, cl),
        impl.relu(x.float().t()),
    )


CASES = [
    Case("autograd", "values, grads, in-place grads, channels_last", _autograd),
    Case("forward AD", "primal and tangent, out of place and in place", _forward_ad),
    Case("torch.func", "jvp, grad, vmap, vmap(grad), hessian, jacfwd(jacrev)", _torch_func),
    Case("torch.func.linearize", "the linearised function's values", _linearize),
    Case("make_fx", "the traced graph re-run on new inputs", _make_fx("real", False)),
    Case("make_fx in place", "ReLU(inplace=True) traced and re-run", _make_fx("real", True)),
    Case("make_fx fake", "tracing_mode='fake'", _make_fx("fake", False)),
    Case("make_fx symbolic", "tracing_mode='symbolic'", _make_fx("symbolic", True)),
    Case("aot_function", "values and grads through AOTAutograd", _aot_function),
    Case("allow_mutation_on_saved_tensors", "grads after relu_ of saved b", _mutation_on_saved),
    Case("FakeTensorMode", "sizes, strides, dtype, class", _fake_tensor),
    Case("functionalize", "values; graph without writes", _functionalize(False)),
    Case("functionalize in place", "values; the write becomes functional", _functionalize(True)),
    Case("TwoTensor subclass", "class and both components, in place too", _two_tensor),
    Case("as_subclass", "output class, in place too", _as_subclass),
    Case("nested tensor (strided)", "layout and components, in place too", _nested(torch.strided)),
    Case("nested tensor (jagged)", "layout and components, in place too", _nested(torch.jagged)),
    Case("is_grads_batched", "autograd.grad with batched grads", _grads_batched),
    Case("jacobian(vectorize=True)", "the Jacobian", _jacobian_vectorized),
    Case("gradcheck batched", "(grad)gradcheck, batched grads, forward AD", _gradcheck_batched),
    Case("neg bit", "z.conj().imag as input", _neg_bit),
    Case("fx.symbolic_trace", "`from relu_module.torch import relu`: one node", _symbolic_trace),
    Case("torch.compile(fullgraph)", "module and ReLUFunction.apply, grads", _compile),
    Case("torch.export", "the exported module re-run", _export),
    Case("torch.jit", "script and trace", _jit),
    Case("resize_ on the output", "the output's storage is torch's", _resize_output),
    Case("refused in place: expanded", "error; _version, grad_fn kept", _refused_inplace_expanded),
    Case("refused in place: leaf", "error; data untouched", _refused_inplace("leaf")),
    Case("refused in place: leaf view", "error; data kept", _refused_inplace("view of a leaf")),
    Case("refused in place: chunk()", "error; data untouched", _refused_inplace("chunk() output")),
    Case("refused in place: no_grad view", "error message", _refused_inplace("no_grad view")),
    Case("list input", "TypeError message", _list_input),
    Case("strides", "240 layouts with size-1 dims: strides, memory format", _strides),
    Case("out=", "values, kept strides, version bump, resize, dtype error", _out_variant),
    Case("write into a saved tensor", "backward raises", _saved_then_written),
    Case("inference mode", "values, is_inference, in place", _inference_mode),
]


# ---- comparing outcomes -----------------------------------------------------------------------


def _outcome(case: Case, impl: Impl) -> Any:
    try:
        return ("returned", case.run(impl))
    except Exception as err:  # the oracle's errors are part of the contract
        return ("raised", type(err).__name__, str(err).replace("relu_module::", "aten::"))


def _same(ours: Any, theirs: Any, where: str = "") -> None:
    if isinstance(theirs, Tensor):
        assert isinstance(ours, Tensor), f"{where}: {type(ours).__name__} is not a tensor"
        assert type(ours) is type(theirs), f"{where}: class {type(ours)} != {type(theirs)}"
        assert (ours.dtype, ours.shape, ours.layout) == (theirs.dtype, theirs.shape, theirs.layout)
        # Strides of every dense result; a derivative that is zero everywhere may come back as an
        # expanded (stride-0) zero from either side, a choice of the transform, not of ReLU.
        dense = [t.layout == torch.strided and not t.is_nested for t in (ours, theirs)]
        if all(dense) and 0 not in (*ours.stride(), *theirs.stride()):
            assert ours.stride() == theirs.stride(), f"{where}: strides differ"
        if type(ours) is Tensor:
            bits = {torch.float32: torch.int32, torch.float64: torch.int64}.get(ours.dtype)
            o, t = ours.detach(), theirs.detach()
            same = torch.equal(o.view(bits), t.view(bits)) if bits else torch.equal(o, t)
            assert same, f"{where}: values differ\n{ours}\n{theirs}"
        return
    o_leaves, o_spec = pytree.tree_flatten(ours)
    t_leaves, t_spec = pytree.tree_flatten(theirs)
    if not isinstance(theirs, (list, tuple, dict)):
        assert ours == theirs, f"{where}: {ours!r} != {theirs!r}"
        return
    assert o_spec == t_spec, f"{where}: structure {o_spec} != {t_spec}"
    for i, (o, t) in enumerate(zip(o_leaves, t_leaves, strict=True)):
        _same(o, t, f"{where}[{i}]")


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_conforms_to_torch(case: Case) -> None:
    theirs = _outcome(case, TORCH)
    ours = _outcome(case, OURS)
    assert ours[0] == theirs[0], f"torch {theirs}, relu_module {ours}"
    _same(ours, theirs, case.name)


# ---- opcheck ----------------------------------------------------------------------------------


def _samples() -> list[Tensor]:
    return [
        _x(7).nan_to_num(),
        _x(3, 4, dtype=torch.float64).nan_to_num().t(),
        _x(2, 3, 4, 5).nan_to_num().to(memory_format=torch.channels_last),
        torch.randn(()),
        torch.randn(0, 3),
    ]


OPCHECK = {
    "relu": lambda x: ((x.clone().requires_grad_(),), {}),
    "relu_": lambda x: ((x.clone(),), {}),
    "relu.out": lambda x: ((x,), {"out": torch.empty_like(x)}),
    "relu_backward": lambda x: ((x.clone().requires_grad_(), x.clone()), {}),
    "relu_backward.out": lambda x: ((torch.randn_like(x), x), {"out": torch.empty_like(x)}),
}


@pytest.mark.parametrize("name", OPCHECK)
def test_opcheck(name: str) -> None:
    packet, _, overload = name.partition(".")
    op = getattr(getattr(rt.ops, packet), overload or "default")
    for x in _samples():
        args, kwargs = OPCHECK[name](x)
        results = torch.library.opcheck(op, args, kwargs)
        assert set(results.values()) == {"SUCCESS"}, (name, x.shape, results)


# ---- the docs table ---------------------------------------------------------------------------


def semantics_table() -> str:
    rows = ["| transform or mode | the same as torch |", "|---|---|"]
    rows += [f"| {c.name} | {c.checks} |" for c in CASES]
    return "\n".join(rows)


def test_docs_semantics_table_is_the_suite() -> None:
    if not DOCS.exists():
        pytest.skip(f"{DOCS} is not here (the wheel's tests run without the repository's docs)")
    text = DOCS.read_text()
    table = text.split(TABLE_BEGIN)[1].split(TABLE_END)[0].strip()
    assert table == semantics_table(), (
        "docs/relu_module.md's table differs from CASES: paste the output of "
        "`python relu_module/tests/test_relu_conformance.py` between its conformance markers"
    )


if __name__ == "__main__":
    print(semantics_table())

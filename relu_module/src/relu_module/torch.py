"""relu_module's kernels as torch operators, and ``ReLU``, a drop-in for ``nn.ReLU``.

As pytorch/extension-cpp does (``extension_cpp/ops.py``): the compiled ``_torch_ops`` library
defines the operators with their schemas and registers the CPU kernels (on the tensors' data
pointers) and the version-counter bumps of what they write; this module registers the rest with
``torch.library``: fake kernels, autograd (backward and forward mode), vmap rules, and the
decompositions exporters use. Every transform and mode of torch then sees a real operator:

=========================================  =============================================
``torch.ops.relu_module.relu(x)``          ``torch.relu(x)``
``torch.ops.relu_module.relu_(x)``         ``torch.relu_(x)``
``torch.ops.relu_module.relu.out(x, out)`` ``torch.clamp_min(x, 0, out=out)``
``torch.ops.relu_module.relu_backward``    ``threshold_backward(grad, result, 0)``
=========================================  =============================================

docs/relu_module.md ("torch semantics") lists the transforms and modes the conformance suite
(tests/test_relu_conformance.py) checks against ``nn.ReLU``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.autograd.forward_ad as _fwad
from torch import Tensor, nn
from torch._functorch.utils import enable_single_level_autograd_function
from torch.autograd.function import _SingleLevelFunction as _Function
from torch.overrides import has_torch_function

from . import _ext  # noqa: F401  (the kernels, which _torch_ops calls through their capsule)

try:
    from . import _torch_ops  # registers torch.ops.relu_module.*
except ImportError as err:  # a wheel built where torch was missing, or for another torch
    raise ImportError(
        f"relu_module.torch: the torch operators are not usable ({err}). relu-module builds them "
        "against the torch of its build environment: reinstall it there with "
        "`pip install --no-build-isolation ./relu_module` (torch installed first)"
    ) from err

__all__ = ["relu", "relu_out", "ReLU", "ops", "ReLUFunction", "ReLUInplaceFunction"]

ops = torch.ops.relu_module
_relu, _relu_, _relu_out = ops.relu.default, ops.relu_.default, ops.relu.out
_backward = ops.relu_backward.default
_lib = torch.library.Library("relu_module", "IMPL")  # noqa: TOR901  (kept alive: module global)


# ---- fake kernels: torch's own meta functions, so sizes, strides and errors are torch's -------


@torch.library.register_fake("relu_module::relu")
def _relu_fake(x: Tensor) -> Tensor:
    return torch.ops.aten.relu.default(x)


@torch.library.register_fake("relu_module::relu_")
def _relu_inplace_fake(x: Tensor) -> None:
    torch.ops.aten.relu_.default(x)


@torch.library.register_fake("relu_module::relu.out")
def _relu_out_fake(x: Tensor, *, out: Tensor) -> None:
    torch.ops.aten.clamp_min.out(x, 0, out=out)


@torch.library.register_fake("relu_module::relu_backward")
def _backward_fake(grad: Tensor, result: Tensor) -> Tensor:
    return torch.ops.aten.threshold_backward.default(grad, result, 0)


@torch.library.register_fake("relu_module::relu_backward.out")
def _backward_out_fake(grad: Tensor, result: Tensor, *, out: Tensor) -> None:
    torch.ops.aten.threshold_backward.grad_input(grad, result, 0, grad_input=out)


# ---- autograd: reverse and forward mode, as torch's derivatives.yaml has them for relu -------


def _forward_of(op: Any, *args: Tensor) -> Any:
    """A Function's forward: ``op`` below this level's autograd, with forward AD left on.

    A Function runs its forward with forward AD off; under torch.func that switch would also
    reach the levels below this one (a jvp around a grad), which then lose their tangents.
    torch's own kernels leave it alone: so does this.
    """
    with torch._C._AutoDispatchBelowAutograd(), _fwad._set_fwd_grad_enabled(True):
        return op(*args)


class _Relu(_Function):
    """relu: grad -> relu_backward(grad, result); tangent -> relu_backward(tangent, result)."""

    @staticmethod
    def forward(x: Tensor) -> Tensor:
        return _forward_of(_relu, x)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Tensor], output: Tensor) -> None:
        # The output, as torch saves it: x can be freed, and result > 0 exactly where x > 0.
        ctx.save_for_backward(output)
        ctx.save_for_forward(output)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        (y,) = ctx.saved_tensors
        return _backward(grad, y)

    @staticmethod
    def jvp(ctx: Any, x_t: Tensor) -> Tensor:
        (y,) = ctx.saved_tensors
        return _backward(x_t, y)


class _ReluBackward(_Function):
    """relu_backward is linear in grad: its derivatives are relu_backward again (double
    backward, forward-over-reverse); ``result`` gets none, as in torch (zero almost everywhere).
    """

    @staticmethod
    def forward(grad: Tensor, y: Tensor) -> Tensor:
        return _forward_of(_backward, grad, y)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Tensor, Tensor], output: Tensor) -> None:
        ctx.save_for_backward(inputs[1])
        ctx.save_for_forward(inputs[1])

    @staticmethod
    def backward(ctx: Any, gg: Tensor) -> tuple[Tensor, None]:
        (y,) = ctx.saved_tensors
        return _backward(gg, y), None

    @staticmethod
    def jvp(ctx: Any, grad_t: Tensor, y_t: Tensor) -> Tensor:
        (y,) = ctx.saved_tensors
        return _backward(grad_t, y)


def _apply(fn: type[_Function], *args: Tensor) -> Tensor:
    # One level of autograd: the one this kernel runs at. Under torch.func the transform has
    # already unwrapped its level's tensors (as it does for torch's own ops), so the plain
    # single-level apply is right, where Function.apply would re-enter functorch.
    with enable_single_level_autograd_function():
        return fn.apply(*args)


# The calls autograd records (a tensor requires grad, or is a dual tensor): the compiled
# Autograd kernels hand exactly those to these, and run every other call themselves.


def _record_relu(x: Tensor) -> Tensor:
    return _apply(_Relu, x)


def _record_relu_inplace(x: Tensor) -> None:
    # Recorded as torch records an in-place op: y = relu(x) with its graph (and tangent), then
    # copy_, whose checks (a leaf that requires grad, a view of one, overlapping elements) run
    # before it writes, and which bumps the version and rebases x's history once.
    x.copy_(_apply(_Relu, x))


def _record_backward(grad: Tensor, y: Tensor) -> Tensor:
    return _apply(_ReluBackward, grad, y)


_torch_ops.set_recorders(_record_relu, _record_relu_inplace, _record_backward)


# ---- vmap: the ops are elementwise, so a batched call is one call on the batched tensors ------


def _at_front(t: Tensor, dim: int | None, size: int) -> Tensor:
    return t.expand(size, *t.shape) if dim is None else t.movedim(dim, 0)


@torch.library.register_vmap("relu_module::relu")
def _relu_vmap(info: Any, in_dims: tuple[int | None], x: Tensor) -> tuple[Tensor, int | None]:
    return _relu(x), in_dims[0]


@torch.library.register_vmap("relu_module::relu_")
def _relu_inplace_vmap(info: Any, in_dims: tuple[int | None], x: Tensor) -> tuple[None, None]:
    _relu_(x)
    return None, None


@torch.library.register_vmap("relu_module::relu_backward")
def _backward_vmap(
    info: Any, in_dims: tuple[int | None, int | None], grad: Tensor, y: Tensor
) -> tuple[Tensor, int]:
    if in_dims[0] == in_dims[1]:
        return _backward(grad, y), in_dims[0]
    n = info.batch_size
    return _backward(_at_front(grad, in_dims[0], n), _at_front(y, in_dims[1], n)), 0


# ---- functionalisation: a write becomes the functional op plus a replace, as torch's own ------


def _functional_write(compute: Any) -> Any:
    """A Functionalize kernel for an op writing its last tensor argument (relu_: x; out=: out).

    What torch generates for its own in-place and out= ops: sync the functional inputs, run
    the functional op below Functionalize on their current values, then replace the written
    tensor's value and commit it, so later reads (and views) see the write.
    """

    def kernel(*args: Tensor, **kwargs: Tensor) -> None:
        tensors = (*args, *kwargs.values())
        for t in tensors:
            torch._functionalize_sync(t)
        inner = [torch._from_functional_tensor(t) for t in tensors]
        with torch._C._ExcludeDispatchKeyGuard(_FUNCTIONALIZE):
            value = compute(*inner[:-1]) if kwargs else compute(*inner)
        written = tensors[-1]
        torch._functionalize_replace(written, value)
        torch._functionalize_commit_update(written)
        torch._functionalize_sync(written)

    return kernel


_FUNCTIONALIZE = torch._C.DispatchKeySet(torch._C.DispatchKey.Functionalize)
_lib.impl("relu_", _functional_write(_relu), "Functionalize")
_lib.impl("relu.out", _functional_write(_relu), "Functionalize")
_lib.impl("relu_backward.out", _functional_write(_backward), "Functionalize")


# ---- nested tensors: a strided one takes one kernel call per component -----------------------


def _nested(fn: Any) -> Any:
    def kernel(*args: Tensor) -> Tensor:
        parts = zip(*(a.unbind() for a in args), strict=True)
        return torch.nested.as_nested_tensor([fn(*p) for p in parts], layout=torch.strided)

    return kernel


def _relu_inplace_nested(x: Tensor) -> None:
    for part in x.unbind():  # views of x's buffer
        _relu_(part)


def _relu_inplace_jagged(mode: Any, func: Any, types: Any, args: Any, kwargs: Any) -> None:
    # Jagged nested tensors take the pointwise ops (Tag.pointwise) by themselves, but expect an
    # in-place op to return its input; relu_ returns nothing: write the values buffer.
    _relu_(args[0].values())


torch.library.register_torch_dispatch(
    "relu_module::relu_", torch.nested._internal.nested_tensor.NestedTensor, _relu_inplace_jagged
)
_lib.impl("relu", _nested(_relu), "NestedTensorCPU")
_lib.impl("relu_", _relu_inplace_nested, "NestedTensorCPU")
_lib.impl("relu_backward", _nested(_backward), "NestedTensorCPU")


# ---- exporters: ONNX has no relu_module domain; the standard Relu computes the same bits ------


def _register_exporters() -> None:
    decompose = torch._decomp.register_decomposition
    decompose(_relu)(torch.ops.aten.relu.default)

    @decompose(_relu_)
    def _(x: Tensor) -> None:
        torch.ops.aten.relu_.default(x)

    for name in ("relu", "relu_"):  # the TorchScript-based exporter (dynamo=False)
        torch.onnx.register_custom_op_symbolic(
            f"relu_module::{name}", lambda g, x: g.op("Relu", x), 1
        )


_register_exporters()


# ---- the public API -----------------------------------------------------------------------------


def relu(x: Tensor, inplace: bool = False) -> Tensor:
    """``torch.relu`` (``torch.relu_`` if inplace) through the kernel: the relu_module operators.

    One operator call and nothing else, so every tracer (``fx.symbolic_trace``, ``make_fx``,
    ``torch.compile``, ``torch.export``, ``torch.jit``) records it as that operator.
    """
    if _is_scripting():  # TorchScript compiles only this branch: the packets
        if inplace:
            torch.ops.relu_module.relu_(x)
            return x
        return torch.ops.relu_module.relu(x)
    if not _is_compiling():  # Dynamo traces Python: it must see the operator, not a C call
        y = _c_relu_(x) if inplace else _c_relu(x)  # ~1 us less per call
        if y is not NotImplemented:
            return y
    if not isinstance(x, Tensor) and not has_torch_function((x,)):  # an fx Proxy has one
        raise TypeError(
            f"relu(): argument 'input' (position 1) must be Tensor, not {type(x).__name__}"
        )
    if not inplace:
        return _relu(x)
    if torch._C._get_tracing_state() is not None:
        # torch.jit.trace (and the TorchScript-based ONNX exporter) follows a write only
        # through aten ops: record the same write as relu + copy_.
        return x.copy_(_relu(x))
    _relu_(x)
    return x


def relu_out(x: Tensor, out: Tensor) -> Tensor:
    """``torch.ops.relu_module.relu.out(x, out=out)``; returns ``out``."""
    if not _is_compiling():
        y = _c_relu_out(x, out)
        if y is not NotImplemented:
            return y
    _relu_out(x, out=out)
    return out


# The compiled entry points (_torch_ops.relu, relu_, relu_out) call the operators through the
# dispatcher from C, as torch's generated bindings do, ~1 us less than torch.ops' Python call;
# the dispatcher still sees every call (autograd, torch.func, dispatch modes, the jit tracer).
# They return NotImplemented for what only the Python call handles: a tensor subclass's or a
# mode's __torch_function__, a non-tensor (an fx Proxy), a write under a jit trace.
# Dynamo's own flag (constant-folded to True while it traces; a plain `return False` in eager,
# ~40 ns cheaper per call than is_compiling()): non-strict torch.export and make_fx run this
# Python eagerly under a dispatch mode, for which the compiled entry points return NotImplemented.
_is_compiling = torch.compiler.is_dynamo_compiling
# Module-level names: each saves an attribute lookup (~15 ns) on calls of under a microsecond.
# TorchScript still recognises _is_scripting: it resolves the function, not its name.
_is_scripting = torch.jit.is_scripting
_c_relu, _c_relu_, _c_relu_out = _torch_ops.relu, _torch_ops.relu_, _torch_ops.relu_out


class ReLUFunction:
    """Kept for callers of the former ``autograd.Function``: ``apply(x)`` is :func:`relu`."""

    @staticmethod
    def apply(x: Tensor) -> Tensor:
        return relu(x)


class ReLUInplaceFunction:
    """Kept for callers of the former ``autograd.Function``: ``apply(x)`` is ``relu(x, True)``."""

    @staticmethod
    def apply(x: Tensor) -> Tensor:
        return relu(x, inplace=True)


class ReLU(nn.Module):
    """Drop-in for ``nn.ReLU`` that runs the relu_module kernels."""

    def __init__(self, inplace: bool = False) -> None:
        super().__init__()
        self.inplace = inplace

    def forward(self, x: Tensor) -> Tensor:  # (*) -> (*)
        return relu(x, self.inplace)

    def extra_repr(self) -> str:
        return "inplace=True" if self.inplace else ""

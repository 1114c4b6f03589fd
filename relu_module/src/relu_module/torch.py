"""torch integration: autograd Functions and an ``nn.Module`` running the relu_module kernels.

Forward, backward and the forward-mode derivative (``jvp``) run the C++ kernels on zero-copy
numpy views of CPU float32/float64 tensors, with torch's semantics in every mode torch has
(docs/relu_module.md, "Semantics and limits"):

* autograd: version counters, the in-place checks (a leaf that requires grad, a view of one,
  a ``chunk()`` output) raised before any data changes, double backward;
* forward AD (``torch.autograd.forward_ad``) and ``torch.func`` (``grad``, ``jvp``, ``vmap``,
  through ``setup_context`` and ``generate_vmap_rule``): where functorch hands the Function its
  wrapped tensors, the Function computes with the bit-identical torch ops instead;
* tracers and compilers record ``torch.relu`` / ``torch.relu_`` (bit-identical results) instead
  of the kernel: ``torch.jit.script``, ``torch.jit.trace`` (so ``jit.save`` works),
  ``torch.compile``, ``torch.export`` and the ONNX exporters, which therefore emit the standard
  ``Relu`` node. ``torch.fx.symbolic_trace`` keeps :func:`relu` as one call (a leaf), so the
  traced module still runs the kernel.

On other devices or dtypes (CUDA, float16, bfloat16) the module also uses ``torch.relu``.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.autograd.forward_ad as _fwad
from torch import Tensor, nn

from . import _ext
from . import relu_ as _relu_inplace_tracked

__all__ = ["ReLUFunction", "ReLUInplaceFunction", "relu", "ReLU"]

_KERNEL_DTYPES = (torch.float32, torch.float64)
# BatchedTensor, GradTrackingTensor, ...: torch.func's wrappers, which have no numpy view.
_is_wrapped = getattr(torch._C._functorch, "is_functorch_wrapped_tensor", lambda t: False)
_is_exporting = getattr(torch.compiler, "is_exporting", lambda: False)  # torch >= 2.5


def _kernel_ok(*tensors: Tensor) -> bool:
    """True if the kernel can take every tensor as a plain zero-copy numpy view."""
    return all(
        t.is_cpu
        and t.dtype in _KERNEL_DTYPES
        and t.layout == torch.strided
        and not _is_wrapped(t)
        and not t.is_neg()
        and not t.is_conj()
        for t in tensors
    )


def _relu_out_of_place(x: Tensor) -> Tensor:
    if _kernel_ok(x):
        return torch.from_numpy(_ext.relu(x.detach().numpy(), None))
    return torch.relu(x)


def _mask(grad: Tensor, y: Tensor) -> Tensor:
    """torch's threshold_backward(grad, y, 0): grad where y > 0 (or NaN), else +0."""
    # A graph to record (backward with create_graph=True, or a jvp under grad mode on tensors
    # that require grad) needs the differentiable aten op; it computes the same bits.
    recording = torch.is_grad_enabled() and (grad.requires_grad or y.requires_grad)
    if _kernel_ok(grad, y) and grad.dtype == y.dtype and not recording:
        return torch.from_numpy(_ext.relu_backward(grad.detach().numpy(), y.detach().numpy()))
    return torch.ops.aten.threshold_backward(grad, y, 0)


class ReLUFunction(torch.autograd.Function):
    """ReLU whose forward, backward and jvp run the C++ kernels."""

    generate_vmap_rule = True  # vmap runs forward/backward/jvp on batched tensors: torch ops

    @staticmethod
    def forward(x: Tensor) -> Tensor:
        return _relu_out_of_place(x)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Tensor], output: Tensor) -> None:
        # Save the output, as torch does: y <= 0 exactly where x <= 0, and x can then be freed.
        ctx.save_for_backward(output)
        ctx.save_for_forward(output)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        (y,) = ctx.saved_tensors
        return _mask(grad, y)

    @staticmethod
    def jvp(ctx: Any, x_t: Tensor) -> Tensor:
        (y,) = ctx.saved_tensors
        return _mask(x_t, y)

    @staticmethod
    def symbolic(g: Any, x: Any) -> Any:
        """ONNX graph for the TorchScript exporter, if it meets the Function: the Relu operator."""
        return g.op("Relu", x)


class ReLUInplaceFunction(ReLUFunction):
    """In-place ReLU on the tensor's own storage (``nn.ReLU(inplace=True)`` semantics).

    ``apply`` first lets autograd accept the in-place op (``mark_dirty``), whose checks raise
    torch's own errors for a leaf that requires grad, a view of one or a multi-output view; only
    then does the kernel rectify ``x``. So a rejected call leaves the data alone, as
    ``torch.relu_`` does. The saved tensor is ``x`` itself, rectified by the time backward runs;
    the jvp's mask is the same from x before or after (x <= 0 exactly where relu(x) <= 0).
    """

    generate_vmap_rule = False  # under functorch, relu(inplace=True) calls torch.relu_

    @staticmethod
    def forward(x: Tensor) -> Tensor:
        return x  # the write happens in apply(), once autograd has accepted the in-place op

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Tensor], output: Tensor) -> None:
        ctx.mark_dirty(inputs[0])
        ctx.save_for_backward(output)
        ctx.save_for_forward(output)

    @staticmethod
    def jvp(ctx: Any, x_t: Tensor) -> Tensor:
        (y,) = ctx.saved_tensors
        return x_t.copy_(_mask(x_t, y))  # an in-place Function updates its tangent in place

    @classmethod
    def apply(cls, x: Tensor) -> Tensor:  # type: ignore[override]
        if not _kernel_ok(x):
            raise TypeError(
                "ReLUInplaceFunction: x must be a CPU float32/float64 strided tensor; use "
                "relu_module.torch.relu(x, inplace=True), which falls back to torch.relu_"
            )
        y = super().apply(x)
        _ext.relu_(x.detach().numpy())  # no second version bump: autograd counted this write
        return y


def _tracing() -> bool:
    """True under torch.compile / torch.export / torch.jit.trace, which cannot trace numpy calls."""
    return torch.compiler.is_compiling() or _is_exporting() or torch.jit.is_tracing()


def _forward_ad_active() -> bool:
    return getattr(_fwad, "_current_level", -1) >= 0


def relu(x: Tensor, inplace: bool = False) -> Tensor:
    """``torch.relu`` (``torch.relu_`` if inplace) through the kernel, with autograd.

    See the module docstring for when it defers to torch (tracing, functorch in place,
    non-CPU, other dtypes).
    """
    if torch.jit.is_scripting():  # TorchScript compiles only this branch: torch.relu instead
        return torch.relu_(x) if inplace else torch.relu(x)
    if _tracing() or not x.is_cpu or x.dtype not in _KERNEL_DTYPES or x.layout != torch.strided:
        if torch.jit.is_tracing():
            with warnings.catch_warnings():  # the tracer's note about Python values: none here
                warnings.simplefilter("ignore", torch.jit.TracerWarning)
                return torch.relu_(x) if inplace else torch.relu(x)
        return torch.relu_(x) if inplace else torch.relu(x)
    if _is_wrapped(x):  # inside torch.func: the Function's generated vmap rule / jvp handle it
        return torch.relu_(x) if inplace else ReLUFunction.apply(x)
    if (x.requires_grad and torch.is_grad_enabled()) or _forward_ad_active():
        return ReLUInplaceFunction.apply(x) if inplace else ReLUFunction.apply(x)
    if inplace:
        return _relu_inplace_tracked(x)  # checks inference tensors, bumps the version counter
    # Nothing to record: skip the autograd.Function machinery (~10 us per call).
    return torch.from_numpy(_ext.relu(x.detach().numpy(), None))


# symbolic_trace records relu() as one call_function node instead of tracing into it (its
# tensor checks cannot run on a Proxy), and the GraphModule then calls it: the kernel stays.
torch.fx.wrap("relu")


class ReLU(nn.Module):
    """Drop-in for ``nn.ReLU`` that runs the relu_module kernels."""

    def __init__(self, inplace: bool = False) -> None:
        super().__init__()
        self.inplace = inplace

    def forward(self, x: Tensor) -> Tensor:  # (*) -> (*)
        return relu(x, self.inplace)

    def extra_repr(self) -> str:
        return "inplace=True" if self.inplace else ""

"""torch integration: an autograd Function and an ``nn.Module`` running the relu_module kernels.

Forward and backward run the C++ kernels on zero-copy numpy views of CPU float32/float64
tensors. Exported to ONNX the op is the standard ``Relu`` node, so exported models need no
custom op in ONNX Runtime, TensorRT or Triton:

* ``torch.onnx.export(..., dynamo=False)`` (TorchScript tracer): :meth:`ReLUFunction.symbolic`
  emits ``Relu``.
* ``torch.onnx.export(..., dynamo=True)`` (the default in torch >= 2.9) and ``torch.compile``:
  while torch is tracing, :func:`relu` calls ``torch.relu``, whose results are bit-identical to
  the kernel's, so the traced graph holds ``aten.relu`` and ONNX gets ``Relu``.

On other devices or dtypes (CUDA, float16, bfloat16) the module also uses ``torch.relu``: the
kernel is CPU-only, and the semantics are the same.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from . import _ext

__all__ = ["ReLUFunction", "ReLUInplaceFunction", "relu", "ReLU"]

_KERNEL_DTYPES = (torch.float32, torch.float64)


class ReLUFunction(torch.autograd.Function):
    """ReLU whose forward and backward both run the C++ kernels."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        y = torch.from_numpy(_ext.relu(x.detach().numpy(), None))
        # Save the output, as torch does: y <= 0 exactly where x <= 0, and x can then be freed.
        ctx.save_for_backward(y)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        (y,) = ctx.saved_tensors
        return torch.from_numpy(_ext.relu_backward(grad.detach().numpy(), y.detach().numpy(), None))

    @staticmethod
    def symbolic(g: Any, x: Any) -> Any:
        """ONNX graph for the TorchScript exporter: the standard Relu operator."""
        return g.op("Relu", x)


class ReLUInplaceFunction(ReLUFunction):
    """In-place ReLU on the tensor's own storage (``nn.ReLU(inplace=True)`` semantics).

    Only the forward differs: it saves the (now rectified) input, which is the output, so the
    inherited backward and ONNX symbolic apply unchanged.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        _ext.relu_(x.detach().numpy())  # a view of x's storage: x itself changes
        ctx.mark_dirty(x)  # autograd bumps x's version and rejects uses of the old value
        ctx.save_for_backward(x)
        return x


_is_exporting = getattr(torch.compiler, "is_exporting", lambda: False)  # torch >= 2.5


def _tracing() -> bool:
    """True under torch.compile / torch.export (dynamo or non-strict), where numpy calls cannot be traced."""
    return torch.compiler.is_compiling() or _is_exporting()


def relu(x: Tensor, inplace: bool = False) -> Tensor:
    """``torch.relu`` (``torch.relu_`` if inplace) through the kernel, with autograd.

    See the module docstring for when it defers to torch (tracing, non-CPU, other dtypes).
    """
    if not x.is_cpu or x.dtype not in _KERNEL_DTYPES or x.layout != torch.strided or _tracing():
        return torch.relu_(x) if inplace else torch.relu(x)
    if not inplace and not (x.requires_grad and torch.is_grad_enabled()) and not torch.jit.is_tracing():
        # Nothing to record: skip the autograd.Function machinery (~10 us per call).
        return torch.from_numpy(_ext.relu(x.detach().numpy(), None))
    if torch.jit.is_tracing():
        # The TorchScript ONNX exporter records the Function as one node and maps it to Relu via
        # `symbolic`; the tracer's warnings about the numpy calls inside it do not apply. The
        # tracer cannot record a dirty (in-place) Function, and ONNX has no in-place ops anyway.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            return ReLUFunction.apply(x)
    return (ReLUInplaceFunction if inplace else ReLUFunction).apply(x)


class ReLU(nn.Module):
    """Drop-in for ``nn.ReLU`` that runs the relu_module kernels."""

    def __init__(self, inplace: bool = False) -> None:
        super().__init__()
        self.inplace = inplace

    def forward(self, x: Tensor) -> Tensor:  # (*) -> (*)
        return relu(x, self.inplace)

    def extra_repr(self) -> str:
        return "inplace=True" if self.inplace else ""

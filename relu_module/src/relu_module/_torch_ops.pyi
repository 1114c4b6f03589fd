"""Type stubs for the compiled relu_module._torch_ops (private: use relu_module.torch)."""

from collections.abc import Callable
from types import NotImplementedType

import torch

def relu(x: torch.Tensor) -> torch.Tensor | NotImplementedType: ...
def relu_(x: torch.Tensor) -> torch.Tensor | NotImplementedType: ...
def relu_out(x: torch.Tensor, out: torch.Tensor) -> torch.Tensor | NotImplementedType: ...
def set_recorders(
    relu: Callable[[torch.Tensor], torch.Tensor],
    relu_: Callable[[torch.Tensor], None],
    relu_backward: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> None: ...

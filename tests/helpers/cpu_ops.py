"""The kernels training runs, one op each, with the sha256 of their results: run as a script in a
fresh interpreter (under the CPU contract's variables, natively or on a CPU that QEMU emulates),
it prints them as JSON with what the process sees of its CPU.

Only kernels without approximate instructions (``rcpps``/``rsqrtps``, whose bits each CPU design
chooses and QEMU computes exactly) are here, so an emulated CPU gives the bytes a real one of
that model gives: MKL's GEMMs and VML exp/log/erf, oneDNN's convolutions, ATen's reductions and
activations, and AdamW's fused step (its square root is ``vsqrtps``). ``torch.sqrt`` (MKL VML,
``rsqrtps``; the unfused Adam step) is left out for that reason.

    python tests/helpers/cpu_ops.py
"""

from __future__ import annotations

import hashlib
import json

import torch
import torch.nn.functional as F


def _inputs(*shape: int, salt: int) -> torch.Tensor:
    """Values in [-0.5, 0.5) from integer arithmetic: the same bits on every CPU (torch.randn's
    kernels are themselves vectorised by ISA)."""
    n = torch.arange(torch.Size(shape).numel(), dtype=torch.int64)
    values = ((n * 2654435761 + salt) % 1000003).to(torch.float64) / 1000003 - 0.5
    return values.to(torch.float32).reshape(shape)


def results() -> dict[str, torch.Tensor]:
    """One result per kernel family, on inputs that are the same everywhere."""
    a, b = _inputs(256, 300, salt=1), _inputs(300, 200, salt=2)  # (M, K), (K, N)
    x = _inputs(64, 1, 8, 8, salt=3).requires_grad_()  # (B, C, H, W)
    w = _inputs(16, 1, 3, 3, salt=4).requires_grad_()  # (C_out, C_in, kH, kW)
    y = F.conv2d(x, w, padding=1)  # (B, 16, H, W)
    y.square().sum().backward()
    pos = a.abs() + 0.1
    out = {"mm": a @ b, "linear": F.linear(a, b.t().contiguous()), "conv": y}
    out |= {"conv_grad_input": x.grad, "conv_grad_weight": w.grad}
    out |= {op: getattr(torch, op)(pos) for op in ("exp", "log", "erf", "tanh", "sigmoid")}
    out |= {"log_softmax": torch.log_softmax(a, 1), "var": a.var(0), "sum": a.sum()}
    out |= {"gelu": F.gelu(a), "batch_norm": F.batch_norm(y, None, None, training=True)}
    out["cross_entropy"] = F.cross_entropy(a[:, :10], torch.arange(256) % 10)
    out["adamw_fused"] = _adamw_fused_steps()
    return {k: v.detach() for k, v in out.items()}


def _adamw_fused_steps(steps: int = 3) -> torch.Tensor:
    """The training's optimizer (conf/optimizer/adamw.yaml: fused) over a few steps: its square
    root is vsqrtps, exact on every CPU, unlike torch.sqrt's MKL VML kernel (rsqrtps)."""
    p = _inputs(4096, salt=5).requires_grad_()
    opt = torch.optim.AdamW([p], lr=0.003, weight_decay=0.0001, fused=True)
    for step in range(steps):
        p.grad = _inputs(4096, salt=6 + step)
        opt.step()
    return p


def main() -> None:
    digests = {k: hashlib.sha256(v.numpy().tobytes()).hexdigest() for k, v in results().items()}
    cpu = {
        "avx2": torch.cpu._is_avx2_supported(),  # CPUID, which QEMU answers for its model
        "avx512": torch.cpu._is_avx512_supported(),
        "capability": torch.backends.cpu.get_cpu_capability(),
    }
    print(json.dumps({"cpu": cpu, "sha256": digests}, sort_keys=True))


if __name__ == "__main__":
    main()

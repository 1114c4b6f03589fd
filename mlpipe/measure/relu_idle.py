"""The idle probe of the relu_module benchmark: CPU time a fresh process spends asleep after one
call, so a library whose worker threads keep spinning is seen paying for it.

``python -m mlpipe.measure.relu_idle <relu_module|torch|numpy> <n> <sleep_s>`` makes one call on
``n`` float32 values (the thread pool starts), sleeps, and prints the process's CPU seconds (all
threads) across the sleep. A process of its own, so no other library's threads are running.
"""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Callable

import numpy as np


def one_call(which: str, x: np.ndarray) -> Callable[[], object]:
    """The call of one library (imported only here, so the others start no threads)."""
    if which == "relu_module":
        import relu_module

        return lambda: relu_module.relu(x)
    if which == "torch":
        import torch

        t = torch.from_numpy(x)
        return lambda: torch.relu(t)
    return lambda: np.maximum(x, 0)


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main(argv: list[str]) -> None:
    which, n, sleep_s = argv[0], int(argv[1]), float(argv[2])
    x = np.random.default_rng(0).standard_normal(n).astype(np.float32)
    one_call(which, x)()
    before = cpu_seconds()
    time.sleep(sleep_s)
    print(cpu_seconds() - before)


if __name__ == "__main__":
    main(sys.argv[1:])

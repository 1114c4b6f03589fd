"""pytest set-up for relu_module's tests (run by the root suite and by the wheel's `test` extra).

The helpers live in relu_testing.py beside this file; this directory is on sys.path (pytest's
default rootdir-less "prepend" import mode), so test modules import them by name.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

import relu_module


@pytest.fixture(autouse=True)
def _restore_global_state() -> Iterator[None]:
    """Tests that change the thread count or the flush-denormal mode must not leak it."""
    threads = relu_module.get_num_threads()
    yield
    relu_module.set_num_threads(threads)
    torch.set_flush_denormal(False)

"""The tests' process inspection (helpers.serving) with real processes that die while it looks:
a zombie, and children that exit by the hundred while the tree is read. A helper that needs a
quiet machine is a test that fails in CI (psutil.NoSuchProcess between listing and reading)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import psutil
from helpers.serving import alive, children_of

#: Forks short-lived children as fast as it can, for `seconds`.
CHURN = """
import subprocess, sys, time
end = time.monotonic() + float(sys.argv[1])
while time.monotonic() < end:
    subprocess.Popen(["true"]).wait()
"""


def _wait_zombie(proc: subprocess.Popen[bytes], seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while psutil.Process(proc.pid).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, "the child did not exit"
        time.sleep(0.01)


def test_a_zombie_child_is_neither_listed_nor_an_error() -> None:
    # `Popen.poll()` is never called, so the exited child stays a zombie: its name is readable,
    # its command line raises psutil.ZombieProcess
    proc = subprocess.Popen(["true"])
    try:
        _wait_zombie(proc)
        assert proc.pid not in [p.pid for p in children_of(os.getpid())]
        assert not alive(proc.pid)
    finally:
        proc.wait()
    assert not alive(proc.pid)  # reaped: gone altogether


def test_children_that_exit_while_read_are_left_out() -> None:
    keeper = subprocess.Popen(["sleep", "60"])
    churn = subprocess.Popen([sys.executable, "-c", CHURN, "5"])
    try:
        reads = 0
        while churn.poll() is None:
            seen = children_of(os.getpid())
            assert keeper.pid in [p.pid for p in seen]  # the live one is always there
            assert all(p.name for p in seen)
            reads += 1
        assert churn.returncode == 0 and reads > 10
    finally:
        keeper.kill()
        keeper.wait()
        churn.kill()
        churn.wait()

"""Checkpoint saves are atomic on any filesystem: a SIGKILL during a save leaves the previous
checkpoint intact, nothing in `$TMPDIR` (here on another filesystem), and at most one partial
file beside the target, which the next run removes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from helpers.fs import other_filesystem_tmpdir

from mlpipe.common.atomic import partial_path, remove_partial

# Saves a small checkpoint, says "ready", then overwrites it with 50 MB ones until killed.
WRITER = """
import sys, torch
from mlpipe.train.checkpoint_io import AtomicCheckpointIO
io, target = AtomicCheckpointIO(), sys.argv[1]
io.save_checkpoint({"version": 0, "w": torch.zeros(4)}, target)
print("ready", flush=True)
big, version = torch.arange(12_500_000, dtype=torch.float32), 1
while True:
    io.save_checkpoint({"version": version, "w": big}, target)
    version += 1
"""


def _kill_mid_save(target: Path, tmpdir: Path) -> None:
    env = {**os.environ, "TMPDIR": str(tmpdir)}
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(target)], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + 120
        partial = partial_path(target)
        while not (partial.exists() and partial.stat().st_size > 0):  # mid-write
            assert time.monotonic() < deadline, "the writer never started a second save"
            assert proc.poll() is None, f"writer exited with {proc.returncode}"
            time.sleep(0.001)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)


def test_sigkill_during_a_save_keeps_the_previous_checkpoint(tmp_path: Path) -> None:
    tmpdir = other_filesystem_tmpdir(tmp_path)
    target = tmp_path / "checkpoints" / "last.ckpt"
    try:
        _kill_mid_save(target, tmpdir)
        left_in_tmpdir = list(tmpdir.iterdir())
    finally:
        subprocess.run(["rm", "-rf", str(tmpdir)], check=False)
    assert not left_in_tmpdir, f"a save must not stage bytes in $TMPDIR: {left_in_tmpdir}"
    ckpt = torch.load(target, weights_only=True)  # complete: the old version or a whole new one
    assert isinstance(ckpt["version"], int)
    assert remove_partial(target.parent) == [partial_path(target)]
    assert sorted(p.name for p in target.parent.iterdir()) == ["last.ckpt"]

"""Exact resume: a run SIGKILLed mid-epoch and resumed with `ckpt_path=last` ends with the same
bytes as an uninterrupted run; `last.ckpt` is the last completed epoch; a changed schedule is
refused. The killed runs are real `mlpipe-train` processes; the rest runs in-process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mlpipe.common.errors import ConfigError
from mlpipe.train.run import train

HERE = Path(__file__).parent
# Short epochs, several of them: the cosine schedule, dropout and augmentation all matter.
RUN = (
    "trainer.max_epochs=4",
    "trainer.limit_train_batches=5",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
)


def _outputs(run_dir: Path) -> tuple[str, ...]:
    return (f"paths.checkpoint_dir={run_dir}/checkpoints", f"paths.reports_dir={run_dir}/reports")


def _killed_run(root: Path, run_dir: Path, epoch: int, batch: int) -> None:
    """A real `mlpipe-train` process that SIGKILLs itself at (epoch, batch)."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.run(
        [
            str(Path(sys.executable).parent / "mlpipe-train"),
            *RUN,
            f"hydra.run.dir={run_dir}",
            f"paths.log_dir={run_dir}/logs",
            "data.num_workers=0",
            "callbacks.progress_bar.refresh_rate=0",
            "trainer.enable_model_summary=false",
            # the in-process runs it is compared with do not run under the CPU contract (that
            # needs a fresh process): neither does this one, so all three use the same kernels
            "repro=off",
            "+callbacks.kill._target_=kill_callback.KillAt",
            f"+callbacks.kill.epoch={epoch}",
            f"+callbacks.kill.batch={batch}",
        ],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == -9, f"expected SIGKILL, got {proc.returncode}:\n{proc.stderr[-2000:]}"
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["epoch"] == epoch - 1, "last.ckpt must be the last completed epoch"


@pytest.mark.slow
@pytest.mark.parametrize("epoch,batch", [(1, 2), (3, 0)])
def test_sigkill_then_resume_gives_identical_bytes(
    compose_cfg, repo_root: Path, tmp_path: Path, epoch: int, batch: int
) -> None:
    whole = tmp_path / "whole"
    train(compose_cfg(*RUN, *_outputs(whole), shrink=False, tmp_dir=whole))
    killed = tmp_path / "killed"
    _killed_run(repo_root, killed, epoch, batch)
    assert not (killed / "reports" / "train" / "metrics.json").exists()
    train(compose_cfg(*RUN, *_outputs(killed), "ckpt_path=last", shrink=False, tmp_dir=killed))
    for name in ("train/metrics.json", "train/curves.csv"):
        a, b = (d / "reports" / name for d in (whole, killed))
        assert a.read_bytes() == b.read_bytes(), (
            f"{name} differs after resume:\n{a.read_text()}\n{b.read_text()}"
        )
    a, b = (torch.load(d / "checkpoints" / "best.ckpt", weights_only=True) for d in (whole, killed))
    assert a["epoch"] == b["epoch"]
    for key, tensor in a["state_dict"].items():
        assert torch.equal(tensor, b["state_dict"][key]), key


def test_last_checkpoint_is_the_last_epoch(compose_cfg, tmp_path: Path) -> None:
    # val/loss on one batch rarely improves every epoch; last.ckpt must follow anyway
    cfg = compose_cfg("trainer.max_epochs=3", "trainer.limit_train_batches=2", "optimizer.lr=1e-6")
    train(cfg)
    last = torch.load(cfg.outputs.last_checkpoint, weights_only=True)
    assert last["epoch"] == 2 and last["global_step"] == 6
    state = last["callbacks"]
    paths = [v for s in state.values() if isinstance(s, dict) for k, v in s.items() if "path" in k]
    assert paths and not any(str(tmp_path) in str(p) for p in paths), (
        f"checkpoint state must not hold absolute paths: {paths}"
    )


def test_resume_with_another_schedule_is_refused(compose_cfg) -> None:
    train(compose_cfg("trainer.max_epochs=1"))
    with pytest.raises(ConfigError, match=r"T_max: checkpoint 1, config 2.*trainer\.max_epochs"):
        train(compose_cfg("ckpt_path=last", "trainer.max_epochs=2"))


def test_resume_extends_a_constant_schedule(compose_cfg) -> None:
    first = train(compose_cfg("scheduler=none"))
    assert first["epochs"] == 1 and first["global_step"] == 3
    resumed = train(compose_cfg("scheduler=none", "ckpt_path=last", "trainer.max_epochs=2"))
    assert resumed["epochs"] == 2 and resumed["global_step"] == 6

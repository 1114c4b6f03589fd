"""Exact resume: a run SIGKILLed mid-epoch and resumed with `ckpt_path=last` ends with the same
bytes as an uninterrupted run, with loader workers and with `$TMPDIR` on another filesystem;
`last.ckpt` is the last completed epoch; the best metric travels in the checkpoint; a changed
setting, a finished run and a damaged checkpoint are refused in one line. The killed runs are
real `mlpipe-train` processes; the rest runs in-process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers.fs import other_filesystem_tmpdir

from mlpipe.common.errors import ArtifactError, ConfigError
from mlpipe.train.run import train

HERE = Path(__file__).parent
# Short epochs, several of them: the cosine schedule, dropout and augmentation all matter.
RUN = (
    "trainer.max_epochs=4",
    "trainer.limit_train_batches=5",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
    # the in-process runs do not run under the CPU contract (that needs a fresh process started
    # under it): neither does the killed one, so all three use the same kernels and compare equal
    "repro=off",
)


def _outputs(run_dir: Path) -> tuple[str, ...]:
    return (f"paths.checkpoint_dir={run_dir}/checkpoints", f"paths.reports_dir={run_dir}/reports")


def _killed_run(
    root: Path, run_dir: Path, epoch: int, batch: int, workers: int, tmpdir: Path
) -> None:
    """A real `mlpipe-train` process, `$TMPDIR` on another filesystem, that SIGKILLs itself at
    (epoch, batch)."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
        "TMPDIR": str(tmpdir),
    }
    proc = subprocess.run(
        [
            str(Path(sys.executable).parent / "mlpipe-train"),
            *RUN,
            f"hydra.run.dir={run_dir}",
            f"paths.log_dir={run_dir}/logs",
            f"data.num_workers={workers}",
            "callbacks.progress_bar.refresh_rate=0",
            "trainer.enable_model_summary=false",
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
@pytest.mark.parametrize("epoch,batch,workers", [(1, 2, 0), (3, 0, 2), (2, 4, 2)])
def test_sigkill_then_resume_gives_identical_bytes(
    compose_cfg, repo_root: Path, tmp_path: Path, epoch: int, batch: int, workers: int
) -> None:
    """Resumed with the killed run's loader workers: the first resumed epoch's batches were
    prefetched before Lightning's `set_epoch` and replayed epoch 0's order and noise."""
    tmpdir = other_filesystem_tmpdir(tmp_path)
    whole = tmp_path / "whole"
    train(compose_cfg(*RUN, *_outputs(whole), shrink=False, tmp_dir=whole))
    killed = tmp_path / "killed"
    try:
        _killed_run(repo_root, killed, epoch, batch, workers, tmpdir)
        left = [p for p in tmpdir.rglob("*") if p.is_file()]
    finally:
        subprocess.run(["rm", "-rf", str(tmpdir)], check=False)
    assert not left, f"checkpoint saves must not stage files in $TMPDIR: {left}"
    assert not (killed / "reports" / "train" / "metrics.json").exists()
    resume = (*RUN, *_outputs(killed), "ckpt_path=last", f"data.num_workers={workers}")
    train(compose_cfg(*resume, shrink=False, tmp_dir=killed))
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


#: Settings that decide the result, each changed on resume, and the key the refusal must name.
CHANGED_ON_RESUME = [
    ("data.batch_size=32", "data.batch_size: checkpoint 64, config 32"),
    ("seed=7", "seed: checkpoint 42, config 7"),
    ("model.net.dropout=0.5", "model.net.dropout: checkpoint 0.25, config 0.5"),
    ("data.augment.noise_std=0.5", "data.augment.noise_std: checkpoint 1.0, config 0.5"),
    ("data.split.seed=3", "data.split.seed: checkpoint 0, config 3"),
    ("repro.threads=2", "repro.threads: checkpoint 1, config 2"),
    ("model=mlp", "model.net._target_: checkpoint 'mlpipe.train.nets.CNN'"),
    ("trainer.limit_train_batches=2", "trainer.limit_train_batches: checkpoint 3, config 2"),
    ("callbacks.early_stopping.patience=1", "callbacks.early_stopping.patience"),
]


def test_resume_with_any_other_result_deciding_setting_is_refused(compose_cfg) -> None:
    """Each differing key is named; nothing is trained or written."""
    base = ("scheduler=none",)
    cfg = compose_cfg(*base)
    train(cfg)
    metrics = Path(cfg.outputs.metrics).read_bytes()
    for override, named in CHANGED_ON_RESUME:
        resume = compose_cfg(*base, "ckpt_path=last", "trainer.max_epochs=2", override)
        with pytest.raises(ConfigError) as err:
            train(resume)
        assert named in str(err.value) and "\n" not in str(err.value), (override, err.value)
    both = compose_cfg(
        *base, "ckpt_path=last", "trainer.max_epochs=2", "seed=7", "data.batch_size=8"
    )
    with pytest.raises(ConfigError, match=r"data\.batch_size: checkpoint 64, config 8; seed:"):
        train(both)
    assert Path(cfg.outputs.metrics).read_bytes() == metrics


def test_best_metric_travels_in_the_checkpoint(compose_cfg, tmp_path: Path) -> None:
    """val_acc_best after a resume is the best over all epochs, as uninterrupted."""
    run = ("scheduler=none", "callbacks.early_stopping.patience=10")
    whole = compose_cfg(*run, "trainer.max_epochs=3", tmp_dir=tmp_path / "whole")
    train(whole)
    part = tmp_path / "part"
    train(compose_cfg(*run, "trainer.max_epochs=2", tmp_dir=part))
    resumed = compose_cfg(*run, "trainer.max_epochs=3", "ckpt_path=last", tmp_dir=part)
    train(resumed)
    a, b = (Path(c.outputs.metrics).read_text() for c in (whole, resumed))
    assert a == b
    metrics = json.loads(b)
    rows = Path(resumed.outputs.curves).read_text().splitlines()
    val_acc = [float(r.split(",")[4]) for r in rows[1:]]
    assert rows[0].split(",")[4] == "val_acc" and metrics["val_acc_best"] == max(val_acc)
    last = torch.load(resumed.outputs.last_checkpoint, weights_only=True)
    assert last["val_acc_best"] == metrics["val_acc_best"]


def test_resuming_a_finished_run_is_refused(compose_cfg) -> None:
    cfg = compose_cfg("trainer.max_epochs=2")
    train(cfg)
    before = {p: Path(p).read_bytes() for p in (cfg.outputs.metrics, cfg.outputs.curves)}
    with pytest.raises(ConfigError, match=r"already finished \(2 epochs, trainer\.max_epochs=2\)"):
        train(compose_cfg("trainer.max_epochs=2", "ckpt_path=last"))
    assert {p: Path(p).read_bytes() for p in before} == before


def test_resuming_an_early_stopped_run_is_refused(compose_cfg) -> None:
    # min_delta larger than any loss: no epoch after the first improves, patience 1 stops at 1
    stop = ("scheduler=none", "callbacks.early_stopping.patience=1")
    stop += ("callbacks.early_stopping.min_delta=100", "trainer.max_epochs=5")
    cfg = compose_cfg(*stop)
    assert train(cfg)["epochs"] == 2
    before = Path(cfg.outputs.metrics).read_bytes()
    with pytest.raises(ConfigError, match="early stopping already ended that run at epoch 1"):
        train(compose_cfg(*stop, "ckpt_path=last"))
    assert Path(cfg.outputs.metrics).read_bytes() == before


@pytest.mark.parametrize("damage", ["empty", "truncated"])
def test_a_damaged_checkpoint_is_refused_in_one_line(compose_cfg, damage: str) -> None:
    cfg = compose_cfg("trainer.max_epochs=1", "scheduler=none")
    train(cfg)
    last = Path(cfg.outputs.last_checkpoint)
    last.write_bytes(b"" if damage == "empty" else last.read_bytes()[:1000])
    with pytest.raises(ArtifactError, match=r"ckpt_path=last: cannot read .*last\.ckpt") as err:
        train(compose_cfg("trainer.max_epochs=2", "scheduler=none", "ckpt_path=last"))
    assert "\n" not in str(err.value)


def test_resume_extends_a_constant_schedule(compose_cfg) -> None:
    first = train(compose_cfg("scheduler=none"))
    assert first["epochs"] == 1 and first["global_step"] == 3
    resumed = train(compose_cfg("scheduler=none", "ckpt_path=last", "trainer.max_epochs=2"))
    assert resumed["epochs"] == 2 and resumed["global_step"] == 6

"""train(cfg) through the real composed config; the CLI, a sweep and DDP as real processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from omegaconf import DictConfig

from mlpipe.common.errors import ConfigError, NonFiniteLossError, UnavailableError
from mlpipe.train.run import train

METRIC_KEYS = {"test_acc", "test_loss", "val_acc_best", "epochs", "global_step", "seed", "data_md5"}


def _read(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())


def test_fast_dev_run(compose_cfg) -> None:
    cfg = compose_cfg("trainer.fast_dev_run=true", shrink=False)
    metrics = train(cfg)
    assert 0.0 <= metrics["test_acc"] <= 1.0 and metrics["test_loss"] > 0
    assert set(_read(cfg.outputs.metrics)) == METRIC_KEYS


def test_short_run_writes_checkpoints_metrics_and_logs(cfg_train: DictConfig) -> None:
    metrics = train(cfg_train)
    for key in ("best_checkpoint", "last_checkpoint"):
        assert Path(cfg_train.outputs[key]).is_file(), key
    written = _read(cfg_train.outputs.metrics)
    assert set(written) == METRIC_KEYS
    assert written["test_acc"] == metrics["test_acc"] and written["seed"] == cfg_train.seed
    assert written["data_md5"].endswith(".dir")
    timing = _read(cfg_train.outputs.timing)
    assert timing["train_wall_s"] > 0 and timing["world_size"] == 1
    assert not set(timing) & set(written), (
        "wall-clock figures stay out of the deterministic metrics"
    )
    assert list(Path(cfg_train.paths.log_dir).rglob("metrics.csv")), "CSV logger wrote nothing"


def test_worker_count_does_not_change_the_metrics(compose_cfg, tmp_path: Path) -> None:
    # augmentation on: noise is a function of (seed, epoch, index), not of the process drawing it
    files = []
    for workers in (0, 2, 0):
        run = tmp_path / f"w{workers}-{len(files)}"
        cfg = compose_cfg(
            "trainer.limit_train_batches=5", f"data.num_workers={workers}", tmp_dir=run
        )
        assert cfg.data.augment.train
        train(cfg)
        files.append(Path(cfg.outputs.metrics).read_bytes())
    assert files[0] == files[1] == files[2]


def test_resume_without_checkpoint_names_the_file(compose_cfg) -> None:
    cfg = compose_cfg("ckpt_path=last")
    with pytest.raises(FileNotFoundError, match=r"last\.ckpt not found.*mlpipe-train"):
        train(cfg)


def test_tensorboard_logger_option(compose_cfg) -> None:
    cfg = compose_cfg("logger=tensorboard")
    train(cfg)
    assert list(Path(cfg.paths.log_dir).rglob("events.out.tfevents.*"))


def test_nan_loss_stops_training_with_a_message(compose_cfg) -> None:
    cfg = compose_cfg("optimizer.lr=1e30", "scheduler=none")
    with pytest.raises(NonFiniteLossError, match=r"training loss is (nan|inf).*optimizer\.lr"):
        train(cfg)
    assert not Path(cfg.outputs.metrics).exists()


@pytest.mark.parametrize(
    "override,key",
    [
        ("data.batch_size=0", r"data\.batch_size"),
        ("data.augment.noise_std=-1", r"data\.augment\.noise_std"),
        ("optimizer.lr=0", r"optimizer\.lr"),
        ("trainer.max_epochs=0", r"trainer\.max_epochs"),
        ("model.net.image_size=9", r"model\.net\.image_size"),
        ("model.net.activation=tanh", r"model\.net\.activation"),
        ("repro.threads=0", r"repro\.threads"),
        ("repro.aten_cpu_capability=avx3", r"repro\.aten_cpu_capability"),
        ("seed=-1", r"seed"),
        ("optimized_metric=test_acc", r"optimized_metric"),
        ("optimizer.lr='1e-3'", r"optimizer\.lr: must be a number, got '1e-3'"),
        ("optimizer.weight_decay=-1", r"optimizer\.weight_decay: must be >= 0"),
        ("+optimizer.lrr=0.1", r"optimizer\.lrr: torch\.optim\.AdamW has no such argument"),
        ("data.split.seed=-1", r"data\.split\.seed: must be an integer >= 0"),
        ("model.net.channels=[]", r"model\.net\.channels: must be a non-empty list"),
        ("optimizer._target_=torch.optim.Nope", r"optimizer\._target_: cannot use"),
    ],
)
def test_invalid_values_name_the_key(compose_cfg, override: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key) as err:
        train(compose_cfg(override))
    assert "\n" not in str(err.value)


def test_sgd_momentum_is_checked(compose_cfg) -> None:
    with pytest.raises(ConfigError, match=r"optimizer\.momentum: must be >= 0, got -1"):
        train(compose_cfg("optimizer=sgd", "optimizer.momentum=-1"))


@pytest.mark.skipif(
    torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA"
)
def test_gpu_trainer_without_cuda_is_one_line(compose_cfg) -> None:
    with pytest.raises(UnavailableError, match=r"trainer\.accelerator=gpu: .*use trainer=cpu"):
        train(compose_cfg("trainer=gpu"))


def test_curves_have_one_row_per_epoch_trained(compose_cfg) -> None:
    """Testing the best checkpoint restores its callback state; the curves must still hold every
    epoch. mode=max makes the best checkpoint the worst epoch (an early one), not the last."""
    cfg = compose_cfg("trainer.max_epochs=4", "callbacks.model_checkpoint.mode=max")
    metrics = train(cfg)
    assert torch.load(cfg.outputs.best_checkpoint, weights_only=True)["epoch"] < 3
    rows = Path(cfg.outputs.curves).read_text().splitlines()[1:]
    assert [int(r.split(",")[0]) for r in rows] == list(range(metrics["epochs"]))
    assert metrics["epochs"] == 4


def test_checkpoints_are_written_atomically_beside_the_target(compose_cfg) -> None:
    from mlpipe.train.checkpoint_io import AtomicCheckpointIO
    from mlpipe.train.run import build

    _, _, trainer = build(compose_cfg())
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)


def _cli(
    root: Path, tmp_path: Path, *args: str, timeout: float = 240, env: dict | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the installed console script on the real config, outputs under tmp_path."""
    exe = Path(sys.executable).parent / "mlpipe-train"
    paths = [
        f"paths.log_dir={tmp_path}/logs",
        f"paths.artifacts_dir={tmp_path}/artifacts",
        f"paths.reports_dir={tmp_path}/reports",
    ]
    return subprocess.run(
        [str(exe), *args, *paths, "callbacks.progress_bar.refresh_rate=0"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def test_cli_reports_invalid_value_without_traceback(repo_root: Path, tmp_path: Path) -> None:
    proc = _cli(repo_root, tmp_path, "data.batch_size=0", f"hydra.run.dir={tmp_path}/run")
    assert proc.returncode != 0
    assert "data.batch_size" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_multirun_sweep_keeps_jobs_apart(
    repo_root: Path, tmp_path: Path, dvc_data: Path, shrink_overrides
) -> None:
    sweep = tmp_path / "multirun"
    proc = _cli(
        repo_root,
        tmp_path,
        "-m",
        "optimizer.lr=0.001,0.01",
        f"hydra.sweep.dir={sweep}",
        *shrink_overrides,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = [_read(sweep / str(job) / "reports" / "train" / "metrics.json") for job in (0, 1)]
    assert all(0.0 <= r["test_acc"] <= 1.0 for r in results)
    assert not (tmp_path / "reports").exists(), (
        "sweep jobs must not overwrite the pipeline's outputs"
    )


@pytest.mark.slow
def test_only_pipeline_runs_write_the_tracked_outputs(
    repo_root: Path, tmp_path: Path, dvc_data: Path, shrink_overrides
) -> None:
    quick = _cli(repo_root, tmp_path, f"hydra.run.dir={tmp_path}/run", *shrink_overrides)
    assert quick.returncode == 0, quick.stderr[-3000:]
    assert (tmp_path / "run" / "checkpoints" / "best.ckpt").is_file()
    assert (tmp_path / "run" / "reports" / "train" / "metrics.json").is_file()
    assert not (tmp_path / "reports").exists() and not (tmp_path / "artifacts").exists(), (
        "a quick run must not overwrite the pipeline's outputs"
    )
    stage = _cli(
        repo_root, tmp_path, "pipeline=true", f"hydra.run.dir={tmp_path}/run2", *shrink_overrides
    )
    assert stage.returncode == 0, stage.stderr[-3000:]
    for rel in (
        "artifacts/checkpoints/best.ckpt",
        "reports/train/metrics.json",
        "reports/train/curves.csv",
    ):
        assert (tmp_path / rel).is_file(), rel


@pytest.mark.parametrize("pipeline", [False, True])
def test_resolved_config_shows_the_paths_the_run_writes(
    repo_root: Path, tmp_path: Path, pipeline: bool
) -> None:
    """`--cfg job --resolve` prints the outputs the run really writes: its own run dir (what
    test_only_pipeline_runs_write_the_tracked_outputs checks on disk), the tracked paths only
    under pipeline=true."""
    run_dir = tmp_path / "run"
    args = ["--cfg", "job", "--resolve", f"hydra.run.dir={run_dir}", f"pipeline={pipeline}"]
    proc = _cli(repo_root, tmp_path, *args, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    resolved = yaml.safe_load(proc.stdout)
    outputs = resolved["outputs"]
    assert resolved["callbacks"]["model_checkpoint"]["dirpath"] == str(
        Path(outputs["best_checkpoint"]).parent
    ), "Lightning's checkpoints go beside best.ckpt"
    expected = {
        "best_checkpoint": "artifacts/checkpoints/best.ckpt"
        if pipeline
        else "checkpoints/best.ckpt",
        "metrics": "reports/train/metrics.json",
        "curves": "reports/train/curves.csv",
    }
    base = tmp_path if pipeline else run_dir
    for key, rel in expected.items():
        assert outputs[key] == str(base / rel), (key, outputs[key])


@pytest.mark.slow
def test_sigterm_exits_143_without_metrics(
    repo_root: Path, tmp_path: Path, dvc_data: Path, shrink_overrides
) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}
    kill = ["+callbacks.kill._target_=kill_callback.KillAt", "+callbacks.kill.epoch=0"]
    kill += ["+callbacks.kill.batch=1", f"+callbacks.kill.signum={int(signal.SIGTERM)}"]
    proc = _cli(
        repo_root, tmp_path, f"hydra.run.dir={tmp_path}/run", *shrink_overrides, *kill, env=env
    )
    assert proc.returncode == 143, (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "run" / "reports" / "train" / "metrics.json").exists()


@pytest.mark.slow
def test_concurrent_runs_get_their_own_run_dirs(
    repo_root: Path, tmp_path: Path, dvc_data: Path, shrink_overrides
) -> None:
    """Started together (same second): each run has its own directory, checkpoints and metrics."""
    exe = Path(sys.executable).parent / "mlpipe-train"
    args = [
        f"paths.log_dir={tmp_path}/logs",
        *shrink_overrides,
        "callbacks.progress_bar.refresh_rate=0",
    ]
    procs = [
        subprocess.Popen(
            [str(exe), *args, f"seed={seed}"], cwd=repo_root, stderr=subprocess.PIPE, text=True
        )
        for seed in (1, 2)
    ]
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [e[-2000:] for e in errors]
    runs = sorted((tmp_path / "logs" / "train" / "runs").iterdir())
    assert len(runs) == 2, runs
    seeds = {_read(r / "reports" / "train" / "metrics.json")["seed"] for r in runs}
    assert seeds == {1, 2}
    assert all((r / "checkpoints" / "best.ckpt").is_file() for r in runs)
    csv_logs = list((tmp_path / "logs" / "train" / "csv").iterdir())
    assert len(csv_logs) == 2, "each run logs into its own CSV logger version"


def test_sweep_objective_is_the_best_validation_metric(compose_cfg) -> None:
    cfg = compose_cfg()
    assert cfg.optimized_metric == "val_acc_best"
    metrics = train(cfg)
    assert metrics[cfg.optimized_metric] == _read(cfg.outputs.metrics)["val_acc_best"]
    assert 0 < metrics["val_acc_best"] <= 1  # read after fit: test() replaces callback metrics


@pytest.mark.slow
def test_ddp_two_cpu_processes(
    repo_root: Path, tmp_path: Path, dvc_data: Path, shrink_overrides
) -> None:
    proc = _cli(
        repo_root, tmp_path, "trainer=ddp", f"hydra.run.dir={tmp_path}/run", *shrink_overrides
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "distributed_backend=gloo" in proc.stderr + proc.stdout
    timing = _read(tmp_path / "run" / "reports" / "train" / "timing.json")
    assert timing["world_size"] == 2
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "best.ckpt", weights_only=True)
    assert ckpt["global_step"] > 0


def test_loader_vs_step_throughput_benchmark(compose_cfg, tmp_path: Path) -> None:
    from hydra import compose, initialize_config_dir

    from mlpipe.train.throughput import measure

    base = compose_cfg(shrink=False)
    with initialize_config_dir(
        version_base="1.3", config_dir=str(Path(base.paths.root_dir) / "conf"), job_name="test"
    ):
        cfg = compose(
            config_name="train_bench",
            overrides=[
                f"paths.root_dir={base.paths.root_dir}",
                f"paths.reports_dir={tmp_path}/reports",
                "bench.num_workers=[0]",
                "bench.passes=1",
                "bench.warmup_batches=1",
            ],
        )
    result = measure(cfg)
    assert [r["what"].split(",")[0] for r in result["rows"]] == [
        "loader",
        "loader",
        "training step (CNN",
    ]
    assert all(r["samples_per_s"] > 0 for r in result["rows"])
    assert json.loads((tmp_path / "reports" / "train" / "throughput.json").read_text()) == result

"""Is the kernel-augmented DataLoader the bottleneck of a training step? Measure both sides.

    python -m mlpipe.train.throughput                     # default model and data config
    python -m mlpipe.train.throughput model=mlp 'bench.num_workers=[0,2]'

For each `bench.num_workers` it times full passes over the train DataLoader (augmentation through
relu_module in `__getitem__`, collation, workers), and separately the training step on batches
already in memory (forward, backward, optimizer step), both in samples/s. The loader is not the
bottleneck when its rate is well above the step's. Also reported: the same loader with
augmentation off, which isolates the cost of the augmentation. Writes `bench.out` (JSON).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from tabulate import tabulate
from torch.utils.data import DataLoader

from mlpipe import config_dir
from mlpipe.common import repro
from mlpipe.common.cli import entry_point
from mlpipe.common.config import is_int, positive_int, require
from mlpipe.data.datamodule import DigitsDataModule
from mlpipe.data.dataset import DigitsDataset
from mlpipe.train.run import validate_config

log = logging.getLogger(__name__)


def loader_rate(loader: DataLoader, passes: int) -> float:
    """Samples/s of full passes over `loader` (worker start-up included, as in training)."""
    n, start = 0, time.perf_counter()
    for _ in range(passes):
        for x, _y in loader:
            n += len(x)
    return n / (time.perf_counter() - start)


def step_rate(
    module: L.LightningModule,
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    warmup: int,
    passes: int,
) -> float:
    """Samples/s of forward + backward + optimizer step on in-memory batches (no loading)."""
    optimizer = module.configure_optimizers()["optimizer"]
    module.train()

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        loss = module.criterion(module(x), y)  # (B, 10) logits vs (B,) labels
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for x, y in batches[:warmup]:
        step(x, y)
    n, start = 0, time.perf_counter()
    for _ in range(passes):
        for x, y in batches:
            step(x, y)
            n += len(x)
    return n / (time.perf_counter() - start)


def check_bench_cfg(cfg: DictConfig) -> None:
    """The training config, then the loader variants and pass counts this measurement adds."""
    validate_config(cfg)
    workers = list(cfg.bench.num_workers)
    require(
        bool(workers) and all(is_int(w) and w >= 0 for w in workers),
        "bench.num_workers",
        f"must be a non-empty list of integers >= 0, got {workers}",
    )
    positive_int(cfg.bench.passes, "bench.passes")
    positive_int(cfg.bench.warmup_batches, "bench.warmup_batches", minimum=0)


def loader_rows(dm: DigitsDataModule, bench: DictConfig) -> list[dict[str, Any]]:
    """Samples/s of the train loader with the kernel augmentation per worker count, then off."""
    rows = []
    for workers in bench.num_workers:
        dm.cfg["num_workers"] = int(workers)
        rate = loader_rate(dm.train_dataloader(), int(bench.passes))
        rows.append(
            {
                "what": "loader, augmented (relu_module)",
                "num_workers": int(workers),
                "samples_per_s": rate,
            }
        )
    augmented = dm.datasets["train"]
    dm.datasets["train"], dm.cfg["num_workers"] = replace_augment(augmented), 0
    rate = loader_rate(dm.train_dataloader(), int(bench.passes))
    rows.append({"what": "loader, augmentation off", "num_workers": 0, "samples_per_s": rate})
    dm.datasets["train"] = augmented
    return rows


def step_row(cfg: DictConfig, dm: DigitsDataModule) -> dict[str, Any]:
    """Samples/s of the training step alone, on batches already in memory."""
    module = instantiate(
        cfg.model,
        optimizer=instantiate(cfg.optimizer),
        scheduler=None,
        scheduler_interval=cfg.scheduler.interval,
        scheduler_monitor=cfg.scheduler.monitor,
    )
    rate = step_rate(
        module, list(dm.train_dataloader()), int(cfg.bench.warmup_batches), int(cfg.bench.passes)
    )
    net = f"{cfg.model.net._target_.rsplit('.', 1)[-1]}, {cfg.model.net.activation} ReLU"
    return {"what": f"training step ({net})", "num_workers": None, "samples_per_s": rate}


def measure(cfg: DictConfig) -> dict[str, Any]:
    """Loader vs training-step throughput for the configured data, model and batch size."""
    check_bench_cfg(cfg)
    repro.set_threads(cfg.repro)
    L.seed_everything(cfg.seed, workers=True)
    dm: DigitsDataModule = instantiate(cfg.data, seed=int(cfg.seed))
    dm.setup()
    rows = loader_rows(dm, cfg.bench)
    rows.append(step_row(cfg, dm))
    train_rate = rows[-1]["samples_per_s"]
    for row in rows:
        row["samples_per_s"] = round(row["samples_per_s"], 1)
        row["vs_step"] = round(row["samples_per_s"] / train_rate, 2)
    augmented = [r["samples_per_s"] for r in rows[:-1] if "augmented" in r["what"]]
    result = {
        "batch_size": int(cfg.data.batch_size),
        "torch_threads": torch.get_num_threads(),
        "rows": rows,
        "loader_is_bottleneck": min(augmented) < train_rate,
    }
    out = Path(cfg.bench.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    return result


def replace_augment(dataset: DigitsDataset) -> DigitsDataset:
    """The same Dataset without augmentation (the arrays are shared, not copied)."""
    return DigitsDataset(dataset.images, dataset.labels, dataset.pixel_max, augment=None)


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="train_bench")
@entry_point
def main(cfg: DictConfig) -> None:
    result = measure(cfg)
    table = tabulate(
        [[r["what"], r["num_workers"], r["samples_per_s"], r["vs_step"]] for r in result["rows"]],
        headers=["", "workers", "samples/s", "x step"],
        tablefmt="github",
    )
    print(
        f"batch {result['batch_size']}, torch threads {result['torch_threads']}\n{table}\n-> "
        f"{cfg.bench.out}"
    )


if __name__ == "__main__":
    main()

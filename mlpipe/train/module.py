"""DigitsClassifier: the Lightning glue around a plain net from `mlpipe.train.nets`.

The net is passed as its config (a plain dict with `_target_`), built here, and stored in the
checkpoint's hyper_parameters as that plain dict. That keeps checkpoints loadable with
`torch.load(..., weights_only=True)` (no pickled objects), which `load_network` relies on.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import Tensor, nn
from torchmetrics import MaxMetric, MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from mlpipe.common.config import plain
from mlpipe.common.errors import ArtifactError, ArtifactMissingError, NonFiniteLossError

OptimizerFactory = Callable[..., torch.optim.Optimizer]
SchedulerFactory = Callable[..., torch.optim.lr_scheduler.LRScheduler]


def build_network(net_cfg: Mapping[str, Any] | DictConfig) -> nn.Module:
    """Instantiate a net config node (`_target_: mlpipe.train.nets.CNN` / `MLP`)."""
    return instantiate(plain(net_cfg))


class DigitsClassifier(L.LightningModule):
    """Cross-entropy classifier with torchmetrics accuracy; optimizer/scheduler from partials."""

    def __init__(
        self,
        net: Mapping[str, Any] | DictConfig,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory | None = None,
        scheduler_interval: str = "epoch",
        scheduler_monitor: str = "val/loss",
        schedule: Mapping[str, Any] | None = None,
        cpu_contract: Mapping[str, Any] | None = None,
        run_config: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        net = plain(net)  # hparams must be plain containers (weights_only checkpoints)
        # `schedule`: the resolved optimizer + scheduler config, stored so that a resume can refuse
        # a config whose schedule differs from the one the checkpoint's optimizer state belongs to.
        schedule = plain(schedule) if schedule is not None else None
        # `cpu_contract`: the CPU contract in force and the kernel level ATen dispatched to
        # (mlpipe.common.repro.record): which float rounding these weights were trained with.
        cpu_contract = plain(cpu_contract) if cpu_contract is not None else None
        # `run_config`: every other setting that decides the result (data, split, seed, ...),
        # stored for the same check (mlpipe.train.resume).
        run_config = plain(run_config) if run_config is not None else None
        self.save_hyperparameters(ignore=["optimizer", "scheduler"])
        self.net = build_network(net)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.criterion = nn.CrossEntropyLoss()
        num_classes = int(net["num_classes"])
        self.train_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.train_loss, self.val_loss, self.test_loss = MeanMetric(), MeanMetric(), MeanMetric()
        self.val_acc_best = MaxMetric()
        self._restored_best: float | None = None  # from a checkpoint, until training starts

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)  # (B, 1, H, W) -> (B, num_classes)

    def _step(self, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        x, y = batch  # (B, 1, H, W), (B,)
        logits = self(x)  # (B, num_classes)
        return self.criterion(logits, y), logits, y

    def on_train_start(self) -> None:
        self.val_acc_best.reset()  # sanity-check batches must not count as the best epoch
        if self._restored_best is not None:  # a resumed run keeps the best of its earlier epochs
            self.val_acc_best.update(torch.tensor(self._restored_best))

    def best_val_acc(self) -> float | None:
        """The best validation accuracy of the run so far (earlier epochs of a resume included)."""
        if self.val_acc_best.update_count == 0:
            return self._restored_best
        return float(self.val_acc_best.compute())

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        loss, logits, y = self._step(batch)
        if not torch.isfinite(loss):
            trainer = self._trainer  # None when the step is called outside a Trainer
            lr = (
                trainer.optimizers[0].param_groups[0]["lr"]
                if trainer is not None and trainer.optimizers
                else None
            )
            raise NonFiniteLossError(
                f"training loss is {loss.item()} at epoch {self.current_epoch}, batch {batch_idx} "
                f"(learning rate {lr}); "
                "stopping. Lower optimizer.lr or check the data and data.augment settings."
            )
        self.train_loss(loss)
        self.train_acc(logits, y)
        self.log("train/loss", self.train_loss, on_step=False, on_epoch=True, prog_bar=True)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        loss, logits, y = self._step(batch)
        self.val_loss(loss)
        self.val_acc(logits, y)
        self.log("val/loss", self.val_loss, on_step=False, on_epoch=True, prog_bar=True)
        self.log("val/acc", self.val_acc, on_step=False, on_epoch=True, prog_bar=True)

    def on_validation_epoch_end(self) -> None:
        self.val_acc_best(self.val_acc.compute())
        self.log("val/acc_best", self.val_acc_best.compute(), sync_dist=True, prog_bar=True)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        loss, logits, y = self._step(batch)
        self.test_loss(loss)
        self.test_acc(logits, y)
        self.log("test/loss", self.test_loss, on_step=False, on_epoch=True)
        self.log("test/acc", self.test_acc, on_step=False, on_epoch=True)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Sampling and augmentation are pure functions of (seed, epoch, index); what still draws
        # from torch's global generator (dropout, DataLoader worker seeds) resumes from here.
        checkpoint["rng_states"] = {"torch": torch.get_rng_state()}
        # MaxMetric state is not part of state_dict: without this a resume forgot the best epoch
        checkpoint["val_acc_best"] = self.best_val_acc()
        if torch.cuda.is_available():
            checkpoint["rng_states"]["cuda"] = torch.cuda.get_rng_state_all()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._restored_best = checkpoint.get("val_acc_best")
        states = checkpoint.get("rng_states")
        if not states:
            return
        torch.set_rng_state(states["torch"])
        if "cuda" in states and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(states["cuda"])

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = self.optimizer_factory(params=self.parameters())
        if self.scheduler_factory is None:
            return {"optimizer": optimizer}
        scheduler = self.scheduler_factory(optimizer=optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {
                "scheduler": scheduler,
                "interval": self.hparams.scheduler_interval,
                "monitor": self.hparams.scheduler_monitor,
            },
        }


def load_network(ckpt_path: str | Path, **net_overrides: Any) -> nn.Module:
    """The trained plain net from a DigitsClassifier checkpoint, in eval mode, on CPU.

    Loaded with `weights_only=True`: no code from the file runs. `net_overrides` replace keys of
    the stored net config, e.g. `activation="relu_module"` (weights are unaffected).
    """
    path = Path(ckpt_path)
    if not path.is_file():
        raise ArtifactMissingError(
            f"checkpoint {path} not found; create it with `make train` (or `mlpipe-train`)"
        )
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    try:
        net_cfg = dict(ckpt["hyper_parameters"]["net"])
    except (KeyError, TypeError) as err:
        raise ArtifactError(
            f"{path} is not a DigitsClassifier checkpoint (no hyper_parameters.net); "
            "point at a .ckpt written by `mlpipe-train`"
        ) from err
    net_cfg.update(net_overrides)
    net = build_network(net_cfg)
    state = {
        k.removeprefix("net."): v for k, v in ckpt["state_dict"].items() if k.startswith("net.")
    }
    net.load_state_dict(state)
    return net.eval()

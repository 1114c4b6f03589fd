"""LightningDataModule over the DVC-tracked digits; built from `cfg.data` via `instantiate`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning as L
from torch.utils.data import DataLoader

from mlpipe.data.dataset import Augment, DigitsDataset
from mlpipe.data.digits import SPLITS, load_digits, split_indices, validate_data_cfg
from mlpipe.data.sampler import EpochSampler


class DigitsDataModule(L.LightningDataModule):
    """Verifies the data against data.dvc, splits it, and serves augmented/plain loaders.

    `seed` (the run's global seed, passed by `mlpipe.train.run`) fixes the training order and the
    augmentation noise as functions of (seed, epoch, index): see `mlpipe.data.sampler`.
    """

    def __init__(
        self,
        data_dir: str,
        dvc_file: str,
        filename: str,
        image_size: int,
        num_classes: int,
        pixel_max: float,
        split: Mapping[str, Any],
        augment: Mapping[str, Any],
        batch_size: int,
        eval_batch_size: int,
        num_workers: int,
        pin_memory: bool,
        persistent_workers: bool,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.cfg: dict[str, Any] = {
            "data_dir": data_dir,
            "dvc_file": dvc_file,
            "filename": filename,
            "image_size": image_size,
            "num_classes": num_classes,
            "pixel_max": pixel_max,
            "split": dict(split),
            "augment": dict(augment),
            "batch_size": batch_size,
            "eval_batch_size": eval_batch_size,
            "num_workers": num_workers,
            "pin_memory": pin_memory,
            "persistent_workers": persistent_workers,
        }
        validate_data_cfg(self.cfg)
        self.seed = int(seed)
        self.datasets: dict[str, DigitsDataset] = {}
        self.data_md5: str | None = None

    def dataset(self, split: str) -> DigitsDataset:
        """The Dataset of one split, with augmentation as `data.augment.<split>` says."""
        aug = self.cfg["augment"]
        augment = (
            Augment(float(aug["noise_std"]), float(aug["scale_jitter"])) if aug[split] else None
        )
        return DigitsDataset(
            self._images[self._idx[split]],
            self._labels[self._idx[split]],
            float(self.cfg["pixel_max"]),
            augment,
            self.seed,
        )

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        digits = load_digits(self.cfg)
        self._images, self._labels, self.data_md5 = digits.images, digits.labels, digits.data_md5
        self._idx = split_indices(self.cfg, digits.labels)
        self.datasets = {split: self.dataset(split) for split in SPLITS}

    def _first_epoch(self) -> int:
        """The epoch the fit loop runs next (a resumed run's first epoch; 0 outside a Trainer)."""
        trainer = self.trainer
        return int(trainer.fit_loop.epoch_progress.current.processed) if trainer is not None else 0

    def _loader(self, split: str, batch_size: int, shuffle: bool, epoch: int = 0) -> DataLoader:
        workers = int(self.cfg["num_workers"])
        dataset = self.datasets[split]
        return DataLoader(
            dataset,
            batch_size=batch_size,
            # (epoch, index) keys: the order and the noise of an epoch do not depend on resume
            sampler=EpochSampler(len(dataset), self.seed, shuffle=shuffle, epoch=epoch),
            num_workers=workers,
            pin_memory=bool(self.cfg["pin_memory"]),
            persistent_workers=bool(self.cfg["persistent_workers"]) and workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        # Lightning (2.6) starts the loader's iterator, and so the workers' prefetch, before its
        # `set_epoch`: a resumed run's sampler must know its first epoch from the start, or the
        # prefetched batches replay epoch 0's order and noise.
        epoch = self._first_epoch()
        return self._loader("train", int(self.cfg["batch_size"]), shuffle=True, epoch=epoch)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", int(self.cfg["eval_batch_size"]), shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", int(self.cfg["eval_batch_size"]), shuffle=False)

"""Per-sample Dataset whose augmentation runs through the relu_module C++ kernel.

Augmentation (train only, from `data.augment`): additive Gaussian noise in raw pixel units, then
`relu_module.relu_` so intensities stay non-negative, then a random intensity factor. Every sample,
augmented or not, is finally scaled to [0, 1] by the same expression `load_split` uses, so eval
batches equal `load_split` arrays bit for bit.

The noise is a pure function of (seed, epoch, index) (`mlpipe.data.sampler.sample_rng`): it does not
depend on which process draws it, how many DataLoader workers there are, or whether the run was
resumed from a checkpoint. The training sampler passes `(epoch, index)` keys; a plain integer index
(evaluation loaders) means epoch 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

import relu_module
from mlpipe.data.digits import scale
from mlpipe.data.sampler import sample_rng

#: What `DigitsDataset.__getitem__` accepts: an index, or `(epoch, index)` from `EpochSampler`.
SampleKey = int | tuple[int, int]


@dataclass(frozen=True)
class Augment:
    """Noise -> kernel ReLU -> intensity jitter, on raw (unscaled) float32 images."""

    noise_std: float  # std of the additive noise, in raw pixel units
    scale_jitter: float  # intensity factor drawn uniformly from [1 - j, 1 + j]

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """An augmented copy of `image` (1, H, W) drawn from `rng`; the input is left unchanged."""
        noise = rng.standard_normal(image.shape, dtype=np.float32)  # (1, H, W)
        out = image + np.float32(self.noise_std) * noise
        relu_module.relu_(out)  # the C++ kernel, in place: clamps negative intensities to 0
        factor = 1.0 + self.scale_jitter * (2.0 * rng.random() - 1.0)
        out *= np.float32(factor)
        return out


class DigitsDataset(Dataset):
    """Raw images plus labels; `__getitem__` augments (optionally) and scales one sample."""

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        pixel_max: float,
        augment: Augment | None,
        seed: int = 0,
    ) -> None:
        if images.ndim != 4 or images.dtype != np.float32:
            raise ValueError(
                f"images must be float32 (N, C, H, W), got {images.dtype} {images.shape}"
            )
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = images  # (N, 1, H, W) raw intensities
        self.labels = labels  # (N,) int64
        self.pixel_max = pixel_max
        self.augment = augment
        self.seed = seed  # with (epoch, index), decides each sample's augmentation

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, key: SampleKey) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        image = self.images[index]  # (1, H, W)
        if self.augment is not None:
            image = self.augment(image, sample_rng(self.seed, epoch, int(index)))
        x = scale(image, self.pixel_max)
        return torch.from_numpy(x), torch.tensor(self.labels[index])

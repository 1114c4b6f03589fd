"""Per-sample Dataset whose augmentation runs through the relu_module C++ kernel.

Augmentation (train only, from `data.augment`): additive Gaussian noise in raw pixel units, then
`relu_module.relu_` so intensities stay non-negative, then a random intensity factor. Every sample,
augmented or not, is finally scaled to [0, 1] by the same expression `load_split` uses, so eval
batches equal `load_split` arrays bit for bit.

Random numbers come from torch's generator: Lightning's `seed_everything(workers=True)` seeds it in
the main process and in every DataLoader worker, so runs are reproducible with any `num_workers`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

import relu_module
from mlpipe.data.digits import scale


@dataclass(frozen=True)
class Augment:
    """Noise -> kernel ReLU -> intensity jitter, on raw (unscaled) float32 images."""

    noise_std: float  # std of the additive noise, in raw pixel units
    scale_jitter: float  # intensity factor drawn uniformly from [1 - j, 1 + j]

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """Return an augmented copy of `image` (1, H, W); the input is left unchanged."""
        noise = torch.randn(image.shape, dtype=torch.float32).numpy()  # (1, H, W)
        out = image + np.float32(self.noise_std) * noise
        relu_module.relu_(out)  # the C++ kernel, in place: clamps negative intensities to 0
        factor = 1.0 + self.scale_jitter * (2.0 * torch.rand(()).item() - 1.0)
        out *= np.float32(factor)
        return out


class DigitsDataset(Dataset):
    """Raw images plus labels; `__getitem__` augments (optionally) and scales one sample."""

    def __init__(
        self, images: np.ndarray, labels: np.ndarray, pixel_max: float, augment: Augment | None
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

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.images[index]  # (1, H, W)
        if self.augment is not None:
            image = self.augment(image)
        x = scale(image, self.pixel_max)
        return torch.from_numpy(x), torch.tensor(self.labels[index])

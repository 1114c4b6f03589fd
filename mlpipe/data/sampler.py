"""Random numbers that are pure functions of (seed, epoch, index), so a resumed run, a run with
more DataLoader workers and an uninterrupted run draw exactly the same numbers.

Stream keys are numpy `SeedSequence` spawn keys; the first element separates the purposes (the
sampler's epoch permutation vs. one sample's augmentation), so the two never share a stream.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from torch.utils.data import Sampler

_SAMPLER_STREAM = 0
_AUGMENT_STREAM = 1


def epoch_rng(seed: int, epoch: int) -> np.random.Generator:
    """The generator of one epoch's sample order."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_SAMPLER_STREAM, epoch)))


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator of one sample's augmentation in one epoch."""
    key = (_AUGMENT_STREAM, epoch, index)
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


class EpochSampler(Sampler[tuple[int, int]]):
    """Yields `(epoch, index)` keys: a permutation of the dataset drawn from `(seed, epoch)`.

    Lightning calls `set_epoch` before every epoch, so the order depends on the epoch number only.
    After a resume it calls it only after the loader's workers began to prefetch, so `epoch` (the
    first epoch to run) is given at construction too. The dataset receives the epoch with each
    index, which keeps per-sample augmentation correct in worker processes.
    """

    def __init__(self, num_samples: int, seed: int, shuffle: bool = True, epoch: int = 0) -> None:
        self.num_samples = num_samples
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = epoch

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = (
            epoch_rng(self.seed, self.epoch).permutation(self.num_samples)
            if self.shuffle
            else np.arange(self.num_samples)
        )
        return ((self.epoch, int(i)) for i in order)

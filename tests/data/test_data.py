"""Data: integrity against data.dvc, stratified deterministic splits, the kernel in __getitem__."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import DictConfig, OmegaConf

import relu_module
from mlpipe.common.errors import ConfigError, DataCorruptedError, DataMissingError
from mlpipe.data import dataset as dataset_mod
from mlpipe.data import (
    load_digits,
    load_split,
    stratified_split,
)
from mlpipe.data.datamodule import DigitsDataModule
from mlpipe.data.dataset import Augment, DigitsDataset
from mlpipe.data.sampler import EpochSampler, sample_rng

N_IMAGES = 1797


@pytest.fixture
def data_cfg(cfg_train: DictConfig) -> DictConfig:
    return cfg_train.data


def _copy_data(data_cfg: DictConfig, tmp_path: Path) -> DictConfig:
    """A private copy of data/ (same data.dvc), safe to damage."""
    target = tmp_path / "data"
    shutil.copytree(data_cfg.data_dir, target)
    cfg = OmegaConf.create(OmegaConf.to_container(data_cfg, resolve=True))
    cfg.data_dir = str(target)
    return cfg


def test_splits_partition_the_data_with_dtypes_and_ranges(data_cfg: DictConfig) -> None:
    parts = {s: load_split(data_cfg, s) for s in ("train", "val", "test")}
    assert sum(len(y) for _, y in parts.values()) == N_IMAGES
    for name, (x, y) in parts.items():
        assert x.dtype == np.float32 and x.shape[1:] == (1, 8, 8) and x.flags.c_contiguous, name
        assert y.dtype == np.int64 and y.shape == (len(x),)
        assert 0.0 <= x.min() and x.max() <= 1.0
    n_test, n_val = len(parts["test"][1]), len(parts["val"][1])
    assert abs(n_test - N_IMAGES * data_cfg.split.test_fraction) <= 10
    assert abs(n_val - N_IMAGES * data_cfg.split.val_fraction) <= 10


def test_split_is_stratified_and_disjoint() -> None:
    labels = np.repeat(np.arange(10), [178, 182, 177, 183, 181, 182, 181, 179, 174, 180])
    idx = stratified_split(labels, 0.1, 0.2, seed=0)
    all_idx = np.concatenate(list(idx.values()))
    assert np.array_equal(np.sort(all_idx), np.arange(len(labels)))
    overall = np.bincount(labels) / len(labels)
    for name, part in idx.items():
        frac = np.bincount(labels[part], minlength=10) / len(part)
        assert np.abs(frac - overall).max() < 0.01, name


def test_split_is_deterministic_and_seeded(data_cfg: DictConfig) -> None:
    x1, y1 = load_split(data_cfg, "test")
    x2, y2 = load_split(data_cfg, "test")
    assert np.array_equal(x1, x2) and np.array_equal(y1, y2)
    other = OmegaConf.merge(data_cfg, {"split": {"seed": data_cfg.split.seed + 1}})
    x3, _ = load_split(other, "test")
    assert not np.array_equal(x1, x3)


def test_unknown_split_is_rejected(data_cfg: DictConfig) -> None:
    with pytest.raises(ValueError, match=r"'holdout'.*train.*val.*test"):
        load_split(data_cfg, "holdout")


def test_getitem_goes_through_relu_module_and_matches_reference(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = []
    real = relu_module.relu_

    def spy(x: np.ndarray) -> np.ndarray:  # records the call, then runs the real kernel
        calls.append(x.copy())
        return real(x)

    monkeypatch.setattr(dataset_mod.relu_module, "relu_", spy)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 17, size=(6, 1, 8, 8)).astype(np.float32)
    augment = Augment(noise_std=3.0, scale_jitter=0.2)
    ds = DigitsDataset(
        images, np.arange(6, dtype=np.int64), pixel_max=16.0, augment=augment, seed=123
    )

    before = images[4].copy()
    torch.manual_seed(0)
    x, y = ds[(2, 4)]  # epoch 2, index 4
    torch.manual_seed(1)  # torch's global generator plays no part
    assert torch.equal(ds[(2, 4)][0], x) and not torch.equal(ds[(3, 4)][0], x)
    rng = sample_rng(123, 2, 4)  # the same draws, computed with numpy as the reference
    noise = rng.standard_normal((1, 8, 8), dtype=np.float32)
    factor = np.float32(1.0 + 0.2 * (2.0 * rng.random() - 1.0))
    ref = np.maximum(images[4] + np.float32(3.0) * noise, 0) * factor / np.float32(16.0)

    assert len(calls) == 3 and (calls[0] < 0).any(), (
        "the kernel saw the noisy (partly negative) image"
    )
    np.testing.assert_array_equal(x.numpy(), ref)
    assert x.dtype == torch.float32 and x.shape == (1, 8, 8) and int(y) == 4
    assert (x >= 0).all()
    np.testing.assert_array_equal(
        images[4], before, err_msg="the stored image must stay unaugmented"
    )


def test_epoch_sampler_order_is_a_function_of_seed_and_epoch() -> None:
    a, b = EpochSampler(50, seed=7), EpochSampler(50, seed=7)
    a.set_epoch(3)
    list(b)  # an earlier epoch drawn first changes nothing
    b.set_epoch(3)
    keys = list(a)
    assert keys == list(b) and sorted(i for _, i in keys) == list(range(50))
    assert all(epoch == 3 for epoch, _ in keys)
    b.set_epoch(4)
    assert [i for _, i in b] != [i for _, i in keys]
    assert [i for _, i in EpochSampler(5, seed=7, shuffle=False)] == [0, 1, 2, 3, 4]


def test_eval_datasets_equal_load_split(data_cfg: DictConfig) -> None:
    dm = DigitsDataModule(**{k: v for k, v in data_cfg.items() if k != "_target_"})
    dm.setup()
    assert dm.datasets["train"].augment is not None
    for split in ("val", "test"):
        x_ref, y_ref = load_split(data_cfg, split)
        assert dm.datasets[split].augment is None
        loader = dm.val_dataloader() if split == "val" else dm.test_dataloader()
        batches = list(loader)
        x, y = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
        np.testing.assert_array_equal(x.numpy(), x_ref)
        np.testing.assert_array_equal(y.numpy(), y_ref)


def test_augmentation_switches_come_from_config(data_cfg: DictConfig) -> None:
    cfg = OmegaConf.merge(data_cfg, {"augment": {"train": False, "test": True}})
    dm = DigitsDataModule(**{k: v for k, v in cfg.items() if k != "_target_"})
    dm.setup()
    assert dm.datasets["train"].augment is None and dm.datasets["test"].augment is not None


def test_missing_data_says_dvc_pull(data_cfg: DictConfig, tmp_path: Path) -> None:
    cfg = OmegaConf.merge(data_cfg, {"data_dir": str(tmp_path / "absent")})
    with pytest.raises(DataMissingError, match=r"dvc pull"):
        load_split(cfg, "train")


def test_corrupted_file_is_named(data_cfg: DictConfig, tmp_path: Path) -> None:
    cfg = _copy_data(data_cfg, tmp_path)
    target = Path(cfg.data_dir) / "digits.csv.gz"
    with gzip.open(target, "rt") as fh:
        text = fh.read()
    with gzip.open(target, "wt") as fh:  # still a valid file: one pixel value changed
        fh.write(text.replace("0,0,5,13", "0,0,6,13", 1))
    with pytest.raises(DataCorruptedError, match=r"digits\.csv\.gz changed.*dvc checkout"):
        load_split(cfg, "train")


def test_truncated_file_is_named(data_cfg: DictConfig, tmp_path: Path) -> None:
    cfg = _copy_data(data_cfg, tmp_path)
    target = Path(cfg.data_dir) / "digits.csv.gz"
    target.write_bytes(target.read_bytes()[:1000])
    with pytest.raises(DataCorruptedError, match=r"digits\.csv\.gz"):
        load_digits(cfg)


def test_extra_file_is_named(data_cfg: DictConfig, tmp_path: Path) -> None:
    cfg = _copy_data(data_cfg, tmp_path)
    (Path(cfg.data_dir) / "stray.txt").write_text("x")
    with pytest.raises(DataCorruptedError, match=r"stray\.txt is not in the recorded version"):
        load_digits(cfg)


@pytest.mark.parametrize(
    "override,key",
    [
        ({"batch_size": 0}, r"data\.batch_size"),
        ({"batch_size": -3}, r"data\.batch_size"),
        ({"batch_size": True}, r"data\.batch_size"),
        ({"num_workers": -1}, r"data\.num_workers"),
        ({"augment": {"noise_std": -0.1}}, r"data\.augment\.noise_std"),
        ({"augment": {"scale_jitter": 1.5}}, r"data\.augment\.scale_jitter"),
        ({"split": {"val_fraction": 0.6, "test_fraction": 0.5}}, r"data\.split"),
        ({"split": {"test_fraction": 0.0}}, r"data\.split\.test_fraction"),
        ({"pixel_max": 0}, r"data\.pixel_max"),
    ],
)
def test_invalid_values_name_the_key(data_cfg: DictConfig, override: dict, key: str) -> None:
    cfg = OmegaConf.merge(data_cfg, override)
    with pytest.raises(ConfigError, match=key):
        load_split(cfg, "train")
    with pytest.raises(ConfigError, match=key):
        DigitsDataModule(**{k: v for k, v in cfg.items() if k != "_target_"})

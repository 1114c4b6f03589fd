"""Versioned digits data. `load_split` is the contract other stages use (no Lightning import).

The Dataset with the kernel augmentation lives in `mlpipe.data.dataset`, the LightningDataModule in
`mlpipe.data.datamodule`.
"""

from mlpipe.data.digits import (
    SPLITS,
    ConfigError,
    DataCorruptedError,
    DataError,
    DataMissingError,
    Digits,
    dvc_dir_hash,
    load_digits,
    load_split,
    recorded_dir_hash,
    stratified_split,
    validate_data_cfg,
    verify_data,
)

__all__ = [
    "SPLITS",
    "ConfigError",
    "DataCorruptedError",
    "DataError",
    "DataMissingError",
    "Digits",
    "dvc_dir_hash",
    "load_digits",
    "load_split",
    "recorded_dir_hash",
    "stratified_split",
    "validate_data_cfg",
    "verify_data",
]

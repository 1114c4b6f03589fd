"""Versioned digits data. `load_split` is the contract other stages use (no Lightning import).

The Dataset with the kernel augmentation lives in `mlpipe.data.dataset`, the LightningDataModule in
`mlpipe.data.datamodule`. Errors and the DVC hash reader live in `mlpipe.common`.
"""

from mlpipe.data.digits import (
    SPLITS,
    Digits,
    load_digits,
    load_split,
    stratified_split,
    validate_data_cfg,
    verify_data,
)

__all__ = [
    "SPLITS",
    "Digits",
    "load_digits",
    "load_split",
    "stratified_split",
    "validate_data_cfg",
    "verify_data",
]

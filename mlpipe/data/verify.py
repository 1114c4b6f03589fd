"""`mlpipe-verify-data`: the data check as its own DVC stage, upstream of train.

    mlpipe-verify-data          # data/ against data.dvc, data.dvc against its committed version

DVC deletes a stage's outputs right before running its command, so a check inside the train
stage refused changed data only after the last good checkpoint and metrics were gone. As the
`verify_data` stage (dvc.yaml), a mismatch stops `dvc repro` before train's outputs are touched.
Its one output (`verify.out`, the verified folder hash) is a dependency of train, which orders the
two. train keeps its own check for `dvc repro --single-item train`, which skips this stage.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig

from mlpipe import config_dir  # absolute conf/ path: console scripts need it
from mlpipe.common.atomic import atomic_write_text
from mlpipe.common.cli import entry_point
from mlpipe.common.errors import ArtifactError
from mlpipe.data.digits import verify_committed, verify_data

log = logging.getLogger(__name__)


def verify(cfg: DictConfig) -> str:
    """Check the data, write the verified folder hash to `verify.out`; return the hash."""
    dvc_file = Path(cfg.data.dvc_file)
    data_md5 = verify_data(Path(cfg.data.data_dir), dvc_file, required=(cfg.data.filename,))
    # `dvc repro` re-records changed data in data.dvc before any stage runs: compare with git too
    verify_committed(dvc_file)
    out = Path(cfg.verify.out)
    text = json.dumps({"data_md5": data_md5, "dvc_file": dvc_file.name}, indent=2) + "\n"
    try:
        atomic_write_text(out, text)
    except OSError as err:
        raise ArtifactError(
            f"cannot write {out}: {err}; set verify.out to a writable path"
        ) from err
    log.info("data %s matches %s and its committed version", data_md5, dvc_file.name)
    return data_md5


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="verify_data")
@entry_point
def main(cfg: DictConfig) -> None:
    """Hydra wrapper of :func:`verify`."""
    verify(cfg)


if __name__ == "__main__":
    main()

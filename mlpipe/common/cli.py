"""One failure wrapper for every console script, in the spirit of lightning-hydra-template's
`task_wrapper`: a user mistake is one line on stderr with the fix and a non-zero exit; a bug
keeps its traceback. An app whose config has a `repro` node (train, export, profile) runs
under its CPU contract (`mlpipe.common.repro.apply`, before the task).

    @hydra.main(version_base="1.3", config_path=config_dir(), config_name="train")
    @entry_point
    def main(cfg: DictConfig) -> float: ...
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from mlpipe.common import repro
from mlpipe.common.errors import UserError

log = logging.getLogger(__name__)

#: Exit status of a user mistake: 1, as Hydra's own errors (a bad override) exit, so every
#: mlpipe failure reads the same to a shell.
USER_ERROR_EXIT = 1

T = TypeVar("T")


def program_name() -> str:
    """`mlpipe-train` for a console script, `python -m mlpipe.train.run` otherwise."""
    name = Path(sys.argv[0]).name
    return name if name.startswith("mlpipe-") else f"python -m {_module_name()}"


def _module_name() -> str:
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    return spec.name if spec is not None else Path(sys.argv[0]).stem


def report_user_error(err: BaseException) -> None:
    """Print `<program>: error: <first line>`; the full text goes to the log (Hydra's file)."""
    text = str(err).strip() or type(err).__name__
    first = text.splitlines()[0]
    log.debug("%s", text)
    print(f"{program_name()}: error: {first}", file=sys.stderr, flush=True)


def entry_point(task: Callable[[DictConfig], T]) -> Callable[[DictConfig], T]:
    """Wrap a Hydra task: UserError and config-resolution errors exit non-zero in one line."""

    @functools.wraps(task)
    def wrapper(cfg: DictConfig) -> T:
        try:
            if "repro" in cfg:  # a deterministic stage: its CPU contract first (may re-exec)
                repro.apply(cfg.repro)
            return task(cfg)
        except UserError as err:
            report_user_error(err)
        except OmegaConfBaseException as err:  # a bad interpolation or value type in an override
            report_user_error(_config_message(err))
        raise SystemExit(USER_ERROR_EXIT)

    return wrapper


def _config_message(err: OmegaConfBaseException) -> Any:
    key = getattr(err, "full_key", None)
    where = f" at {key}" if key else ""
    first = str(err).splitlines()[0]
    return f"config error{where}: {first}; fix the value or override on the command line"

"""mlpipe.common: the shared parts every stage relies on."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from mlpipe.common.config import as_float, one_of, plain, positive_int, positive_ints
from mlpipe.common.errors import ConfigError, DataError, DataMissingError, UserError
from mlpipe.common.provenance import data_version, machine_info
from mlpipe.common.stats import latency_summary


def test_light_modules_import_no_torch_lightning_or_tritonclient() -> None:
    """The report and the load workers start fast: the shared parts import none of the heavy
    libraries at module level."""
    code = (
        "import sys, mlpipe.common.cli, mlpipe.common.provenance, mlpipe.common.stats, "
        "mlpipe.measure.loadgen, mlpipe.measure.tables, mlpipe.serving.client, mlpipe.report\n"
        "print(sorted(m for m in ('torch', 'lightning', 'tritonclient') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_latency_summary_matches_numpy_and_handles_empty() -> None:
    seconds = np.array([0.001, 0.002, 0.003, 0.010])
    s = latency_summary(seconds)
    assert s["n"] == 4 and s["mean_ms"] == pytest.approx(4.0)
    assert s["p50_ms"] == pytest.approx(np.percentile(seconds * 1e3, 50))
    assert s["p99_ms"] == pytest.approx(np.percentile(seconds * 1e3, 99))
    empty = latency_summary([])
    assert empty["n"] == 0 and np.isnan(empty["p50_ms"])


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: positive_int(0, "a.b"), "a.b: must be an integer >= 1, got 0"),
        (lambda: positive_int(True, "a.b"), "a.b: must be an integer >= 1, got True"),
        (lambda: positive_ints([1, 0], "a.c"), "a.c: must be a non-empty list of positive"),
        (lambda: positive_ints([], "a.c"), "a.c: must be a non-empty list of positive"),
        (lambda: as_float("abc", "opt.lr"), "opt.lr: must be a number, got 'abc'"),
        (lambda: one_of("udp", ["http", "grpc"], "c.p"), "c.p: must be one of ['http', 'grpc']"),
    ],
)
def test_config_checks_name_the_key(call, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        call()


def test_config_checks_pass_good_values() -> None:
    assert positive_ints(4, "k") == [4] and positive_ints([8, 1], "k") == [8, 1]
    assert as_float("1e-3", "k") == 1e-3
    node = OmegaConf.create({"a": {"b": "${c}"}, "c": 3})
    assert plain(node) == {"a": {"b": 3}, "c": 3}


def test_every_user_error_is_also_its_builtin_kind() -> None:
    """Callers that catch ValueError / FileNotFoundError keep working."""
    assert issubclass(ConfigError, ValueError) and issubclass(ConfigError, UserError)
    assert issubclass(DataMissingError, FileNotFoundError)


def test_data_version_reads_dvc_and_names_the_fix(tmp_path: Path) -> None:
    dvc = tmp_path / "data.dvc"
    with pytest.raises(DataMissingError, match="git checkout data.dvc"):
        data_version(dvc)
    dvc.write_text("outs:\n- md5: abc.dir\n  size: 3\n  nfiles: 1\n  path: data\n")
    assert data_version(dvc) == {"path": "data", "md5": "abc.dir", "size": 3, "nfiles": 1}
    dvc.write_text("outs: [broken")
    with pytest.raises(DataError, match="not a valid .dvc file"):
        data_version(dvc)


def test_machine_info_names_cpu_cores_and_libraries() -> None:
    info = machine_info()
    assert info["cpu"] and info["cores"] >= 1 and info["torch"] and info["numpy"]

"""mlpipe-report: one markdown report (reports/REPORT.md) from every stage's JSON, with plots.

Sections: data version and training metrics, export parity, serving latency/throughput, roofline
per model, measured knee vs analytic flip batch, the Triton config chosen by measurement,
relu_module benchmark, GPU results (committed under reports/gpu/), provenance. A
stage that has not run yet gives a `not run: <command that makes it>` line, never a crash, so the
report can be built at any point of the pipeline (and from the small fixtures in the tests).
The sections on measurements live in :mod:`mlpipe.measure.sections`; here the pipeline's own
(data and training, export, provenance) and the assembly.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from mlpipe import config_dir  # absolute conf/ path: console scripts need it
from mlpipe.common.cli import entry_point
from mlpipe.common.config import require
from mlpipe.common.errors import ArtifactError, DataError
from mlpipe.common.provenance import data_version, git_revision, machine_info, sha256_file
from mlpipe.measure.sections import (
    Missing,
    Section,
    read_json,
    section_bench,
    section_gpu,
    section_knees,
    section_profile,
    section_relu,
    section_served,
    section_tune,
)
from mlpipe.measure.tables import github_table

log = logging.getLogger(__name__)


def data_version_or_missing(data_dvc: Path) -> dict[str, Any]:
    """The data version `data.dvc` records, or Missing with the line to show instead."""
    try:
        return data_version(data_dvc)
    except DataError as err:
        raise Missing(str(err)) from None


# -- sections ----------------------------------------------------------------------------------
def section_data_and_training(rc: Mapping[str, Any], reports: Path) -> Section:
    lines, summary = [], []
    try:
        d = data_version_or_missing(Path(rc["data_dvc"]))
        lines.append(
            f"Data: `{d['path']}` md5 `{d['md5']}` ({d['nfiles']} files, {d['size']} bytes), "
            "from `data.dvc`."
        )
        summary.append(f"data md5 {str(d['md5'])[:12]}")
    except Missing as err:
        lines.append(f"Data: {err}")
    try:
        m = read_json(reports / rc["inputs"]["train_metrics"], rc["how_to"]["train"])
        scalars = {k: v for k, v in m.items() if isinstance(v, (int, float, str, bool))}
        lines.append(
            "\n"
            + github_table(
                ["metric", "value"],
                [[k, f"{v:.4f}" if isinstance(v, float) else v] for k, v in scalars.items()],
            )
        )
        if "test_acc" in m:
            summary.append(f"test acc {m['test_acc']:.4f}")
    except Missing as err:
        lines.append(f"Training metrics: {err}")
    return Section("Data and training", "\n".join(lines), ", ".join(summary) or None)


def section_export(rc: Mapping[str, Any], reports: Path) -> Section:
    try:
        p = read_json(reports / rc["inputs"]["parity"], rc["how_to"]["export"])
    except Missing as err:
        return Section("Export parity", str(err))
    rows = []
    for key, label in (
        ("onnx_vs_torch", "ONNX Runtime vs torch"),
        ("tensorrt_vs_ort", "TensorRT vs ONNX Runtime"),
    ):
        if key in p:
            c = p[key]
            rows.append(
                [
                    label,
                    f"{c.get('max_abs_diff', float('nan')):.3g}",
                    f"{c.get('argmax_agreement', float('nan')):.4%}",
                    f"{c.get('reference_acc', float('nan')):.4f}",
                    f"{c.get('candidate_acc', float('nan')):.4f}",
                ]
            )
    limits = p.get("limits", {})
    body = (
        f"`{p.get('onnx_path', '?')}` (opset {p.get('opset', '?')}, exporter "
        f"{p.get('exporter', '?')}, split `{p.get('split', '?')}`), passed: "
        f"**{p.get('passed')}**, limits: atol {limits.get('atol')}, argmax agreement ≥ "
        f"{limits.get('min_argmax_agreement')}.\n\n"
        + github_table(
            ["comparison", "max abs diff", "argmax agreement", "reference acc", "candidate acc"],
            rows,
        )
    )
    summary = None
    if "onnx_vs_torch" in p:
        summary = (
            f"ONNX parity max|diff| {p['onnx_vs_torch'].get('max_abs_diff', float('nan')):.2g}"
        )
    return Section("Export parity", body, summary)


def section_provenance(rc: Mapping[str, Any]) -> Section:
    root = Path(rc["root_dir"])
    rows = [["git revision", git_revision(root)]]
    for name in rc["lock_files"]:
        rows.append(
            [f"sha256 {name}", sha256_file(root / name) if (root / name).is_file() else "absent"]
        )
    try:
        rows.append(["data md5 (data.dvc)", data_version_or_missing(Path(rc["data_dvc"]))["md5"]])
    except Missing as err:
        rows.append(["data md5 (data.dvc)", str(err)])
    for k, v in machine_info().items():
        rows.append([f"machine {k}", v])
    rows.append(["report written", datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")])
    return Section("Provenance", github_table(["item", "value"], rows))


def build_report(rc: Mapping[str, Any]) -> tuple[str, list[str]]:
    """Markdown text and the screen summary lines."""
    reports = Path(rc["reports_dir"])
    out_dir = Path(rc["output"]).parent
    sections = [
        section_data_and_training(rc, reports),
        section_export(rc, reports),
        section_served(rc, reports),
        section_bench(rc, reports, out_dir),
        section_profile(rc, reports, out_dir),
        section_knees(rc, reports, out_dir),
        section_tune(rc, reports, out_dir),
        section_relu(rc, reports, out_dir),
        section_gpu(rc, reports, out_dir),
        section_provenance(rc),
    ]
    text = (
        "\n\n".join(
            [f"# {rc['title']}", rc["intro"].strip()]
            + [f"## {s.title}\n\n{s.body.strip()}" for s in sections]
        )
        + "\n"
    )
    summary = [
        f"{s.title}: {s.summary or s.body.splitlines()[0]}"
        for s in sections
        if s.title != "Provenance"
    ]
    return text, summary


def validate_report_cfg(rc: Mapping[str, Any]) -> None:
    """The values a typo breaks: the output file, the lock-file list, the write flag."""
    require(
        str(rc["output"]).endswith(".md"),
        "report.output",
        f"must be a markdown file path ending in .md, got {rc['output']!r}",
    )
    require(
        isinstance(rc["lock_files"], list),
        "report.lock_files",
        f"must be a list of file names, got {rc['lock_files']!r}",
    )
    require(
        isinstance(rc["write"], bool), "report.write", f"must be true or false, got {rc['write']!r}"
    )


def write_text(path: Path, text: str) -> None:
    """Write the report, or say in one line why the path cannot take it."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    except OSError as err:
        raise ArtifactError(
            f"cannot write the report to {path} ({err.strerror}); set "
            "report.output to a writable path"
        ) from None


def report(cfg: DictConfig) -> Path:
    """Write the report (unless `report.write=false`: summary only, e.g. after a no-op
    `dvc repro`, leaving the DVC-tracked file alone); print a short summary; return its path."""
    rc = OmegaConf.to_container(cfg.report, resolve=True)
    validate_report_cfg(rc)
    text, summary = build_report(rc)
    out = Path(rc["output"])
    if rc["write"]:
        write_text(out, text)
    print("\n".join(["", f"== mlpipe report: {out} ==", *[f"  {line}" for line in summary]]))
    return out


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="report")
@entry_point
def main(cfg: DictConfig) -> None:
    report(cfg)


if __name__ == "__main__":
    main()

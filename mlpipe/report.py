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
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from mlpipe import config_dir  # absolute conf/ path: console scripts need it
from mlpipe.common.cli import entry_point
from mlpipe.common.config import require
from mlpipe.common.errors import ArtifactError, ConsistencyError, DataError
from mlpipe.common.provenance import data_version, git_revision, machine_info, sha256_file
from mlpipe.measure import consistency
from mlpipe.measure.consistency import Finding
from mlpipe.measure.profile_section import section_profile
from mlpipe.measure.sections import (
    Missing,
    Section,
    read_json,
    section_bench,
    section_gpu,
    section_knees,
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


def _measured_inputs(rc: Mapping[str, Any], reports: Path) -> list[tuple[str, Any]]:
    """(kind, parsed JSON) of every measured input that is there; absent ones are skipped (their
    sections say `not run`), unreadable ones too (their sections say so)."""
    inputs = rc["inputs"]
    paths = [(kind, reports / inputs[kind]) for kind in ("bench", "serving_targets", "client")]
    paths.append(("tune", reports / inputs["tune"]))
    kdir = reports / inputs["knee_dir"]
    paths += [("knee", f) for f in (sorted(kdir.glob("*.json")) if kdir.is_dir() else [])]
    found = []
    for kind, path in paths:
        try:
            found.append((kind, read_json(path, "")))
        except Missing:
            continue
    return found


def findings(rc: Mapping[str, Any], reports: Path) -> list[Finding]:
    """Every check over every measured figure the report prints."""
    band = float(rc["checks"]["noise_band"])
    runs = {
        "bench": lambda d: consistency.bench_findings(d, band),
        "serving_targets": lambda d: consistency.served_findings(d, band),
        "client": consistency.client_findings,
        "tune": lambda d: consistency.tune_findings(d, band),
        "knee": consistency.knee_findings,
    }
    out: list[Finding] = []
    for kind, data in _measured_inputs(rc, reports):
        try:
            out += list(runs[kind](data))
        except (KeyError, TypeError, ValueError, ZeroDivisionError) as err:
            out.append(Finding("readable input", kind, f"malformed ({err!r})", "readable", False))
    return out


def section_consistency(found: Sequence[Finding], band: float) -> Section:
    """How many figures each check held, and every violation by name."""
    title = "Consistency checks"
    rows = [
        [
            check,
            sum(f.check == check for f in found),
            sum(f.check == check and not f.ok for f in found),
        ]
        for check in (*consistency.CHECKS, "readable input")
        if any(f.check == check for f in found) or check != "readable input"
    ]
    bad = [f for f in found if not f.ok]
    verdict = (
        "Violations (each a figure that contradicts its bound: a peak measured too low, a "
        "wrong roof, or a broken measurement):\n\n" + "\n".join(f"- **{f.line()}**" for f in bad)
        if bad
        else "No violation: every figure lies within its bound."
    )
    body = (
        "Every measured figure of this report held to the bound it cannot exceed "
        "(mlpipe.measure.consistency). Comparisons of two timings (Little's law, overheads) "
        f"allow a noise band of {band:.0%} or the row's own p50 spread, whichever is larger.\n\n"
        + github_table(["check", "figures checked", "violations"], rows)
        + "\n\n"
        + verdict
    )
    summary = f"{len(found)} figures checked, " + (
        f"{len(bad)} VIOLATION(S): {bad[0].line()}" if bad else "no violation"
    )
    return Section(title, body, summary)


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


def build_report(rc: Mapping[str, Any]) -> tuple[str, list[str], list[Finding]]:
    """Markdown text, the screen summary lines and the consistency violations."""
    reports = Path(rc["reports_dir"])
    out_dir = Path(rc["output"]).parent
    found = findings(rc, reports)
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
        section_consistency(found, float(rc["checks"]["noise_band"])),
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
    return text, summary, [f for f in found if not f.ok]


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
    for key in ("write", "fail_on_violation"):
        require(
            isinstance(rc[key], bool), f"report.{key}", f"must be true or false, got {rc[key]!r}"
        )
    band = rc["checks"]["noise_band"]
    require(
        isinstance(band, (int, float)) and 0 <= band < 1,
        "report.checks.noise_band",
        f"must be a fraction in [0, 1), got {band!r}",
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
    `dvc repro`, leaving the DVC-tracked file alone); print a short summary; return its path.
    A figure that contradicts its bound raises ConsistencyError afterwards (one line, exit 1)
    unless `report.fail_on_violation=false`."""
    rc = OmegaConf.to_container(cfg.report, resolve=True)
    validate_report_cfg(rc)
    text, summary, violations = build_report(rc)
    out = Path(rc["output"])
    if rc["write"]:
        write_text(out, text)
    print("\n".join(["", f"== mlpipe report: {out} ==", *[f"  {line}" for line in summary]]))
    if violations and rc["fail_on_violation"]:
        more = f" (and {len(violations) - 1} more)" if len(violations) > 1 else ""
        raise ConsistencyError(
            f"{len(violations)} measured figure(s) contradict their bounds, first: "
            f"{violations[0].line()}{more}; every one is named in the 'Consistency checks' "
            f"section of {out}: re-measure (a peak taken on a busy machine is too low) or fix "
            "the measurement it names"
        )
    return out


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="report")
@entry_point
def main(cfg: DictConfig) -> None:
    report(cfg)


if __name__ == "__main__":
    main()

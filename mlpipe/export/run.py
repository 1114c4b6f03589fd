"""mlpipe-export: checkpoint -> ONNX (checked, parity-tested, with provenance) -> Triton
repositories.

``export(cfg) -> dict`` does the work; ``main()`` is the thin Hydra wrapper. With
``export=tensorrt`` it also builds a TensorRT engine from the ONNX (``mlpipe.export.tensorrt``)
and adds a ``tensorrt_plan`` model to the native repository.

Why each step:

* the checkpoint is loaded by ``mlpipe.train.module.load_network`` with ``weights_only=True``, so a
  tampered checkpoint cannot run code;
* ``onnx.checker`` catches a malformed graph before anything serves it;
* parity runs ONNX Runtime and torch on the **real test split** (not random numbers), so the
  accuracy served is the accuracy trained;
* provenance in ``metadata_props`` lets anyone holding only ``model.onnx`` find the commit,
  data version, training metrics and dependency locks that produced it.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import onnx
import torch
from omegaconf import DictConfig, OmegaConf

from mlpipe import config_dir
from mlpipe.common import repro
from mlpipe.common.cli import entry_point
from mlpipe.common.config import positive_int
from mlpipe.common.errors import ConfigError, DataError, ParityError
from mlpipe.common.provenance import data_version, sha256_file, source_digest
from mlpipe.export import triton_repo
from mlpipe.export.reference import ort_session, run_ort

log = logging.getLogger(__name__)


# Loggers of the dynamo exporter's graph passes (onnxscript's optimizer and rewriter, onnx_ir).
_CHATTY_LOGGERS = ("onnxscript", "onnx_ir")


def dvc_data_hash(data_dvc: Path) -> str:
    """The md5 DVC recorded for the data folder in ``data.dvc``; 'unknown' (with a warning) if
    that file is absent or unreadable, since provenance must not stop an export."""
    try:
        return str(data_version(data_dvc)["md5"])
    except DataError as err:
        log.warning("%s; provenance records data hash 'unknown'", err)
        return "unknown"


def provenance(prov_cfg: Mapping[str, Any]) -> dict[str, str]:
    """Strings for ONNX ``metadata_props``: source hash, data hash, training metrics, lock hashes.

    Content hashes only, never a commit id or a time: the ONNX file is a DVC output whose md5 is
    committed in dvc.lock, so it must come out byte-identical from a later commit's clone.
    """
    root = Path(prov_cfg["root_dir"])
    props = {
        "mlpipe.source_sha256": source_digest(root, list(prov_cfg["source_paths"])),
        "mlpipe.data_md5": dvc_data_hash(Path(prov_cfg["data_dvc"])),
    }
    metrics = Path(prov_cfg["train_metrics"])
    if metrics.is_file():
        props["mlpipe.train_metrics"] = json.dumps(json.loads(metrics.read_text()), sort_keys=True)
    else:
        log.warning("training metrics %s not found (run `mlpipe-train`); not recorded", metrics)
    for name in prov_cfg["lock_files"]:
        path = root / name
        if path.is_file():
            props[f"mlpipe.sha256.{name}"] = sha256_file(path)
        else:
            log.info("lock file %s absent; not recorded", path)
    return props


def export_onnx(
    net: torch.nn.Module, sample: torch.Tensor, onnx_path: Path, onnx_cfg: Mapping[str, Any]
) -> None:
    """Write ``net`` as ONNX with named tensors and a dynamic batch axis.

    ``onnx_cfg.dynamo`` picks torch's exporter: the ``torch.export``-based one (torch's default
    since 2.9, needs onnxscript) or the TorchScript one. The sample's batch must be >= 2, or
    ``torch.export`` specialises the batch axis to 1.
    """
    if sample.shape[0] < 2:
        raise ConfigError(
            "invalid config value export.onnx.trace_batch_size: must be >= 2 (got "
            f"{sample.shape[0]}) for a dynamic batch axis"
        )
    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        if onnx_cfg["dynamo"]:
            _export_dynamo(net, sample, onnx_path, onnx_cfg)
        else:
            _export_torchscript(net, sample, onnx_path, onnx_cfg)


def _names(onnx_cfg: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "input_names": [str(onnx_cfg["input_name"])],
        "output_names": [str(onnx_cfg["output_name"])],
        "opset_version": int(onnx_cfg["opset"]),
    }


def _export_dynamo(
    net: torch.nn.Module, sample: torch.Tensor, onnx_path: Path, onnx_cfg: Mapping[str, Any]
) -> None:
    for name in _CHATTY_LOGGERS:  # per-pass INFO lines would drown the export's own log
        logging.getLogger(name).setLevel(logging.WARNING)
    batch = torch.export.Dim(str(onnx_cfg["batch_axis_name"]))
    torch.onnx.export(
        net,
        (sample,),
        str(onnx_path),
        dynamo=True,
        external_data=False,
        verbose=False,
        dynamic_shapes=({0: batch},),
        **_names(onnx_cfg),
    )


def _export_torchscript(
    net: torch.nn.Module, sample: torch.Tensor, onnx_path: Path, onnx_cfg: Mapping[str, Any]
) -> None:
    batch = str(onnx_cfg["batch_axis_name"])
    axes = {str(onnx_cfg["input_name"]): {0: batch}, str(onnx_cfg["output_name"]): {0: batch}}
    # Chosen explicitly in config: torch's deprecation notice for this exporter is noise.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx.*")
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        torch.onnx.export(
            net, (sample,), str(onnx_path), dynamo=False, dynamic_axes=axes, **_names(onnx_cfg)
        )


def add_metadata(
    onnx_path: Path, props: Mapping[str, str], drop_node_keys: Sequence[str] = ()
) -> None:
    """Replace the model-level ``metadata_props`` keys we own, keep the others; remove the
    node-level ``drop_node_keys`` (the dynamo exporter's stack traces hold absolute paths of the
    checkout and the venv, so the file would differ per clone)."""
    model = onnx.load(str(onnx_path))
    kept = [p for p in model.metadata_props if p.key not in props]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for key, value in props.items():
        model.metadata_props.add(key=key, value=value)
    drop = set(drop_node_keys)
    nodes = [*model.graph.node, *(n for f in model.functions for n in f.node)]
    for node in nodes:
        node_kept = [p for p in node.metadata_props if p.key not in drop]
        del node.metadata_props[:]
        node.metadata_props.extend(node_kept)
    onnx.save(model, str(onnx_path))


def run_torch(net: torch.nn.Module, images: np.ndarray, batch_size: int) -> np.ndarray:
    """Reference logits from torch, same batching as :func:`run_ort`."""
    with torch.no_grad():
        outs = [
            net(torch.from_numpy(images[i : i + batch_size])).numpy()
            for i in range(0, len(images), batch_size)
        ]
    return np.concatenate(outs, axis=0)


def compare(reference: np.ndarray, candidate: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Max abs diff, argmax agreement and both accuracies for two (N, classes) logit arrays."""
    ref_pred, cand_pred = reference.argmax(axis=1), candidate.argmax(axis=1)
    return {
        "n": int(len(labels)),
        "max_abs_diff": float(
            np.max(np.abs(reference.astype(np.float64) - candidate.astype(np.float64)))
        ),
        "argmax_agreement": float(np.mean(ref_pred == cand_pred)),
        "reference_acc": float(np.mean(ref_pred == labels)),
        "candidate_acc": float(np.mean(cand_pred == labels)),
    }


def check_parity(result: Mapping[str, float], atol: float, min_agreement: float, what: str) -> None:
    """Raise :class:`ParityError` naming the measured numbers and the limits."""
    if result["max_abs_diff"] > atol or result["argmax_agreement"] < min_agreement:
        raise ParityError(
            f"{what} parity failed: max abs diff {result['max_abs_diff']:.3g} (limit {atol:g}), "
            f"argmax agreement {result['argmax_agreement']:.4f} (limit {min_agreement:g}) on "
            f"{result['n']} test images"
        )


def validate_export_cfg(ecfg: DictConfig) -> None:
    """Reject bad export values before any work starts; each error names its key."""
    positive_int(ecfg.parity.batch_size, "export.parity.batch_size")
    positive_int(ecfg.onnx.trace_batch_size, "export.onnx.trace_batch_size", minimum=2)
    positive_int(ecfg.onnx.opset, "export.onnx.opset")
    positive_int(ecfg.triton.max_batch_size, "export.triton.max_batch_size")


def write_onnx(
    net: torch.nn.Module, images: np.ndarray, ecfg: DictConfig, cpu_contract: str
) -> Path:
    """Export, stamp provenance (with the CPU contract record, JSON), then run the full checker
    on the file that ships."""
    onnx_path = Path(ecfg.onnx_path)
    sample = torch.from_numpy(images[: int(ecfg.onnx.trace_batch_size)])
    export_onnx(net, sample, onnx_path, ecfg.onnx)
    add_metadata(
        onnx_path,
        {**provenance(ecfg.provenance), "mlpipe.cpu_contract": cpu_contract},
        list(ecfg.onnx.get("drop_node_metadata", [])),
    )
    onnx.checker.check_model(str(onnx_path), full_check=True)
    return onnx_path


def parity_report(
    ecfg: DictConfig, onnx_path: Path, onnx_parity: dict[str, float]
) -> dict[str, Any]:
    """What parity.json records: the files, the exporter, the comparison and its limits.

    Not the provenance: it lives in model.onnx's `metadata_props`, and as strings in a DVC
    metrics file it made every `dvc metrics diff` row hundreds of characters wide."""
    return {
        "checkpoint": str(Path(ecfg.checkpoint_path)),  # normalised, as the stage's dep path
        "onnx_path": str(onnx_path),
        "onnx_sha256": sha256_file(onnx_path),
        "opset": int(ecfg.onnx.opset),
        "exporter": "dynamo" if ecfg.onnx.dynamo else "torchscript",
        "split": str(ecfg.parity.split),
        "onnx_vs_torch": onnx_parity,
        "limits": {
            "atol": float(ecfg.parity.atol),
            "min_argmax_agreement": float(ecfg.parity.min_argmax_agreement),
        },
    }


def tensorrt_parity(
    ecfg: DictConfig,
    onnx_path: Path,
    images: np.ndarray,
    labels: np.ndarray,
    ort_logits: np.ndarray,
) -> tuple[Path, dict[str, Any]]:
    """Build the engine and compare it with ONNX Runtime (fp16 limits from config)."""
    from mlpipe.export import tensorrt as tensorrt_engine

    plan_path = Path(ecfg.tensorrt.plan_path)
    tensorrt_engine.build_engine(onnx_path, plan_path, ecfg.tensorrt, str(ecfg.onnx.input_name))
    trt_logits = tensorrt_engine.run_engine(plan_path, images, int(ecfg.parity.batch_size))
    return plan_path, {
        "tensorrt_vs_ort": compare(ort_logits, trt_logits, labels),
        "tensorrt_limits": OmegaConf.to_container(ecfg.tensorrt.parity),
    }


def check_all_parity(ecfg: DictConfig, report: dict[str, Any]) -> None:
    """Raise ParityError if ORT (or TensorRT, when built) misses its configured limits."""
    check_parity(
        report["onnx_vs_torch"],
        float(ecfg.parity.atol),
        float(ecfg.parity.min_argmax_agreement),
        "ONNX Runtime vs torch",
    )
    if "tensorrt_vs_ort" in report:
        limits = ecfg.tensorrt.parity
        check_parity(
            report["tensorrt_vs_ort"],
            float(limits.atol),
            float(limits.min_argmax_agreement),
            "TensorRT vs ONNX Runtime",
        )


def export(cfg: DictConfig) -> dict[str, Any]:
    """Export, check, compare and package the trained model; returns the parity report dict."""
    from mlpipe.data import load_split  # (N, 1, 8, 8) float32 and int64 labels, as at eval time
    from mlpipe.train.module import load_network  # weights_only=True: a checkpoint runs no code

    ecfg = cfg.export
    validate_export_cfg(ecfg)
    outputs = [
        ecfg.onnx_path,
        ecfg.report_path,
        *(ecfg.triton[k] for k in ("python_repository", "native_repository")),
    ]
    repro.guard(cfg.repro, Path(cfg.paths.root_dir), outputs)
    if ecfg.tensorrt.enabled:  # fail before the ONNX work, not after it
        from mlpipe.export.tensorrt import require_tensorrt

        require_tensorrt()
    net = load_network(Path(ecfg.checkpoint_path))
    images, labels = load_split(cfg.data, str(ecfg.parity.split))  # (N, 1, 8, 8), (N,)
    contract = json.dumps(repro.record(cfg.repro), sort_keys=True)
    onnx_path = write_onnx(net, images, ecfg, contract)
    batch_size = int(ecfg.parity.batch_size)
    torch_logits = run_torch(net, images, batch_size)
    ort_logits = run_ort(ort_session(onnx_path, list(ecfg.parity.providers)), images, batch_size)
    report = parity_report(ecfg, onnx_path, compare(torch_logits, ort_logits, labels))
    plan_path = None
    if ecfg.tensorrt.enabled:
        plan_path, trt = tensorrt_parity(ecfg, onnx_path, images, labels, ort_logits)
        report.update(trt)
    report_path = Path(ecfg.report_path)
    report_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        check_all_parity(ecfg, report)
    except ParityError:  # the failing numbers are kept for the user to read
        report_path.write_text(json.dumps({**report, "passed": False}, indent=2) + "\n")
        raise
    report["passed"] = True
    report["triton"] = triton_repo.build_repositories(onnx_path, ecfg.triton, plan_path)
    report_path.write_text(json.dumps(report, indent=2) + "\n")
    parity = report["onnx_vs_torch"]
    log.info(
        "exported %s: max abs diff %.2g, argmax agreement %.4f, ORT test acc %.4f; parity "
        "report %s",
        onnx_path,
        parity["max_abs_diff"],
        parity["argmax_agreement"],
        parity["candidate_acc"],
        report_path,
    )
    return report


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="export")
@entry_point
def main(cfg: DictConfig) -> None:
    """CLI: ``mlpipe-export [export=tensorrt] [export.onnx.opset=17] ...``."""
    report = export(cfg)
    parity = report["onnx_vs_torch"]
    print(
        f"ONNX {report['onnx_path']}: max abs diff {parity['max_abs_diff']:.2g}, argmax agreement "
        f"{parity['argmax_agreement']:.2%}, test acc torch {parity['reference_acc']:.4f} / ORT "
        f"{parity['candidate_acc']:.4f}"
    )


if __name__ == "__main__":
    main()

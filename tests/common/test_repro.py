"""The CPU contract (mlpipe.common.repro, conf/repro/): one node for every deterministic stage,
put in force by a real re-exec of the real scripts, refused for tracked outputs when off, and
shown to matter: another dispatch level trains other bytes, the contract the recorded ones."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers.compose import ROOT, compose_app
from omegaconf import OmegaConf

from mlpipe.common import repro
from mlpipe.train.run import train

BIN = Path(sys.executable).parent
#: A short fixed-seed training: one epoch of 10 batches (a few seconds).
SHORT = (
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=10",
    "trainer.limit_val_batches=2",
    "trainer.limit_test_batches=2",
    "data.num_workers=0",
    "callbacks.progress_bar.refresh_rate=0",
)
#: sha256 of the short training's weights under the contract (conf/repro/avx2.yaml).
RECORDED = ROOT / "tests" / "fixtures" / "repro" / "short_train.json"

#: sha256 of tests/helpers/cpu_ops.py's kernels under the contract (recorded on an AMD EPYC).
RECORDED_OPS = ROOT / "tests" / "fixtures" / "repro" / "cpu_ops.json"
#: AVX2-only x86-64 CPUs that QEMU's user mode emulates (apt: qemu-user; QEMU >= 7.2's TCG has
#: AVX2 and FMA); the features turned off are system ones TCG lacks, which it would warn about.
QEMU = "qemu-x86_64"
AVX2_ONLY_CPUS = {
    "EPYC-Rome": "EPYC-Rome,-rdseed,-sha-ni,-rdpid,-fxsr-opt,-misalignsse,-3dnowprefetch,-osvw,"
    "-topoext,-perfctr-core,-clzero,-xsaveerptr,-wbnoinvd,-ibpb,-amd-stibp,-nrip-save,-xsavec,"
    "-xsaves",
    "Haswell-v4": "Haswell-v4,-pcid,-x2apic,-tsc-deadline,-invpcid,-spec-ctrl",
}


def _contract() -> OmegaConf:
    return compose_app("train", ROOT).repro


def _skip_if_unable() -> None:
    reason = repro.unable(_contract())
    if reason:
        pytest.skip(f"{reason}: the contract cannot be in force here")


def test_one_contract_for_every_deterministic_stage(tmp_path: Path) -> None:
    nodes = [compose_app(app, tmp_path).repro for app in ("train", "export", "profile")]
    assert nodes[0] == nodes[1] == nodes[2] and nodes[0].enabled
    assert repro.contract_env(nodes[0]) == {
        "ATEN_CPU_CAPABILITY": "avx2",
        "ONEDNN_MAX_CPU_ISA": "AVX2",
        "MKL_CBWR": "COMPATIBLE",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }
    off = compose_app("train", tmp_path, "repro=off").repro
    assert not off.enabled and off.threads == nodes[0].threads  # only the switch differs


def test_the_contract_wins_over_the_callers_variables() -> None:
    """`python -m mlpipe.common.repro` re-executes itself under the contract, whatever the
    caller set: ATen then dispatches AVX2 (this AVX-512 or AVX2 CPU), as the record shows."""
    _skip_if_unable()
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "ALL"}
    proc = subprocess.run(
        [sys.executable, "-m", "mlpipe.common.repro"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    record = json.loads(proc.stdout)
    assert record["in_force"] and record["cpu_capability"] == "AVX2", record
    assert record == json.loads((ROOT / "dvc.lock.cpu.json").read_text())


def test_a_cpu_without_the_flag_is_named(tmp_path: Path) -> None:
    """The reason a CPU cannot honour a contract, from the real /proc/cpuinfo (a flag no CPU
    has stands for a CPU without AVX2)."""
    node = compose_app("train", tmp_path, "repro.cpu_flag=no_such_isa").repro
    reason = repro.unable(node)
    if repro.cpu_flags() is None:
        assert reason is None or "not x86-64" in reason  # no /proc/cpuinfo: ATen's level decides
    else:
        assert reason is not None and ("lacks no_such_isa" in reason or "not x86-64" in reason)


def _root_with_dvc_yaml(tmp_path: Path) -> Path:
    """A root whose dvc.yaml is the real one: its outputs are tracked, under tmp_path."""
    root = tmp_path / "root"
    root.mkdir()
    shutil.copy(ROOT / "dvc.yaml", root / "dvc.yaml")
    return root


@pytest.mark.parametrize(
    ("override", "why"), [("repro=off", "off"), (None, "did not start under it")]
)
def test_tracked_outputs_need_the_contract(
    compose_cfg, tmp_path: Path, override: str | None, why: str
) -> None:
    """In-process (this process did not start under the contract), the pipeline's own output
    paths are refused before any work; other paths are not (the other tests write there)."""
    if override is None:
        _skip_if_unable()
    root = _root_with_dvc_yaml(tmp_path)
    paths = [f"paths.{k}={root}/{k.removesuffix('_dir')}" for k in ("artifacts_dir", "reports_dir")]
    cfg = compose_cfg(f"paths.root_dir={root}", *paths, *([override] if override else []))
    with pytest.raises(repro.ReproError, match=f"best.ckpt is a tracked output.*{why}"):
        train(cfg)
    assert not (root / "artifacts").exists()


def test_pipeline_run_without_the_contract_is_one_line(tmp_path: Path) -> None:
    root = _root_with_dvc_yaml(tmp_path)
    proc = subprocess.run(
        [str(BIN / "mlpipe-train"), "pipeline=true", "repro=off", f"paths.root_dir={root}"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    (line,) = [s for s in proc.stderr.splitlines() if s.startswith("mlpipe-train: error:")]
    assert "needs the CPU contract, but it is off (repro=off); drop repro=off" in line


def _short_train(
    tmp: Path, *overrides: str, launcher: tuple[str, ...] = (), env: dict | None = None
) -> tuple[str, dict]:
    """Run `mlpipe-train` (its own process: the contract needs a fresh torch; `launcher` may run
    it on an emulated CPU) and return the weights' sha256 and the contract its checkpoint
    records."""
    paths = [f"paths.{k}={tmp}/{k.removesuffix('_dir')}" for k in ("log_dir", "reports_dir")]
    script = [*launcher, str(BIN / "mlpipe-train")]
    proc = subprocess.run(
        [*script, *SHORT, *paths, f"hydra.run.dir={tmp}/run", *overrides],
        capture_output=True,
        text=True,
        timeout=1200,
        cwd=ROOT,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = torch.load(tmp / "run" / "checkpoints" / "best.ckpt", weights_only=True)
    digest = hashlib.sha256()
    for name, tensor in sorted(ckpt["state_dict"].items()):
        digest.update(name.encode() + b"\0" + tensor.contiguous().numpy().tobytes())
    return digest.hexdigest(), ckpt["hyper_parameters"]["cpu_contract"]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_dispatch_level_changes_the_bytes_and_the_contract_gives_the_recorded_ones(
    tmp_path: Path, dvc_data: Path
) -> None:
    """ATen's `default` level against the contract's AVX2: on any x86-64 CPU with AVX2 (an
    AVX2-only one included) they are two kernel sets, so this cannot pass vacuously."""
    _skip_if_unable()
    contract, contract_rec = _short_train(tmp_path / "avx2")
    other, other_rec = _short_train(tmp_path / "default", "repro.aten_cpu_capability=default")
    assert contract_rec["cpu_capability"] == "AVX2" and contract_rec["in_force"]
    assert other_rec["cpu_capability"] == "DEFAULT" and other_rec["in_force"]
    assert other != contract, "the dispatch level did not change the trained bytes"
    recorded = json.loads(RECORDED.read_text())["weights_sha256"]
    assert contract == recorded, (
        f"the short training under the contract gave weights {contract}, recorded {recorded}: "
        f"if training changed on purpose, record the new digest in {RECORDED}"
    )


def _emulated(model: str) -> list[str]:
    """The command prefix that runs this interpreter on QEMU's `model`; skips, saying why, where
    there is none."""
    if platform.machine().lower() not in repro.X86_64:
        pytest.skip(f"this interpreter is a {platform.machine()} program, not an x86-64 one")
    qemu = shutil.which(QEMU)
    if qemu is None:
        pytest.skip(f"{QEMU} not found: apt-get install qemu-user (bash .ci/qemu.sh)")
    models = subprocess.run([qemu, "-cpu", "help"], capture_output=True, text=True, timeout=60)
    if model not in models.stdout.split():
        pytest.skip(f"{QEMU} names no {model} CPU model")
    return [qemu, "-cpu", AVX2_ONLY_CPUS[model], sys.executable]


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("model", ["EPYC-Rome", "Haswell-v4"])
def test_an_emulated_avx2_only_cpu_computes_the_contracts_bytes(model: str) -> None:
    """The kernels of training under the contract, on an AVX2-only CPU that QEMU emulates (the
    process says so itself: no AVX-512), give the recorded bytes, Intel's model included: under
    MKL_CBWR=COMPATIBLE MKL takes one path on both vendors (under AVX2 it took an Intel-only one
    there). tests/helpers/cpu_ops.py lists the kernels."""
    launcher = _emulated(model)
    env = {**os.environ, **repro.contract_env(_contract())}
    proc = subprocess.run(
        [*launcher, str(ROOT / "tests" / "helpers" / "cpu_ops.py")],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout)
    if not got["cpu"]["avx2"]:
        pytest.skip(f"{QEMU}'s TCG does not emulate AVX2 here (QEMU 7.2 and later do)")
    assert got["cpu"] == {"avx2": True, "avx512": False, "capability": "AVX2"}, got["cpu"]
    recorded = json.loads(RECORDED_OPS.read_text())["sha256"]
    differ = sorted(k for k in recorded if got["sha256"].get(k) != recorded[k])
    assert not differ, f"on an emulated {model}, under the contract, these differ: {differ}"


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_the_short_training_on_an_emulated_intel_avx2_cpu_gives_the_recorded_weights(
    tmp_path: Path, dvc_data: Path
) -> None:
    """The whole short training (MKL GEMMs, oneDNN convolutions, ATen, AdamW's fused step) on
    an AVX2-only Intel CPU that QEMU emulates gives the weights recorded natively on an AMD
    EPYC. QEMU computes approximate instructions (rsqrtps, rcpps) exactly, where real CPUs each
    round them their own way, so equal bytes also show that none of them reaches the weights.
    The contract's variables are set beforehand, so the run does not re-execute (an exec would
    leave the emulator for the native CPU)."""
    launcher = _emulated("Haswell-v4")
    env = {**os.environ, **repro.contract_env(_contract())}
    weights, contract = _short_train(tmp_path, launcher=tuple(launcher), env=env)
    assert contract["cpu_capability"] == "AVX2" and contract["in_force"], contract
    log = (tmp_path / "run" / "run.log").read_text()  # the job log (conf/hydra: run.log)
    assert "re-executing under the CPU contract" not in log, "the run left the emulator"
    recorded = json.loads(RECORDED.read_text())["weights_sha256"]
    assert weights == recorded, f"emulated Haswell trained {weights}, recorded {recorded}"


@pytest.mark.slow
def test_the_reexecuted_sweep_writes_into_the_one_sweep_dir(tmp_path: Path) -> None:
    """The re-exec reruns the whole command: Hydra's sweep dir (named by time and pid, both of
    which change across the exec) must be the parent's, not a second one beside it."""
    _skip_if_unable()
    env = {k: v for k, v in os.environ.items() if k not in repro.contract_env(_contract())}
    env.pop(repro.REEXEC_MARK, None)
    proc = subprocess.run(
        [
            str(BIN / "mlpipe-profile"),
            "-m",
            "model=cnn,mlp",
            f"paths.log_dir={tmp_path}/logs",
            f"profile.out_dir={tmp_path}/profile",
            "profile.devices=[t4]",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "re-executing under the CPU contract" in proc.stdout + proc.stderr
    sweeps = list((tmp_path / "logs" / "profile" / "multiruns").iterdir())
    assert len(sweeps) == 1, sweeps
    assert sorted(p.name for p in sweeps[0].iterdir() if p.is_dir()) == ["0", "1"]

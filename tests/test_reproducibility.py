"""Byte-for-byte reproducibility, with the real git, DVC and pip.

* two fresh clones at different paths, under different time zones and umasks, rebuild the
  deterministic pipeline (train, export, analytic profile) to identical bytes, and to the md5s of
  the committed dvc.lock on every x86-64 CPU with AVX2: the stages run under the CPU contract
  recorded beside the lock (dvc.lock.cpu.json, conf/repro/);
* two builds of the relu_module wheel, in different directories at different times, are identical;
* pip's hash-checking mode refuses a file whose sha256 is not the locked one;
* provenance: a clean clone's git revision is never "dirty" because DVC rewrote its own files.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from helpers.compose import compose_app

from mlpipe.common import repro
from mlpipe.common.provenance import git_revision

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# The root dvc.yaml: deterministic, its lock committed.
STAGES = ("verify_data", "train", "export", "profile")


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, capture_output=True, text=True, check=True
    ).stdout.strip()


def _clone(dest: Path) -> Path:
    """A clone of the committed HEAD (uncommitted edits are not part of what is checked)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    _git(ROOT, "clone", "--quiet", "--no-hardlinks", str(ROOT), str(dest))
    return dest


def _env(clone: Path, tz: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    # PYTHONPATH=clone: the console scripts import the clone's mlpipe (and read its conf/), not
    # the editable install's checkout
    return {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(clone),
        "TZ": tz,
        **(extra or {}),
    }


def _start_repro(clone: Path, tz: str, umask: int) -> subprocess.Popen[str]:
    script = (
        f"umask {umask:03o} && {BIN}/dvc pull -q data.dvc && {BIN}/dvc repro {' '.join(STAGES)}"
    )
    return subprocess.Popen(
        ["bash", "-c", script],
        cwd=clone,
        env=_env(clone, tz),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _outs(lock: dict) -> dict[str, str]:
    """`path -> md5` of every out, metric and plot of the checked stages in a dvc.lock."""
    return {
        out["path"]: out["md5"] for name in STAGES for out in lock["stages"][name].get("outs", [])
    }


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _explain(path: str, a: Path, b: Path) -> str:
    """Which file differs, and why, as far as the files tell."""
    pa, pb = a / path, b / path
    if pa.is_dir():
        files = sorted({p.relative_to(pa) for p in pa.rglob("*") if p.is_file()})
        files += sorted({p.relative_to(pb) for p in pb.rglob("*") if p.is_file()} - set(files))
        bad = [f for f in files if not (pa / f).is_file() or not (pb / f).is_file()]
        bad += [f for f in files if f not in bad and _md5(pa / f) != _md5(pb / f)]
        return f"{path}: files differ: {[str(f) for f in bad]}"
    if path.endswith(".ckpt"):
        ta, tb = (torch.load(p, weights_only=True) for p in (pa, pb))
        same = all(torch.equal(v, tb["state_dict"][k]) for k, v in ta["state_dict"].items())
        why = (
            "weights are equal: only metadata differs (paths? times?)"
            if same
            else "weights differ: training diverged (float rounding of another CPU/library?)"
        )
        return f"{path}: {why}"
    if path.endswith(".onnx"):
        return f"{path}: {_onnx_difference(pa, pb)}"
    if path.endswith((".json", ".csv")):
        return f"{path}:\n--- {pa}\n{pa.read_text()}\n--- {pb}\n{pb.read_text()}"
    return f"{path}: bytes differ ({_md5(pa)} vs {_md5(pb)})"


def _onnx_difference(pa: Path, pb: Path) -> str:
    import onnx
    from onnx import numpy_helper

    ma, mb = onnx.load(str(pa)), onnx.load(str(pb))
    wa = {t.name: numpy_helper.to_array(t).tobytes() for t in ma.graph.initializer}
    wb = {t.name: numpy_helper.to_array(t).tobytes() for t in mb.graph.initializer}
    if wa != wb:
        return "weights differ (the checkpoints differ, or the exporter folded constants otherwise)"

    def differing(a: list, b: list) -> list[str]:
        da, db = {p.key: p.value for p in a}, {p.key: p.value for p in b}
        return [k for k in sorted(da.keys() | db.keys()) if da.get(k) != db.get(k)]

    meta = differing(list(ma.metadata_props), list(mb.metadata_props))
    pairs = zip(ma.graph.node, mb.graph.node, strict=False)
    nodes = sorted({k for na, nb in pairs for k in differing(na.metadata_props, nb.metadata_props)})
    return f"weights equal; model metadata differs in {meta}, node metadata in {nodes}"


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_two_clones_rebuild_identical_bytes_and_the_committed_lock(tmp_path: Path) -> None:
    committed = yaml.safe_load((ROOT / "dvc.lock").read_text())
    a = _clone(tmp_path / "a" / "some" / "deeper" / "path")
    b = _clone(tmp_path / "b")
    procs = [_start_repro(a, "UTC", 0o022), _start_repro(b, "Pacific/Kiritimati", 0o077)]
    for clone, proc in zip((a, b), procs, strict=True):
        out, _ = proc.communicate(timeout=840)
        assert proc.returncode == 0, f"dvc repro in {clone} failed:\n{out[-4000:]}"
    locks = [_outs(yaml.safe_load((c / "dvc.lock").read_text())) for c in (a, b)]
    diffs = [_explain(p, a, b) for p in locks[0] if locks[0][p] != locks[1].get(p)]
    assert not diffs, "two clones built different bytes:\n" + "\n".join(diffs)

    contract = _check_contract_took_effect(a)
    expected = _outs(committed)
    wrong = [
        f"{p}: committed md5 {expected[p]}, rebuilt {locks[0].get(p)}"
        for p in expected
        if expected[p] != locks[0].get(p)
    ]
    assert not wrong, (
        f"the rebuild under the CPU contract {contract} differs from the committed dvc.lock (a "
        "change committed without `dvc repro`? or a new non-determinism):\n" + "\n".join(wrong)
    )
    clean = _git(a, "status", "--porcelain")
    assert clean == "", f"dvc repro dirtied the clone:\n{clean}"
    status = subprocess.run(
        [str(BIN / "dvc"), "status", *STAGES],
        cwd=a,
        env=_env(a, "UTC"),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "up to date" in status, status


def _check_contract_took_effect(clone: Path) -> str:
    """The contract dvc.lock was made under (dvc.lock.cpu.json) is the configured one and the
    clone's checkpoint and ONNX record it in force; skips, with the reason, on a CPU that cannot
    honour it (no AVX2, not x86-64): there every byte after the first kernel may differ."""
    node = compose_app("train", clone).repro
    recorded = json.loads((ROOT / "dvc.lock.cpu.json").read_text())
    reason = repro.unable(node)
    if reason:
        pytest.skip(
            f"{reason}: dvc.lock was made under the CPU contract {recorded['contract']}, which "
            "this CPU cannot honour, so its md5s are not expected here (the two clones agreed)"
        )
    assert recorded["env"] == repro.contract_env(node) and recorded["in_force"], (
        f"dvc.lock.cpu.json records {recorded}, not conf/repro's contract: rebuild dvc.lock under "
        "it (`dvc repro`) and run `make record-cpu`"
    )
    ckpt = torch.load(clone / "artifacts/checkpoints/best.ckpt", weights_only=True)
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(clone / "artifacts/model.onnx")).metadata_props}
    for where, seen in (
        ("best.ckpt", ckpt["hyper_parameters"]["cpu_contract"]),
        ("model.onnx", json.loads(meta["mlpipe.cpu_contract"])),
    ):
        assert seen == recorded, f"{where} was made under {seen}, dvc.lock under {recorded}"
    return str(recorded["contract"])


def _build_wheel(src: Path, out: Path, tz: str) -> Path:
    """`make wheel`'s build (umask 022, SOURCE_DATE_EPOCH = last commit) of a relu_module copy."""
    epoch = _git(ROOT, "log", "-1", "--format=%ct")
    subprocess.run(
        ["bash", "-c", f"umask 022 && {sys.executable} -m build --no-isolation --wheel -o {out} ."],
        cwd=src,
        env={**os.environ, "SOURCE_DATE_EPOCH": epoch, "TZ": tz},
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    (wheel,) = out.glob("*.whl")
    return wheel


@pytest.mark.needs_compiler
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_relu_module_wheel_is_reproducible(tmp_path: Path) -> None:
    wheels = []
    for name, tz in (("first", "UTC"), ("second/elsewhere", "Asia/Kolkata")):
        src = tmp_path / name / "relu_module"
        shutil.copytree(
            ROOT / "relu_module",
            src,
            ignore=shutil.ignore_patterns("build", "dist", "*.egg-info", "__pycache__", "*.so"),
        )
        wheels.append(_build_wheel(src, tmp_path / name / "dist", tz))
        time.sleep(1.1)  # a later wall-clock second: timestamps must come from the commit
    digests = [hashlib.sha256(w.read_bytes()).hexdigest() for w in wheels]
    assert digests[0] == digests[1], f"wheel sha256 differs: {digests}"


def test_pip_refuses_a_wrong_hash(tmp_path: Path) -> None:
    """The lock's hash-checking mode, with the real pip: a tampered file is rejected."""
    lock = (ROOT / "constraints.txt").read_text()
    assert "--hash=sha256:" in lock and "torch==2.13.0" in lock
    wheel = tmp_path / "wheels" / "mlpipe_probe-1.0-py3-none-any.whl"
    wheel.parent.mkdir()
    _write_probe_wheel(wheel)
    good = hashlib.sha256(wheel.read_bytes()).hexdigest()
    for digest, ok in (("0" * 64, False), (good, True)):
        req = tmp_path / "req.txt"
        req.write_text(f"mlpipe-probe==1.0 --hash=sha256:{digest}\n")
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--no-index",
                "--find-links",
                str(wheel.parent),
                "--require-hashes",
                "-r",
                str(req),
                "-d",
                str(tmp_path / f"dl-{ok}"),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if ok:
            assert proc.returncode == 0, proc.stderr
        else:
            assert proc.returncode != 0 and "THESE PACKAGES DO NOT MATCH THE HASHES" in proc.stderr


def _write_probe_wheel(path: Path) -> None:
    import zipfile

    meta = "Metadata-Version: 2.1\nName: mlpipe-probe\nVersion: 1.0\n"
    wheel = "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("mlpipe_probe/__init__.py", "")
        zf.writestr("mlpipe_probe-1.0.dist-info/METADATA", meta)
        zf.writestr("mlpipe_probe-1.0.dist-info/WHEEL", wheel)
        zf.writestr("mlpipe_probe-1.0.dist-info/RECORD", "")


def test_every_locked_requirement_is_hash_pinned() -> None:
    lines = (ROOT / "constraints.txt").read_text().replace("\\\n", " ").splitlines()
    reqs = [line for line in lines if line.strip() and not line.lstrip().startswith("#")]
    assert len(reqs) > 100
    for req in reqs:
        assert "==" in req and "--hash=sha256:" in req, f"not pinned with a hash: {req[:80]}"
    assert not any(r.startswith("relu-module") for r in reqs), "relu-module is built locally"


def test_git_revision_ignores_what_dvc_writes(tmp_path: Path) -> None:
    clone = _clone(tmp_path / "clone")
    head = _git(clone, "rev-parse", "HEAD")
    assert git_revision(clone) == head
    for rel in ("dvc.lock", "reports/train/metrics.json", "measurements/dvc.lock"):
        path = clone / rel
        if path.is_file():
            path.write_text(path.read_text() + "\n")  # as a run that rewrites them
    assert git_revision(clone) == head, "DVC's own files must not make the revision dirty"
    (clone / "mlpipe" / "__init__.py").write_text("# edited\n")
    assert git_revision(clone) == f"{head}-dirty"


@pytest.mark.slow
def test_relu_module_sdist_is_reproducible(tmp_path: Path) -> None:
    """`make wheel`'s sdist: built from two copies with other file times, a second apart, then
    normalized (.ci/normalize-sdist.sh): the same bytes."""
    epoch = _git(ROOT, "log", "-1", "--format=%ct")
    env = {**os.environ, "SOURCE_DATE_EPOCH": epoch}
    digests = []
    for name in ("first", "second"):
        src = tmp_path / name / "relu_module"
        shutil.copytree(
            ROOT / "relu_module",
            src,
            ignore=shutil.ignore_patterns("build", "dist", "*.egg-info", "__pycache__", "*.so"),
        )
        for path in src.rglob("*"):
            os.utime(path, (time.time() + len(digests) * 1000,) * 2)
        out = tmp_path / name / "dist"
        build = f"umask 022 && {sys.executable} -m build --no-isolation --sdist -o {out} ."
        subprocess.run(["bash", "-c", build], cwd=src, env=env, check=True, capture_output=True)
        (sdist,) = out.glob("*.tar.gz")
        subprocess.run(
            ["bash", str(ROOT / ".ci/normalize-sdist.sh"), str(sdist)], env=env, check=True
        )
        digests.append(hashlib.sha256(sdist.read_bytes()).hexdigest())
        time.sleep(1.1)  # a later wall-clock second: timestamps must come from the commit
    assert digests[0] == digests[1], f"sdist sha256 differs: {digests}"

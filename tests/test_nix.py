"""Checks of the Nix flake that can run on this machine.

Debian's nix-bin (Nix 2.8) parses Nix but cannot evaluate a modern nixpkgs (that needs Nix >= 2.18
and network access to fetch it), and there is no binary cache, so nothing here evaluates or builds
the flake. What is checked: every tracked ``.nix`` file parses, ``flake.lock`` has the structure
Nix writes, the flake's outputs named in README.md and docs/nix.md exist as attribute names in
``flake.nix`` (a text check), every ``pkgs/*.nix`` is wired into the flake, and every
fixed-output hash is a well-formed SRI hash (the slow test re-downloads the wheels and recomputes
them). Where ``NIXPKGS_LIB`` points at a nixpkgs ``lib/`` directory, the flake is also evaluated
against ``tests/nix/mock-nixpkgs`` (the real lib, stand-in packages) and its generated scripts are
shellchecked and run. Users run ``nix flake check`` for the rest (docs/nix.md).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FLAKE = ROOT / "flake.nix"
LOCK = ROOT / "flake.lock"
PKGS = ROOT / "pkgs"
DOCS = [ROOT / "README.md", ROOT / "docs" / "nix.md"]
EVAL_FLAKE = ROOT / "tests" / "nix" / "eval-flake.nix"
SYSTEMS = {"x86_64-linux", "aarch64-linux"}

SRI_SHA256 = re.compile(r"sha256-[A-Za-z0-9+/]{43}=")
NAME = r"[A-Za-z0-9_][A-Za-z0-9_'-]*"


def tracked_nix_files() -> list[Path]:
    """The .nix files git tracks (what a flake sees); the working tree's if git is unavailable."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z", "--", "*.nix"],
            cwd=ROOT, capture_output=True, check=True, text=True,
        ).stdout
        files = [ROOT / name for name in out.split("\0") if name]
    except (OSError, subprocess.CalledProcessError):
        files = []
    return files or sorted(p for p in ROOT.rglob("*.nix") if ".venv" not in p.parts)


def nix_instantiate() -> str:
    exe = shutil.which("nix-instantiate")
    if exe is None:
        pytest.skip("nix-instantiate is not installed: `bash .ci/nix-parse.sh` apt-installs nix-bin")
    return exe


def block(text: str, opener: str) -> str:
    """The bracketed text that follows ``opener`` (which ends just before its '(' or '{')."""
    start = text.index(opener) + len(opener)
    open_at = min(i for i in (text.find("(", start), text.find("{", start)) if i >= 0)
    depth = 0
    for i in range(open_at, len(text)):
        if text[i] in "({[":
            depth += 1
        elif text[i] in ")}]":
            depth -= 1
            if depth == 0:
                return text[open_at : i + 1]
    raise ValueError(f"unbalanced brackets after {opener!r} in flake.nix")


def bindings(text: str) -> set[str]:
    """Every attribute name bound in ``text`` (``name =``) outside ``let ... in`` helpers, at any
    depth: a superset is fine for "does this output exist"."""
    text = re.sub(r"\blet\b.*?\bin\b", "", text, flags=re.DOTALL)
    return set(re.findall(rf"^\s*({NAME})\s*=(?!=)", text, flags=re.MULTILINE))


def flake_outputs() -> dict[str, set[str]]:
    """Output names per category, read from flake.nix's text."""
    text = FLAKE.read_text()
    return {
        "packages": bindings(block(text, "packages = forAllSystems")),
        "apps": bindings(block(text, "appSpecs =")) & top_level_names(block(text, "appSpecs =")),
        "devShells": bindings(block(text, "devShells = forAllSystems")),
        "checks": bindings(block(text, "checks = forAllSystems")),
        "formatter": {"formatter"} if re.search(r"^\s*formatter\s*=", text, re.MULTILINE) else set(),
    }


def top_level_names(attrset: str) -> set[str]:
    """Names bound directly in the attribute set ``attrset`` (depth 1 only)."""
    names, depth = set(), 0
    for line in attrset.splitlines():
        match = re.match(rf"\s*({NAME})\s*=", line)
        if match and depth == 1:
            names.add(match.group(1))
        depth += line.count("{") - line.count("}")
    return names


def doc_references(text: str) -> dict[str, set[str]]:
    """Flake outputs a document names: `nix build/run/develop .#x`, `nix develop`, bare `.#x`,
    `packages.<system>.x` and friends, `nix flake check`, `nix fmt`."""
    refs: dict[str, set[str]] = {k: set() for k in ("packages", "apps", "devShells", "checks", "any")}
    verbs = {"build": "packages", "run": "apps", "develop": "devShells", "shell": "packages"}
    for verb, target in re.findall(rf"nix\s+(build|run|develop|shell)\b[^`\n|;]*?\.#({NAME})", text):
        refs[verbs[verb]].add(target)
    if re.search(r"nix\s+develop(?![^`\n]*\.#)", text):
        refs["devShells"].add("default")
    refs["any"] |= set(re.findall(rf"\.#({NAME})", text))
    for category, name in re.findall(
        rf"\b(packages|apps|devShells|checks)\.(?:<system>|x86_64-linux|aarch64-linux|\$\{{system\}})\.({NAME})",
        text,
    ):
        refs[category].add(name)
    if "nix flake check" in text:
        refs["checks"].add("*")
    if re.search(r"\bnix fmt\b", text):
        refs["any"].add("formatter")
    return refs


# --- parsing -------------------------------------------------------------------------------------


def test_every_tracked_nix_file_parses() -> None:
    exe = nix_instantiate()
    files = tracked_nix_files()
    assert FLAKE in files, "flake.nix is not tracked by git: a flake only sees tracked files"
    failures = []
    for path in files:
        proc = subprocess.run([exe, "--parse", str(path)], capture_output=True, text=True)
        if proc.returncode != 0:
            failures.append(f"{path.relative_to(ROOT)}: {proc.stderr.strip()}")
    assert not failures, "nix-instantiate --parse failed:\n" + "\n".join(failures)


def test_parse_check_rejects_broken_nix(tmp_path: Path) -> None:
    """The parse check can fail: a file with an unbalanced brace is rejected."""
    exe = nix_instantiate()
    broken = tmp_path / "broken.nix"
    broken.write_text("{ a = 1;\n")
    proc = subprocess.run([exe, "--parse", str(broken)], capture_output=True, text=True)
    assert proc.returncode != 0 and "error" in proc.stderr.lower()


# --- flake.lock ----------------------------------------------------------------------------------


def test_flake_lock_structure() -> None:
    lock = json.loads(LOCK.read_text())
    assert lock["version"] == 7
    assert lock["root"] == "root"
    nodes = lock["nodes"]
    assert set(nodes) == {"root", "nixpkgs"}, "the only input is nixpkgs (no flake-utils etc.)"
    assert nodes["root"]["inputs"] == {"nixpkgs": "nixpkgs"}

    locked = nodes["nixpkgs"]["locked"]
    assert locked["type"] == "github"
    assert locked["owner"] == "NixOS"
    assert locked["repo"] == "nixpkgs"
    assert re.fullmatch(r"[0-9a-f]{40}", locked["rev"]), locked["rev"]
    assert SRI_SHA256.fullmatch(locked["narHash"]) and len(locked["narHash"]) == 51
    assert len(base64.b64decode(locked["narHash"].removeprefix("sha256-"))) == 32
    assert isinstance(locked["lastModified"], int) and locked["lastModified"] > 1_700_000_000
    assert nodes["nixpkgs"]["original"] == {
        "owner": "NixOS",
        "ref": "nixos-25.11",
        "repo": "nixpkgs",
        "type": "github",
    }


def test_flake_has_one_input_matching_the_lock() -> None:
    text = FLAKE.read_text()
    urls = re.findall(r'url\s*=\s*"([^"]+)"', text)
    assert urls == ["github:NixOS/nixpkgs/nixos-25.11"], urls
    assert "flake-utils" not in text


# --- outputs named in the docs exist in flake.nix (text check) ------------------------------------


def test_flake_defines_the_outputs_the_issue_lists() -> None:
    outputs = flake_outputs()
    assert {"relu-wheel", "mlpipe", "docker-image", "default"} <= outputs["packages"]
    assert outputs["apps"] == {"train", "serve", "bench", "profile", "test"}
    assert {"default", "cuda"} <= outputs["devShells"]
    assert {"pytest", "relu-wheel", "nix-format"} <= outputs["checks"]
    assert outputs["formatter"] == {"formatter"}


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_outputs_named_in_docs_exist_in_flake(doc: Path) -> None:
    """Text check (no evaluation is possible here): every `.#name`, `nix develop [.#name]`,
    `packages.<system>.name` etc. in the document is an attribute name of that kind in flake.nix."""
    if not doc.exists():
        pytest.skip(f"{doc.relative_to(ROOT)} does not exist yet")
    refs = doc_references(doc.read_text())
    outputs = flake_outputs()
    everything = set().union(*outputs.values())
    missing = [
        f"{category}: {name}"
        for category in ("packages", "apps", "devShells", "checks")
        for name in sorted(refs[category] - {"*"})
        if name not in outputs[category]
    ]
    missing += [f"any output: {name}" for name in sorted(refs["any"] - everything)]
    if "*" in refs["checks"]:
        assert outputs["checks"], f"{doc.name} mentions `nix flake check` but flake.nix has no checks"
    assert not missing, f"{doc.name} names flake outputs that flake.nix does not define: {missing}"


def test_doc_reference_extraction_finds_unknown_outputs() -> None:
    """The docs check can fail: an output that flake.nix lacks is reported."""
    refs = doc_references("run `nix run .#deploy` or `nix build .#relu-wheel`, then `nix develop`")
    outputs = flake_outputs()
    assert "deploy" in refs["apps"] and "deploy" not in outputs["apps"]
    assert "relu-wheel" in refs["packages"] and "default" in refs["devShells"]


# --- pkgs/: one derivation per file, all wired, real hashes --------------------------------------


def test_every_pkgs_file_is_wired_into_the_flake() -> None:
    text = FLAKE.read_text()
    referenced = set(re.findall(r"\./pkgs/([A-Za-z0-9_.-]+\.nix)", text))
    present = {p.name for p in PKGS.glob("*.nix")}
    assert referenced <= present, f"flake.nix calls missing files: {sorted(referenced - present)}"
    assert present <= referenced, f"pkgs/ files the flake never uses: {sorted(present - referenced)}"


def test_fixed_output_hashes_are_well_formed_sri() -> None:
    """No placeholder hashes (lib.fakeHash, all-A, empty): each is base64 of a 32-byte digest."""
    for path in PKGS.glob("*.nix"):
        text = path.read_text()
        assert "fakeHash" not in text and "fakeSha256" not in text, path.name
        for value in re.findall(r'hash\s*=\s*"([^"]*)"', text):
            assert SRI_SHA256.fullmatch(value), f"{path.name}: {value!r} is not an SRI sha256"
            digest = base64.b64decode(value.removeprefix("sha256-"))
            assert len(digest) == 32 and len(set(digest)) > 4, f"{path.name}: {value} looks fake"


def wheel_pins() -> list[tuple[str, str, str]]:
    """(file, wheel URL with ${version} expanded, SRI hash) for every wheel fetched in pkgs/."""
    pins = []
    for path in sorted(PKGS.glob("*.nix")):
        text = path.read_text()
        version = re.search(r'version\s*=\s*"([^"]+)"', text)
        for url, sri in re.findall(r'url\s*=\s*"([^"]+\.whl)";\s*hash\s*=\s*"([^"]+)"', text):
            if version:
                url = url.replace("${version}", version.group(1))
            pins.append((path.name, url, sri))
    return pins


def test_wheel_pins_name_their_version() -> None:
    pins = wheel_pins()
    assert {name for name, _, _ in pins} >= {"nvidia-pytriton.nix", "onnxscript.nix", "onnx-ir.nix"}
    for name, url, _ in pins:
        assert "${" not in url, f"{name}: unexpanded interpolation in {url}"
        assert url.startswith("https://files.pythonhosted.org/packages/"), url


@pytest.mark.slow
def test_wheel_hashes_match_pypi_downloads(tmp_path: Path) -> None:
    """Re-download every pinned wheel with pip (from PyPI, as CI can) and recompute its SRI hash."""
    for name, url, sri in wheel_pins():
        filename = url.rsplit("/", 1)[1]
        dist, version, _py, _abi, platform = filename.removesuffix(".whl").split("-")
        dest = tmp_path / name
        cmd = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
            "--only-binary=:all:", "--dest", str(dest), f"{dist}=={version}",
        ]
        if platform != "any":
            cmd += ["--platform", platform, "--python-version", "3.11"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        assert proc.returncode == 0, f"pip download {filename} failed: {proc.stderr[-2000:]}"
        wheel = dest / filename
        assert wheel.exists(), f"pip fetched {sorted(p.name for p in dest.iterdir())}, not {filename}"
        digest = hashlib.sha256(wheel.read_bytes()).digest()
        assert "sha256-" + base64.b64encode(digest).decode() == sri, f"{name}: {filename}"


# --- evaluation against tests/nix/mock-nixpkgs (needs a nixpkgs lib) ------------------------------


def evaluate_flake(**env: str) -> dict:
    """Evaluate the flake with Nix 2.8 against the mock package set; JSON summary of the outputs."""
    exe = nix_instantiate()
    if not os.environ.get("NIXPKGS_LIB"):
        pytest.skip(
            "NIXPKGS_LIB is unset: point it at a nixpkgs lib/ directory to evaluate the flake "
            "against tests/nix/mock-nixpkgs (nixpkgs itself cannot be fetched here)"
        )
    proc = subprocess.run(
        [exe, "--eval", "--strict", "--json", str(EVAL_FLAKE)],
        capture_output=True, text=True, env={**os.environ, **env}, cwd=ROOT,
    )
    assert proc.returncode == 0, f"flake evaluation failed:\n{proc.stderr[-4000:]}"
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def evaluated() -> dict:
    return evaluate_flake(NIXPKGS_ALLOW_UNFREE="", MOCK_HAS_ONNXSCRIPT="")


def test_flake_evaluates_for_every_system(evaluated: dict) -> None:
    assert set(evaluated) == SYSTEMS
    for system, out in evaluated.items():
        assert set(out["packages"]) == {"relu-wheel", "mlpipe", "nvidia-pytriton", "docker-image", "default"}
        assert out["packages"]["relu-wheel"].endswith("-dist"), "relu-wheel is the wheel (dist output)"
        assert set(out["apps"]) == {"train", "serve", "bench", "profile", "test"}
        assert all(a["type"] == "app" and a["program"].startswith("/nix/store/") for a in out["apps"].values())
        assert set(out["checks"]) == {"pytest", "relu-wheel", "nix-format"}
        assert any("mlpipe" in p for p in out["devShells"]["default"]["python"])
        assert out["formatter"] == "nixfmt-tree"
        arch = system.split("-")[0]
        assert out["python"]["nvidia-pytriton"]["src"].endswith(f"manylinux_2_35_{arch}.whl")


def test_mlpipe_depends_on_its_wheels_and_the_fallbacks(evaluated: dict) -> None:
    py = evaluated["x86_64-linux"]["python"]
    deps = py["mlpipe"]["dependencies"]
    for name in ("relu-module-1.0.0", "nvidia-pytriton-0.7.0", "onnxscript-0.7.2", "torch", "dvc"):
        assert any(name in d for d in deps), f"mlpipe lacks {name}: {deps}"
    assert any("onnx-ir-1.1.0" in d for d in py["onnxscript"]["dependencies"])
    assert py["relu-module"]["build-system"] == ["setuptools", "pybind11"]
    stubs = py["nvidia-pytriton"]["postInstall"]
    assert "python_backend_stubs/3.13/triton_python_backend_stub" in stubs


def test_nixpkgs_onnxscript_is_preferred_when_present() -> None:
    out = evaluate_flake(MOCK_HAS_ONNXSCRIPT="1", NIXPKGS_ALLOW_UNFREE="")
    py = out["x86_64-linux"]["python"]
    assert py["onnxscript"]["name"] == "onnxscript" and py["onnx-ir"]["name"] == "onnx-ir"


def test_cuda_shell_needs_consent(evaluated: dict) -> None:
    shell = evaluated["x86_64-linux"]["devShells"]["cuda"]
    assert shell["name"] == "mlpipe-cuda-needs-unfree"
    assert "NIXPKGS_ALLOW_UNFREE=1 nix develop --impure .#cuda" in shell["shellHook"]
    assert shell["shellHook"].rstrip().endswith("exit 1")

    consented = evaluate_flake(NIXPKGS_ALLOW_UNFREE="1", MOCK_HAS_ONNXSCRIPT="")
    shell = consented["x86_64-linux"]["devShells"]["cuda"]
    assert shell["name"] == "mlpipe-cuda"
    assert {"cudatoolkit", "tensorrt"} <= set(shell["packages"])
    assert "tensorrt" in shell["python"], "python3Packages.tensorrt joins the shell's Python"
    assert any("mlpipe" in p for p in shell["python"])
    assert "libcuda.so.1" in shell["shellHook"]


def write_script(tmp_path: Path, name: str, text: str) -> Path:
    """The script as writeShellApplication writes it (its preamble: errexit, nounset, pipefail)."""
    path = tmp_path / f"{name}.sh"
    path.write_text("#!/usr/bin/env bash\nset -o errexit\nset -o nounset\nset -o pipefail\n\n" + text)
    return path


def test_generated_scripts_pass_shellcheck(evaluated: dict, tmp_path: Path) -> None:
    """writeShellApplication runs shellcheck at build time; catch its complaints here."""
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (apt-get install shellcheck)")
    for name, text in evaluated["x86_64-linux"]["scripts"].items():
        proc = subprocess.run([shellcheck, str(write_script(tmp_path, name, text))], capture_output=True, text=True)
        assert proc.returncode == 0, f"{name}:\n{proc.stdout}"


def test_app_refuses_to_run_outside_a_checkout(evaluated: dict, tmp_path: Path) -> None:
    script = write_script(tmp_path, "train", evaluated["x86_64-linux"]["scripts"]["train"])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = subprocess.run(["bash", str(script)], cwd=elsewhere, capture_output=True, text=True)
    assert proc.returncode == 2
    assert "is not an mlpipe checkout (missing: conf dvc.yaml)" in proc.stderr
    assert "nix run .#train" in proc.stderr


def test_app_runs_the_entry_point_on_the_checkouts_conf(evaluated: dict, tmp_path: Path) -> None:
    script = write_script(tmp_path, "train", evaluated["x86_64-linux"]["scripts"]["train"])
    checkout, bindir = tmp_path / "checkout", tmp_path / "bin"
    (checkout / "conf").mkdir(parents=True)
    (checkout / "dvc.yaml").write_text("stages: {}\n")
    bindir.mkdir()
    fake = bindir / "mlpipe-train"
    fake.write_text('#!/bin/sh\nprintf "%s\\n" "$@"\n')
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}"}
    proc = subprocess.run(["bash", str(script), "trainer.max_epochs=1"], cwd=checkout, env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["--config-path", f"{checkout}/conf", "trainer.max_epochs=1"]

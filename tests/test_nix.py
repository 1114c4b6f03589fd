"""Checks of the Nix flake that can run on this machine.

Debian's nix-bin (Nix 2.8) parses Nix but cannot evaluate a modern nixpkgs (that needs Nix >= 2.18
and network access to fetch it), and there is no binary cache, so nothing here evaluates or builds
the flake. What is checked: every tracked ``.nix`` file parses, ``flake.lock`` has the structure
Nix writes, the flake's outputs named in README.md and docs/nix.md exist as attribute names in
``flake.nix`` (a text check), every ``pkgs/*.nix`` is wired into the flake, and every
fixed-output hash is a well-formed SRI hash (the slow test re-downloads the wheels and recomputes
them). Where ``NIXPKGS_LIB`` points at a nixpkgs ``lib/`` directory, the flake is also evaluated
against ``tests/nix/mock-nixpkgs`` (the real lib, stand-in packages as strict as nixpkgs: closed
argument sets, check-meta, the locked versions), its generated scripts are shellchecked and run,
and checks.<system>.pytest's own buildPhase and selection run on this host made to look like the
build sandbox (slow). Users run ``nix flake check`` for the rest (docs/nix.md).
"""

from __future__ import annotations

import atexit
import base64
import functools
import hashlib
import importlib.util
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
import tomllib
import zipfile
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
            cwd=ROOT,
            capture_output=True,
            check=True,
            text=True,
        ).stdout
        files = [ROOT / name for name in out.split("\0") if name]
    except (OSError, subprocess.CalledProcessError):
        files = []
    return files or sorted(p for p in ROOT.rglob("*.nix") if ".venv" not in p.parts)


def nix_instantiate() -> str:
    exe = shutil.which("nix-instantiate")
    if exe is None:
        pytest.skip(
            "nix-instantiate is not installed: `bash .ci/nix-parse.sh` apt-installs nix-bin"
        )
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
        "formatter": {"formatter"}
        if re.search(r"^\s*formatter\s*=", text, re.MULTILINE)
        else set(),
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
    refs: dict[str, set[str]] = {
        k: set() for k in ("packages", "apps", "devShells", "checks", "any")
    }
    verbs = {"build": "packages", "run": "apps", "develop": "devShells", "shell": "packages"}
    for verb, target in re.findall(
        rf"nix\s+(build|run|develop|shell)\b[^`\n|;]*?\.#({NAME})", text
    ):
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
        assert outputs["checks"], (
            f"{doc.name} mentions `nix flake check` but flake.nix has no checks"
        )
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
    assert present <= referenced, (
        f"pkgs/ files the flake never uses: {sorted(present - referenced)}"
    )


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


@pytest.fixture(scope="module")
def pypi_wheels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every wheel pinned in pkgs/, downloaded again with pip (from PyPI, as CI can), by URL."""
    wheels = {}
    for name, url, _sri in wheel_pins():
        filename = url.rsplit("/", 1)[1]
        dist, version, _py, _abi, platform = filename.removesuffix(".whl").split("-")
        dest = tmp_path_factory.mktemp(name.removesuffix(".nix"))
        cmd = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
            "--only-binary=:all:", "--dest", str(dest), f"{dist}=={version}",
        ]  # fmt: skip
        if platform != "any":
            cmd += ["--platform", platform, "--python-version", "3.11"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        assert proc.returncode == 0, f"pip download {filename} failed: {proc.stderr[-2000:]}"
        wheel = dest / filename
        assert wheel.exists(), (
            f"pip fetched {sorted(p.name for p in dest.iterdir())}, not {filename}"
        )
        wheels[url] = wheel
    return wheels


@pytest.mark.slow
def test_wheel_hashes_match_pypi_downloads(pypi_wheels: dict[str, Path]) -> None:
    """Recompute the SRI hash of every pinned wheel from a fresh download."""
    for name, url, sri in wheel_pins():
        digest = hashlib.sha256(pypi_wheels[url].read_bytes()).digest()
        assert "sha256-" + base64.b64encode(digest).decode() == sri, f"{name}: {url}"


# --- evaluation against tests/nix/mock-nixpkgs (needs a nixpkgs lib) ------------------------------


def nixpkgs_lib() -> Path:
    """$NIXPKGS_LIB: skip when unset (a user's clone); fail when it names no nixpkgs lib/."""
    value = os.environ.get("NIXPKGS_LIB")
    if not value:
        pytest.skip(
            "NIXPKGS_LIB is unset: point it at a nixpkgs lib/ directory to evaluate the flake "
            "against tests/nix/mock-nixpkgs (.ci/run uses ../shared/nixpkgs-lib/lib when present)"
        )
    lib = Path(value)
    assert (lib / "default.nix").is_file() and (lib / "fileset").is_dir(), (
        f"NIXPKGS_LIB={value} is not a nixpkgs lib/ directory (no default.nix and fileset/ in it); "
        "point it at <nixpkgs>/lib or unset it"
    )
    return lib


def copy_tracked_files(dest: Path) -> Path:
    """The git-tracked files of the checkout, copied to ``dest``: what a flake's source holds."""
    files = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split("\0")
    for name in filter(None, files):
        if (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    return dest


@functools.cache
def flake_source() -> Path:
    """One tracked-files copy per test session for the evaluations: the flake sees no .venv,
    data or untracked file, as with `nix flake check`, and hashing its source stays cheap."""
    dest = Path(tempfile.mkdtemp(prefix="mlpipe-flake-"))
    atexit.register(shutil.rmtree, dest, ignore_errors=True)
    return copy_tracked_files(dest)


def run_eval(source: Path | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    """Evaluate the flake (the checkout's tracked files, or ``source``) with Nix 2.8 against the
    mock package set (JSON summary on stdout)."""
    exe = nix_instantiate()
    defaults = {
        "NIXPKGS_LIB": str(nixpkgs_lib()),
        "NIXPKGS_ALLOW_UNFREE": "",
        "MOCK_HAS_ONNXSCRIPT": "",
        "MOCK_TENSORRT_VERSION": "",
        "MOCK_DEFAULT_CUDA": "",
    }
    source = source or flake_source()
    return subprocess.run(
        [exe, "--eval", "--strict", "--json", str(source / EVAL_FLAKE.relative_to(ROOT))],
        capture_output=True, text=True, env={**os.environ, **defaults, **env}, cwd=source,
    )  # fmt: skip


def evaluate_flake(**env: str) -> dict:
    proc = run_eval(**env)
    assert proc.returncode == 0, f"flake evaluation failed:\n{proc.stderr[-4000:]}"
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def evaluated() -> dict:
    return evaluate_flake()


@pytest.fixture(scope="module")
def consented() -> dict:
    """The flake as `NIXPKGS_ALLOW_UNFREE=1 nix develop --impure .#cuda` evaluates it."""
    return evaluate_flake(NIXPKGS_ALLOW_UNFREE="1")


def test_nixpkgs_lib_that_is_not_one_fails_clearly(tmp_path: Path, monkeypatch) -> None:
    """A mistyped NIXPKGS_LIB is an error naming the fix, not a skip."""
    monkeypatch.setenv("NIXPKGS_LIB", str(tmp_path))
    with pytest.raises(AssertionError, match="is not a nixpkgs lib/ directory"):
        nixpkgs_lib()


def test_flake_evaluates_for_every_system(evaluated: dict) -> None:
    assert set(evaluated) == SYSTEMS
    for system, out in evaluated.items():
        packages = {"relu-wheel", "mlpipe", "nvidia-pytriton", "docker-image", "default"}
        assert set(out["packages"]) == packages
        assert set(out["apps"]) == {"train", "serve", "bench", "profile", "test"}
        assert all(
            a["type"] == "app" and a["program"].startswith("/nix/store/")
            for a in out["apps"].values()
        )
        assert set(out["checks"]) == {"pytest", "pytriton-stub", "relu-wheel", "nix-format"}
        assert any("mlpipe" in p for p in out["devShells"]["default"]["python"])
        assert out["formatter"] == "nixfmt-tree"
        arch = system.split("-")[0]
        assert out["python"]["nvidia-pytriton"]["src"].endswith(f"manylinux_2_35_{arch}.whl")


def test_relu_wheel_is_the_dist_output_of_the_relu_module_build(evaluated: dict) -> None:
    """As in nixpkgs: `drv.dist` is the same derivation, selected by outputName, not another one."""
    out = evaluated["x86_64-linux"]
    wheel, module = out["packages"]["relu-wheel"], out["relu-module"]
    assert wheel["outputName"] == "dist" and module["outputName"] == "out"
    assert wheel["drvPath"] == module["drvPath"] and wheel["name"] == module["name"]


def out_link(output_name: str) -> str:
    """What `nix build` names the link to a package's output (Nix's createOutLinks)."""
    return "result" if output_name == "out" else f"result-{output_name}"


def test_docs_name_the_link_nix_build_makes(evaluated: dict) -> None:
    """`nix build .#x`'s link is result-<output> for every output but out: the docs must say so."""
    packages = evaluated["x86_64-linux"]["packages"]
    for doc in DOCS:
        for line in doc.read_text().splitlines():
            match = re.search(rf"nix build \.#({NAME})\b.*?\b(result(?:-[a-z]+)?)\b", line)
            if match and match.group(1) in packages:
                link = out_link(packages[match.group(1)]["outputName"])
                assert match.group(2) == link, f"{doc.name}: {line.strip()!r} should say {link}"
    nix_md = (ROOT / "docs" / "nix.md").read_text()
    assert "result-dist" in nix_md, "docs/nix.md must name the wheel's link, result-dist"


def test_out_link_rule_distinguishes_outputs() -> None:
    assert out_link("out") == "result" and out_link("dist") == "result-dist"


def test_mlpipe_depends_on_its_wheels_and_the_fallbacks(evaluated: dict) -> None:
    py = evaluated["x86_64-linux"]["python"]
    deps = py["mlpipe"]["dependencies"]
    for name in ("relu-module-1.0.0", "nvidia-pytriton-0.7.0", "onnxscript-0.7.2", "torch", "dvc"):
        assert any(name in d for d in deps), f"mlpipe lacks {name}: {deps}"
    assert any("onnx-ir-1.1.0" in d for d in py["onnxscript"]["dependencies"])
    assert py["relu-module"]["build-system"] == ["setuptools", "pybind11", "torch"]
    stubs = py["nvidia-pytriton"]["postInstall"]
    assert "python_backend_stubs/3.13/triton_python_backend_stub" in stubs


def test_nixpkgs_onnxscript_is_preferred_when_present() -> None:
    out = evaluate_flake(MOCK_HAS_ONNXSCRIPT="1")
    py = out["x86_64-linux"]["python"]
    assert py["onnxscript"]["name"] == "onnxscript" and py["onnx-ir"]["name"] == "onnx-ir"


# --- the stand-in is as strict as nixpkgs ---------------------------------------------------------

MISSPELLINGS = [
    # (file, argument as nixpkgs spells it, misspelt) -- closed formals in nixpkgs
    ("pkgs/app.nix", "runtimeInputs", "runtimeInput"),
    ("pkgs/docker-image.nix", "enableFakechroot", "enableFakeChroot"),
    ("pkgs/docker-image.nix", "extraPasswdLines", "extraPasswdLine"),
    ("pkgs/docker-image.nix", "fakeRootCommands", "fakeRootCommand"),
]


@pytest.mark.parametrize(("file", "right", "wrong"), MISSPELLINGS, ids=lambda v: str(v))
def test_a_misspelt_argument_fails_evaluation(
    file: str, right: str, wrong: str, tmp_path: Path
) -> None:
    """writeShellApplication, dockerTools.streamLayeredImage and fakeNss.override take a closed
    set of arguments in nixpkgs; so does the stand-in, and evaluation names the misspelling."""
    source = copy_tracked_files(tmp_path / "flake")
    path = source / file
    text = path.read_text()
    assert re.search(rf"\b{right}\b", text), f"{file} no longer passes {right}"
    path.write_text(re.sub(rf"\b{right}\b", wrong, text))
    proc = run_eval(source=source)
    assert proc.returncode != 0, f"{wrong} in {file} evaluated"
    assert f"called with unexpected argument '{wrong}'" in proc.stderr, proc.stderr[-2000:]


def test_buildlayeredimage_hands_unknown_arguments_to_the_strict_stream(tmp_path: Path) -> None:
    """buildLayeredImage takes `compressor` itself and passes the rest to streamLayeredImage."""
    probe = tmp_path / "probe.nix"
    probe.write_text(
        f"""let
  pkgs = import {ROOT}/tests/nix/mock-nixpkgs {{ system = "x86_64-linux"; }};
  image = args: (pkgs.dockerTools.buildLayeredImage ({{ name = "x"; }} // args)).drvPath;
in
{{
  ok = image {{ compressor = "zstd"; fakeRootCommands = ""; }};
  bad = builtins.tryEval (image {{ enableFakeChroot = true; }});
}}
"""
    )
    proc = subprocess.run(
        [nix_instantiate(), "--eval", "--strict", "--json", str(probe)],
        capture_output=True, text=True, env={**os.environ, "NIXPKGS_LIB": str(nixpkgs_lib())},
    )  # fmt: skip
    assert proc.returncode != 0 and "unexpected argument 'enableFakeChroot'" in proc.stderr


def imported_distributions() -> set[str]:
    """The distributions (normalised names) whose modules mlpipe/ imports, found in this venv."""
    import ast
    from importlib.metadata import packages_distributions

    modules: set[str] = set()
    for path in (ROOT / "mlpipe").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module.split(".")[0])
    owners = packages_distributions()
    return {
        re.sub(r"[-_.]+", "-", dist).lower()
        for module in modules - {"mlpipe"}
        for dist in owners.get(module, [])
    }


def nix_attr(name: str) -> str:
    """A dependency's name as the stand-in derivation names it (python3.13-x-1.0 -> x)."""
    return re.sub(r"^python3\.\d+-|-\d[\w.]*$", "", name)


def test_every_distribution_mlpipe_imports_is_a_declared_nix_dependency(evaluated: dict) -> None:
    """pkgs/mlpipe.nix declares what mlpipe imports (pyyaml: mlpipe/common/provenance.py), not
    only what arrives through another package's closure (omegaconf brings pyyaml in nixpkgs)."""
    py = evaluated["x86_64-linux"]["python"]
    # the `dev` extra is in every Nix environment: mlpipe.measure.relu_bench imports pybind11
    # (to build its reference extension) from there
    declared = {nix_attr(d) for d in py["mlpipe"]["dependencies"] + py["mlpipe"]["dev"]}
    # nvidia-pytriton and relu-module are the flake's own packages, declared under other names
    missing = sorted(imported_distributions() - declared - {"nvidia-pytriton", "relu-module"})
    assert not missing, f"mlpipe imports {missing}, which pkgs/mlpipe.nix does not declare"
    closure = {nix_attr(d) for d in evaluated["x86_64-linux"]["python-env"]["closure"]}
    assert {"pyyaml", "pip", "omegaconf"} <= closure


def test_the_dependency_check_fails_without_pyyaml(tmp_path: Path) -> None:
    source = copy_tracked_files(tmp_path / "flake")
    path = source / "pkgs" / "mlpipe.nix"
    path.write_text(re.sub(r"^\s*pyyaml\n", "", path.read_text(), flags=re.MULTILINE))
    proc = run_eval(source=source)
    assert proc.returncode == 0, proc.stderr[-2000:]
    deps = {
        nix_attr(d)
        for d in json.loads(proc.stdout)["x86_64-linux"]["python"]["mlpipe"]["dependencies"]
    }
    assert "pyyaml" in imported_distributions() and "pyyaml" not in deps


# --- pins: CUDA, TensorRT, Python, compiler -------------------------------------------------------

PINS = re.compile(r"CUDA (\d+\.\d+) \((cudaPackages_\d+_\d+)\), TensorRT (\d+\.\d+)")


def test_cuda_shell_needs_consent(evaluated: dict, consented: dict) -> None:
    shell = evaluated["x86_64-linux"]["devShells"]["cuda"]
    assert shell["name"] == "mlpipe-cuda-needs-unfree"
    assert "NIXPKGS_ALLOW_UNFREE=1 nix develop --impure .#cuda" in shell["shellHook"]
    assert shell["shellHook"].rstrip().endswith("exit 1")

    shell = consented["x86_64-linux"]["devShells"]["cuda"]
    assert shell["name"] == "mlpipe-cuda"
    # the locked nixpkgs' names: cudatoolkit's version is cudaMajorMinorVersion
    assert {"cuda-merged-12.8", "tensorrt-10.14.1.48"} <= set(shell["packages"])
    assert "python3.13-tensorrt-10.14.1.48" in shell["python"], "tensorrt joins the shell's Python"
    assert any("mlpipe" in p for p in shell["python"])
    assert "libcuda.so.1" in shell["shellHook"]
    assert "capabilities 8.0 8.9 9.0" in shell["shellHook"]


def test_cuda_consent_allows_nvidias_licences_only_and_tensorrt_python_on_x86_64(
    consented: dict,
) -> None:
    """The cuda shell's nixpkgs allows unfree packages by nixpkgs' CUDA predicate (every one
    the shell needs evaluates), and the TensorRT wheel only where its meta.platforms has it."""
    arm = consented["aarch64-linux"]["devShells"]["cuda"]
    assert not any("tensorrt" in p for p in arm["python"]), arm["python"]
    assert "tensorrt-10.14.1.48" in arm["packages"]
    flake = FLAKE.read_text()
    assert "allowUnfree = true" not in flake
    assert "_cuda.lib.allowUnfreeCudaPredicate" in flake


def test_a_blanket_unfree_package_is_refused_by_the_cuda_predicate(tmp_path: Path) -> None:
    """The stand-in's check-meta applies the predicate: an unfree package under another licence
    stays refused in the consented cuda package set."""
    probe = tmp_path / "probe.nix"
    probe.write_text(
        f"""let
  lib = import {ROOT}/tests/nix/lib.nix;
  pkgs = import {ROOT}/tests/nix/mock-nixpkgs {{
    system = "x86_64-linux";
    config.allowUnfreePredicate = p: pkgs._cuda.lib.allowUnfreeCudaPredicate p;
  }};
in
{{
  toolkit = pkgs.cudaPackages.cudatoolkit.meta.available;
  wheel = pkgs.python3Packages.tensorrt.meta.available;
}}
"""
    )
    proc = subprocess.run(
        [nix_instantiate(), "--eval", "--strict", "--json", str(probe)],
        capture_output=True, text=True, env={**os.environ, "NIXPKGS_LIB": str(nixpkgs_lib())},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"toolkit": True, "wheel": False}


def test_flake_show_descriptions_name_the_pinned_versions(evaluated: dict, consented: dict) -> None:
    """What `nix flake show` prints: the CUDA set, CUDA, TensorRT, Python and GCC versions."""
    shells = evaluated["x86_64-linux"]["devShells"]
    pins = PINS.search(shells["cuda"]["description"])
    assert pins, shells["cuda"]["description"]
    assert pins.groups() == ("12.8", "cudaPackages_12_8", "10.14")
    real = consented["x86_64-linux"]["devShells"]["cuda"]["description"]
    assert real.startswith("GPU shell: CUDA 12.8 (cudaPackages_12_8), TensorRT 10.14.1.48, ")
    assert "Python 3.13.7, GCC 14.3.0" in real
    assert shells["default"]["description"] == "CPU shell: Python 3.13.7, GCC 14.3.0"
    wheel = evaluated["x86_64-linux"]["packages"]["relu-wheel"]["description"]
    assert wheel.endswith("built by GCC 14.3.0 for Python 3.13.7")


def test_docs_state_the_cuda_pins(evaluated: dict) -> None:
    cuda, package_set, tensorrt = PINS.search(
        evaluated["x86_64-linux"]["devShells"]["cuda"]["description"]
    ).groups()
    nix_md = (ROOT / "docs" / "nix.md").read_text()
    for text in (f"`{package_set}`", f"CUDA {cuda}", f"TensorRT {tensorrt}"):
        assert text in nix_md, f"docs/nix.md does not state the pin {text}"


def test_the_pinned_cuda_set_wins_over_nixpkgs_default() -> None:
    """A nixpkgs whose `cudaPackages` moved on (to 12.9) still gives the shell the pinned 12.8."""
    out = evaluate_flake(NIXPKGS_ALLOW_UNFREE="1", MOCK_DEFAULT_CUDA="cudaPackages_12_9")
    shell = out["x86_64-linux"]["devShells"]["cuda"]
    assert "cuda-merged-12.8" in shell["packages"], shell["packages"]


def test_a_tensorrt_other_than_the_pin_stops_evaluation() -> None:
    proc = run_eval(NIXPKGS_ALLOW_UNFREE="1", MOCK_TENSORRT_VERSION="10.9.0.34")
    assert proc.returncode != 0
    assert "has CUDA 12.8 and TensorRT 10.9 in cudaPackages_12_8" in proc.stderr
    assert "flake.nix pins CUDA 12.8 and TensorRT 10.14" in proc.stderr


# --- generated scripts ----------------------------------------------------------------------------


def write_script(tmp_path: Path, name: str, text: str) -> Path:
    """The script as writeShellApplication writes it (its preamble: errexit, nounset, pipefail)."""
    path = tmp_path / f"{name}.sh"
    path.write_text(
        "#!/usr/bin/env bash\nset -o errexit\nset -o nounset\nset -o pipefail\n\n" + text
    )
    return path


def build_scripts(evaluated: dict) -> dict[str, str]:
    """Every shell snippet the flake hands to a builder, with the variables stdenv provides."""
    out = evaluated["x86_64-linux"]
    stdenv_vars = 'out="${out:?}"\nTMPDIR="${TMPDIR:?}"\n'
    hooks = {
        f"nvidia-pytriton-{hook}": stdenv_vars + out["python"]["nvidia-pytriton"][hook]
        for hook in ("postInstall", "postInstallCheck")
    }
    return {
        **out["scripts"],
        **hooks,
        "pytriton-stub-check": stdenv_vars + out["pytriton-stub-check"],
    }


def test_generated_scripts_pass_shellcheck(evaluated: dict, tmp_path: Path) -> None:
    """writeShellApplication runs shellcheck at build time; the build hooks get the same lint."""
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (`bash .ci/nix-parse.sh` apt-installs it)")
    for name, text in build_scripts(evaluated).items():
        script = write_script(tmp_path, name, text)
        proc = subprocess.run([shellcheck, str(script)], capture_output=True, text=True)
        assert proc.returncode == 0, f"{name}:\n{proc.stdout}"


def test_app_refuses_to_run_outside_a_checkout(evaluated: dict, tmp_path: Path) -> None:
    script = write_script(tmp_path, "train", evaluated["x86_64-linux"]["scripts"]["train"])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = subprocess.run(["bash", str(script)], cwd=elsewhere, capture_output=True, text=True)
    assert proc.returncode == 2
    assert "is not an mlpipe checkout (missing: conf dvc.yaml data.dvc)" in proc.stderr
    assert "nix run .#train" in proc.stderr


def fresh_clone(dest: Path) -> Path:
    """The tracked files as a new git repository: what `git clone` gives (no data/, no cache)."""
    copy_tracked_files(dest)
    git = ["git", "-C", str(dest), "-c", "user.name=t", "-c", "user.email=t@localhost"]
    subprocess.run([*git, "init", "--quiet"], check=True)
    subprocess.run([*git, "add", "--all"], check=True)
    subprocess.run([*git, "commit", "--quiet", "--message", "clone"], check=True)
    return dest


@pytest.mark.timeout(300)
def test_train_app_works_from_a_fresh_clone(evaluated: dict, tmp_path: Path) -> None:
    """`nix run .#train` in a fresh clone: the app restores data/ from the committed DVC remote
    with the real dvc (no network), then runs the entry point on the clone's conf/."""
    script = write_script(tmp_path, "train", evaluated["x86_64-linux"]["scripts"]["train"])
    clone, bindir = fresh_clone(tmp_path / "clone"), tmp_path / "bin"
    assert not (clone / "data").exists()
    bindir.mkdir()
    fake = bindir / "mlpipe-train"  # stands in for training only: it reports what it was given
    fake.write_text('#!/bin/sh\nls data >&2\nprintf "%s\\n" "$@"\n')
    fake.chmod(0o755)
    path = os.pathsep.join([str(bindir), str(Path(sys.executable).parent), os.environ["PATH"]])
    env = {**os.environ, "PATH": path, "DVC_SITE_CACHE_DIR": str(tmp_path / "dvc-site")}
    proc = subprocess.run(
        ["bash", str(script), "trainer.max_epochs=1"], cwd=clone, env=env,
        capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["--config-path", f"{clone}/conf", "trainer.max_epochs=1"]
    assert "digits.csv.gz" in proc.stderr.split()


def test_apps_and_check_use_nix_nginx_with_njs_compiled_in(evaluated: dict) -> None:
    """Every Nix path that can start the gateway has Nix's nginx with njs and says so to the
    config (MLPIPE_NJS_MODULE=""), so no Debian path is ever looked for."""
    out = evaluated["x86_64-linux"]
    nginx = out["nginx"]
    assert nginx["modules"] == ["njs"], "the gateway's request check needs njs compiled in"
    for name, app in out["app-env"].items():
        assert nginx["name"] in app["inputs"] and app["env"] == {"MLPIPE_NJS_MODULE": ""}, name
    check = out["pytest-check"]
    assert nginx["name"] in check["inputs"] and check["MLPIPE_NJS_MODULE"] == ""
    for shell in ("default",):
        assert nginx["name"] in out["devShells"][shell]["packages"]
    assert "MLPIPE_NJS_MODULE=" in out["image"]["config"]["Env"]
    assert "gateway.check.module=null" not in out["scripts"]["docker-entrypoint"]
    conf = (ROOT / "conf" / "gateway" / "nginx.yaml").read_text()
    assert "${oc.env:MLPIPE_NJS_MODULE," in conf


# --- the OCI image --------------------------------------------------------------------------------


def image_test_selection(evaluated: dict) -> str:
    """The `-m` expression the image's default `test` command passes to pytest."""
    entrypoint = evaluated["x86_64-linux"]["scripts"]["docker-entrypoint"]
    match = re.search(r"^\s*test\) exec pytest -m '([^']+)' \"\$@\" ;;$", entrypoint, re.MULTILINE)
    assert match, f"the image's `test` command does not select tests by marker:\n{entrypoint}"
    return match.group(1)


def registered_markers() -> set[str]:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return {m.split(":")[0].strip() for m in pyproject["tool"]["pytest"]["ini_options"]["markers"]}


def test_image_test_selection_uses_registered_markers(evaluated: dict) -> None:
    """The image has no compiler, GPU or TensorRT: its default `test` deselects those tests."""
    selection = image_test_selection(evaluated)
    used = set(re.findall(r"not (\w+)", selection))
    assert used == {"slow", "gpu", "tensorrt", "needs_compiler"}, selection
    assert used <= registered_markers(), f"unregistered markers in {selection!r}"
    assert evaluated["x86_64-linux"]["image"]["config"]["Cmd"] == ["test"]


# A pytest plugin for the collection below: writes one line per test, selected or deselected,
# saying whether its function runs `python -m build` (a C++ build: the relu_module wheel).
SELECTION_PLUGIN = """
import inspect, json, os, re
import pytest

BUILD = re.compile(r'"-m",\\s*"build"')

def _record(items, selected):
    with open(os.environ["SELECTION_REPORT"], "a") as out:
        for item in items:
            try:
                source = inspect.getsource(item.function)
            except (AttributeError, OSError, TypeError):
                source = ""
            row = {"id": item.nodeid, "selected": selected, "builds": bool(BUILD.search(source))}
            out.write(json.dumps(row) + "\\n")

def pytest_deselected(items):
    _record(items, False)

@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items):
    _record(items, True)
"""


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_image_test_selection_leaves_out_compiler_builds(evaluated: dict, tmp_path: Path) -> None:
    """Collected with the image's `-m` expression, the suite keeps tests and drops every test
    that runs `python -m build` (a C++ compiler, which the image lacks). By what a test does,
    not by its file or name, so moving tests changes nothing."""
    (tmp_path / "selection_plugin.py").write_text(SELECTION_PLUGIN)
    report = tmp_path / "selection.jsonl"
    env = {**os.environ, "SELECTION_REPORT": str(report)}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tmp_path), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
         "-p", "selection_plugin", "-m", image_test_selection(evaluated)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = [json.loads(line) for line in report.read_text().splitlines()]
    selected = [r for r in rows if r["selected"]]
    assert len(selected) > len(rows) / 2, f"the image would run {len(selected)} of {len(rows)}"
    assert not [r["id"] for r in selected if r["builds"]], "the image would run a C++ build"


def run_fake_root_commands(
    evaluated: dict, checkout: Path, root: Path, report: str = ""
) -> subprocess.CompletedProcess[str]:
    """The image's fakeRootCommands, as streamLayeredImage runs them (under fakeroot, or as
    root), in ``root``, with the checkout copy ``checkout`` and this machine's git."""
    fakeroot = shutil.which("fakeroot")
    if fakeroot is None and os.geteuid() != 0:
        pytest.skip("needs root or fakeroot (apt-get install fakeroot) to chown as the image does")
    commands = evaluated["x86_64-linux"]["scripts"]["docker-fakeroot"]
    commands = re.sub(r"/nix/store/[^ /]+-source(?=/)", str(checkout), commands)
    commands = re.sub(r"/nix/store/[^ /]+-git/bin/git", shutil.which("git") or "git", commands)
    assert "/nix/store/" not in commands, commands
    root.mkdir()
    script = f"set -euo pipefail\n{commands}\n{report}\n"
    cmd = ([fakeroot] if fakeroot else []) + ["bash", "-c", script]
    return subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=300)


def test_image_creates_its_volumes_owned_by_its_user(evaluated: dict, tmp_path: Path) -> None:
    """Run the image's fakeRootCommands on a copy of the git-tracked checkout; every declared
    volume must then exist, owned by the image's user, so that Docker's fresh volumes are
    writable by it."""
    image = evaluated["x86_64-linux"]["image"]
    checkout = copy_tracked_files(tmp_path / "checkout")
    volumes = list(image["config"]["Volumes"])
    report = " ".join(f"stat -c '%u:%g %F %n' .{v};" for v in volumes)
    proc = run_fake_root_commands(evaluated, checkout, tmp_path / "image-root", report)
    assert proc.returncode == 0, proc.stderr[-3000:]
    user = image["config"]["User"]
    for volume in volumes:
        assert f"{user} directory .{volume}" in proc.stdout.splitlines(), proc.stdout
    assert "/work/model_repository" in volumes


def tree_digest(root: Path) -> dict[str, str]:
    """Every file under ``root``: its mode and sha256 (symlinks: their target)."""
    digest = {}
    for path in sorted(root.rglob("*")):
        if path.is_symlink():
            digest[str(path.relative_to(root))] = "-> " + os.readlink(path)
        elif path.is_file():
            data = hashlib.sha256(path.read_bytes()).hexdigest()
            digest[str(path.relative_to(root))] = f"{path.stat().st_mode:o} {data}"
    return digest


@pytest.mark.timeout(300)
def test_image_layer_is_deterministic(evaluated: dict, tmp_path: Path) -> None:
    """Two runs of fakeRootCommands, seconds apart and on checkouts with other file times, give
    the same bytes in /work (its .git included: same commit, index without stat data)."""
    first = copy_tracked_files(tmp_path / "checkout-1")
    second = copy_tracked_files(tmp_path / "checkout-2")
    for path in second.rglob("*"):
        os.utime(path, (1_000_000_000, 1_000_000_000), follow_symlinks=False)
    runs = []
    for n, checkout in enumerate((first, second)):
        if n:
            time.sleep(1.5)  # a wall-clock commit date would now differ
        proc = run_fake_root_commands(evaluated, checkout, tmp_path / f"root-{n}")
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs.append(tree_digest(tmp_path / f"root-{n}" / "work"))
    differ = sorted(k for k in runs[0].keys() | runs[1].keys() if runs[0].get(k) != runs[1].get(k))
    assert not differ, f"the image layer differs between two runs in {differ[:10]}"
    assert any(k.startswith(".git/objects/") for k in runs[0])


# --- checks.<system>.pytest on a host made to look like the build sandbox ------------------------

# What the Nix sandbox lacks and a Debian CI host has: nginx in /usr/sbin (and nginx.yaml's
# search_path), Debian's njs module, pip in the venv, the network.
DEBIAN_NGINX = Path("/usr/sbin/nginx")
DEBIAN_NJS = Path("/usr/lib/nginx/modules/ngx_http_js_module.so")
DEBIAN_STREAM = Path("/usr/lib/nginx/modules/ngx_stream_module.so")
HIDDEN_DIRS = ("/usr/sbin", "/usr/local/sbin", "/usr/lib/nginx/modules")


# stdenv's initialPath (pkgs/stdenv/common-path.nix: coreutils findutils diffutils gnused gnugrep
# gawk gnutar gzip bzip2 gnumake bash patch xz file), as Debian packages; Debian's awk is mawk.
# Every builder has these on PATH (Triton's python backend starts its stub through `bash`).
STDENV_PATH = ("coreutils", "findutils", "diffutils", "sed", "grep", "mawk", "tar", "gzip",
               "bzip2", "make", "bash", "patch", "xz-utils", "file")  # fmt: skip


def stdenv_programs() -> list[Path]:
    """The executables of STDENV_PATH's Debian packages that are installed here."""
    programs: dict[str, Path] = {}
    for package in STDENV_PATH:
        listing = subprocess.run(["dpkg-query", "-L", package], capture_output=True, text=True)
        for name in listing.stdout.split() if listing.returncode == 0 else []:
            if re.search(r"/s?bin/[^/]+$", name) and os.access(name, os.X_OK):
                programs.setdefault(Path(name).name, Path(name))
    return sorted(programs.values())


def link_farm(directory: Path, programs: list[Path]) -> Path:
    directory.mkdir(parents=True)
    for program in programs:
        (directory / program.name).symlink_to(program)
    return directory


def nix_nginx_stand_in(store: Path, modules: list[str]) -> Path:
    """pkgs/gateway-nginx.nix on this host: a copy of Debian's nginx outside /usr/sbin that loads
    njs and stream before reading any config (`-g load_module`) and says `--with-stream` in
    `nginx -V`, i.e. behaves as nixpkgs' nginx (stream compiled in, withStream) with njs compiled
    in: the gateway must find it on PATH and must not name a module itself."""
    assert modules == ["njs"], f"no host stand-in for an nginx with modules {modules}"
    bindir = store / "nginx-njs" / "bin"
    bindir.mkdir(parents=True)
    shutil.copy2(DEBIAN_NGINX, bindir / ".nginx-real")
    load = ""
    for module in (DEBIAN_STREAM, DEBIAN_NJS):
        shutil.copy2(module, bindir.parent / module.name)
        load += f"load_module {bindir.parent / module.name};"
    real, wrapper = bindir / ".nginx-real", bindir / "nginx"
    wrapper.write_text(
        f'#!/bin/sh\nif [ "$*" = -V ]; then "{real}" -V 2>&1 | sed s/--with-stream=dynamic/--with-'
        f'stream/ >&2; exit; fi\nexec "{real}" -g "{load}" "$@"\n'
    )
    wrapper.chmod(0o755)
    return bindir


def sandbox_path(evaluated: dict, store: Path) -> list[Path]:
    """PATH as the check's builder sees it: its nativeBuildInputs' bin/ (each mapped to its host
    stand-in) and stdenv's initial path. An input with no stand-in fails the test by name."""
    out = evaluated["x86_64-linux"]
    path = []
    for name in out["pytest-check"]["inputs"]:
        if name == "python3-3.13.7-env":
            path.append(Path(sys.executable).parent)
        elif name == "git":
            path.append(link_farm(store / "git" / "bin", [Path(shutil.which("git"))]))
        elif name == out["nginx"]["name"]:
            path.append(nix_nginx_stand_in(store, out["nginx"]["modules"]))
        else:
            raise AssertionError(f"checks.<system>.pytest needs {name}: no host stand-in for it")
    return [*path, link_farm(store / "stdenv" / "bin", stdenv_programs())]


def sandbox_script(evaluated: dict, build: Path, path: list[Path]) -> str:
    """Inside `unshare -m -n`: loopback up, the host's nginx, njs module and (unless the Nix
    environment has pip) pip hidden, then the check's own buildPhase in a cleared environment."""
    check = evaluated["x86_64-linux"]["pytest-check"]
    site = Path(sysconfig.get_paths()["purelib"])
    lines = ["set -euo pipefail", "ip link set lo up"]
    lines += [f"[ ! -d {d} ] || mount -t tmpfs -o mode=755 tmpfs {d}" for d in HIDDEN_DIRS]
    if "pip" not in {nix_attr(p) for p in evaluated["x86_64-linux"]["python-env"]["packages"]}:
        stub = "raise ModuleNotFoundError(\"No module named 'pip'\", name='pip')"
        lines += [
            f"mount -t tmpfs tmpfs {site}/pip",
            f"echo {shlex.quote(stub)} > {site}/pip/__init__.py",
        ]
    env = {
        "PATH": os.pathsep.join(map(str, path)),
        "TMPDIR": str(build.parent / "tmp"),
        "HOME": "/homeless-shelter",
        "NIX_BUILD_CORES": "2",
        "pytestSelection": check["pytestSelection"],
    }
    env |= {"MLPIPE_NJS_MODULE": check["MLPIPE_NJS_MODULE"]} if "MLPIPE_NJS_MODULE" in check else {}
    phase = "runHook() { :; }\nset -eo pipefail\n" + check["buildPhase"]
    assignments = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
    lines += [f"cd {build}", f"exec env -i {assignments} /bin/bash -c {shlex.quote(phase)}"]
    return "\n".join(lines) + "\n"


def sandbox_ready() -> None:
    """Skip, saying why, where this host cannot be made to look like the sandbox."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare(1) for a mount and network namespace")
    if not (DEBIAN_NGINX.is_file() and DEBIAN_NJS.is_file() and DEBIAN_STREAM.is_file()):
        pytest.skip(
            "needs Debian's nginx, njs and stream modules (`bash .ci/nginx.sh`) to stand in for "
            "Nix's"
        )
    if shutil.which("dpkg-query") is None or shutil.which("ip") is None:
        pytest.skip("needs dpkg-query (coreutils' file list) and ip (loopback in the namespace)")
    probe = subprocess.run(["unshare", "-m", "-n", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"unshare -m -n is not permitted here: {probe.stderr.strip()}")


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_check_selection_passes_in_a_sandbox_like_host(evaluated: dict, tmp_path: Path) -> None:
    """checks.<system>.pytest's buildPhase and exact selection, run on this host made to look
    like the build sandbox: PATH = the check's inputs (Nix's Python env -> this venv, git, Nix's
    nginx -> a copy of Debian's with njs loaded before any config) + stdenv's initial path
    (coreutils, bash, sed, ...; no compiler: stdenv.cc is not modelled); no /usr/sbin,
    no Debian njs module, no pip unless the Nix environment has it, no network (loopback only).
    What cannot pass there fails here: no nginx on PATH, a module path that does not exist,
    `python -m pip` without pip."""
    sandbox_ready()
    build = copy_tracked_files(tmp_path / "build")
    (tmp_path / "tmp").mkdir()
    script = sandbox_script(evaluated, build, sandbox_path(evaluated, tmp_path / "store"))
    proc = subprocess.run(
        ["unshare", "-m", "-n", "bash", "-c", script],
        capture_output=True, text=True, timeout=1700,
    )  # fmt: skip
    tail = (proc.stdout + proc.stderr)[-6000:]
    assert proc.returncode == 0, f"checks.<system>.pytest fails in a sandbox-like host:\n{tail}"
    assert re.search(r"\d+ passed", proc.stdout), tail


# --- the python-backend stub: one libpython -------------------------------------------------------

STUB_CHECK = PKGS / "pytriton-stub-check" / "check.py"


def load_stub_check():
    spec = importlib.util.spec_from_file_location("pytriton_stub_check", STUB_CHECK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_stub_check_passes_on_the_pip_installed_server(tmp_path: Path) -> None:
    """checks.<system>.pytriton-stub's script, run here against the pip venv's tritonserver: the
    real stub process imports numpy and onnxruntime from this venv, maps only this Python's
    libpython, and serves ReLU through ONNX Runtime."""
    proc = subprocess.run(
        [sys.executable, str(STUB_CHECK), "--workdir", str(tmp_path / "work"), "--timeout", "120"],
        capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    assert summary["problems"] == []
    assert summary["stub"]["pid"] != os.getpid()
    assert len(summary["stub"]["libpython"]) == 1


def test_stub_check_reports_two_libpythons_and_foreign_packages() -> None:
    check = load_stub_check()
    driver = {
        "version": [3, 13],
        "libpython": "/nix/store/a-python3-3.13.7/lib/libpython3.13.so.1.0",
        "numpy": "/env/numpy/__init__.py",
        "onnxruntime": "/env/onnxruntime/__init__.py",
    }
    mixed = {
        "version": [3, 13, 1],
        "libpython": [driver["libpython"], "/w/nvidia_pytriton.libs/libpython3-419a3a08.13.so.1.0"],
        "numpy": driver["numpy"],
        "onnxruntime": "/usr/lib/python3/dist-packages/onnxruntime/__init__.py",
    }
    problems = check.verify(mixed, driver, [0.0, 0.0, 0.5, 3.0])
    assert any("maps 2 libpython files" in p for p in problems), problems
    assert any("imported onnxruntime from /usr/lib" in p for p in problems), problems
    clean = {**mixed, **driver, "libpython": [driver["libpython"]]}
    assert check.verify(clean, driver, [0.0, 0.0, 0.5, 3.0]) == []
    assert any("gave [1.0" in p for p in check.verify(clean, driver, [1.0, 0.0, 0.5, 3.0]))


def pytriton_wheel(pypi_wheels: dict[str, Path], arch: str) -> Path:
    suffix = f"pytriton-0.7.0-py3-none-manylinux_2_35_{arch}.whl"
    return next(wheel for url, wheel in pypi_wheels.items() if url.endswith(suffix))


def run_hook(evaluated: dict, hook: str, out: Path) -> subprocess.CompletedProcess[str]:
    text = evaluated["x86_64-linux"]["python"]["nvidia-pytriton"][hook]
    return subprocess.run(
        ["bash", "-c", "set -euo pipefail\n" + text], env={**os.environ, "out": str(out)},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["x86_64", "aarch64"])
def test_stub_is_pointed_at_nixpkgs_libpython_in_the_real_wheel(
    evaluated: dict, pypi_wheels: dict[str, Path], tmp_path: Path, arch: str
) -> None:
    """pkgs/nvidia-pytriton.nix's postInstall and postInstallCheck, run with the real patchelf
    on the real wheel laid out as $out: the 3.13 stub then needs libpython3.13.so.1.0
    (nixpkgs' soname) and the bundled Ubuntu libpython is gone; unpatched, the check fails. The
    whole postInstallCheck (it also starts tritonserver) runs for this machine's architecture."""
    if shutil.which("patchelf") is None:
        pytest.skip("patchelf is not installed (`bash .ci/nix-parse.sh` apt-installs it)")
    site = "lib/python3.13/site-packages"
    unpatched, out = tmp_path / "unpatched", tmp_path / "out"
    with zipfile.ZipFile(pytriton_wheel(pypi_wheels, arch)) as wheel:
        wheel.extractall(unpatched / site)
    for exe in (unpatched / site / "pytriton/tritonserver").rglob("*"):
        if exe.is_file() and (exe.name == "tritonserver" or exe.name.endswith("_stub")):
            exe.chmod(0o755)  # zipfile drops the mode; pip keeps it
    shutil.copytree(unpatched, out, symlinks=True)

    before = run_hook(evaluated, "postInstallCheck", unpatched)
    assert before.returncode != 0 and "does not link libpython3.13.so.1.0 alone" in before.stderr

    proc = run_hook(evaluated, "postInstall", out)
    assert proc.returncode == 0, proc.stderr
    stubs = out / site / "pytriton/tritonserver/python_backend_stubs"
    assert [p.name for p in stubs.iterdir()] == ["3.13"]
    needed = subprocess.run(
        ["patchelf", "--print-needed", str(stubs / "3.13" / "triton_python_backend_stub")],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    assert [n for n in needed if n.startswith("libpython")] == ["libpython3.13.so.1.0"]
    assert not list((out / site / "nvidia_pytriton.libs").glob("libpython*"))
    if arch == platform.machine():
        after = run_hook(evaluated, "postInstallCheck", out)
        assert after.returncode == 0, after.stderr[-3000:]

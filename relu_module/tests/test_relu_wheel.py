"""The installed wheel: what it ships, and that sdist -> wheel -> fresh venv works offline."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import relu_module


def test_installed_package_is_imported() -> None:
    """The tests must exercise the installed wheel, not the source tree."""
    assert "site-packages" in relu_module.__file__
    assert (Path(relu_module.__file__).parent / "py.typed").exists()
    for stub in ("_ext.pyi", "__init__.pyi"):
        assert (Path(relu_module.__file__).parent / stub).exists(), stub
    assert relu_module.simd_level() in {"avx512f", "avx2", "baseline"}


@pytest.mark.needs_compiler
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_build_sdist_and_wheel_then_install_in_fresh_venv(tmp_path: Path) -> None:
    """`python -m build` makes an sdist and, from it, a wheel that installs and imports offline.

    The temp venv gets only the wheel (no network: --no-index --no-deps); numpy and torch come
    from this venv through a .pth line placed after the temp venv's own site-packages, so the
    relu_module imported there is the freshly built one.
    """
    import sysconfig
    import tarfile

    src = Path(__file__).resolve().parents[1]  # relu_module/
    dist = tmp_path / "dist"
    build = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist), str(src)],
        capture_output=True,
        text=True,
        timeout=540,
    )
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    (sdist,) = dist.glob("relu_module-*.tar.gz")
    (wheel,) = dist.glob("relu_module-*.whl")
    with tarfile.open(sdist) as tar:
        names = tar.getnames()
    for needed in (
        "src/bindings.cpp",
        "src/relu_kernel.cpp",
        "src/relu_kernel.hpp",
        "src/thread_pool.hpp",
        "src/settings.cpp",
        "tests/conftest.py",
        "tests/test_relu_torch.py",
        "src/relu_module/_ext.pyi",
        "src/relu_module/__init__.pyi",
        "src/relu_module/py.typed",
        "setup.py",
        "pyproject.toml",
    ):
        assert any(n.endswith(needed) for n in names), needed

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    subprocess.run(
        [str(py), "-m", "pip", "install", "-q", "--no-index", "--no-deps", str(wheel)],
        check=True,
        timeout=120,
    )
    site = subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    (Path(site) / "zz_host_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    check = subprocess.run(
        [
            str(py),
            "-c",
            textwrap.dedent(f"""
            import numpy as np, relu_module, relu_module.torch, torch
            assert relu_module.__file__.startswith({str(venv)!r}), relu_module.__file__
            assert relu_module.relu(np.array([-1.0, -0.0, 2.0])).tolist() == [0.0, -0.0, 2.0]
            print(relu_module.__version__, relu_module.simd_level())
        """),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert check.returncode == 0, check.stderr
    assert check.stdout.split()[0] == relu_module.__version__


def test_cpp_sources_are_clang_formatted() -> None:
    """The C++ follows relu_module/.clang-format (the same check as `make lint`)."""
    import shutil

    root = Path(__file__).resolve().parents[1]
    sources = sorted([*(root / "src").glob("*.[ch]pp"), *(root / "src").glob("torch_ops/*.cpp")])
    exe = shutil.which("clang-format", path=str(Path(sys.executable).parent)) or shutil.which(
        "clang-format"
    )
    if exe is None or not sources:
        pytest.skip("needs clang-format (dev extra) and the C++ sources (a source checkout)")
    proc = subprocess.run(
        [exe, "--dry-run", "--Werror", *map(str, sources)],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]

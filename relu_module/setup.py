"""The compiled parts of relu-module; all metadata lives in pyproject.toml.

``relu_module._ext`` (pybind11) holds the kernels and needs only numpy. ``relu_module._torch_ops``
registers them as torch operators; it is built against the torch of the build environment
(``pip install --no-build-isolation``) and only when that torch is importable, so the wheel
stays installable and importable without torch for numpy users.
"""

from glob import glob

from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import Extension, setup

# -O3 vectorises the branchless loops (GCC 12 at -O2 left a 40x slower scalar loop). No
# -march=native: the wheel must run on any x86-64; AVX2/AVX-512 come from target_clones.
OPT = ["-O3", "-pthread"]

ext = Pybind11Extension(
    "relu_module._ext",
    sorted(glob("src/*.cpp")),  # sorted: reproducible builds
    include_dirs=["src"],
    cxx_std=17,
    extra_compile_args=OPT,
    extra_link_args=["-pthread"],
)


def torch_ops_extension() -> list[Extension]:
    """The torch operators, if torch is importable here (else none: the numpy-only wheel)."""
    try:
        from torch.utils.cpp_extension import CppExtension
    except ImportError:
        return []
    return [
        CppExtension(
            "relu_module._torch_ops",
            sorted(glob("src/torch_ops/*.cpp")),
            include_dirs=["src"],
            # torch's headers need C++20; the kernels they call live in _ext (relu_api.hpp).
            # -fopenmp compiles at::parallel_for (an inline OpenMP region; without it the ops run
            # on one thread). Not linked: the GOMP_* calls bind to the OpenMP runtime torch has
            # already loaded, so the process never holds two runtimes (whatever torch ships).
            extra_compile_args=[*OPT, "-std=c++20", "-fvisibility=hidden", "-fopenmp"],
            extra_link_args=["-pthread"],
        )
    ]


setup(ext_modules=[ext, *torch_ops_extension()], cmdclass={"build_ext": build_ext})

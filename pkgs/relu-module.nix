# relu-module: the C++ ReLU kernel with its pybind11 binding, built by its own
# relu_module/pyproject.toml (setuptools + pybind11). buildPythonPackage keeps the wheel it
# builds in the `dist` output, which the flake exposes as packages.<system>.relu-wheel.
{
  lib,
  stdenv,
  python,
  buildPythonPackage,

  # build-system
  setuptools,
  pybind11,
  torch, # relu_module._torch_ops (the torch operators) builds against it; _ext never links it

  # dependencies
  numpy,
}:

let
  # One version, one place: relu_module/pyproject.toml.
  pyproject = lib.importTOML ../relu_module/pyproject.toml;
  isSource = file: builtins.match ".*\\.(cpp|hpp|py|pyi|typed)" file.name != null;
in
buildPythonPackage {
  pname = pyproject.project.name;
  inherit (pyproject.project) version;
  pyproject = true;

  # Only what the build reads; never a local build/ or dist/ left by `make wheel`.
  src = lib.fileset.toSource {
    root = ../relu_module;
    fileset = lib.fileset.unions [
      ../relu_module/pyproject.toml
      ../relu_module/setup.py
      ../relu_module/MANIFEST.in
      ../relu_module/README.md
      (lib.fileset.fileFilter isSource ../relu_module/src)
    ];
  };

  build-system = [
    setuptools
    pybind11
    torch
  ];

  dependencies = [ numpy ];

  # The kernel's tests live in relu_module/tests/ (the wheel's `test` extra) and run in
  # checks.<system>.pytest against the installed package; here, check that the extension imports.
  pythonImportsCheck = [
    "relu_module"
    "relu_module._ext"
  ];

  meta = {
    # The compiler and Python are flake.lock's nixpkgs'; `nix flake show` prints them here.
    description =
      "ReLU for numpy arrays and CPU torch tensors at memory bandwidth (C++/pybind11), "
      + "built by GCC ${stdenv.cc.cc.version} for Python ${python.version}";
    license = lib.licenses.mit;
    platforms = lib.platforms.linux;
  };
}

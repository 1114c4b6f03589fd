# mlpipe: the pipeline package (one subpackage per stage: data, train, export, serving, measure;
# shared parts in mlpipe/common) with the console scripts of pyproject.toml's [project.scripts].
# conf/ is not installed: the Hydra apps read the checkout's conf/ (see pkgs/app.nix).
{
  lib,
  buildPythonPackage,

  # build-system
  setuptools,

  # dependencies
  relu-module,
  numpy,
  torch,
  lightning,
  torchmetrics,
  hydra-core,
  omegaconf,
  dvc,
  onnx,
  onnxruntime,
  onnxscript,
  fvcore,
  tritonclient,
  nvidia-pytriton,
  protobuf,
  matplotlib,
  tensorboard,
  tqdm,
  tabulate,
  psutil,
  pyyaml,
  # tritonclient[http,grpc]
  aiohttp,
  geventhttpclient,
  python-rapidjson,
  grpcio,
  packaging,

  # tests (the `dev` extra)
  pytest,
  pytest-timeout,
  hypothesis,
  build,
  pybind11,
}:

let
  pyproject = lib.importTOML ../pyproject.toml;
in
buildPythonPackage {
  pname = pyproject.project.name;
  inherit (pyproject.project) version;
  pyproject = true;

  src = lib.fileset.toSource {
    root = ../.;
    fileset = lib.fileset.unions [
      ../pyproject.toml
      ../README.md
      ../mlpipe
    ];
  };

  build-system = [ setuptools ];

  dependencies = [
    relu-module
    numpy
    torch
    lightning
    torchmetrics
    hydra-core
    omegaconf
    dvc
    onnx
    onnxruntime
    onnxscript
    fvcore
    tritonclient
    nvidia-pytriton
    protobuf
    matplotlib
    tensorboard
    tqdm
    tabulate
    psutil
    pyyaml
    aiohttp
    geventhttpclient
    python-rapidjson
    grpcio
    packaging
  ];

  # pyproject.toml's ranges are written for constraints.txt; nixpkgs brings its own set, which
  # flake.lock pins. Only numpy's bound (<2) excludes nixos-25.11's numpy 2; every other lower
  # bound is met, and protobuf<7 holds for its protobuf 6.
  pythonRelaxDeps = [ "numpy" ];

  optional-dependencies.dev = [
    pytest
    pytest-timeout
    hypothesis
    build
    setuptools
    pybind11
  ];

  # The test suite needs the checkout (conf/, tests/, DVC data): checks.<system>.pytest runs it.
  pythonImportsCheck = [ "mlpipe" ];

  meta = {
    description = "Reproducible MLOps pipeline from DVC-versioned data to a Triton endpoint";
    license = lib.licenses.mit;
    platforms = lib.platforms.linux;
  };
}

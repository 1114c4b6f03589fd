# onnxscript, which torch.onnx.export(dynamo=True) needs. nixpkgs added
# python3Packages.onnxscript on master in January 2026 (NixOS/nixpkgs#481422), after
# nixos-25.11 branched, so the overlay uses this file only where the pinned nixpkgs lacks the
# attribute. Pure-Python wheel from PyPI; hash = sha256 of
# `pip download onnxscript==0.7.2 --no-deps`, equal to PyPI's digest.
{
  lib,
  buildPythonPackage,
  fetchurl,

  # dependencies
  ml-dtypes,
  numpy,
  onnx-ir,
  onnx,
  packaging,
  typing-extensions,
}:

buildPythonPackage rec {
  pname = "onnxscript";
  version = "0.7.2";
  format = "wheel";

  src = fetchurl {
    url = "https://files.pythonhosted.org/packages/b9/3b/06260997cdc41138e58718588a6c87d0eb342bbe0dda8a6aae91d163c384/onnxscript-${version}-py3-none-any.whl";
    hash = "sha256-0OcSHGoe79YIBYko4RHL23Zwn3DSaf8NB67kk70dE8k=";
  };

  dependencies = [
    ml-dtypes
    numpy
    onnx-ir
    onnx
    packaging
    typing-extensions
  ];

  pythonImportsCheck = [ "onnxscript" ];

  meta = {
    description = "Author ONNX functions and models in a subset of Python";
    homepage = "https://github.com/microsoft/onnxscript";
    license = lib.licenses.mit;
  };
}

# onnx-ir, the in-memory ONNX IR under onnxscript. nixpkgs added python3Packages.onnx-ir on
# master in January 2026 (NixOS/nixpkgs#481422), after nixos-25.11 branched, so the overlay
# uses this file only where the pinned nixpkgs lacks the attribute. Pure-Python wheel from
# PyPI; hash = sha256 of `pip download onnx-ir==1.1.0 --no-deps`, equal to PyPI's digest.
{
  lib,
  buildPythonPackage,
  fetchurl,

  # dependencies
  numpy,
  onnx,
  typing-extensions,
  ml-dtypes,
  sympy,
  packaging,
}:

buildPythonPackage rec {
  pname = "onnx-ir";
  version = "1.1.0";
  format = "wheel";

  src = fetchurl {
    url = "https://files.pythonhosted.org/packages/eb/80/1a63440081d94e25b96be6b29119f41119fe5c9521063edbdb7baeeb9589/onnx_ir-${version}-py3-none-any.whl";
    hash = "sha256-dswxOniMBzt1JxwbarsXKq+Q/MYzXtQPnzI4sgZKL6M=";
  };

  dependencies = [
    numpy
    onnx
    typing-extensions
    ml-dtypes
    sympy
    packaging
  ];

  pythonImportsCheck = [ "onnx_ir" ];

  meta = {
    description = "Efficient in-memory representation for ONNX";
    homepage = "https://github.com/onnx/ir-py";
    license = lib.licenses.asl20;
  };
}

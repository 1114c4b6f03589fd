# checks.<system>.pytriton-stub: the bundled tritonserver serves a python-backend model inside the
# build sandbox (loopback only), and ./pytriton-stub-check/check.py requires that the stub's
# embedded interpreter imports numpy and onnxruntime from the flake's Python environment, maps
# exactly one libpython (nixpkgs' python3 library, see pkgs/nvidia-pytriton.nix) and answers
# a ReLU request through ONNX Runtime.
{
  runCommand,
  mlpipe-python,
}:

runCommand "mlpipe-pytriton-stub-check" { nativeBuildInputs = [ mlpipe-python ]; } ''
  export HOME="$TMPDIR/home"
  mkdir -p "$HOME"
  python3 ${./pytriton-stub-check}/check.py --workdir "$TMPDIR/stub-check"
  touch "$out"
''

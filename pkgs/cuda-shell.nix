# `nix develop .#cuda`: the GPU shell, evaluated with allowUnfree and cudaSupport (see
# flake.nix), so torch and onnxruntime are CUDA builds and the CUDA toolkit and TensorRT are
# on hand. cudaPackages.tensorrt is fetched from NVIDIA's public redistributable tarballs in
# recent nixpkgs (pkgs/development/cuda-modules/packages/tensorrt.nix, buildRedist);
# python3Packages.tensorrt (pkgs/development/python-modules/tensorrt/default.nix) unpacks the
# wheel from that tarball; it joins the Python environment where it evaluates as available.
{
  lib,
  mkShell,
  mlpipe-python,
  python3Packages,
  cudaPackages,
}:

let
  tensorrtAvailable = python3Packages.tensorrt.meta.available or false;
  python = mlpipe-python.override {
    extraPackages = ps: lib.optional tensorrtAvailable ps.tensorrt;
  };
in
mkShell {
  name = "mlpipe-cuda";
  packages = [
    python
    cudaPackages.cudatoolkit
    cudaPackages.tensorrt
  ];
  shellHook = ''
    export PYTHONPATH="$PWD''${PYTHONPATH:+:$PYTHONPATH}"
    cat >&2 <<'NOTE'
    mlpipe CUDA shell. Nix provides the CUDA toolkit and TensorRT; the GPU driver (libcuda.so.1)
    comes from the host:
      NixOS      hardware.nvidia + hardware.graphics.enable put it in /run/opengl-driver/lib.
      elsewhere  wrap commands with nixGL or nix-gl-host, or export
                 LD_LIBRARY_PATH=<directory holding the host's libcuda.so.1>, e.g.
                 /usr/lib/x86_64-linux-gnu on Debian/Ubuntu.
    Check: python -c 'import torch; print(torch.cuda.is_available())'
    NOTE
  '';
}

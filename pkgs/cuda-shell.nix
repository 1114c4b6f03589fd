# `nix develop .#cuda`: the GPU shell, evaluated with allowUnfree and cudaSupport (see
# flake.nix), so torch and onnxruntime are CUDA builds and the CUDA toolkit and TensorRT are
# on hand. `cudaPackages` here is the named set flake.nix pins (cudaPins.packageSet, made the
# default by an overlay); evaluation stops, naming both versions, if that set's CUDA or TensorRT
# differs from the pin. cudaPackages.tensorrt is fetched from NVIDIA's public redistributable
# tarballs in recent nixpkgs (pkgs/development/cuda-modules, buildRedist);
# python3Packages.tensorrt (pkgs/development/python-modules/tensorrt/default.nix) unpacks the
# wheel from that tarball; it joins the Python environment where it evaluates as available
# (x86_64-linux only: its meta.platforms).
{
  lib,
  stdenv,
  mkShell,
  config,
  mlpipe-python,
  mlpipe-nginx,
  python3,
  python3Packages,
  cudaPackages,

  # flake.nix's { packageSet, cuda, tensorrt }
  cudaPins,
}:

let
  found = {
    cuda = cudaPackages.cudaMajorMinorVersion;
    tensorrt = lib.versions.majorMinor cudaPackages.tensorrt.version;
  };
  pinned = { inherit (cudaPins) cuda tensorrt; };
  capabilities = lib.concatStringsSep " " config.cudaCapabilities;
  tensorrtAvailable = python3Packages.tensorrt.meta.available or false;
  python = mlpipe-python.override {
    extraPackages = ps: lib.optional tensorrtAvailable ps.tensorrt;
  };
in
assert lib.assertMsg (found == pinned) (
  "flake.lock's nixpkgs has CUDA ${found.cuda} and TensorRT ${found.tensorrt} in "
  + "${cudaPins.packageSet}, but flake.nix pins CUDA ${pinned.cuda} and TensorRT "
  + "${pinned.tensorrt}: update cudaPins in flake.nix and docs/nix.md together."
);
mkShell {
  name = "mlpipe-cuda";
  packages = [
    python
    mlpipe-nginx
    cudaPackages.cudatoolkit
    cudaPackages.tensorrt
  ];
  # conf/gateway/nginx.yaml's check.module: njs is compiled into mlpipe-nginx
  MLPIPE_NJS_MODULE = "";
  shellHook = ''
    export PYTHONPATH="$PWD''${PYTHONPATH:+:$PYTHONPATH}"
    cat >&2 <<'NOTE'
    mlpipe CUDA shell: CUDA ${found.cuda} (${cudaPins.packageSet}), TensorRT ${cudaPackages.tensorrt.version},
    built for CUDA capabilities ${capabilities}.
    Nix provides the CUDA toolkit and TensorRT; the GPU driver (libcuda.so.1) comes from the host:
      NixOS      hardware.nvidia + hardware.graphics.enable put it in /run/opengl-driver/lib.
      elsewhere  wrap commands with nixGL or nix-gl-host, or export
                 LD_LIBRARY_PATH=<directory holding the host's libcuda.so.1>, e.g.
                 /usr/lib/x86_64-linux-gnu on Debian/Ubuntu.
    Check: python -c 'import torch; print(torch.cuda.is_available())'
    NOTE
  '';
  meta.description =
    "GPU shell: CUDA ${found.cuda} (${cudaPins.packageSet}), TensorRT ${cudaPackages.tensorrt.version}, "
    + "capabilities ${capabilities}, Python ${python3.version}, GCC ${stdenv.cc.cc.version}";
}

# `nix develop .#cuda` without consent to NVIDIA's unfree licences: a shell that explains how
# to give it, then exits. (Evaluating the real CUDA shell here would throw inside nixpkgs and
# break `nix flake check` for everyone.) This is the shell `nix flake show` sees, so its
# description names the pinned versions from flake.nix without evaluating the unfree packages.
{
  mkShell,

  # flake.nix's { packageSet, cuda, tensorrt }
  cudaPins,
}:

mkShell {
  name = "mlpipe-cuda-needs-unfree";
  shellHook = ''
    cat >&2 <<'MSG'
    The cuda shell (CUDA ${cudaPins.cuda} from ${cudaPins.packageSet}, TensorRT ${cudaPins.tensorrt})
    needs NVIDIA's CUDA toolkit and TensorRT, which nixpkgs marks unfree.
    Allow unfree packages for this one command (flakes only see the variable with --impure):

      NIXPKGS_ALLOW_UNFREE=1 nix develop --impure .#cuda

    The shell then evaluates nixpkgs with cudaSupport = true, allowing NVIDIA's CUDA licences
    only (nixpkgs' _cuda.lib.allowUnfreeCudaPredicate, plus the TensorRT Python wheel).
    MSG
    exit 1
  '';
  meta.description =
    "GPU shell: CUDA ${cudaPins.cuda} (${cudaPins.packageSet}), TensorRT ${cudaPins.tensorrt}; "
    + "unfree: NIXPKGS_ALLOW_UNFREE=1 nix develop --impure .#cuda";
}

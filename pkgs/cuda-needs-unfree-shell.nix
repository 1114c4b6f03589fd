# `nix develop .#cuda` without consent to NVIDIA's unfree licences: a shell that explains how
# to give it, then exits. (Evaluating the real CUDA shell here would throw inside nixpkgs and
# break `nix flake check` for everyone.)
{ mkShell }:

mkShell {
  name = "mlpipe-cuda-needs-unfree";
  shellHook = ''
    cat >&2 <<'MSG'
    The cuda shell needs NVIDIA's CUDA toolkit and TensorRT, which nixpkgs marks unfree.
    Allow unfree packages for this one command (flakes only see the variable with --impure):

      NIXPKGS_ALLOW_UNFREE=1 nix develop --impure .#cuda

    The shell then evaluates nixpkgs with allowUnfree = true and cudaSupport = true.
    MSG
    exit 1
  '';
}

# `nix develop`: the CPU shell. Python with every mlpipe dependency and relu-module from Nix;
# the checkout's mlpipe/ is put first on PYTHONPATH so edits apply without reinstalling.
{
  stdenv,
  mkShell,
  mlpipe-python,
  python3,
  nixfmt,
  git,
}:

mkShell {
  name = "mlpipe";
  packages = [
    mlpipe-python
    nixfmt
    git
  ];
  shellHook = ''
    export PYTHONPATH="$PWD''${PYTHONPATH:+:$PYTHONPATH}"
    echo "mlpipe CPU shell: mlpipe-train, pytest, dvc pull (the venv/Makefile path is separate)."
  '';
  # Python and the compiler are pinned by flake.lock's nixpkgs; `nix flake show` prints them.
  meta.description = "CPU shell: Python ${python3.version}, GCC ${stdenv.cc.cc.version}";
}

# `nix develop`: the CPU shell. Python with every mlpipe dependency and relu-module from Nix;
# the checkout's mlpipe/ is put first on PYTHONPATH so edits apply without reinstalling.
{
  mkShell,
  mlpipe-python,
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
    echo "mlpipe CPU shell: python -m mlpipe.train, pytest, dvc pull (the venv/Makefile path is separate)."
  '';
}

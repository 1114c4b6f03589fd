# `nix develop`: the CPU shell. Python with every mlpipe dependency and relu-module from Nix;
# the checkout's mlpipe/ is put first on PYTHONPATH so edits apply without reinstalling. The
# serving gateway gets Nix's nginx with njs compiled in, never the host's (NixOS has no /usr/sbin).
{
  stdenv,
  mkShell,
  mlpipe-python,
  mlpipe-nginx,
  python3,
  nixfmt,
  git,
}:

mkShell {
  name = "mlpipe";
  packages = [
    mlpipe-python
    mlpipe-nginx
    nixfmt
    git
  ];
  # conf/gateway/nginx.yaml's check.module: njs is compiled into mlpipe-nginx
  MLPIPE_NJS_MODULE = "";
  shellHook = ''
    export PYTHONPATH="$PWD''${PYTHONPATH:+:$PYTHONPATH}"
    echo "mlpipe CPU shell: mlpipe-train, pytest, dvc pull (the venv/Makefile path is separate)."
  '';
  # Python and the compiler are pinned by flake.lock's nixpkgs; `nix flake show` prints them.
  meta.description = "CPU shell: Python ${python3.version}, GCC ${stdenv.cc.cc.version}";
}

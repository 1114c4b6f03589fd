# checks.<system>.pytest: the test suite on CPU inside the build sandbox, against the installed
# mlpipe and relu-module. The sandbox has no network but does have loopback, so the real
# tritonserver, the nginx gateway and DVC's in-repo remote all work. The sandbox has no
# /usr/sbin/nginx and no Debian njs module: the gateway gets Nix's nginx with njs compiled in
# (pkgs/gateway-nginx.nix, MLPIPE_NJS_MODULE=""), and the Python environment has pip for the
# tests that use the real pip offline. Slow tests (DDP, wheel-into-a-venv, clone + dvc pull)
# and hardware-bound ones (gpu, tensorrt) are left to CI's `make test`.
# tests/test_nix.py (test_check_selection_passes_in_a_sandbox_like_host) runs exactly this
# selection with this environment's inputs on a host made to look like the sandbox.
{
  lib,
  stdenv,
  mlpipe-python,
  mlpipe-nginx,
  git,
}:

stdenv.mkDerivation {
  name = "mlpipe-pytest";

  # The checkout as the tests see it (a flake's source is already its git-tracked files).
  src = lib.cleanSource ../.;

  nativeBuildInputs = [
    mlpipe-python
    mlpipe-nginx
    git
  ];

  dontConfigure = true;

  # conf/gateway/nginx.yaml's check.module: njs is compiled into mlpipe-nginx
  MLPIPE_NJS_MODULE = "";

  # The selection, one place: tests/test_nix.py reads it from here.
  pytestSelection = "not slow and not gpu and not tensorrt";

  buildPhase = ''
    runHook preBuild

    export HOME="$TMPDIR/home" MPLCONFIGDIR="$TMPDIR/mpl" MPLBACKEND=Agg
    # DVC's default site cache is /var/tmp/dvc, which the sandbox lacks.
    export DVC_SITE_CACHE_DIR="$TMPDIR/dvc-site-cache"
    mkdir -p "$HOME"

    # DVC wants an SCM repository; give the copied tree one, then fetch data/ from the
    # committed local remote (no network involved).
    git init --quiet
    git add --all
    git -c user.name=nix -c user.email=nix@localhost commit --quiet --message "nix build sandbox"
    dvc pull

    # mlpipe comes from the Nix store, not from a source tree beside the tests.
    pytest -m "$pytestSelection" -p no:cacheprovider

    runHook postBuild
  '';

  installPhase = ''
    touch "$out"
  '';
}

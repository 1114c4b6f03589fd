# checks.<system>.pytest: the test suite on CPU inside the build sandbox, against the installed
# mlpipe and relu-module. The sandbox has no network but does have loopback, so the real
# tritonserver and DVC's in-repo remote both work. Slow tests (DDP, wheel-into-a-venv, clone +
# dvc pull) and hardware-bound ones (gpu, tensorrt) are left to CI's `make test`.
{
  lib,
  stdenv,
  mlpipe-python,
  git,
}:

stdenv.mkDerivation {
  name = "mlpipe-pytest";

  # The checkout as the tests see it (a flake's source is already its git-tracked files).
  src = lib.cleanSource ../.;

  nativeBuildInputs = [
    mlpipe-python
    git
  ];

  dontConfigure = true;

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
    pytest -m "not slow and not gpu and not tensorrt" -p no:cacheprovider

    runHook postBuild
  '';

  installPhase = ''
    touch "$out"
  '';
}

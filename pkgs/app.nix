# One `nix run .#<name>` app: a checked shell wrapper around an mlpipe entry point. The entry
# points read the checkout's conf/ (Hydra), dvc.yaml and data, which are not in the Nix store,
# so the app refuses to start outside a checkout, naming what is missing and the fix. Errors
# past that point (no data: `dvc pull`; no checkpoint: `mlpipe-train` ...) are the entry
# point's own, but for two the Nix path supplies itself: the serving gateway gets Nix's nginx with
# njs compiled in (pkgs/gateway-nginx.nix, MLPIPE_NJS_MODULE=""), never the host's, and an app
# with `pull` fetches data/ from the checkout's committed DVC remote first (`dvc pull` of
# data.dvc: an in-repo remote, no network), so `nix run .#train` works from a fresh clone.
{
  lib,
  writeShellApplication,
  mlpipe-python,
  mlpipe-nginx,

  # the app: `nix run .#${name}` runs `${command} [hydra args] "$@"`
  name,
  command,
  description,
  # Hydra apps get the checkout's conf/ as their primary config directory; an installed package
  # cannot see ../conf from site-packages.
  hydra ? true,
  # fetch the DVC-tracked data (data.dvc) before running, when data/ lacks it
  pull ? false,
  # what must exist in $PWD for `command` to make sense
  required ? [
    "conf"
    "dvc.yaml"
  ],
}:

let
  hydraArgs = lib.optionalString hydra ''--config-path "$PWD/conf"'';
  # `dvc pull` checks out what is missing and leaves a complete data/ alone (no network: the
  # remote is dvc-remote/ in the checkout).
  pullData = lib.optionalString pull ''
    dvc pull --quiet data.dvc
  '';
in
writeShellApplication {
  name = "mlpipe-${name}-app";
  runtimeInputs = [
    mlpipe-python
    mlpipe-nginx
  ];
  runtimeEnv.MLPIPE_NJS_MODULE = "";
  text = ''
    missing=()
    for path in ${lib.escapeShellArgs required}; do
      [[ -e "$path" ]] || missing+=("$path")
    done
    if (( ''${#missing[@]} > 0 )); then
      {
        echo "mlpipe ${name}: $PWD is not an mlpipe checkout (missing: ''${missing[*]})."
        echo "The apps read the checkout's conf/, dvc.yaml and data; run them from its root:"
        echo "  git clone <mlpipe repository> mlpipe && cd mlpipe && nix run .#${name}"
      } >&2
      exit 2
    fi
    ${pullData}exec ${command} ${hydraArgs} "$@"
  '';
  meta = {
    inherit description;
    mainProgram = "mlpipe-${name}-app";
  };
}

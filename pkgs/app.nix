# One `nix run .#<name>` app: a checked shell wrapper around an mlpipe entry point. The entry
# points read the checkout's conf/ (Hydra), dvc.yaml and data, which are not in the Nix store,
# so the app refuses to start outside a checkout, naming what is missing and the fix. Errors
# past that point (no data: `dvc pull`; no checkpoint: `mlpipe-train` ...) are the entry
# point's own.
{
  lib,
  writeShellApplication,
  mlpipe-python,

  # the app: `nix run .#${name}` runs `${command} [hydra args] "$@"`
  name,
  command,
  description,
  # Hydra apps get the checkout's conf/ as their primary config directory; an installed package
  # cannot see ../conf from site-packages.
  hydra ? true,
  # what must exist in $PWD for `command` to make sense
  required ? [
    "conf"
    "dvc.yaml"
  ],
}:

let
  hydraArgs = lib.optionalString hydra ''--config-path "$PWD/conf"'';
in
writeShellApplication {
  name = "mlpipe-${name}-app";
  runtimeInputs = [ mlpipe-python ];
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
    exec ${command} ${hydraArgs} "$@"
  '';
  meta = {
    inherit description;
    mainProgram = "mlpipe-${name}-app";
  };
}

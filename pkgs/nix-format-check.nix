# checks.<system>.nix-format: every .nix file of the flake is as `nix fmt` (nixfmt) writes it.
{
  lib,
  runCommand,
  nixfmt,
}:

let
  nixFiles = lib.fileset.toSource {
    root = ../.;
    fileset = lib.fileset.fileFilter (file: file.hasExt "nix") ../.;
  };
in
runCommand "mlpipe-nix-format" { nativeBuildInputs = [ nixfmt ]; } ''
  cd ${nixFiles}
  find . -name '*.nix' -print0 | xargs -0 nixfmt --check
  touch "$out"
''

# nixpkgs' lib from $NIXPKGS_LIB (a nixpkgs checkout's lib/ directory), loaded so that Debian's
# Nix 2.8 can evaluate it: lib.fileset needs builtins.readFileType (Nix >= 2.14), shimmed here
# with readDir through scopedImport, which every file that lib imports inherits.
let
  dir = builtins.getEnv "NIXPKGS_LIB";
  readFileType =
    path:
    if dirOf path == path then "directory" else (builtins.readDir (dirOf path)).${baseNameOf path};
  scope = {
    builtins = builtins // {
      readFileType = builtins.readFileType or readFileType;
    };
    import = builtins.scopedImport scope;
  };
in
assert dir != "" || throw "set NIXPKGS_LIB to the lib/ directory of a nixpkgs checkout";
scope.import (/. + dir)

# Evaluate mlpipe's flake against ./mock-nixpkgs with Debian's Nix 2.8 and return, as JSON, what
# tests/test_nix.py checks: every output's name, output and description (what `nix flake show`
# prints), the Python packages' dependency lists and the environment's closure, the app,
# entrypoint, fakeroot and shell-hook scripts (for shellcheck and for running), what
# checks.<system>.pytest gives the sandbox, the gateway's nginx, and the cuda shell with and
# without consent.
# Needs NIXPKGS_LIB (see ./lib.nix). tests/test_nix.py evaluates it in a copy of the git-tracked
# files, which is what a flake's source holds (no .venv, data or untracked file). Run by hand:
#   NIXPKGS_LIB=/path/to/nixpkgs/lib nix-instantiate --eval --strict --json tests/nix/eval-flake.nix
let
  lib = import ./lib.nix;
  flake = import ../../flake.nix;
  nixpkgs = {
    inherit lib;
    outPath = toString ./mock-nixpkgs;
  };
  self = flake.outputs { inherit self nixpkgs; };
  names = map (p: p.name);
  output = p: {
    inherit (p) name outputName drvPath;
    description = p.meta.description or null;
  };
  python =
    p:
    {
      inherit (p) name;
      dependencies = names (p.dependencies or [ ]);
      build-system = names (p.build-system or [ ]);
      dev = names (p.optional-dependencies.dev or [ ]);
      src = p.src.name or "source";
    }
    // lib.optionalAttrs (p ? postInstall) { inherit (p) postInstall postInstallCheck; };
  perSystem =
    system:
    let
      pkgs = import ./mock-nixpkgs {
        inherit system;
        overlays = [ self.overlays.default ];
      };
      image = self.packages.${system}.docker-image;
      isEntrypoint = c: lib.hasInfix "entrypoint" c.name;
    in
    {
      packages = lib.mapAttrs (_: output) self.packages.${system};
      relu-module = output pkgs.python3Packages.relu-module;
      python = lib.mapAttrs (_: python) {
        inherit (pkgs.python3Packages)
          mlpipe
          relu-module
          nvidia-pytriton
          onnxscript
          onnx-ir
          ;
      };
      apps = lib.mapAttrs (_: a: {
        inherit (a) type program;
        inherit (a.meta) description;
      }) self.apps.${system};
      scripts = lib.mapAttrs (_: s: s.text) pkgs.mlpipe-apps // {
        docker-entrypoint = (lib.findFirst isEntrypoint null image.contents).text;
        docker-fakeroot = image.fakeRootCommands;
      };
      image = {
        inherit (image) name tag config;
        contents = names image.contents;
      };
      devShells = lib.mapAttrs (_: s: {
        inherit (s) name shellHook;
        description = s.meta.description or null;
        packages = names (s.packages or [ ]);
        # forced, as building the shell would: an unfree package refuses here without consent
        outPaths = map (p: p.outPath) (s.packages or [ ]);
        # what the shell's Python environment holds
        python = names (lib.concatMap (p: p.packages or [ ]) (s.packages or [ ]));
      }) self.devShells.${system};
      checks = lib.mapAttrs (_: c: c.name) self.checks.${system};
      # what checks.<system>.pytest gives the sandbox: its inputs, environment and selection
      pytest-check = {
        inherit (self.checks.${system}.pytest) pytestSelection MLPIPE_NJS_MODULE buildPhase;
        inputs = names self.checks.${system}.pytest.nativeBuildInputs;
      };
      python-env = {
        packages = names pkgs.mlpipe-python.packages;
        closure = names pkgs.mlpipe-python.closure;
      };
      # the gateway's nginx on every Nix path, and the modules compiled into it
      nginx = {
        inherit (pkgs.mlpipe-nginx) name;
        modules = map (m: m.name) pkgs.mlpipe-nginx.modules;
      };
      app-env = lib.mapAttrs (_: s: {
        inputs = names s.runtimeInputs;
        env = s.runtimeEnv;
      }) pkgs.mlpipe-apps;
      pytriton-stub-check = self.checks.${system}.pytriton-stub.text;
      formatter = self.formatter.${system}.name;
    };
in
lib.genAttrs (lib.attrNames self.packages) perSystem

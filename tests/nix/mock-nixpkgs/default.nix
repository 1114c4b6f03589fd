# A stand-in for nixpkgs, so that Debian's Nix 2.8 can evaluate mlpipe's flake without the real
# package set: the real nixpkgs lib (../lib.nix), derivations that keep their arguments, and
# lib.callPackageWith, so a missing or misspelt argument, an undefined variable, a bad attribute
# path or an interpolation error fails evaluation. Python sets get the flake's
# pythonPackagesExtensions; MOCK_HAS_ONNXSCRIPT=1 models a nixpkgs that already has onnxscript.
{
  system,
  overlays ? [ ],
  config ? { },
}:
let
  lib = import ../lib.nix;
  withOnnxscript = builtins.getEnv "MOCK_HAS_ONNXSCRIPT" == "1";
  drv =
    name: attrs:
    attrs
    // {
      type = "derivation";
      inherit name;
      outPath = "/nix/store/00000000000000000000000000000000-${name}";
      drvPath = "/nix/store/00000000000000000000000000000000-${name}.drv";
    };
  leaf = name: drv name { meta.available = true; };
  pyLeaves = [
    "numpy"
    "protobuf"
    "pyzmq"
    "sh"
    "tritonclient"
    "grpcio"
    "typing-inspect"
    "wrapt"
    "typer"
    "importlib-metadata"
    "aiohttp"
    "geventhttpclient"
    "python-rapidjson"
    "packaging"
    "setuptools"
    "pybind11"
    "torch"
    "lightning"
    "torchmetrics"
    "hydra-core"
    "omegaconf"
    "dvc"
    "onnx"
    "onnxruntime"
    "fvcore"
    "matplotlib"
    "tensorboard"
    "tqdm"
    "tabulate"
    "psutil"
    "pytest"
    "pytest-timeout"
    "hypothesis"
    "build"
    "ml-dtypes"
    "sympy"
    "typing-extensions"
    "tensorrt"
  ]
  ++ lib.optionals withOnnxscript [
    "onnxscript"
    "onnx-ir"
  ];

  mkPythonSet =
    final:
    let
      python = drv "python3-3.13.7" {
        pythonVersion = "3.13";
        sitePackages = "lib/python3.13/site-packages";
      };
      base =
        pyfinal:
        lib.genAttrs pyLeaves leaf
        // {
          inherit python;
          callPackage = lib.callPackageWith (final // pyfinal);
          buildPythonPackage =
            args:
            assert lib.assertMsg (args ? pname && args ? version) "buildPythonPackage: pname, version";
            drv "python3.13-${args.pname}-${args.version}" (
              args
              // {
                dist = drv "python3.13-${args.pname}-${args.version}-dist" { };
                optional-dependencies = args.optional-dependencies or { };
                meta = (args.meta or { }) // {
                  available = true;
                };
              }
            );
        };
      extended = lib.foldl' (acc: ext: lib.extends ext acc) base final.pythonPackagesExtensions;
    in
    lib.fix extended;

  base = final: {
    inherit lib config;
    callPackage = lib.callPackageWith final;
    stdenv = {
      hostPlatform = { inherit system; };
      cc.cc.lib = leaf "gcc-lib";
      mkDerivation = args: drv args.name args;
    };
    fetchurl =
      args:
      assert lib.assertMsg (lib.hasPrefix "sha256-" args.hash) "fetchurl: SRI hash expected";
      drv (baseNameOf args.url) args;
    autoPatchelfHook = leaf "auto-patchelf-hook";
    zlib = leaf "zlib";
    git = leaf "git" // {
      meta.mainProgram = "git";
    };
    coreutils = leaf "coreutils";
    bashInteractive = leaf "bash-interactive";
    nixfmt = leaf "nixfmt";
    nixfmt-tree = leaf "nixfmt-tree";
    fakeNss = leaf "fake-nss" // {
      override = args: drv "fake-nss" args;
    };
    writeShellApplication =
      args:
      drv args.name (
        args
        // {
          meta = (args.meta or { }) // {
            mainProgram = args.name;
          };
        }
      );
    mkShell = args: drv (args.name or "nix-shell") args;
    runCommand =
      name: env: text:
      drv name (env // { inherit text; });
    dockerTools = {
      streamLayeredImage = args: drv "stream-${args.name}" args;
      usrBinEnv = leaf "usr-bin-env";
      caCertificates = leaf "ca-certificates";
      fakeNss = final.fakeNss;
    };
    cudaPackages = lib.optionalAttrs (config.allowUnfree or false) {
      cudatoolkit = leaf "cudatoolkit";
      tensorrt = leaf "tensorrt";
    };
    pythonPackagesExtensions = [ ];
    python3 = {
      pkgs = final.python3Packages;
      withPackages = f: drv "python3-3.13.7-env" { packages = f final.python3Packages; };
    };
    python3Packages = mkPythonSet final;
  };
in
lib.fix (lib.foldl' (acc: o: lib.extends o acc) base overlays)

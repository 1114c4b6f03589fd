# A stand-in for nixpkgs, so that Debian's Nix 2.8 can evaluate mlpipe's flake without the real
# package set: the real nixpkgs lib (../lib.nix), derivations that keep their arguments, and
# lib.callPackageWith, so a missing or misspelt argument, an undefined variable, a bad attribute
# path or an interpolation error fails evaluation. Python sets get the flake's
# pythonPackagesExtensions; MOCK_HAS_ONNXSCRIPT=1 models a nixpkgs that already has onnxscript.
#
# Modelled on nixpkgs (nixos-25.11) where the flake depends on it:
# - derivations with several outputs, as stdenv.mkDerivation makes them: `drv.<output>` is the
#   same derivation (same name and drvPath) with `outputName = "<output>"` and that output's
#   store path, whose name gets `-<output>` appended for every output but `out`;
#   buildPythonPackage's outputs are [ "out" "dist" ];
# - the named CUDA sets cudaPackages_12_6/12_8/12_9/13_0 with `cudaPackages = cudaPackages_12_8`
#   (pkgs/top-level/all-packages.nix: "Latest supported by cudnn"), each with
#   cudaMajorMinorVersion and TensorRT 10.9 (pkgs/top-level/cuda-packages.nix, non-Jetson);
#   MOCK_TENSORRT_VERSION models a nixpkgs that ships another one, MOCK_DEFAULT_CUDA one whose
#   `cudaPackages` is another set. Unfree derivations refuse to
#   give a drvPath/outPath unless config.allowUnfree, as check-meta does.
{
  system,
  overlays ? [ ],
  config ? { },
}:
let
  lib = import ../lib.nix;
  withOnnxscript = builtins.getEnv "MOCK_HAS_ONNXSCRIPT" == "1";
  storePath = name: "/nix/store/00000000000000000000000000000000-${name}";
  # A derivation with `outputs`: the result is its first output; each output attribute is the
  # same derivation with that outputName and outPath.
  drv =
    name: attrs:
    let
      outputs = attrs.outputs or [ "out" ];
      common = attrs // {
        type = "derivation";
        inherit name outputs;
        drvPath = storePath "${name}.drv";
      };
      withOutput =
        output:
        common
        // outputAttrs
        // {
          outputName = output;
          outPath = storePath (if output == "out" then name else "${name}-${output}");
        };
      outputAttrs = lib.genAttrs outputs withOutput;
    in
    withOutput (lib.head outputs);
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
  ]
  ++ lib.optionals withOnnxscript [
    "onnxscript"
    "onnx-ir"
  ];

  allowUnfree = config.allowUnfree or false;
  unfree =
    name: version:
    drv "${name}-${version}" {
      inherit version;
      meta = {
        unfree = true;
        available = allowUnfree;
      };
    }
    // lib.optionalAttrs (!allowUnfree) {
      drvPath = throw "Package ${name}-${version} has an unfree license, refusing to evaluate.";
      outPath = throw "Package ${name}-${version} has an unfree license, refusing to evaluate.";
    };
  tensorrtVersion =
    let
      env = builtins.getEnv "MOCK_TENSORRT_VERSION";
    in
    if env == "" then "10.9.0.34" else env;
  # MOCK_DEFAULT_CUDA models a nixpkgs whose `cudaPackages` points at another set.
  defaultCuda =
    let
      env = builtins.getEnv "MOCK_DEFAULT_CUDA";
    in
    if env == "" then "cudaPackages_12_8" else env;
  cudaSet = cudaVersion: {
    cudaMajorMinorVersion = lib.versions.majorMinor cudaVersion;
    cudatoolkit = unfree "cuda-merged" cudaVersion;
    tensorrt = unfree "tensorrt" tensorrtVersion;
  };

  mkPythonSet =
    final:
    let
      python = drv "python3-3.13.7" {
        version = "3.13.7";
        pythonVersion = "3.13";
        sitePackages = "lib/python3.13/site-packages";
      };
      base =
        pyfinal:
        lib.genAttrs pyLeaves leaf
        // {
          inherit python;
          tensorrt = unfree "python3.13-tensorrt" tensorrtVersion;
          callPackage = lib.callPackageWith (final // pyfinal);
          buildPythonPackage =
            args:
            assert lib.assertMsg (args ? pname && args ? version) "buildPythonPackage: pname, version";
            drv "python3.13-${args.pname}-${args.version}" (
              args
              // {
                outputs = [
                  "out"
                  "dist"
                ];
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
      cc.cc = leaf "gcc-14.3.0" // {
        version = "14.3.0";
        lib = leaf "gcc-14.3.0-lib";
      };
      mkDerivation = args: drv args.name args;
    };
    fetchurl =
      args:
      assert lib.assertMsg (lib.hasPrefix "sha256-" args.hash) "fetchurl: SRI hash expected";
      drv (baseNameOf args.url) args;
    autoPatchelfHook = leaf "auto-patchelf-hook";
    patchelf = leaf "patchelf";
    zlib = leaf "zlib";
    git = leaf "git" // {
      meta.mainProgram = "git";
    };
    coreutils = leaf "coreutils";
    nginx = leaf "nginx" // {
      override = args: drv "nginx" args;
    };
    nginxModules.njs = leaf "nginx-njs";
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
    cudaPackages_12_6 = cudaSet "12.6.3";
    cudaPackages_12_8 = cudaSet "12.8.1";
    cudaPackages_12_9 = cudaSet "12.9.1";
    cudaPackages_13_0 = cudaSet "13.0.2";
    cudaPackages = final.${defaultCuda};
    pythonPackagesExtensions = [ ];
    python3 = final.python3Packages.python // {
      pkgs = final.python3Packages;
      withPackages = f: drv "python3-3.13.7-env" { packages = f final.python3Packages; };
    };
    python3Packages = mkPythonSet final;
  };
in
lib.fix (lib.foldl' (acc: o: lib.extends o acc) base overlays)

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
#   cudaMajorMinorVersion, cudatoolkit named cuda-merged-<major.minor> (its `version` is
#   cudaMajorMinorVersion) and TensorRT 10.14.1.48: the locked revision (2026-05-10) has
#   NixOS/nixpkgs#465955, "[Backport release-25.11] cudaPackages.tensorrt: 10.9.0 -> 10.14.1",
#   which deleted the 10.9.0 manifest. Versions come from the locked nixpkgs, never from what
#   flake.nix expects. MOCK_TENSORRT_VERSION models a nixpkgs that ships another one,
#   MOCK_DEFAULT_CUDA one whose `cudaPackages` is another set;
# - check-meta (pkgs/stdenv/generic/check-meta.nix): an unfree or unsupported-platform
#   derivation refuses a drvPath/outPath unless config.allowUnfree or
#   config.allowUnfreePredicate says yes; `_cuda.lib.allowUnfreeCudaPredicate`
#   (pkgs/development/cuda-modules/_cuda/lib/cuda.nix) allows free licences and NVIDIA's CUDA
#   ones by shortName; python3Packages.tensorrt is `licenses.unfree`, x86_64-linux only
#   (pkgs/development/python-modules/tensorrt/default.nix);
# - argument sets: where nixpkgs' function has closed formals, so does the stand-in, so a
#   misspelt argument fails evaluation with Nix's own "called with unexpected argument" (the
#   source of each list is named beside it); nginx's override args are open in nixpkgs (`...`
#   in pkgs/servers/http/nginx/{stable,generic}.nix) and stay open here;
# - python.withPackages: the environment holds the closure of the requested packages over
#   their `dependencies` (as requiredPythonModules does), and the leaves below declare the
#   dependencies that matter for mlpipe's imports.
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
  # same derivation with that outputName and outPath. check-meta's verdict (`meta.available`)
  # guards the store paths, as in nixpkgs, where an unfree or unsupported package throws as
  # soon as something needs its drvPath/outPath.
  drv =
    name: attrs:
    let
      outputs = attrs.outputs or [ "out" ];
      meta = attrs.meta or { };
      verdict = checkMeta (attrs // { inherit name meta; });
      refuse = throw "Package ${name} ${verdict.reason}, refusing to evaluate.";
      common = attrs // {
        type = "derivation";
        inherit name outputs;
        meta = meta // {
          inherit (verdict) available;
        };
        drvPath = if verdict.available then storePath "${name}.drv" else refuse;
      };
      withOutput =
        output:
        common
        // outputAttrs
        // {
          outputName = output;
          outPath =
            if verdict.available then
              storePath (if output == "out" then name else "${name}-${output}")
            else
              refuse;
        };
      outputAttrs = lib.genAttrs outputs withOutput;
    in
    withOutput (lib.head outputs);

  # pkgs/stdenv/generic/check-meta.nix, the two checks the flake meets: licence (allowUnfree or
  # allowUnfreePredicate) and platform (meta.platforms).
  checkMeta =
    attrs:
    let
      licenses = lib.toList (attrs.meta.license or [ ]);
      unfree = lib.any (l: !(l.free or true)) licenses;
      predicate = config.allowUnfreePredicate or (_: false);
      licenceOk = !unfree || (config.allowUnfree or false) || predicate attrs;
      platformOk = lib.elem system (attrs.meta.platforms or [ system ]);
    in
    {
      available = licenceOk && platformOk;
      reason =
        if !licenceOk then
          "has an unfree license (${lib.concatMapStringsSep ", " (l: l.shortName) licenses})"
        else
          "is not available on the requested hostPlatform ${system}";
    };

  # _cuda.lib.allowUnfreeCudaPredicate (pkgs/development/cuda-modules/_cuda/lib/cuda.nix, with
  # the licences of _cuda/lib/licenses.nix and lib.licenses.nvidiaCuda*): free licences and
  # NVIDIA's CUDA licences, by shortName.
  cudaLicences = {
    cuda = lib.licenses.nvidiaCuda;
    tensorrt = {
      shortName = "TensorRT EULA";
      free = false;
    };
  };
  cudaLicenceNames = [
    "CUDA EULA"
    "cuDNN EULA"
    "cuSPARSELt EULA"
    "cuTENSOR EULA"
    "TensorRT EULA"
    "NVIDIA Math SDK SLA"
  ];
  allowUnfreeCudaPredicate =
    package:
    lib.all (l: (l.free or false) || lib.elem (l.shortName or null) cudaLicenceNames) (
      lib.toList package.meta.license
    );

  leaf = name: drv name { };
  # Python leaves: name = the `dependencies` nixpkgs declares for it, where mlpipe's imports
  # reach through them (omegaconf -> pyyaml: pkgs/development/python-modules/omegaconf).
  pyLeaves = {
    numpy = [ ];
    protobuf = [ ];
    pyzmq = [ ];
    sh = [ ];
    tritonclient = [ ];
    grpcio = [ ];
    typing-inspect = [ ];
    wrapt = [ ];
    typer = [ ];
    importlib-metadata = [ ];
    aiohttp = [ ];
    geventhttpclient = [ ];
    python-rapidjson = [ ];
    packaging = [ ];
    setuptools = [ ];
    pybind11 = [ ];
    torch = [ "numpy" ];
    lightning = [ "torch" ];
    torchmetrics = [ "torch" ];
    hydra-core = [ "omegaconf" ];
    omegaconf = [ "pyyaml" ];
    pyyaml = [ ];
    dvc = [ ];
    onnx = [ "numpy" ];
    onnxruntime = [ "numpy" ];
    fvcore = [ ];
    matplotlib = [ "numpy" ];
    tensorboard = [ ];
    tqdm = [ ];
    tabulate = [ ];
    psutil = [ ];
    pip = [ ];
    pytest = [ ];
    pytest-timeout = [ "pytest" ];
    hypothesis = [ ];
    build = [ ];
    ml-dtypes = [ ];
    sympy = [ ];
    typing-extensions = [ ];
  }
  // lib.optionalAttrs withOnnxscript {
    onnxscript = [ ];
    onnx-ir = [ ];
  };

  config' = config;
  tensorrtVersion =
    let
      env = builtins.getEnv "MOCK_TENSORRT_VERSION";
    in
    if env == "" then "10.14.1.48" else env;
  # MOCK_DEFAULT_CUDA models a nixpkgs whose `cudaPackages` points at another set.
  defaultCuda =
    let
      env = builtins.getEnv "MOCK_DEFAULT_CUDA";
    in
    if env == "" then "cudaPackages_12_8" else env;
  cudaSet =
    cudaVersion:
    let
      cudaMajorMinorVersion = lib.versions.majorMinor cudaVersion;
    in
    {
      inherit cudaMajorMinorVersion;
      # pkgs/development/cuda-modules/packages/cudatoolkit.nix: symlinkJoin with
      # `version = cudaMajorMinorVersion`, hence cuda-merged-12.8
      cudatoolkit = drv "cuda-merged-${cudaMajorMinorVersion}" {
        version = cudaMajorMinorVersion;
        meta.license = cudaLicences.cuda;
      };
      tensorrt = drv "tensorrt-${tensorrtVersion}" {
        version = tensorrtVersion;
        meta.license = cudaLicences.tensorrt;
      };
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
        lib.mapAttrs (name: deps: drv name { dependencies = map (d: pyfinal.${d}) deps; }) pyLeaves
        // {
          inherit python;
          tensorrt = drv "python3.13-tensorrt-${tensorrtVersion}" {
            pname = "tensorrt";
            version = tensorrtVersion;
            meta = {
              license = lib.licenses.unfree;
              platforms = [ "x86_64-linux" ];
            };
          };
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
              }
            );
        };
      extended = lib.foldl' (acc: ext: lib.extends ext acc) base final.pythonPackagesExtensions;
    in
    lib.fix extended;

  # requiredPythonModules (pkgs/development/interpreters/python/python-packages-base.nix): the
  # closure of the requested packages over their dependencies.
  pythonClosure =
    packages:
    map (x: x.pkg) (
      builtins.genericClosure {
        startSet = map (p: {
          key = p.name;
          pkg = p;
        }) packages;
        operator =
          x:
          map (p: {
            key = p.name;
            pkg = p;
          }) (x.pkg.dependencies or [ ]);
      }
    );

  base = final: {
    inherit lib;
    config = config';
    callPackage = lib.callPackageWith final;
    _cuda.lib = { inherit allowUnfreeCudaPredicate; };
    stdenv = {
      hostPlatform = { inherit system; };
      cc.cc = leaf "gcc-14.3.0" // {
        version = "14.3.0";
        lib = leaf "gcc-14.3.0-lib";
      };
      mkDerivation = args: drv (args.name or "${args.pname}-${args.version}") args;
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
    # pkgs/servers/http/nginx/generic.nix: the override args (withDebug, modules, ...) are an
    # open set (`...` there and in stable.nix), so a misspelt one is silently ignored by
    # nixpkgs too; `modules` is kept as passthru.modules, which tests/test_nix.py checks.
    nginx = lib.makeOverridable (
      {
        withDebug ? false,
        withKTLS ? true,
        withStream ? true,
        withMail ? false,
        withPerl ? true,
        withSlice ? false,
        modules ? [ ],
        ...
      }:
      drv "nginx-1.28.0" {
        inherit modules;
        meta.mainProgram = "nginx";
      }
    ) { };
    # pkgs/servers/http/nginx/modules.nix: modules are attribute sets with a name and a src.
    nginxModules.njs = {
      name = "njs";
      src = leaf "njs-source";
    };
    bashInteractive = leaf "bash-interactive";
    nixfmt = leaf "nixfmt";
    nixfmt-tree = leaf "nixfmt-tree";
    # pkgs/by-name/fa/fakeNss/package.nix (closed formals: callPackage's four and the two lists).
    fakeNss = lib.makeOverridable (
      {
        lib ? null,
        symlinkJoin ? null,
        writeTextDir ? null,
        runCommand ? null,
        extraPasswdLines ? [ ],
        extraGroupLines ? [ ],
      }:
      drv "fake-nss" { inherit extraPasswdLines extraGroupLines; }
    ) { };
    # pkgs/build-support/trivial-builders/default.nix, writeShellApplication (closed formals).
    writeShellApplication =
      {
        name,
        text,
        runtimeInputs ? [ ],
        runtimeEnv ? null,
        meta ? { },
        passthru ? { },
        checkPhase ? null,
        excludeShellChecks ? [ ],
        extraShellCheckFlags ? [ ],
        bashOptions ? [
          "errexit"
          "nounset"
          "pipefail"
        ],
        derivationArgs ? { },
        inheritPath ? true,
      }:
      drv name {
        inherit
          text
          runtimeInputs
          runtimeEnv
          bashOptions
          inheritPath
          ;
        meta = meta // {
          mainProgram = name;
        };
      };
    mkShell = args: drv (args.name or "nix-shell") args;
    runCommand =
      name: env: text:
      drv name (env // { inherit text; });
    dockerTools = rec {
      # pkgs/build-support/docker/default.nix (release-25.11), streamLayeredImage's formals; the
      # list matches the "Inputs" of doc/build-helpers/images/dockertools.section.md plus
      # meta, layeringPipeline and debug, added in 2025.
      streamLayeredImage =
        {
          name,
          tag ? null,
          fromImage ? null,
          contents ? [ ],
          config ? { },
          architecture ? "amd64",
          created ? "1970-01-01T00:00:01Z",
          mtime ? "1970-01-01T00:00:01Z",
          uid ? 0,
          gid ? 0,
          uname ? "root",
          gname ? "root",
          maxLayers ? 100,
          extraCommands ? "",
          fakeRootCommands ? "",
          enableFakechroot ? false,
          includeStorePaths ? true,
          includeNixDB ? false,
          passthru ? { },
          meta ? { },
          layeringPipeline ? null,
          debug ? false,
        }@args:
        drv "stream-${name}" args;
      # The same file: buildLayeredImage takes `compressor` and hands the rest to
      # streamLayeredImage, whose formals then reject anything unknown.
      buildLayeredImage =
        {
          name,
          compressor ? "gz",
          ...
        }@args:
        let
          stream = streamLayeredImage (removeAttrs args [ "compressor" ]);
        in
        drv "${name}.tar.gz" (stream // { inherit compressor stream; });
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
      withPackages =
        f:
        let
          requested = f final.python3Packages;
        in
        drv "python3-3.13.7-env" {
          packages = requested;
          closure = pythonClosure requested;
        };
    };
    python3Packages = mkPythonSet final;
  };
in
lib.fix (lib.foldl' (acc: o: lib.extends o acc) base overlays)

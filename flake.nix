{
  description = "mlpipe: reproducible MLOps pipeline, DVC data to a measured Triton endpoint";

  # The only input. flake.lock pins it to one nixos-25.11 revision; the pip/Makefile path is
  # pinned separately by constraints.txt, so package versions differ between the two.
  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-25.11";

  # The CUDA team's binary cache (nixpkgs manual, "CUDA": cache.nixos-cuda.org): nixos.org's
  # cache carries no unfree or cudaSupport build, so without it `nix develop .#cuda` builds torch
  # and onnxruntime from source. Nix asks before using a flake's nixConfig (or set
  # accept-flake-config); docs/nix.md names the same cache for nix.conf.
  nixConfig = {
    extra-substituters = [ "https://cache.nixos-cuda.org" ];
    extra-trusted-public-keys = [
      "cache.nixos-cuda.org:74DUi4Ye579gUqzH4ziL9IyiJBlDpMRn9MBN8oNan9M="
    ];
  };

  outputs =
    { self, nixpkgs }:
    let
      inherit (nixpkgs) lib;

      # PyPI has nvidia-pytriton wheels (the bundled tritonserver) for these two only.
      systems = [
        "x86_64-linux"
        "aarch64-linux"
      ];
      forAllSystems = lib.genAttrs systems;

      pkgsFor = forAllSystems (
        system:
        import nixpkgs {
          inherit system;
          overlays = [ self.overlays.default ];
        }
      );

      # Python and the compiler are pinned by flake.lock: nixpkgs' python3 and stdenv's GCC (the
      # dev shells and the wheel name their versions in `nix flake show`). CUDA and TensorRT are
      # pinned here, to a named CUDA package set rather than whatever `cudaPackages` defaults to;
      # pkgs/cuda-shell.nix refuses to evaluate if that set's versions differ from these (after
      # `nix flake update`, say), so a change of CUDA or TensorRT is always a visible edit here.
      cudaPins = {
        packageSet = "cudaPackages_12_8";
        cuda = "12.8";
        # cudaPackages_12_8.tensorrt at the locked revision: 10.14.1.48 (NixOS/nixpkgs#465955
        # backported 10.14.1 to release-25.11 and deleted the 10.9.0 manifest).
        tensorrt = "10.14";
        # A100 (8.0), L4 and Ada (8.9), H100/H200 (9.0): the GPUs the project targets. Fewer
        # capabilities than nixpkgs' default list means smaller, faster CUDA builds.
        capabilities = [
          "8.0"
          "8.9"
          "9.0"
        ];
      };

      # NVIDIA's CUDA toolkit and TensorRT are unfree: the cuda shell is evaluated only when the
      # user consents with NIXPKGS_ALLOW_UNFREE=1 and --impure (pure evaluation reads every
      # variable as empty); otherwise it explains how (pkgs/cuda-*.nix). Even then only NVIDIA's
      # CUDA licences are allowed, by nixpkgs' own predicate, not every unfree package:
      # python3Packages.tensorrt (NVIDIA's TensorRT wheel) is `licenses.unfree` in nixpkgs, so it
      # is allowed by name. The pinned set becomes `cudaPackages`, so torch and onnxruntime build
      # against it too.
      unfreeAllowed = builtins.getEnv "NIXPKGS_ALLOW_UNFREE" == "1";
      pkgsCudaFor =
        system:
        let
          pkgs = import nixpkgs {
            inherit system;
            overlays = [
              self.overlays.default
              (final: prev: { cudaPackages = prev.${cudaPins.packageSet}; })
            ];
            config = {
              allowUnfreePredicate =
                p: pkgs._cuda.lib.allowUnfreeCudaPredicate p || p.pname or null == "tensorrt";
              cudaSupport = true;
              cudaCapabilities = cudaPins.capabilities;
            };
          };
        in
        pkgs;

      # `nix run .#<name>`: pkgs/app.nix checks for a checkout, then runs the entry point; the
      # scripts are also in the overlay as `mlpipe-apps`.
      appSpecs = {
        train = {
          command = "mlpipe-train";
          description = "Train the digits classifier (Hydra overrides as arguments)";
          pull = true;
          required = [
            "conf"
            "dvc.yaml"
            "data.dvc"
          ];
        };
        serve = {
          command = "mlpipe-serve";
          description = "Serve the exported model on the bundled Triton server";
        };
        bench = {
          command = "mlpipe-bench";
          description = "Latency and throughput per backend";
        };
        profile = {
          command = "mlpipe-profile";
          description = "FLOPs, bytes and roofline per layer";
        };
        test = {
          command = "pytest";
          description = "The test suite on CPU, run in the checkout";
          hydra = false;
          required = [
            "pyproject.toml"
            "tests"
            "conf"
          ];
        };
      };
      mkAppScript =
        pkgs: name: spec:
        pkgs.callPackage ./pkgs/app.nix ({ inherit name; } // spec);
      mkApp = name: script: {
        type = "app";
        program = lib.getExe script;
        meta = { inherit (script.meta) description; };
      };
    in
    {
      overlays.default = final: prev: {
        pythonPackagesExtensions = prev.pythonPackagesExtensions ++ [
          (pyfinal: pyprev: {
            relu-module = pyfinal.callPackage ./pkgs/relu-module.nix { };
            nvidia-pytriton = pyfinal.callPackage ./pkgs/nvidia-pytriton.nix { };
            # On nixpkgs master since 2026-01 (NixOS/nixpkgs#481422), not in nixos-25.11.
            onnx-ir = pyprev.onnx-ir or (pyfinal.callPackage ./pkgs/onnx-ir.nix { });
            onnxscript = pyprev.onnxscript or (pyfinal.callPackage ./pkgs/onnxscript.nix { });
            mlpipe = pyfinal.callPackage ./pkgs/mlpipe.nix { };
          })
        ];
        mlpipe = final.python3Packages.mlpipe;
        mlpipe-python = final.callPackage ./pkgs/python-env.nix { };
        mlpipe-nginx = final.callPackage ./pkgs/gateway-nginx.nix { };
        mlpipe-apps = lib.mapAttrs (mkAppScript final) appSpecs;
      };

      packages = forAllSystems (
        system:
        let
          pkgs = pkgsFor.${system};
        in
        {
          relu-wheel = pkgs.python3Packages.relu-module.dist;
          mlpipe = pkgs.mlpipe;
          nvidia-pytriton = pkgs.python3Packages.nvidia-pytriton;
          docker-image = pkgs.callPackage ./pkgs/docker-image.nix { };
          default = pkgs.mlpipe;
        }
      );

      apps = forAllSystems (system: lib.mapAttrs mkApp pkgsFor.${system}.mlpipe-apps);

      devShells = forAllSystems (system: {
        default = pkgsFor.${system}.callPackage ./pkgs/dev-shell.nix { };
        cuda =
          if unfreeAllowed then
            (pkgsCudaFor system).callPackage ./pkgs/cuda-shell.nix { inherit cudaPins; }
          else
            pkgsFor.${system}.callPackage ./pkgs/cuda-needs-unfree-shell.nix { inherit cudaPins; };
      });

      checks = forAllSystems (
        system:
        let
          pkgs = pkgsFor.${system};
        in
        {
          pytest = pkgs.callPackage ./pkgs/mlpipe-tests.nix { };
          pytriton-stub = pkgs.callPackage ./pkgs/pytriton-stub-check.nix { };
          relu-wheel = self.packages.${system}.relu-wheel;
          nix-format = pkgs.callPackage ./pkgs/nix-format-check.nix { };
        }
      );

      formatter = forAllSystems (system: pkgsFor.${system}.nixfmt-tree);
    };
}

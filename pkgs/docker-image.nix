# packages.<system>.docker-image: an OCI image (streamed, so no multi-GB tarball lands in the
# store) that replaces the original project's Dockerfile. It holds mlpipe's Python environment
# and a copy of the checkout at /work, runs as the unprivileged user mlpipe (uid 1000), and
# takes a command:
#   test [pytest...]  pytest on CPU, the tests the image can run: `testSelection` below (a `-m`
#                     of your own replaces it)
#   train [hydra...]  dvc pull, then mlpipe-train
#   serve [hydra...]  mlpipe-serve on the model repository; its nginx gateway binds all of the
#                     container's interfaces (`docker run -p` decides what is exposed): HTTP 8080,
#                     gRPC 8081; tritonserver stays on the container's loopback
#   <anything else>   run as a command, e.g. `bash`, `dvc repro`, `mlpipe-bench`
# Volumes: /work/conf (Hydra configs, to override them) and /work/model_repository (the
# generated Triton model repository, to keep or share it); both exist in the image, owned by
# mlpipe, so that Docker's fresh volumes start as the user's and not root's. Load with
#   $(nix build --print-out-paths .#docker-image) | docker load
{
  lib,
  dockerTools,
  fakeNss,
  writeShellApplication,
  bashInteractive,
  coreutils,
  git,
  mlpipe-nginx,
  mlpipe-python,
  mlpipe,
}:

let
  user = "mlpipe";
  uid = "1000";
  workdir = "/work";
  home = "/home/${user}";
  # git-ignored, so not in the flake's source: created here (a volume mount point).
  modelRepository = "${workdir}/model_repository";
  # A fixed author and committer date for the image's one commit (SOURCE_DATE_EPOCH's
  # 1980-01-01, as nixpkgs uses for store files): the same tree then gives the same commit id.
  commitDate = "1980-01-01T00:00:00Z";

  # The image has no C/C++ compiler, so tests that build C++ (the relu_module wheel from source)
  # cannot pass in it; nor can tests that need a GPU or TensorRT. Slow tests (DDP, wheel into a
  # venv, clone + dvc pull) are left out as in checks.<system>.pytest (pkgs/mlpipe-tests.nix):
  # CI's `make test` runs them. Markers, not paths, so that moving test files changes nothing.
  testSelection = "not slow and not gpu and not tensorrt and not needs_compiler";

  entrypoint = writeShellApplication {
    name = "mlpipe-entrypoint";
    runtimeInputs = [
      mlpipe-python
      coreutils
      git
      mlpipe-nginx
    ];
    # check.module of conf/gateway/nginx.yaml: njs is compiled into mlpipe-nginx
    runtimeEnv.MLPIPE_NJS_MODULE = "";
    text = ''
      cd ${workdir}
      cmd="''${1:-test}"
      (( $# > 0 )) && shift
      case "$cmd" in
        test) exec pytest -m ${lib.escapeShellArg testSelection} "$@" ;;
        train)
          dvc pull
          exec mlpipe-train --config-path ${workdir}/conf "$@"
          ;;
        serve)
          exec mlpipe-serve --config-path ${workdir}/conf gateway.host=0.0.0.0 "$@"
          ;;
        *) exec "$cmd" "$@" ;;
      esac
    '';
  };

  checkout = lib.cleanSource ../.;
in
dockerTools.streamLayeredImage {
  name = "mlpipe";
  tag = mlpipe.version;

  # bashInteractive also provides /bin/sh.
  contents = [
    mlpipe-python
    entrypoint
    bashInteractive
    coreutils
    git
    dockerTools.usrBinEnv
    dockerTools.caCertificates
    (fakeNss.override {
      extraPasswdLines = [ "${user}:x:${uid}:${uid}:${user}:${home}:/bin/sh" ];
      extraGroupLines = [ "${user}:x:${uid}:" ];
    })
  ];

  # The checkout is copied (not linked) so the user can write data/, artifacts/ and reports/;
  # DVC also needs it to be a git repository. Deterministic: fixed dates and identity, no
  # template or config from the build machine, and an index without stat data (`read-tree`
  # writes entries with zeroed stat fields; git refreshes them on first use in the container).
  fakeRootCommands = ''
    mkdir -p .${workdir} .${home} ./tmp
    chmod 1777 ./tmp
    cp -r ${checkout}/. .${workdir}/
    chmod -R u+w .${workdir}
    export GIT_CONFIG_NOSYSTEM=1 GIT_CONFIG_GLOBAL=/dev/null \
      GIT_AUTHOR_NAME=nix GIT_AUTHOR_EMAIL=nix@localhost GIT_AUTHOR_DATE=${commitDate} \
      GIT_COMMITTER_NAME=nix GIT_COMMITTER_EMAIL=nix@localhost GIT_COMMITTER_DATE=${commitDate}
    ${lib.getExe git} -C .${workdir} init --quiet --initial-branch=main --template=
    ${lib.getExe git} -C .${workdir} add --all
    ${lib.getExe git} -C .${workdir} commit --quiet --no-verify --message "mlpipe image"
    ${lib.getExe git} -C .${workdir} read-tree HEAD
    mkdir -p .${modelRepository}
    chown -R ${uid}:${uid} .${workdir} .${home}
  '';
  enableFakechroot = false;

  config = {
    User = "${uid}:${uid}";
    WorkingDir = workdir;
    Entrypoint = [ (lib.getExe entrypoint) ];
    Cmd = [ "test" ];
    Env = [
      "HOME=${home}"
      "MLPIPE_ROOT=${workdir}"
      "MPLBACKEND=Agg"
      # conf/gateway/nginx.yaml's check.module: njs is compiled into the image's nginx
      "MLPIPE_NJS_MODULE="
      # DVC's default site cache, /var/tmp/dvc, does not exist in the image.
      "DVC_SITE_CACHE_DIR=/tmp/dvc-site-cache"
    ];
    ExposedPorts = {
      # The gateway (HTTP, gRPC); tritonserver itself listens on the container's loopback only.
      "8080/tcp" = { };
      "8081/tcp" = { };
    };
    Volumes = {
      "${workdir}/conf" = { };
      "${modelRepository}" = { };
    };
    Labels = {
      "org.opencontainers.image.title" = "mlpipe";
      "org.opencontainers.image.description" = mlpipe.meta.description;
    };
  };
}

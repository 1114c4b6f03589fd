# One Python environment for the apps, the checks, the OCI image and the dev shell: mlpipe with
# its console scripts, relu-module, the bundled tritonserver, dvc, and the `dev` extra (pytest).
{ python3 }:

python3.withPackages (ps: [ ps.mlpipe ] ++ ps.mlpipe.optional-dependencies.dev)

# One Python environment for the apps, the checks, the OCI image and the dev shells: mlpipe with
# its console scripts, relu-module, the bundled tritonserver, dvc, and the `dev` extra (pytest).
# pip, because the tests use the real pip (tests/test_reproducibility.py: its hash-checking mode,
# offline). extraPackages adds more from the same package set (the cuda shell adds tensorrt).
{
  python3,
  extraPackages ? _: [ ],
}:

python3.withPackages (
  ps: [ ps.mlpipe ] ++ ps.mlpipe.optional-dependencies.dev ++ [ ps.pip ] ++ extraPackages ps
)

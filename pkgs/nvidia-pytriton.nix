# NVIDIA PyTriton with its bundled `tritonserver` (2.51, python backend only). nixpkgs has no
# package for it, so this takes NVIDIA's manylinux wheel from PyPI by its sha256 and lets
# autoPatchelfHook point every bundled ELF file at Nix's glibc, libstdc++, zlib and libpython.
#
# One libpython per process: the wheel's 3.13 python-backend stub alone links a libpython of its
# own (nvidia_pytriton.libs/libpython3-<hash>.13.so.1.0, an Ubuntu 22.04 build of 3.13.0/3.13.1),
# while its embedded interpreter takes the stdlib and site-packages of the `python3` on PATH, i.e.
# nixpkgs' 3.13.x, whose numpy/onnxruntime/torch extensions load nixpkgs' libpython: two CPython
# runtimes in one process. postInstall points the kept stub at this interpreter's library
# (`patchelf --replace-needed`) and deletes the bundled one; autoPatchelfHook then finds it in
# `python`. The stubs for 3.8-3.12 already name the plain libpython3.X.so.1.0. The stub's process
# is checked at run time by checks.<system>.pytriton-stub (pkgs/pytriton-stub-check.nix).
#
# Hashes: sha256 of the wheels fetched with
#   pip download nvidia-pytriton==0.7.0 --no-deps [--platform manylinux_2_35_aarch64 --only-binary=:all:]
# equal to the digests in PyPI's simple index (x86_64 21f063ff…8df, aarch64 f99e07ee…898);
# SRI = "sha256-" + base64(digest). tests/test_nix.py re-downloads and re-checks them (slow).
# The URLs are PyPI's content-addressed file URLs, because fetchPypi's /packages/py3/n/… form
# could not be checked from here.
{
  lib,
  stdenv,
  buildPythonPackage,
  fetchurl,
  python,
  autoPatchelfHook,
  patchelf,
  zlib,

  # dependencies
  numpy,
  protobuf,
  pyzmq,
  sh,
  tritonclient,
  grpcio,
  typing-inspect,
  wrapt,
  typer,
  importlib-metadata,
  aiohttp,
  geventhttpclient,
  python-rapidjson,
  packaging,
}:

let
  version = "0.7.0";
  wheels = {
    x86_64-linux = {
      url = "https://files.pythonhosted.org/packages/65/15/9192f7ffe7fab32f545d2a51bdde01e8a50363b8694f0d441efe0cc5310d/nvidia_pytriton-${version}-py3-none-manylinux_2_35_x86_64.whl";
      hash = "sha256-IfBj/5O7Qm0MBrelXn6578/mLA3d2akI6Yd+GHEBKN8=";
    };
    aarch64-linux = {
      url = "https://files.pythonhosted.org/packages/a5/ea/278744f3a731b1106fc69038b5173469d6d16be31a8f580faf3893bfffcb/nvidia_pytriton-${version}-py3-none-manylinux_2_35_aarch64.whl";
      hash = "sha256-+Z4H7lb+BlM3RTlWr7oX0mc+AuxqYyw94mzm57MqCJg=";
    };
  };
  system = stdenv.hostPlatform.system;
  unsupported = throw "nvidia-pytriton ${version}: PyPI has no wheel for ${system}";
  wheel = wheels.${system} or unsupported;
  # The wheel carries one python-backend stub per CPython minor; keep the one this interpreter needs.
  stubDir = "$out/${python.sitePackages}/pytriton/tritonserver/python_backend_stubs";
  stub = "${stubDir}/${python.pythonVersion}/triton_python_backend_stub";
  bundledLibs = "$out/${python.sitePackages}/nvidia_pytriton.libs";
  # The soname of nixpkgs' shared CPython library (${python}/lib).
  libpython = "libpython${python.pythonVersion}.so.1.0";
in
buildPythonPackage {
  pname = "nvidia-pytriton";
  inherit version;
  format = "wheel";

  src = fetchurl wheel;

  nativeBuildInputs = [
    autoPatchelfHook
    patchelf
  ];

  # What the bundled binaries link outside the wheel's own nvidia_pytriton.libs (checked with
  # readelf -d): glibc, libstdc++/libgcc_s, libz and libpython3.X (python-backend stubs).
  buildInputs = [
    stdenv.cc.cc.lib
    zlib
    python
  ];

  # Requires-Dist of the wheel, tritonclient's [http,grpc] extras spelled out.
  dependencies = [
    numpy
    protobuf
    pyzmq
    sh
    tritonclient
    grpcio
    typing-inspect
    wrapt
    typer
    importlib-metadata
    # tritonclient[http]
    aiohttp
    geventhttpclient
    python-rapidjson
    # tritonclient[grpc]
    packaging
  ];

  # The wheel pins numpy<2 (nixpkgs ships numpy 2) and tritonclient~=2.50; keep the names, drop
  # the bounds. mlpipe uses the bundled tritonserver, not PyTriton's numpy-facing API.
  pythonRelaxDeps = [
    "numpy"
    "tritonclient"
  ];

  postInstall = ''
    if [[ ! -x "${stub}" ]]; then
      echo "nvidia-pytriton ${version} ships no Triton python-backend stub for Python ${python.pythonVersion}" >&2
      exit 1
    fi
    find "${stubDir}" -mindepth 1 -maxdepth 1 ! -name "${python.pythonVersion}" -exec rm -r {} +

    # Before autoPatchelfHook (fixupPhase) resolves it: the stub's libpython becomes this one's.
    for needed in $(patchelf --print-needed "${stub}"); do
      if [[ "$needed" == libpython* && "$needed" != "${libpython}" ]]; then
        patchelf --replace-needed "$needed" "${libpython}" "${stub}"
        rm "${bundledLibs}/$needed"
      fi
    done
  '';

  pythonImportsCheck = [ "pytriton" ];

  # The bundled server must load: its usage text appears only once the dynamic loader has
  # resolved every library it links (it exits 1 after printing it, hence the `|| true`).
  postInstallCheck = ''
    if [[ "$(patchelf --print-needed "${stub}" | grep '^libpython')" != "${libpython}" ]]; then
      echo "the python-backend stub does not link ${libpython} alone: $(patchelf --print-needed "${stub}")" >&2
      exit 1
    fi
    if compgen -G "${bundledLibs}/libpython*" >/dev/null; then
      echo "a bundled libpython is left in ${bundledLibs}" >&2
      exit 1
    fi
    usage=$("$out/${python.sitePackages}/pytriton/tritonserver/bin/tritonserver" --help 2>&1 || true)
    if [[ "$usage" != *--model-repository* ]]; then
      echo "bundled tritonserver does not start: $usage" >&2
      exit 1
    fi
  '';

  meta = {
    description = "PyTriton, with NVIDIA's Triton Inference Server binary (python backend) inside";
    homepage = "https://github.com/triton-inference-server/pytriton";
    license = lib.licenses.asl20;
    platforms = lib.attrNames wheels;
    sourceProvenance = [ lib.sourceTypes.binaryNativeCode ];
  };
}

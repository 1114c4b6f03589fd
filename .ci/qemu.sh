#!/usr/bin/env bash
# tests/common/test_repro.py runs the CPU contract's kernels on AVX2-only CPUs that QEMU's user
# mode emulates (QEMU >= 7.2: Debian 12's qemu-user); install it when missing (CI runs as root).
# Without root, say so and go on: those tests skip, naming the package.
set -euo pipefail
if command -v qemu-x86_64 >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "qemu: the emulated-CPU tests skip without qemu-x86_64; 'sudo apt-get install -y qemu-user'" >&2
  exit 0
fi
echo "qemu: installing Debian's qemu-user for the emulated-CPU tests" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends qemu-user >/dev/null

#!/usr/bin/env bash
# Parse every tracked .nix file with nix-instantiate --parse. Debian's nix-bin (2.8) can parse,
# and evaluate the flake against tests/nix/mock-nixpkgs (tests/test_nix.py, with NIXPKGS_LIB), but
# not evaluate a modern nixpkgs, and there is no binary cache here: builds and `nix flake check`
# are the user's part. Installs with apt what tests/test_nix.py uses and lacks (CI runs as root):
# nix-bin (nix-instantiate), shellcheck (as writeShellApplication runs it) and patchelf (the
# python-backend stub relinking in pkgs/nvidia-pytriton.nix, run on the real wheel).
set -euo pipefail
cd "$(dirname "$0")/.."

declare -A tools=([nix-instantiate]=nix-bin [shellcheck]=shellcheck [patchelf]=patchelf)
missing=()
for tool in "${!tools[@]}"; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("${tools[$tool]}")
done
if (( ${#missing[@]} > 0 )); then
  echo "nix-parse: installing Debian's ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi

status=0
count=0
while IFS= read -r -d '' file; do
  count=$((count + 1))
  if ! nix-instantiate --parse "$file" >/dev/null; then
    echo "nix-parse: $file does not parse" >&2
    status=1
  fi
done < <(git ls-files -z -- '*.nix')
echo "nix-parse: $count .nix files checked with $(nix-instantiate --version)"
exit "$status"

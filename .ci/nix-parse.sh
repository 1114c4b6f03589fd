#!/usr/bin/env bash
# Parse every tracked .nix file with nix-instantiate --parse. Debian's nix-bin (2.8) can parse but
# not evaluate a modern nixpkgs, and there is no binary cache here, so parsing (plus the text and
# lock checks in tests/test_nix.py) is what CI can verify; `nix flake check` is the user's part.
# Installs nix-bin with apt when nix-instantiate is missing (CI runs as root).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v nix-instantiate >/dev/null 2>&1; then
  echo "nix-parse: installing Debian's nix-bin for nix-instantiate --parse" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq nix-bin >/dev/null
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

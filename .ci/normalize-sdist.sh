#!/usr/bin/env bash
# Repack sdists (.tar.gz) so that two builds of one commit are byte-identical: setuptools stamps
# the archive with build-time mtimes (gzip header, PKG-INFO, folders) and checkout-time file
# mtimes. Every member gets SOURCE_DATE_EPOCH, root ownership and sorted order; gzip -n drops
# the header's name and time. Usage: SOURCE_DATE_EPOCH=<s> .ci/normalize-sdist.sh dist/*.tar.gz
set -euo pipefail
: "${SOURCE_DATE_EPOCH:?set SOURCE_DATE_EPOCH (make wheel sets the last commit time)}"
for sdist in "$@"; do
  work=$(mktemp -d "$(dirname "$sdist")/.normalize.XXXXXX")
  trap 'rm -rf "$work"' EXIT
  tar -xzf "$sdist" -C "$work"
  top=$(ls "$work")
  tar --sort=name --mtime="@${SOURCE_DATE_EPOCH}" --owner=0 --group=0 --numeric-owner --mode=go-w \
    --format=gnu -C "$work" -cf - "$top" | gzip -9n >"$work.tar.gz"
  mv "$work.tar.gz" "$sdist"
  rm -rf "$work"
  trap - EXIT
done

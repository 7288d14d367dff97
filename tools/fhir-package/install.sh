#!/usr/bin/env bash
# Install the Node tools of the FHIR package build (snapshot generator, core definitions, Medplum's
# validator) into the ignored .cache/, exactly as package-lock.json pins them. Idempotent: npm runs
# only when the lock file differs from the one last installed.
set -euo pipefail
SRC="$(cd "$(dirname "$0")" && pwd)"
DEST="${1:-$SRC/../../.cache/fhir-package}"
command -v npm >/dev/null || { echo "install.sh: npm not found; install Node.js 20+ to build the FHIR packages" >&2; exit 3; }
mkdir -p "$DEST"
if [ -d "$DEST/node_modules" ] && cmp -s "$SRC/package-lock.json" "$DEST/package-lock.json"; then
  exit 0
fi
cp "$SRC/package.json" "$SRC/package-lock.json" "$DEST/"
rm -rf "$DEST/fhir-cache"
(cd "$DEST" && npm ci --no-audit --no-fund --loglevel=error >&2)

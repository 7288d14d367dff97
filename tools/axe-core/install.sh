#!/usr/bin/env bash
# Install axe-core, exactly as package-lock.json pins it, into the ignored .cache/ for the browser tests.
# Idempotent: npm runs only when the lock file differs from the one last installed.
set -euo pipefail
SRC="$(cd "$(dirname "$0")" && pwd)"
DEST="${1:-$SRC/../../.cache/axe-core}"
command -v npm >/dev/null || { echo "install.sh: npm not found; install Node.js to run the accessibility checks" >&2; exit 3; }
mkdir -p "$DEST"
if [ -f "$DEST/node_modules/axe-core/axe.min.js" ] && cmp -s "$SRC/package-lock.json" "$DEST/package-lock.json"; then
  exit 0
fi
cp "$SRC/package.json" "$SRC/package-lock.json" "$DEST/"
(cd "$DEST" && npm ci --no-audit --no-fund --loglevel=error >&2)

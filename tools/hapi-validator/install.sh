#!/usr/bin/env bash
# Install HAPI FHIR's validator (the HL7 validator core, with the R4 core definitions) for the package
# tests: the jars pom.xml names, from Maven Central, into the ignored .cache/ (the Maven repository too).
# Idempotent: Maven runs only when pom.xml differs from the one last installed.
set -euo pipefail
SRC="$(cd "$(dirname "$0")" && pwd)"
DEST="${1:-$SRC/../../.cache/hapi-validator}"
command -v mvn >/dev/null || { echo "install.sh: mvn not found; install Maven and Java 17+ for the HAPI check" >&2; exit 3; }
mkdir -p "$DEST"
DEST="$(cd "$DEST" && pwd)"
if [ -d "$DEST/lib" ] && cmp -s "$SRC/pom.xml" "$DEST/pom.xml"; then
  exit 0
fi
rm -rf "$DEST/lib"
mvn -q -B -f "$SRC/pom.xml" -Dmaven.repo.local="$DEST/m2" dependency:copy-dependencies -DoutputDirectory="$DEST/lib" >&2
cp "$SRC/pom.xml" "$DEST/pom.xml"

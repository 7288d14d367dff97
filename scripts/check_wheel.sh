#!/usr/bin/env bash
# Use the package the way a new user does: build the wheel, install it into a fresh virtualenv outside the
# checkout, and from another directory run validate, map in every direction, demo answering a decision and
# serve answering its OpenAPI document and FHIR metadata.  Catches data files missing from the wheel and
# anything that only works when run from the checkout.  Called by `make test`; every wait is bounded.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${CASUS_VENV:-.venv}"
case "$VENV" in /*) ;; *) VENV="$REPO/$VENV" ;; esac
BUILD_PY="$VENV/bin/python"  # only builds and installs; everything checked runs from the fresh venv
WORK="$(mktemp -d)"
PIDS=()
START=$SECONDS

cleanup() {
  for pid in "${PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$WORK"
}
trap cleanup EXIT

say() { echo "check_wheel: $*" >&2; }
fail() {
  echo "check_wheel: FAILED: $*" >&2
  exit 1
}

say "building the wheel"
"$BUILD_PY" -m pip wheel --quiet --no-deps --wheel-dir "$WORK/dist" "$REPO" >"$WORK/build.log" 2>&1 || {
  cat "$WORK/build.log" >&2
  fail "the wheel does not build"
}
if grep -qi "deprecat" "$WORK/build.log"; then
  cat "$WORK/build.log" >&2
  fail "the build prints a deprecation warning"
fi
WHEEL="$(ls "$WORK"/dist/*.whl)"

say "installing $(basename "$WHEEL") into a fresh virtualenv"
"$BUILD_PY" -m venv --without-pip "$WORK/venv"
"$BUILD_PY" -m pip --python "$WORK/venv/bin/python" install --quiet --disable-pip-version-check "$WHEEL" >"$WORK/install.log" 2>&1 || {
  cat "$WORK/install.log" >&2
  fail "the wheel does not install"
}
PY="$WORK/venv/bin/python"
CLI="$WORK/venv/bin/fhir-adapter"

mkdir "$WORK/elsewhere"
cd "$WORK/elsewhere"
unset PYTHONPATH
export PYTHONNOUSERSITE=1
cp "$REPO/profiles/examples/form-competent-under-16.json" form.json
cp "$REPO/profiles/examples/Consent-casus-example-competent-under-16.json" r4.json

"$PY" - "$WORK/venv" <<'EOF' || fail "fhir_adapter is not imported from the fresh virtualenv"
import sys, fhir_adapter
assert fhir_adapter.__file__.startswith(sys.argv[1]), fhir_adapter.__file__
EOF

say "validate"
"$CLI" validate r4.json >validate.out || fail "validate of a shipped example exited $? ($(cat validate.out))"
grep -q "r4.json: valid" validate.out || fail "validate did not say valid: $(cat validate.out)"

say "map in all six directions"
"$CLI" map --to r4 form.json >form-r4.json || fail "map form -> r4"
"$CLI" map --to r5 form.json >form-r5.json || fail "map form -> r5"
"$CLI" map --to form r4.json >r4-form.json || fail "map r4 -> form"
"$CLI" map --to form form-r5.json >r5-form.json || fail "map r5 -> form"
"$CLI" map --to r5 r4.json >r4-r5.json || fail "map r4 -> r5"
"$CLI" map --to r4 r4-r5.json >r5-r4.json || fail "map r5 -> r4"
"$PY" - <<'EOF' || fail "the mapped documents are not what the shipped examples say"
import json
load = lambda name: json.load(open(name, encoding="utf-8"))
shipped, form = load("r4.json"), load("form.json")
assert load("form-r4.json") == {k: v for k, v in shipped.items() if k != "id"}, "form -> r4"
assert load("form-r5.json")["resourceType"] == "Consent" and "decision" in load("form-r5.json"), "form -> r5"
assert load("r4-form.json") == form and load("r5-form.json") == form, "r4/r5 -> form"
assert load("r4-r5.json")["id"] == shipped["id"], "r4 -> r5 keeps the id"
assert load("r5-r4.json") == shipped, "r4 -> r5 -> r4 is the same Consent"
EOF

# Start a server in the background (in this shell, so cleanup can stop it) and set BASE to the URL it
# reports on stderr, within 30 s, or fail.
start_server() {
  local name="$1"
  shift
  "$@" >"$WORK/$name.out" 2>"$WORK/$name.err" </dev/null &
  local pid="$!"
  PIDS+=("$pid")
  BASE=""
  for _ in $(seq 1 300); do
    BASE="$(grep -Eo 'http://127\.0\.0\.1:[0-9]+' "$WORK/$name.err" | head -n1 || true)"
    [ -n "$BASE" ] && return 0
    kill -0 "$pid" 2>/dev/null || { cat "$WORK/$name.err" >&2; fail "$name exited before serving"; }
    sleep 0.1
  done
  cat "$WORK/$name.err" >&2
  fail "$name did not start within 30 s"
}

# GET a URL with an optional bearer token; fail unless 200 and JSON with the expected key.
probe() {
  "$PY" - "$@" <<'EOF'
import json, sys, urllib.request
url, key, token = sys.argv[1], sys.argv[2], (sys.argv[3] if len(sys.argv) > 3 else "")
request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
with urllib.request.urlopen(request, timeout=10) as response:
    body = json.load(response)
assert response.status == 200 and key in body, f"{url}: {response.status} {sorted(body)[:10]}"
print(f"{url.split('?')[0]}: {key} = {str(body[key])[:40]}", file=sys.stderr)
EOF
}

say "demo answering a decision"
mkdir "$WORK/demo"
start_server demo "$CLI" demo --port 0 --database "$WORK/demo/casus-demo.sqlite3"
grep -q "4 sample forms loaded" "$WORK/demo.err" || fail "demo did not load the sample forms: $(head -n1 "$WORK/demo.err")"
# shellcheck disable=SC1091
source "$WORK/demo/demo-tokens.env"
probe "$BASE/api/decision?patient=9434765919&recipient-role=mother&information-type=attendance&purpose=TREAT" \
  decision "$CASUS_DEMO_EHR_TOKEN" || fail "demo did not answer a decision"
"$PY" - "$BASE" <<'EOF' || fail "demo did not serve the consent pages (templates or stylesheet missing from the wheel?)"
import sys, urllib.request
for path, words in (("/consent/sign-in", "Sign in"), ("/consent/static/consent.css", "@media print")):
    with urllib.request.urlopen(sys.argv[1] + path, timeout=10) as response:
        assert response.status == 200 and words in response.read().decode(), path
    print(f"{path}: served", file=sys.stderr)
EOF

say "serve answering /openapi.json and /fhir/R4/metadata"
mkdir "$WORK/serve"
TOKEN="check-wheel-$RANDOM$RANDOM"
CASUS_DATABASE_URL="sqlite:///$WORK/serve/casus.sqlite3" \
  CASUS_TOKENS="[{\"name\": \"check\", \"token\": \"$TOKEN\", \"scopes\": [\"consent.read\"]}]" \
  start_server serve "$CLI" serve --port 0 --threads 2
probe "$BASE/openapi.json" openapi "$TOKEN" || fail "serve did not answer /openapi.json"
probe "$BASE/fhir/R4/metadata" fhirVersion "$TOKEN" || fail "serve did not answer /fhir/R4/metadata"

say "ok in $((SECONDS - START)) s"

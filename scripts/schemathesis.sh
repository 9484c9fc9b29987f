#!/usr/bin/env bash
# Property-based API test: schemathesis (pinned) against `deprovisiond demo` on a free port, with a fixed seed
# and every check. Exits non-zero on server errors, response-schema violations or undocumented status codes.
#   scripts/schemathesis.sh          a few hundred cases
#   scripts/schemathesis.sh --long   >= 2,000 cases (for scripts/soak)
#   scripts/schemathesis.sh --prepare   only installs schemathesis (the test command does it early)
# Needs python3 (venv) and a built binary: CARGO_TARGET_DIR (default target)/debug/deprovisiond, or $DEPROVISIOND_BIN.
set -euo pipefail
cd "$(dirname "$0")/.."

SCHEMATHESIS_VERSION=4.32.5
SEED=20261201
MAX_EXAMPLES=25   # per operation: 11 operations -> a few hundred cases
if [[ "${1:-}" == "--long" ]]; then MAX_EXAMPLES=200; fi

VENV="${SCHEMATHESIS_VENV:-${CARGO_TARGET_DIR:-target}/schemathesis-venv}"
if [[ ! -x "$VENV/bin/schemathesis" ]]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet "schemathesis==${SCHEMATHESIS_VERSION}"
fi
if [[ "${1:-}" == "--prepare" ]]; then exit 0; fi

BIN="${DEPROVISIOND_BIN:-${CARGO_TARGET_DIR:-target}/debug/deprovisiond}"
[[ -x "$BIN" ]] || { echo "no binary at $BIN; build it first (cargo build)" >&2; exit 2; }

# A free port, chosen by the kernel.
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
LOG=$(mktemp)
# An admin key, so every route is reachable; the fuzzer sends it on every request.
KEY="dpk_schemathesis-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
"$BIN" demo --listen "127.0.0.1:${PORT}" --api-key "$KEY" >"$LOG" 2>&1 &
PID=$!
trap 'kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; rm -f "$LOG"' EXIT

for _ in $(seq 1 100); do
  curl -fsS "http://127.0.0.1:${PORT}/healthz" >/dev/null 2>&1 && break
  sleep 0.2
done
curl -fsS "http://127.0.0.1:${PORT}/healthz" >/dev/null || { cat "$LOG" >&2; exit 1; }

# The committed document is what callers read, so that is what is checked. Every check runs but
# positive_data_acceptance ("a schema-valid request must be accepted"): the API refuses some schema-valid
# requests on purpose, for rules a schema cannot express (README, "The API's edge": schemathesis).
"$VENV/bin/schemathesis" run openapi/openapi.json \
  --url "http://127.0.0.1:${PORT}" \
  --header "Authorization: Bearer ${KEY}" \
  --checks all \
  --exclude-checks positive_data_acceptance \
  --max-examples "$MAX_EXAMPLES" \
  --seed "$SEED" \
  --request-timeout 30

#!/bin/sh
# Conformance: drives the official Azure IoT Node.js SDKs against the simulator over HTTPS.
# Installs the npm packages, starts Azurite (scripts/azurite.sh) and the simulator
# (examples/sim_https.rs), runs run.mjs and stops both. Last line: "N passed, M failed". Without
# Node.js it skips (exit 0), except under CI=true, where a missing prerequisite fails the run.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
crate=$(dirname "$here")
workspace=$(cd "$crate/../.." && pwd)

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    if [ "${CI:-}" = true ]; then
        echo "conformance: Node.js (node and npm) not found, and CI=true forbids skipping" >&2
        echo "0 passed, 1 failed"
        exit 1
    fi
    echo "conformance: skipped (node not found)"
    exit 0
fi

fail() {
    echo "conformance: $1" >&2
    echo "0 passed, 1 failed"
    exit 1
}

cd "$here"
if [ -f node_modules/.package-lock.json ] && [ node_modules/.package-lock.json -nt package-lock.json ]; then
    : # installed from this lock file already
elif [ -f package-lock.json ]; then
    npm ci --no-audit --no-fund --loglevel=error || fail "npm ci failed (is the npm registry reachable?)"
else
    npm install --no-audit --no-fund --loglevel=error || fail "npm install failed (is the npm registry reachable?)"
fi
# --prepare: only install the packages (the test command does it early, beside the build).
if [ "${1:-}" = "--prepare" ]; then
    "$workspace/scripts/azurite.sh" --prepare
    exit
fi

# The import/export job checks need a Blob service: run again under scripts/azurite.sh, which starts
# Azurite, exports DEPROVISIOND_TEST_AZURITE_URL and stops it afterwards (unless one is given).
if [ -z "${DEPROVISIOND_TEST_AZURITE_URL:-}" ] && [ -z "${CONFORMANCE_UNDER_AZURITE:-}" ]; then
    CONFORMANCE_UNDER_AZURITE=1 exec "$workspace/scripts/azurite.sh" -- "$here/run.sh" "$@"
fi

# Honours CARGO_TARGET_DIR like cargo does.
target=${CARGO_TARGET_DIR:-$workspace/target}
# CONFORMANCE_CARGO_FLAGS selects the packages and features to build with: the test command passes its own
# (the whole workspace's), so cargo reuses the test build's dependencies instead of compiling them again
# with the simulator's features alone (minutes on a clean clone).
# shellcheck disable=SC2086
(cd "$workspace" && cargo build --quiet ${CONFORMANCE_CARGO_FLAGS:--p azure-iot-sim} --example sim_https) ||
    fail "cannot build the azure-iot-sim example sim_https"
sim="$target/debug/examples/sim_https"

work=$(mktemp -d)
"$sim" >"$work/info.json" 2>"$work/sim.log" &
sim_pid=$!
cleanup() {
    kill "$sim_pid" 2>/dev/null || true
    wait "$sim_pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

# The simulator prints one JSON line once its listeners are up.
i=0
while [ ! -s "$work/info.json" ]; do
    i=$((i + 1))
    if [ "$i" -gt 300 ] || ! kill -0 "$sim_pid" 2>/dev/null; then
        cat "$work/sim.log" >&2
        fail "the simulator did not start"
    fi
    sleep 0.1
done

node run.mjs "$work/info.json"

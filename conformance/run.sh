#!/bin/sh
# Conformance: drives the official Azure IoT Node.js SDKs against the simulator over HTTPS.
# Skips (exit 0) when Node.js is absent; otherwise installs the npm packages, starts the simulator
# (examples/sim_https.rs), runs run.mjs and stops the simulator. Last line: "N passed, M failed".
set -eu

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    echo "conformance: skipped (node not found)"
    exit 0
fi

here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")

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

# Honours CARGO_TARGET_DIR like cargo does.
target=${CARGO_TARGET_DIR:-$repo/target}
(cd "$repo" && cargo build --quiet --example sim_https) || fail "cannot build examples/sim_https"
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

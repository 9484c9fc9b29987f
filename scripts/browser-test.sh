#!/usr/bin/env bash
# The dashboard in headless Chromium: starts `deprovisiond demo` (a built binary) on a free port, runs
# tests/browser/dashboard_test.py (Selenium driving Debian's chromium through chromium-driver; no browser is
# downloaded) and leaves screenshots in target/screenshots/.
#
# Missing Chromium is installed with apt-get when running as root. Otherwise the test is skipped, loudly;
# under CI=true it fails instead, naming what is missing.
#
#   scripts/browser-test.sh            # uses ${CARGO_TARGET_DIR:-target}/debug/deprovisiond
#   DEPROVISIOND_BIN=path/to/bin scripts/browser-test.sh
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
target="${CARGO_TARGET_DIR:-$root/target}"
bin="${DEPROVISIOND_BIN:-$target/debug/deprovisiond}"
shots="${SCREENSHOT_DIR:-$root/target/screenshots}"
venv="$root/target/browser-venv"

missing() {
    if [ "${CI:-}" = "true" ]; then
        echo "browser-test: FAILED: $1; CI=true forbids skipping the dashboard's browser test" >&2
        exit 1
    fi
    echo "browser-test: SKIPPED: $1; the dashboard's browser test did not run" >&2
    exit 0
}

chromium="$(command -v chromium || true)"
chromedriver="$(command -v chromedriver || true)"
if [ -z "$chromium" ] || [ -z "$chromedriver" ]; then
    if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
        echo "browser-test: installing chromium and chromium-driver with apt-get" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 \
            || { apt-get update -q >/dev/null && apt-get install -y -q chromium chromium-driver >/dev/null; } \
            || missing "apt-get could not install chromium and chromium-driver"
        chromium="$(command -v chromium || true)"
        chromedriver="$(command -v chromedriver || true)"
    fi
    [ -n "$chromium" ] || missing "chromium is not installed (apt-get install chromium)"
    [ -n "$chromedriver" ] || missing "chromedriver is not installed (apt-get install chromium-driver)"
fi

if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv" 2>/dev/null || {
        if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
            DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv >/dev/null
            python3 -m venv "$venv"
        else
            missing "python3 -m venv does not work (apt-get install python3-venv)"
        fi
    }
fi
if ! "$venv/bin/python" -c "import selenium" 2>/dev/null; then
    "$venv/bin/pip" install -q --disable-pip-version-check 'selenium>=4.20,<5' \
        || missing "pip could not install selenium into $venv"
fi
# --prepare: only install (the test command does it early, beside the build).
[ "${1:-}" != "--prepare" ] || exit 0
[ -x "$bin" ] || missing "$bin is not built (cargo build --workspace)"

port="$("$venv/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
base="http://127.0.0.1:$port"
log="$root/target/browser-demo.log"
mkdir -p "$root/target" "$shots"
rm -f "$shots/failure.png"
# The demo's admin key, which the test types into the login form.
token="dpk_browser-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
"$bin" demo --listen "127.0.0.1:$port" --api-key "$token" >"$log" 2>&1 &
demo=$!
trap 'kill "$demo" 2>/dev/null || true; wait "$demo" 2>/dev/null || true' EXIT

for _ in $(seq 1 100); do
    if "$venv/bin/python" -c "import urllib.request,sys; urllib.request.urlopen(sys.argv[1], timeout=1)" "$base/readyz" 2>/dev/null; then
        break
    fi
    kill -0 "$demo" 2>/dev/null || { cat "$log" >&2; echo "browser-test: the demo exited" >&2; exit 1; }
    sleep 0.2
done

# Selenium must use the given chromedriver, never fetch one.
SE_OFFLINE=true "$venv/bin/python" "$root/tests/browser/dashboard_test.py" \
    --base "$base" --screenshots "$shots" --chromium "$chromium" --chromedriver "$chromedriver" \
    --token "$token"

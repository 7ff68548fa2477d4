#!/usr/bin/env bash
# Installs the headless browser the chat app's end-to-end test drives: Debian's chromium, via apt-get.
# Idempotent: does nothing when a chromium is already there. CI calls it before `make test`.
# (The test uses playwright-python with executable_path; `playwright install` is never needed.)
set -euo pipefail

CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"

if [ -x "$CHROMIUM" ]; then
    echo "install-browser: $CHROMIUM is already installed ($("$CHROMIUM" --version 2>/dev/null || echo 'version unknown')); nothing to do."
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-browser: $CHROMIUM is missing and apt-get is not available; install chromium yourself" \
         "(or set CHROMIUM=/path/to/chromium). The browser test will be skipped." >&2
    exit 1
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO="sudo"
    else
        echo "install-browser: not root and no sudo; cannot apt-get install chromium." >&2
        exit 1
    fi
fi

echo "install-browser: $CHROMIUM is missing; running: $SUDO apt-get update"
$SUDO apt-get update -qq
echo "install-browser: running: $SUDO apt-get install -y --no-install-recommends chromium"
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium
echo "install-browser: installed $("$CHROMIUM" --version 2>/dev/null || echo "$CHROMIUM")"

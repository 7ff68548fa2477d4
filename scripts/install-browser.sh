#!/usr/bin/env bash
# Installs the system packages the chat app's tests need, from Debian via apt-get:
#   - chromium: the end-to-end test drives the page in it (playwright-python with executable_path; `playwright
#     install` is never needed);
#   - postgresql: the store tests start a throw-away PostgreSQL server with its initdb and pg_ctl
#     (/usr/lib/postgresql/*/bin), listening on a Unix socket only.
# Idempotent: installs only what is missing, and does nothing when both are there. `make test` calls it.
set -euo pipefail

CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"

missing=()
if [ -x "$CHROMIUM" ]; then
    echo "install-browser: $CHROMIUM is already installed ($("$CHROMIUM" --version 2>/dev/null || echo 'version unknown'))."
else
    missing+=(chromium)
fi
if compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
    echo "install-browser: PostgreSQL is already installed ($(compgen -G '/usr/lib/postgresql/*/bin/initdb' | head -1))."
else
    missing+=(postgresql)
fi
if [ "${#missing[@]}" -eq 0 ]; then
    echo "install-browser: nothing to do."
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-browser: ${missing[*]} missing and apt-get is not available; install them yourself" \
         "(or set CHROMIUM=/path/to/chromium, PG_BINDIR=/path/to/postgresql/bin). Those tests will be skipped." >&2
    exit 1
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO="sudo"
    else
        echo "install-browser: not root and no sudo; cannot apt-get install ${missing[*]}." >&2
        exit 1
    fi
fi

echo "install-browser: ${missing[*]} missing; running: $SUDO apt-get update"
$SUDO apt-get update -qq
echo "install-browser: running: $SUDO apt-get install -y --no-install-recommends ${missing[*]}"
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
if [ -x "$CHROMIUM" ]; then
    echo "install-browser: chromium: $("$CHROMIUM" --version 2>/dev/null || echo "$CHROMIUM")"
fi
if compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
    echo "install-browser: postgresql: $(compgen -G '/usr/lib/postgresql/*/bin/initdb' | head -1)"
fi

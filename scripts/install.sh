#!/usr/bin/env bash
# Installs the B2BUA into ./.venv (and, with --test, the test peers and test dependencies).
# Idempotent: a second run only checks. Works on a fresh Debian with Python 3.11+.
set -euo pipefail
cd "$(dirname "$0")/.."
want_test=0
[ "${1:-}" = "--test" ] && want_test=1

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
apt_install() {
    # apt-get only for what is missing; `update` once per run at most.
    if [ -z "${_apt_updated:-}" ]; then as_root apt-get update -qq; _apt_updated=1; fi
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "$@" >/dev/null
}

PY=${PYTHON:-python3}
"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "install: Python 3.11+ is needed ($PY is $($PY --version 2>&1))" >&2; exit 1; }
missing=()
"$PY" -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
"$PY" -c 'import ctypes.util, sys; sys.exit(ctypes.util.find_library("sndfile") is None)' 2>/dev/null || missing+=(libsndfile1)
if [ $want_test = 1 ]; then
    command -v sipp >/dev/null || missing+=(sip-tester)
    command -v baresip >/dev/null || missing+=(baresip-core)
    # The recordings page's browser test (tests/e2e/test_recordings_page.py).
    command -v chromium >/dev/null || missing+=(chromium)
    command -v chromedriver >/dev/null || missing+=(chromium-driver)
    # The cluster's edge and shared state, run privately by tests and `b2bua cluster`
    # (never the system services); iproute2's `ip netns` stands in for several hosts in
    # the e2e tests.
    [ -x /usr/sbin/kamailio ] || missing+=(kamailio)
    command -v redis-server >/dev/null || [ -x /usr/bin/redis-server ] || missing+=(redis-server)
    command -v ip >/dev/null || missing+=(iproute2)
fi
[ ${#missing[@]} -gt 0 ] && apt_install "${missing[@]}"

if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip >/dev/null
if [ $want_test = 1 ]; then
    .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
else
    .venv/bin/python -m pip install -q --disable-pip-version-check -e .
fi

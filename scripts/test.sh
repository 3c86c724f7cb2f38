#!/usr/bin/env bash
# Installs everything (SIPp and baresip through apt-get when missing; Python packages into
# ./.venv) and runs the whole test suite: unit, property and end-to-end tests.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
"$here/scripts/install.sh" --test
cd "$here"
exec .venv/bin/python -m pytest -p no:cacheprovider "$@"

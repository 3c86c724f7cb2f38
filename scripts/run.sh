#!/usr/bin/env bash
# Installs what the B2BUA needs into ./.venv and starts it (on ./flows.toml, or --config FILE).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
"$here/scripts/install.sh"
exec "$here/.venv/bin/b2bua" run "$@"

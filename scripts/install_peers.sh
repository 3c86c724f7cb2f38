#!/usr/bin/env bash
# Installs the end-to-end test peers when missing: SIPp (Debian package sip-tester) and
# baresip (baresip-core: the CLI and every module the harness uses, without the GTK/FFmpeg
# extras of the baresip metapackage). Idempotent and quiet: does nothing when both exist.
# Uses sudo only when not root.
set -euo pipefail

missing=()
command -v sipp >/dev/null 2>&1 || missing+=(sip-tester)
command -v baresip >/dev/null 2>&1 || missing+=(baresip-core)
[ ${#missing[@]} -eq 0 ] && exit 0

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo -n "$@"; fi; }
export DEBIAN_FRONTEND=noninteractive
as_root apt-get update -qq >/dev/null
as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null

for exe in sipp baresip; do
    command -v "$exe" >/dev/null 2>&1 || { echo "install_peers: $exe is still missing after apt-get install ${missing[*]}" >&2; exit 1; }
done

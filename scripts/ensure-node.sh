#!/usr/bin/env bash
# ensure-node.sh: make sure Node.js and npm are installed and that the interop publisher's
# dependencies (integration/interop/node, pinned by its package-lock.json) are installed.
# Installs nodejs and npm from Debian's packages when either is missing (needs root), and runs
# `npm ci` when node_modules is missing or older than package-lock.json. Quiet when all is set up.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dir=$root/integration/interop/node
say() { echo "ensure-node: $*" >&2; }

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  say "node or npm is missing; installing nodejs and npm with apt-get"
  if [ "$(id -u)" != 0 ]; then say "need root to install nodejs and npm"; exit 1; fi
  export DEBIAN_FRONTEND=noninteractive
  # Refresh the package lists only when the install cannot find the packages without it (a fresh
  # image has none).
  if ! apt-get install -y -qq nodejs npm >/dev/null 2>&1; then
    apt-get update -qq
    apt-get install -y -qq nodejs npm >/dev/null || apt-get install -y nodejs npm
  fi
  command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 || { say "node/npm still missing after apt-get"; exit 1; }
  say "installed $(node --version), npm $(npm --version)"
fi

# npm ci writes node_modules/.package-lock.json last; compare against it so that an interrupted
# install is redone.
stamp=$dir/node_modules/.package-lock.json
if [ ! -f "$stamp" ] || [ "$dir/package-lock.json" -nt "$stamp" ]; then
  say "npm ci in ${dir#"$root"/}"
  (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error >/dev/null) || {
    say "npm ci failed in $dir"
    exit 1
  }
fi

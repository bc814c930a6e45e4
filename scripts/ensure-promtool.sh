#!/usr/bin/env bash
# ensure-promtool.sh: make sure promtool (Prometheus's rule checker) is on PATH, for deploy/'s
# tests of the alert rules and the Grafana dashboard's queries.
# Installs Debian's prometheus package (which ships promtool) when promtool is missing, and makes
# sure no Prometheus server is left running afterwards: the package's post-install script may start
# one, and these tests need only the binary. Quiet when promtool is already there.
set -euo pipefail

say() { echo "ensure-promtool: $*" >&2; }

stop_server() {
  if pgrep -x prometheus >/dev/null 2>&1; then
    say "stopping the Prometheus server the package started"
    if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet prometheus 2>/dev/null; then
      systemctl stop prometheus || true
      systemctl disable prometheus >/dev/null 2>&1 || true
    fi
    service prometheus stop >/dev/null 2>&1 || true
    for pid in $(pgrep -x prometheus || true); do kill "$pid" 2>/dev/null || true; done
    for _ in $(seq 1 50); do pgrep -x prometheus >/dev/null 2>&1 || break; sleep 0.1; done
    if pgrep -x prometheus >/dev/null 2>&1; then say "a prometheus process is still running"; exit 1; fi
  fi
}

if command -v promtool >/dev/null 2>&1; then
  exit 0
fi

say "promtool is missing; installing Debian's prometheus package with apt-get"
if [ "$(id -u)" != 0 ]; then say "need root to install prometheus"; exit 1; fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y --no-install-recommends prometheus >/dev/null || apt-get install -y --no-install-recommends prometheus
stop_server
command -v promtool >/dev/null 2>&1 || { say "promtool still not on PATH after installing prometheus"; exit 1; }

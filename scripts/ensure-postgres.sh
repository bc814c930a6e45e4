#!/usr/bin/env bash
# ensure-postgres.sh: make sure a PostgreSQL server answers on 127.0.0.1:5432 and lets the user
# postgres in without a password (trust), for consumer/pginbox's tests.
# Installs Debian's postgresql when it is missing, starts cluster 15/main (or whichever cluster
# pg_lsclusters lists first) when it is installed but down, adds trust lines for 127.0.0.1 when the
# cluster asks for a password, and waits until it accepts connections. Quiet when it already answers.
# Never stops a running server.
set -euo pipefail

port=${RABBITKIT_PG_PORT:-5432}
say() { echo "ensure-postgres: $*" >&2; }

answers() { psql -h 127.0.0.1 -p "$port" -U postgres -d postgres -Atqc 'select 1' >/dev/null 2>&1; }

if command -v psql >/dev/null 2>&1 && answers; then
  exit 0
fi

if ! command -v pg_lsclusters >/dev/null 2>&1 || [ -z "$(pg_lsclusters -h 2>/dev/null)" ]; then
  say "postgresql is not installed; installing it with apt-get"
  if [ "$(id -u)" != 0 ]; then say "need root to install postgresql"; exit 1; fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # The post-install script creates cluster <version>/main and may fail to start it without an
  # init system; we start it below.
  apt-get install -y -qq postgresql >/dev/null || apt-get install -y postgresql
fi

read -r version cluster _ < <(pg_lsclusters -h | head -1)
conf=/etc/postgresql/$version/$cluster

# Trust auth for local TCP connections (tests only: this is a developer's or CI's machine).
if [ -f "$conf/pg_hba.conf" ] && ! grep -Eq '^host[[:space:]]+all[[:space:]]+all[[:space:]]+127\.0\.0\.1/32[[:space:]]+trust' "$conf/pg_hba.conf"; then
  say "adding trust auth for 127.0.0.1 to $conf/pg_hba.conf"
  tmp=$(mktemp)
  { echo "host all all 127.0.0.1/32 trust"; echo "host all all ::1/128 trust"; cat "$conf/pg_hba.conf"; } > "$tmp"
  cat "$tmp" > "$conf/pg_hba.conf"; rm -f "$tmp"
  if pg_lsclusters -h | awk -v v="$version" -v c="$cluster" '$1==v && $2==c {print $4}' | grep -q online; then
    pg_ctlcluster --skip-systemctl-redirect "$version" "$cluster" reload >/dev/null 2>&1 || true
  fi
fi

if ! pg_lsclusters -h | awk -v v="$version" -v c="$cluster" '$1==v && $2==c {print $4}' | grep -q online; then
  say "starting cluster $version/$cluster"
  pg_ctlcluster --skip-systemctl-redirect "$version" "$cluster" start
fi

for _ in $(seq 1 60); do
  if answers; then
    say "PostgreSQL $version answers on 127.0.0.1:$port"
    exit 0
  fi
  sleep 1
done
say "PostgreSQL did not answer within 60 s; see /var/log/postgresql/"
exit 1

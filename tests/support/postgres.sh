#!/usr/bin/env bash
# Runs a private PostgreSQL on loopback for the tests and benchmarks that use the
# postgres backend: Debian's `postgresql` package (15 here), `initdb` into DIR, listening
# on 127.0.0.1:PORT only, trust authentication for the `postgres` user, fsync on (the
# backend's durability is what the tests prove). Nothing outside DIR is touched except
# installing the Debian package when it is missing.
#
#   tests/support/postgres.sh start|stop|url [DIR] [PORT]
#
# `start` prints nothing on success; `url` prints the database URL for mailgate
# (postgres://postgres@127.0.0.1:PORT/postgres).
set -euo pipefail

cmd=${1:?usage: postgres.sh start|stop|url [DIR] [PORT]}
dir=${2:-${MAILGATE_TEST_PG_DIR:-/tmp/mailgate-postgres}}
port=${3:-${MAILGATE_TEST_PG_PORT:-15432}}
sudo=""
[ "$(id -u)" = 0 ] || sudo="sudo"

bin_dir() {
  ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1
}

install_packages() {
  if [ -n "$(bin_dir)" ] && [ -x "$(bin_dir)/initdb" ]; then
    return
  fi
  echo "postgres.sh: installing postgresql from Debian" >&2
  if ! $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >/dev/null; then
    $sudo apt-get update -q >/dev/null
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >/dev/null
  fi
}

# Runs a PostgreSQL binary as the `postgres` user (initdb and the server refuse root).
as_pg() {
  if [ "$(id -un)" = postgres ]; then
    "$@"
  elif [ "$(id -u)" = 0 ]; then
    runuser -u postgres -- "$@"
  else
    sudo -u postgres "$@"
  fi
}

case "$cmd" in
  start)
    install_packages
    bin=$(bin_dir)
    if [ -f "$dir/data/postmaster.pid" ] && as_pg "$bin/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then
      exit 0
    fi
    rm -rf "$dir"
    mkdir -p "$dir"
    chown postgres: "$dir" 2>/dev/null || $sudo chown postgres: "$dir"
    as_pg "$bin/initdb" -D "$dir/data" -A trust -U postgres --no-instructions >"$dir/initdb.log" 2>&1 \
      || { cat "$dir/initdb.log" >&2; exit 1; }
    as_pg "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
      -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c max_connections=300 -c shared_buffers=256MB" \
      start >/dev/null || { cat "$dir/server.log" >&2; exit 1; }
    ;;
  stop)
    bin=$(bin_dir)
    if [ -n "$bin" ] && [ -d "$dir/data" ]; then
      as_pg "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null 2>&1 || true
    fi
    ;;
  url)
    echo "postgres://postgres@127.0.0.1:$port/postgres"
    ;;
  *)
    echo "usage: postgres.sh start|stop|url [DIR] [PORT]" >&2
    exit 2
    ;;
esac

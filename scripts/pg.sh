#!/usr/bin/env bash
# A throwaway PostgreSQL server for tests and benchmarks (loopback only, trust auth, no fsync).
#   eval "$(bash scripts/pg.sh start [PORT])"   # exports PGTEST_DSN, PGTEST_DIR, PGTEST_PORT
#   bash scripts/pg.sh stop "$PGTEST_DIR"
# Without PORT a free loopback port is chosen. When the server binaries are missing and we are
# root, the Debian package is installed (apt-get). As root the server runs as the 'postgres'
# OS user (initdb refuses root); otherwise as the current user. The server skips fsync (tests
# need no durability); PG_DURABLE=1 keeps PostgreSQL's defaults (fsync, synchronous_commit) for
# benchmarks.
set -euo pipefail

find_bindir() {
  local d
  if command -v pg_config >/dev/null 2>&1; then
    d=$(pg_config --bindir)
    if [ -x "$d/initdb" ]; then echo "$d"; return; fi
  fi
  for d in /usr/lib/postgresql/*/bin; do
    if [ -x "$d/initdb" ]; then echo "$d"; return; fi
  done
  return 1
}

as_owner() {  # run a server command as the data directory's owner
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

case "${1:-start}" in
start)
  PGBIN=${PGBIN:-$(find_bindir || true)}
  if [ -z "$PGBIN" ]; then
    if [ "$(id -u)" != 0 ]; then
      echo "pg.sh: PostgreSQL server binaries not found; install them (apt-get install postgresql) or set PGBIN" >&2
      exit 1
    fi
    echo "pg.sh: installing PostgreSQL (apt-get)..." >&2
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
    PGBIN=$(find_bindir)
  fi
  PORT=${2:-}
  if [ -z "$PORT" ]; then
    PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  fi
  OPTS="-p $PORT -c listen_addresses=127.0.0.1 -c max_connections=200"
  if [ "${PG_DURABLE:-0}" != 1 ]; then
    OPTS="$OPTS -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
  fi
  DIR=$(mktemp -d /tmp/pgtest.XXXXXX)
  if [ "$(id -u)" = 0 ]; then chown postgres:postgres "$DIR"; fi
  chmod 700 "$DIR"
  if ! as_owner "$PGBIN/initdb" -D "$DIR/data" -U postgres -A trust --no-sync --encoding=UTF8 \
      --locale=C.UTF-8 >"$DIR/initdb.log" 2>&1; then
    cat "$DIR/initdb.log" >&2; rm -rf "$DIR"; exit 1
  fi
  if ! as_owner "$PGBIN/pg_ctl" -D "$DIR/data" -l "$DIR/server.log" -w -t 60 \
      -o "$OPTS -k $DIR" \
      start >/dev/null; then
    cat "$DIR/server.log" >&2; rm -rf "$DIR"; exit 1
  fi
  echo "export PGTEST_DIR=$DIR"
  echo "export PGTEST_PORT=$PORT"
  echo "export PGTEST_DSN='postgresql://postgres@127.0.0.1:$PORT/postgres'"
  ;;
stop)
  DIR=${2:?usage: pg.sh stop PGTEST_DIR}
  PGBIN=${PGBIN:-$(find_bindir)}
  if [ -d "$DIR/data" ]; then
    as_owner "$PGBIN/pg_ctl" -D "$DIR/data" -m immediate -w stop >/dev/null 2>&1 || true
  fi
  case "$DIR" in /tmp/pgtest.*) rm -rf "$DIR" ;; esac
  ;;
*)
  echo "usage: pg.sh start [PORT] | stop DIR" >&2; exit 2 ;;
esac

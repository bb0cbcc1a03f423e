#!/usr/bin/env bash
# The local stack of DESIGN §5: Azurite, migrations + containers, the API and two workers.
#   scripts/stack.sh up | down | status | logs
# Pids and logs live in .run/; `up` starts only what is not already running. The API and the
# workers run under triggers/supervisor.py, which restarts a crashed process within seconds and
# logs the restart (.run/<name>.pid is the supervisor's pid, .run/<name>.child.pid the process's).
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${GEOETL_RUN_DIR:-.run}
mkdir -p "$RUN"
API_PORT=${API_PORT:-7071}
BLOB_PORT=${BLOB_PORT:-10000}
WORKERS=${WORKERS:-2}
export DATABASE_URL=${DATABASE_URL:-postgresql://postgres:postgres@127.0.0.1:5432/geoetl}

SUPERVISE=(.venv/bin/python -m triggers.supervisor --run-dir "$RUN")

alive() { [[ -f $RUN/$1.pid ]] && kill -0 "$(cat "$RUN/$1.pid")" 2>/dev/null; }
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

start() {  # name, command...
  local name=$1; shift
  if alive "$name"; then
    echo "  $name already running (pid $(cat "$RUN/$name.pid"))"
    return
  fi
  setsid nohup "$@" >>"$RUN/$name.log" 2>&1 </dev/null &
  echo $! >"$RUN/$name.pid"
  echo "  started $name (pid $!, log $RUN/$name.log)"
}

wait_port() {  # port, seconds, what
  for _ in $(seq 1 "$2"); do port_busy "$1" && return 0; sleep 1; done
  echo "$3 did not open port $1; see its log in $RUN/" >&2
  return 1
}

up() {
  scripts/bootstrap.sh
  echo "geoetl stack:"
  if ! alive azurite && port_busy "$BLOB_PORT"; then
    echo "port $BLOB_PORT is taken by a process this stack did not start" >&2; exit 1
  fi
  start azurite .azurite/node_modules/.bin/azurite-blob --blobHost 127.0.0.1 --blobPort "$BLOB_PORT" \
    --location "$RUN/azurite-data" --disableTelemetry --skipApiVersionCheck --loose
  wait_port "$BLOB_PORT" 30 azurite
  .venv/bin/geoetl migrate >"$RUN/migrate.log" 2>&1 || { tail -20 "$RUN/migrate.log" >&2; exit 1; }
  if ! alive api && port_busy "$API_PORT"; then
    echo "port $API_PORT is taken by a process this stack did not start" >&2; exit 1
  fi
  start api "${SUPERVISE[@]}" --name api -- .venv/bin/geoetl serve --port "$API_PORT"
  for i in $(seq 1 "$WORKERS"); do start "worker-$i" "${SUPERVISE[@]}" --name "worker-$i" -- .venv/bin/geoetl worker; done
  for _ in $(seq 1 90); do
    if curl -sf -m 5 -o /dev/null "http://127.0.0.1:$API_PORT/api/health"; then
      cat <<MSG
ready:
  API        http://127.0.0.1:$API_PORT/api   (docs: /api/docs, health: /api/health)
  features   http://127.0.0.1:$API_PORT/api/features
  STAC       http://127.0.0.1:$API_PORT/api/stac
  blob       http://127.0.0.1:$BLOB_PORT/devstoreaccount1   (Azurite)
  database   $(echo "$DATABASE_URL" | sed -E 's#//([^:/@]+):[^@]*@#//\1:***@#')
  logs       make logs      stop: make down
MSG
      return 0
    fi
    sleep 1
  done
  echo "the API did not become healthy; last health answer:" >&2
  curl -s -m 10 "http://127.0.0.1:$API_PORT/api/health" >&2 || true
  tail -20 "$RUN/api.log" >&2
  exit 1
}

stop_one() {
  local f=$1 name pid
  name=$(basename "$f" .pid)
  pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -0 "$pid" 2>/dev/null && { kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true; }
    echo "  stopped $name (pid $pid)"
  fi
  rm -f "$f"
}

down() {
  shopt -s nullglob
  local files=("$RUN"/*.pid)
  ((${#files[@]})) || { echo "nothing running"; return 0; }
  # workers and the API first, Azurite last
  for f in "${files[@]}"; do [[ $f == *azurite.pid || $f == *.child.pid ]] || stop_one "$f"; done
  rm -f "$RUN"/*.child.pid "$RUN"/*.restarts
  [[ -f $RUN/azurite.pid ]] && stop_one "$RUN/azurite.pid"
  return 0
}

status() {
  shopt -s nullglob
  for f in "$RUN"/*.pid; do
    n=$(basename "$f" .pid)
    [[ $n == *.child ]] && continue
    if alive "$n"; then
      extra=""
      if [[ -f $RUN/$n.restarts ]]; then
        extra=", process $(cat "$RUN/$n.child.pid" 2>/dev/null || echo '?'), restarts $(cat "$RUN/$n.restarts")"
      fi
      echo "$n running (pid $(cat "$f")$extra)"
    else
      echo "$n NOT running (stale pid file)"
    fi
  done
  curl -s -m 10 "http://127.0.0.1:$API_PORT/api/health" || echo "API not answering"
}

case ${1:-} in
  up) up ;;
  down) down ;;
  status) status ;;
  logs) exec tail -n 50 -F "$RUN"/*.log ;;
  *) echo "usage: $0 up|down|status|logs" >&2; exit 2 ;;
esac

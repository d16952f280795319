# Sourced by the start scripts: load infra/infgate.env if present, set sane defaults.
set -a
_here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [ -f "$_here/infgate.env" ]; then . "$_here/infgate.env"; fi
set +a
export INFGATE_ROOT="$(cd "$_here/.." && pwd)"
export PATH="$INFGATE_ROOT/.venv/bin:$PATH"
export INFGATE_RUN_DIR="${INFGATE_RUN_DIR:-$INFGATE_ROOT/infra/run}"
mkdir -p "$INFGATE_RUN_DIR"
export DO_NOT_TRACK="${DO_NOT_TRACK:-1}" PREFECT_SERVER_ANALYTICS_ENABLED="${PREFECT_SERVER_ANALYTICS_ENABLED:-false}"
export GX_ANALYTICS_ENABLED="${GX_ANALYTICS_ENABLED:-false}"

# wait_http URL SECONDS: poll until the URL answers.
wait_http() {
  for _ in $(seq 1 "$2"); do
    if python3 -c "import urllib.request,sys; urllib.request.urlopen(sys.argv[1], timeout=2)" "$1" 2>/dev/null; then return 0; fi
    sleep 1
  done
  echo "no answer from $1 after $2 s" >&2; return 1
}

# start_bg NAME CMD...: run in the background, log to run/NAME.log, pid in run/NAME.pid.
start_bg() {
  local name="$1"; shift
  if [ -f "$INFGATE_RUN_DIR/$name.pid" ] && kill -0 "$(cat "$INFGATE_RUN_DIR/$name.pid")" 2>/dev/null; then
    echo "$name already running (pid $(cat "$INFGATE_RUN_DIR/$name.pid"))"; return 0
  fi
  nohup "$@" >"$INFGATE_RUN_DIR/$name.log" 2>&1 &
  echo $! >"$INFGATE_RUN_DIR/$name.pid"
  echo "$name started (pid $!, log $INFGATE_RUN_DIR/$name.log)"
}

#!/usr/bin/env bash
# Start `prefect server start` and a worker process serving the infgate deployments.
set -euo pipefail
. "$(dirname "$0")/_env.sh"
: "${PREFECT_SERVER_API_PORT:=4200}"
export PREFECT_API_URL="${PREFECT_API_URL:-http://127.0.0.1:$PREFECT_SERVER_API_PORT/api}"
start_bg prefect-server prefect server start --host 127.0.0.1 --port "$PREFECT_SERVER_API_PORT"
wait_http "$PREFECT_API_URL/health" 180
# Serve the scan / sweep / relabel / influence deployments from one long-running process.
cd "$INFGATE_ROOT"
start_bg prefect-flows infgate flows serve
echo "prefect server on ${PREFECT_API_URL%/api}; deployments served by infgate flows serve"

#!/usr/bin/env bash
# Start the model-review hook (webhook receiver) and register it with the MLflow server.
set -euo pipefail
. "$(dirname "$0")/_env.sh"
: "${INFGATE_HOOK_PORT:=8766}" "${INFGATE_HOOK_MODE:=embedded}"
if [ -z "${INFGATE_WEBHOOK_SECRET:-}" ]; then
  echo "INFGATE_WEBHOOK_SECRET is unset: set it in infra/infgate.env (see the example)" >&2
  exit 1
fi
cd "$INFGATE_ROOT"
start_bg hook infgate hook serve --host 127.0.0.1 --port "$INFGATE_HOOK_PORT" --mode "$INFGATE_HOOK_MODE"
wait_http "http://127.0.0.1:$INFGATE_HOOK_PORT/healthz" 60
infgate hook register "http://127.0.0.1:$INFGATE_HOOK_PORT/webhook" --tracking-uri "$MLFLOW_TRACKING_URI"

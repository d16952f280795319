#!/usr/bin/env bash
# Start `mlflow server` (tracking + registry + webhooks) natively, in the background.
set -euo pipefail
. "$(dirname "$0")/_env.sh"
: "${MLFLOW_PORT:=5000}"
: "${MLFLOW_BACKEND_STORE_URI:=sqlite:///$INFGATE_ROOT/mlflow.db}"
: "${MLFLOW_ARTIFACTS_DESTINATION:=$INFGATE_ROOT/mlartifacts}"
if [ -z "${MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY:-}" ]; then
  echo "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY is unset: set it in infra/infgate.env (see the example)" >&2
  exit 1
fi
export MLFLOW_WEBHOOK_ALLOWED_SCHEMES="${MLFLOW_WEBHOOK_ALLOWED_SCHEMES:-http,https}"
export MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS="${MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS:-true}"
start_bg mlflow mlflow server --backend-store-uri "$MLFLOW_BACKEND_STORE_URI" \
  --artifacts-destination "$MLFLOW_ARTIFACTS_DESTINATION" --host 127.0.0.1 --port "$MLFLOW_PORT"
wait_http "http://127.0.0.1:$MLFLOW_PORT/health" 120
echo "mlflow server on http://127.0.0.1:$MLFLOW_PORT"

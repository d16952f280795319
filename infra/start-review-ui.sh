#!/usr/bin/env bash
# Start the annotators' review page.
set -euo pipefail
. "$(dirname "$0")/_env.sh"
: "${INFGATE_UI_PORT:=8765}"
cd "$INFGATE_ROOT"
infgate db upgrade ${INFGATE_DB_URL:+--db "$INFGATE_DB_URL"} >/dev/null
start_bg review-ui infgate ui serve --host 127.0.0.1 --port "$INFGATE_UI_PORT"
wait_http "http://127.0.0.1:$INFGATE_UI_PORT/healthz" 60  # "/" answers 401 by design
echo "review page on http://127.0.0.1:$INFGATE_UI_PORT"

#!/usr/bin/env bash
# Stop the services started by the start-*.sh scripts (by their recorded pids only).
set -euo pipefail
. "$(dirname "$0")/_env.sh"
for name in review-ui hook prefect-flows prefect-server mlflow; do
  f="$INFGATE_RUN_DIR/$name.pid"
  if [ -f "$f" ]; then
    kill "$(cat "$f")" 2>/dev/null && echo "stopped $name" || true
    rm -f "$f"
  fi
done

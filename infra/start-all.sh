#!/usr/bin/env bash
# Native start of every service (no Docker): PostgreSQL, MLflow, Prefect + deployments,
# the model-review hook and the review page. Stop them with infra/stop-all.sh.
set -euo pipefail
cd "$(dirname "$0")"
bash start-postgres.sh
bash start-mlflow.sh
bash start-prefect.sh
bash start-hook.sh
bash start-review-ui.sh

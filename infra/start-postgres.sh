#!/usr/bin/env bash
# Start the Debian PostgreSQL cluster (native, no Docker) and create the infgate role and
# databases. Idempotent. Password comes from INFGATE_PG_PASSWORD (default "infgate" for
# local loopback use only).
set -euo pipefail
PW="${INFGATE_PG_PASSWORD:-infgate}"
ver=$(ls /usr/lib/postgresql | sort -V | tail -n1)
if ! pg_lsclusters -h | grep -q online; then
  cluster=$(pg_lsclusters -h | awk 'NR==1{print $2}')
  if [ -z "$cluster" ]; then pg_createcluster "$ver" main; cluster=main; fi
  pg_ctlcluster "$ver" "$cluster" start
fi
for _ in $(seq 1 30); do pg_isready -h 127.0.0.1 -q && break; sleep 1; done
su postgres -c "psql -v ON_ERROR_STOP=1 -q" <<SQL
DO \$\$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'infgate') THEN
    CREATE ROLE infgate LOGIN PASSWORD '${PW}' CREATEDB;
  END IF;
END \$\$;
SQL
for db in infgate infgate_test mlflow prefect; do
  su postgres -c "psql -tAc \"SELECT 1 FROM pg_database WHERE datname='${db}'\"" | grep -q 1 \
    || su postgres -c "createdb -O infgate ${db}"
done
echo "postgres ready on 127.0.0.1:5432 (role infgate)"

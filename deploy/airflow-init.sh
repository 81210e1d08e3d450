#!/usr/bin/env bash
# One-shot before the Airflow components start (docker-compose.yml's airflow-init); safe to re-run:
#   1. create or upgrade the metadata DB (`airflow db migrate`);
#   2. the pools darkroom's DAGs name (darkroom.airflow_env.pools(settings), as ensure_airflow_db creates them locally);
#   3. the UI user's password for Airflow's simple auth manager (user and role: AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS),
#      written to AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE from AIRFLOW_ADMIN_PASSWORD.
set -euo pipefail
: "${AIRFLOW_ADMIN_PASSWORD:?set AIRFLOW_ADMIN_PASSWORD in deploy/.env}"
: "${AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE:?}"
airflow db migrate
python - <<'PY'
import json
import os
import subprocess

from darkroom.airflow_env import pools
from darkroom.settings import load_settings

POOLS = pools(load_settings())
for name, (slots, description) in sorted(POOLS.items()):
    subprocess.run(["airflow", "pools", "set", name, str(slots), description], check=True)

path = os.environ["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"]
user = os.environ.get("AIRFLOW_ADMIN_USER", "admin")
with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
    json.dump({user: os.environ["AIRFLOW_ADMIN_PASSWORD"]}, f)
print(f"airflow-init: DB migrated, pools {sorted(POOLS)}, password of UI user {user!r} in {path}")
PY

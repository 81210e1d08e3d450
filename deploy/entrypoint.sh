#!/usr/bin/env bash
# Entry point of the project image (Dockerfile). Before running the command it
#   - loads the darkroom settings from the environment: a bad DARKROOM_* variable stops the container, naming the key;
#   - sets Airflow's task defaults from the `airflow` settings, as darkroom.airflow_env does for the local set-up;
#   - sets SPARK_LOCAL_HOSTNAME (unless given) to the container's IP address, which Spark advertises: executors then
#     reach a driver in any container, also one of `docker compose run`, whose name is not in the network's DNS.
set -euo pipefail
derived=$(python - <<'PY'
import socket
import sys

from darkroom.settings import SettingsError, load_settings

try:
    s = load_settings()
except SettingsError as e:
    sys.exit(f"darkroom: {e}")
print(f"export AIRFLOW__CORE__DEFAULT_TASK_RETRIES={s.airflow.task_retries}")
print(f"export AIRFLOW__CORE__DEFAULT_TASK_RETRY_DELAY={s.airflow.retry_delay_seconds}")
print(f"container_ip={socket.gethostbyname(socket.gethostname())}")
PY
)
eval "$derived"
export SPARK_LOCAL_HOSTNAME="${SPARK_LOCAL_HOSTNAME:-$container_ip}"
exec "$@"

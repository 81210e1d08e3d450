#!/usr/bin/env bash
# Installs everything darkroom needs on a Debian machine; safe to run any number of times.
#   1. apt packages: a JDK 17 (only when `java` is absent), redis-server, maven (fallback for the Delta jars)
#   2. .venv with the pinned versions (requirements.txt + constraints.txt), re-installed only when those files change
#   3. the Delta jars resolved once from Maven Central into $DARKROOM_STATE_DIR/jars, so no Spark session needs the network
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$here"
state_dir=${DARKROOM_STATE_DIR:-$here/.darkroom}
venv=${DARKROOM_VENV:-$here/.venv}
python=${PYTHON:-python3.11}
mkdir -p "$state_dir"

log() { printf '[bootstrap] %s\n' "$*"; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# --- 1. apt packages ---------------------------------------------------------------------------------------------
apt_missing=()
command -v java >/dev/null 2>&1 || apt_missing+=(openjdk-17-jdk-headless)
command -v redis-server >/dev/null 2>&1 || apt_missing+=(redis-server)
command -v mvn >/dev/null 2>&1 || apt_missing+=(maven)
command -v "$python" >/dev/null 2>&1 || apt_missing+=(python3 python3-venv)
if [ ${#apt_missing[@]} -gt 0 ]; then
  log "apt-get install ${apt_missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  as_root apt-get update -qq
  as_root apt-get install -y -qq --no-install-recommends "${apt_missing[@]}" >/dev/null
  # Debian starts the packaged redis service; darkroom runs its own servers on its own ports.
  if [[ " ${apt_missing[*]} " == *" redis-server "* ]] && command -v systemctl >/dev/null 2>&1; then
    as_root systemctl disable --now redis-server >/dev/null 2>&1 || true
  fi
fi
command -v "$python" >/dev/null 2>&1 || python=python3

# --- 2. the venv -------------------------------------------------------------------------------------------------
stamp="$venv/.darkroom-installed"
want=$(cat requirements.txt constraints.txt pyproject.toml | sha256sum | cut -c1-16)
if [ ! -x "$venv/bin/python" ]; then
  log "creating $venv"
  "$python" -m venv "$venv"
fi
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  log "pip install (pinned by constraints.txt); the first time takes several minutes"
  "$venv/bin/pip" install -q --upgrade pip
  "$venv/bin/pip" install -q -r requirements.txt -c constraints.txt
  "$venv/bin/pip" install -q --no-deps -e .
  echo "$want" > "$stamp"
else
  log "venv up to date ($venv)"
fi

# Every top-level package of the repo (darkroom, jobs, dags, bench, ...) is importable from the venv, including
# packages added after the editable install.
site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "$here" > "$site/darkroom-project.pth"

# --- 3. the Delta jars -------------------------------------------------------------------------------------------
"$venv/bin/python" -m darkroom.jars --state-dir "$state_dir"
log "ready: venv $venv, state $state_dir"

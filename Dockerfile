# The darkroom project image: the pinned Python stack and the project (installed as `make setup` does), a JRE for
# Spark, the Delta jars, and hadoop-aws for an s3a:// lake. Every darkroom service of docker-compose.yml runs it: the
# Spark master and workers (so executors import the project's code), the Airflow components, MLflow, the CLI.
#   docker build -t darkroom:local .        (or: docker compose --env-file deploy/.env build)
FROM python:3.11-slim-bookworm

ARG DARKROOM_UID=50000
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    SPARK_HOME=/usr/local/lib/python3.11/site-packages/pyspark \
    DARKROOM_STATE_DIR=/data/darkroom \
    DARKROOM_JARS_PATH=/opt/darkroom/jars \
    AIRFLOW_HOME=/opt/airflow

# Spark needs a JRE (local set-up installs a JDK only when `java` is absent); procps for Spark's scripts. The JRE's
# install links its man pages, and the slim image has no man folder.
RUN mkdir -p /usr/share/man/man1 \
 && apt-get update \
 && apt-get install -y --no-install-recommends openjdk-17-jre-headless procps \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/darkroom/app

# 1. The pinned stack (a layer that changes only with the pins), as `make setup` installs it, plus what only the
#    stack needs (Postgres drivers, boto3): deploy/requirements-stack.txt.
COPY requirements.txt constraints.txt ./
COPY deploy/requirements-stack.txt deploy/
RUN pip install -r requirements.txt -r deploy/requirements-stack.txt -c constraints.txt

# 2. The Delta jars with the code `make setup` runs (python -m darkroom.jars: Spark's Ivy, Maven Central), into
#    /opt/darkroom/jars (DARKROOM_JARS_PATH); then hadoop-aws of Spark's Hadoop version and its AWS SDK bundle, into
#    Spark's own jars folder (image only: local set-up keeps the lake on local disk).
COPY darkroom/__init__.py darkroom/jars.py darkroom/
COPY deploy/s3a_jars.py deploy/
RUN python -m darkroom.jars --state-dir /opt/darkroom \
 && PYTHONPATH=. python deploy/s3a_jars.py

# 3. The project, installed as `make setup` does: editable, and a .pth so every top-level package (jobs, dags, ...)
#    imports. The state folder is a volume in docker-compose.yml; it starts owned by the darkroom user.
COPY . .
RUN pip install --no-deps -e . \
 && echo /opt/darkroom/app > "$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/darkroom-project.pth" \
 && chmod 0755 deploy/entrypoint.sh deploy/airflow-init.sh \
 && useradd --uid "$DARKROOM_UID" --user-group --create-home darkroom \
 && mkdir -p /data/darkroom /opt/airflow/logs /opt/airflow/auth \
 && chown -R darkroom:darkroom /data/darkroom /opt/airflow

USER darkroom
ENTRYPOINT ["/opt/darkroom/app/deploy/entrypoint.sh"]
CMD ["darkroom", "--help"]

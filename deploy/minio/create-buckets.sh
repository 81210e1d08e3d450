#!/bin/sh
# One-shot (docker-compose.yml's minio-init): the lake's and MLflow's buckets, and darkroom's own access key with
# MinIO's built-in readwrite policy (the root account stays with MinIO and this script). Safe to re-run.
set -eu
mc alias set store http://minio:9000 "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD"
mc mb --ignore-existing "store/$LAKE_BUCKET" "store/$MLFLOW_BUCKET"
mc admin user add store "$S3_ACCESS_KEY" "$S3_SECRET_KEY"
# On a re-run the policy is already attached and attach fails: accept exactly that case.
mc admin policy attach store readwrite --user "$S3_ACCESS_KEY" \
  || mc admin user info store "$S3_ACCESS_KEY" | grep -q readwrite
echo "buckets $LAKE_BUCKET and $MLFLOW_BUCKET ready; access key $S3_ACCESS_KEY has readwrite"

#!/bin/sh
# Stand-in for `minio server ...`: moto's S3 server on :9000 (its arguments are MinIO's, ignored).
exec /opt/venv/bin/moto_server -H 0.0.0.0 -p 9000

#!/usr/bin/env bash
# infra/smoke.sh: build the images with podman, start the whole stack from them (Redis, an S3
# server, the auth and jobs functions, a CPU worker, the nginx gateway) and run the README's
# quick start against it, verbatim but for the base URL. Prints the image sizes and the SRT.
#
#   infra/smoke.sh                 # build, run, clean up
#   SKIP_BUILD=1 infra/smoke.sh    # run the images already built
#
# Where base registries are out of reach, BASE_IMAGE names a local Debian base; when it does
# not exist yet it is made with debootstrap (bookworm, the same Python 3.11 as python:3.11-slim).
# BUILD_ARGS / BUILD_VOLUMES pass more to `podman build` (a local package index, say):
#   BUILD_VOLUMES="-v /opt/wheels:/opt/wheels:ro" BUILD_ARGS="--build-arg PIP_FIND_LINKS=/opt/wheels"
# Containers share the host's network (ports below), so no container DNS or bridge is needed.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BASE_IMAGE=${BASE_IMAGE:-localhost/debian:bookworm}
PREFIX=${PREFIX:-localhost/whisper-api}
REDIS_PORT=${REDIS_PORT:-16379} S3_PORT=${S3_PORT:-19000}
AUTH_PORT=${AUTH_PORT:-18081} JOBS_PORT=${JOBS_PORT:-18082} LONG_PORT=${LONG_PORT:-18083} GATEWAY_PORT=${GATEWAY_PORT:-18080}
BUILD=(podman build --isolation=chroot --network=host --build-arg "BASE_IMAGE=$BASE_IMAGE")
# shellcheck disable=SC2206  # deliberately split: extra flags from the caller
BUILD+=(${BUILD_VOLUMES:-} ${BUILD_ARGS:-})
# Rootless or sandboxed engines may refuse to raise limits past the caller's: ask for modest ones.
LIMITS=(--ulimit nofile=1024:1024 --ulimit nproc=1024:1024)
RUN=(podman run -d --network=host "${LIMITS[@]}")
WORK=$(mktemp -d /tmp/whisper-smoke.XXXXXX)  # mktemp's template, not a placeholder
# shellcheck source=infra/quickstart.sh
. "$ROOT/infra/quickstart.sh"
STARTED=()

say() { printf '\n== %s\n' "$*"; }

cleanup() {
  for name in "${STARTED[@]}"; do podman rm -f "$name" >/dev/null 2>&1 || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

make_base() {
  podman image exists "$BASE_IMAGE" && return
  say "making $BASE_IMAGE with debootstrap"
  debootstrap --variant=minbase bookworm "$WORK/rootfs" http://deb.debian.org/debian >/dev/null
  tar -C "$WORK/rootfs" -c . | podman import - "$BASE_IMAGE" >/dev/null
  rm -rf "$WORK/rootfs"
}

build() {
  say "building images from $BASE_IMAGE"
  "${BUILD[@]}" -f "$ROOT/infra/docker/Dockerfile.api" --target api -t "$PREFIX/api:local" "$ROOT"
  "${BUILD[@]}" -f "$ROOT/infra/docker/Dockerfile.worker" -t "$PREFIX/worker:cpu" "$ROOT"
  "${BUILD[@]}" -f "$ROOT/infra/docker/Dockerfile.smoke" -t "$PREFIX/smoke-deps:local" "$ROOT"
}

start() {  # start NAME [PODMAN-OPTION...] -- IMAGE [ARG...]: a detached container on the host network
  local name=smoke-$1 options=()
  shift
  while [ "$1" != -- ]; do options+=("$1"); shift; done
  shift
  podman rm -f "$name" >/dev/null 2>&1 || true
  "${RUN[@]}" --name "$name" "${ENV_ARGS[@]}" "${options[@]}" "$@" >/dev/null
  STARTED+=("$name")
}

wait_http() {  # wait_http URL: until it answers (60 s)
  for _ in $(seq 1 120); do
    curl -s -o /dev/null "$1" && return
    sleep 0.5
  done
  echo "nothing answered at $1" >&2
  return 1
}

[ -n "${SKIP_BUILD:-}" ] || { make_base; build; }

say "image sizes"
podman image ls --format '{{.Repository}}:{{.Tag}}  {{.Size}}' | grep -E "^$PREFIX/(api|worker)"

mkdir -p "$WORK/models" && chmod 777 "$WORK/models"
ENV_ARGS=(
  -e ENVIRONMENT=development -e LOG_LEVEL=INFO -e LOG_FORMAT=json
  -e "REDIS_URL=redis://127.0.0.1:$REDIS_PORT/0"
  -e "S3_ENDPOINT_URL=http://127.0.0.1:$S3_PORT" -e S3_BUCKET=whisper-api -e S3_INBOX_BUCKET=whisper-inbox
  -e AWS_ACCESS_KEY_ID=smoke -e AWS_SECRET_ACCESS_KEY=smoke-secret -e AWS_REGION=us-east-1
  -e "JWT_SECRET=$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')"
  -e WHISPER_DEFAULT_MODEL=demo -e WHISPER_DEVICE=cpu -e WHISPER_MODEL_DIR=/models
  -v "$WORK/models:/models"
)

say "starting Redis, S3, the functions, a CPU worker and the gateway"
start redis -- "$PREFIX/smoke-deps:local" redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --appendonly yes --dir /tmp
start s3 -- "$PREFIX/smoke-deps:local" /opt/venv/bin/python -m moto.server -H 127.0.0.1 -p "$S3_PORT"
wait_http "http://127.0.0.1:$S3_PORT/"
# The demo checkpoint is made by the development tools, which the images do not carry.
"$ROOT/.venv/bin/whisper-api" models demo "$WORK/models/demo.pt"
chmod 644 "$WORK/models/demo.pt"
podman run --rm --network=host "${LIMITS[@]}" "${ENV_ARGS[@]}" "$PREFIX/worker:cpu" sh -c '
  python -c "
from shared.core.settings import StorageSettings
from shared.core.storage import BlobStore
s = StorageSettings()
for bucket in (s.s3_bucket, s.s3_inbox_bucket):
    BlobStore(s, bucket).ensure_bucket()
"'
for fn in auth jobs; do
  port=AUTH_PORT; [ "$fn" = jobs ] && port=JOBS_PORT
  start "$fn" -- "$PREFIX/api:local" gunicorn --bind "127.0.0.1:${!port}" --workers 1 --threads 8 \
    --worker-class functions.gateway.ProblemWorker "functions.gateway:${fn}_app"
done
start jobs-long -e REDIS_MAX_CONNECTIONS=4096 -- "$PREFIX/api:local" gunicorn --bind "127.0.0.1:$LONG_PORT" --workers 1 \
  --worker-connections 4096 --worker-class functions.long_answers.LongAnswerWorker functions.gateway:app
sed -e "s|http://auth:8080|http://127.0.0.1:$AUTH_PORT|; s|http://jobs:8080|http://127.0.0.1:$JOBS_PORT|" \
    -e "s|http://jobs-long:8080|http://127.0.0.1:$LONG_PORT|" \
    -e "s|listen 8080;|listen $GATEWAY_PORT;|; /resolver \${NGINX_LOCAL_RESOLVERS}/d; s|/var/log/nginx/access.log|/dev/stdout|" \
    -e "s|/var/log/nginx/error.log|/dev/stderr|" "$ROOT/infra/gateway/nginx.conf" > "$WORK/nginx.conf"
start gateway -v "$WORK/nginx.conf:/smoke/nginx.conf:ro" -- "$PREFIX/smoke-deps:local" nginx -c /smoke/nginx.conf -g 'daemon off;'
BASE="http://127.0.0.1:$GATEWAY_PORT"
wait_http "$BASE/health"
curl -s "$BASE/health"; echo

# The CPU worker image runs either engine (WHISPER_ENGINE): the quick start once with each.
for engine in ${ENGINES:-openai-whisper faster-whisper}; do
  say "the README quick start against $BASE, a CPU worker with WHISPER_ENGINE=$engine"
  start worker -e "WHISPER_ENGINE=$engine" -- "$PREFIX/worker:cpu" whisper-api worker
  quick_start "$WORK/qs" smoke-jobs "$BASE"
  curl -s "$BASE/health"; echo
  podman rm -f smoke-worker >/dev/null
done

say "request ids and metrics through the gateway"
curl -s -D - -o /dev/null -H 'X-Request-ID: smoke-1' "$BASE/health" | grep -i '^x-request-id'
curl -s "http://127.0.0.1:$JOBS_PORT/metrics" | grep -E '^whisper_jobs_total|^whisper_workers_live'
say "smoke test passed"

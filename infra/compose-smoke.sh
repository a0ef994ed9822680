#!/usr/bin/env bash
# infra/compose-smoke.sh: run docker-compose.yml itself with podman-compose and the README's quick
# start against it (verbatim but for the base URL), then take the stack down again.
#
#   infra/smoke.sh && infra/compose-smoke.sh     # smoke.sh builds the project's images
#
# Needs podman (with CNI or netavark networking and its DNS plugin) and podman-compose
# (PODMAN_COMPOSE, default: podman-compose on PATH). Where the compose file's third-party images
# (Redis, nginx, MinIO, mc) cannot be pulled, stand-ins from infra/compose-smoke/ are built under
# their names: Debian's redis-server and nginx (with the nginx image's template and resolver
# rendering), moto's S3 server for MinIO, and an mc that covers `ready`, `alias set` and `mb`
# (its admin and event commands are skipped, so the app user's policy and storage events are
# not exercised). BUILD_VOLUMES / BUILD_ARGS pass more to `podman build`, as for smoke.sh.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
COMPOSE=${PODMAN_COMPOSE:-podman-compose}
PROJECT=${PROJECT:-whisper-smoke}
GATEWAY_PORT=${GATEWAY_PORT:-18090}
BASE="http://127.0.0.1:$GATEWAY_PORT"
BUILD=(podman build --isolation=chroot --network=host)
# shellcheck disable=SC2206  # deliberately split: extra flags from the caller
BUILD+=(${BUILD_VOLUMES:-} ${BUILD_ARGS:-})
WORK=$(mktemp -d /tmp/whisper-compose-smoke.XXXXXX)  # mktemp's template, not a placeholder
# shellcheck source=infra/quickstart.sh
. "$ROOT/infra/quickstart.sh"

say() { printf '\n== %s\n' "$*"; }

pc() {  # podman-compose on this project, with the limits this kind of sandbox needs
  "$COMPOSE" -p "$PROJECT" -f "$ROOT/docker-compose.yml" --env-file "$WORK/.env" \
    --podman-run-args="--ulimit nofile=1024:1024 --ulimit nproc=1024:1024" "$@"
}

down() {  # the project's containers and volumes, gone
  pc down -v >/dev/null 2>&1 || true
  podman volume ls -q | grep "^${PROJECT}_" | xargs -r podman volume rm -f >/dev/null || true
}

cleanup() {  # KEEP=1 leaves the stack up (and its .env in the printed folder) to look into
  if [ -n "${KEEP:-}" ]; then echo "left up; env file: $WORK/.env"; return; fi
  down
  rm -rf "$WORK"
}
trap cleanup EXIT

image_of() {  # image_of SERVICE: the image docker-compose.yml names for it
  awk -v s="  $1:" '$0 == s {f=1; next} f && /^  [a-z]/ {exit} f && $1 == "image:" {print $2; exit}' \
    "$ROOT/docker-compose.yml"
}

stand_in() {  # stand_in SERVICE DIR: build DIR under the service's image name unless it exists
  local image
  image=$(image_of "$1")
  case "$image" in */*/*) ;; */*) image="docker.io/$image" ;; *) image="docker.io/library/$image" ;; esac
  if podman image exists "$image"; then return; fi
  say "no $image here: building the stand-in infra/compose-smoke/$2"
  "${BUILD[@]}" -t "$image" "$ROOT/infra/compose-smoke/$2" >/dev/null
}

for image in whisper-api/api:local whisper-api/worker:cpu; do
  podman image exists "localhost/$image" || { echo "build the images first (infra/smoke.sh)" >&2; exit 1; }
done
stand_in redis redis
stand_in gateway nginx
stand_in minio minio
stand_in minio-init minio

say "a .env from .env.example, every change-me value replaced"
python3 - "$ROOT/.env.example" "$WORK/.env" "$GATEWAY_PORT" <<'EOF'
import re, secrets, sys
source, target, port = sys.argv[1:]
lines = [re.sub(r"change-me[\w-]*", lambda _: secrets.token_hex(20), line)
         for line in open(source).read().splitlines() if not line.startswith("REDIS_URL=")]
lines += ["WHISPER_MODELS=demo,base", "WHISPER_DEFAULT_MODEL=demo", f"GATEWAY_PORT={port}",
          "MINIO_API_PORT=19190", "MINIO_CONSOLE_PORT=19191"]
open(target, "w").write("\n".join(lines) + "\n")
EOF

down  # what an earlier run left
say "the demo checkpoint into the models volume"
mkdir -p "$WORK/models"
"$ROOT/.venv/bin/whisper-api" models demo "$WORK/models/demo.pt"
chmod 644 "$WORK/models/demo.pt"
podman volume create "${PROJECT}_models" >/dev/null
podman run --rm --ulimit nofile=1024:1024 --ulimit nproc=1024:1024 -v "${PROJECT}_models:/models" \
  -v "$WORK/models:/src:ro" localhost/whisper-api/worker:cpu cp /src/demo.pt /models/

say "podman-compose up (podman 4.3: the one-shot first, then the rest without dependencies)"
pc up -d redis minio-init
pc up -d --no-deps auth jobs worker gateway
for _ in $(seq 1 120); do
  curl -s "$BASE/health" | grep -q '"live": 1' && break
  sleep 1
done
curl -s "$BASE/health"; echo

say "the README quick start against $BASE"
quick_start "$WORK/qs" "${PROJECT}_jobs_1" "$BASE" | tee "$WORK/srt"
grep -q "The quick brown fox." "$WORK/srt"
podman logs "${PROJECT}_worker_1" 2>&1 | grep -m1 "started:"
say "compose smoke test passed"

# Sourced by infra/smoke.sh and infra/compose-smoke.sh (ROOT set): the README's quick start.

quick_start() {  # quick_start DIR CONTAINER BASE: the block run in DIR, verbatim but for the base URL
  # The block calls .venv/bin/whisper-api; here that is the CLI inside the jobs CONTAINER.
  mkdir -p "$1/.venv/bin"
  printf '#!/bin/sh\nexec podman exec %s whisper-api "$@"\n' "$2" > "$1/.venv/bin/whisper-api"
  chmod +x "$1/.venv/bin/whisper-api"
  local block
  block=$(awk '/^## Quick start/{q=1} q&&/^```sh$/{f=1;next} f&&/^```$/{exit} f' "$ROOT/README.md")
  (cd "$1" && timeout 300 bash -euo pipefail -c "${block//http:\/\/127.0.0.1:8080/$3}")
}

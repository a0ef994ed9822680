#!/usr/bin/env bash
# Offline checks of everything that deploys whisper-api (tests/infra: cfn-lint on template.yaml,
# Compose and Kubernetes schemas and rules, the overlays and components rendered, Knative,
# nginx -t, the settings every file shares). `make test` runs them with the rest; alone:
#   infra/check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=python3
[[ -x .venv/bin/python ]] && PY=.venv/bin/python
exec "$PY" -m pytest -q tests/infra "$@"

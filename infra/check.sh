#!/usr/bin/env bash
# Offline checks of everything that deploys whisper-api; CI runs it, and so can you:
#   infra/check.sh
# Needs (pip): cfn-lint, pyyaml, jsonschema, check-jsonschema (its vendored Compose
# Specification schema), kubernetes-validate (its bundled Kubernetes schemas).
# Exits non-zero if any check fails; every check runs either way.
set -uo pipefail

cd "$(dirname "$0")/.."

if [[ -x .venv/bin/python ]]; then
    PY=.venv/bin/python
else
    PY=python3
fi

if [[ -x .venv/bin/cfn-lint ]]; then
    CFN_LINT=(.venv/bin/cfn-lint)
elif command -v cfn-lint >/dev/null; then
    CFN_LINT=(cfn-lint)
else
    CFN_LINT=("$PY" -m cfnlint)
fi

status=0

echo "== template.yaml (cfn-lint $("${CFN_LINT[@]}" --version 2>/dev/null | awk '{print $2}'))"
if "${CFN_LINT[@]}" template.yaml; then
    echo "ok    template.yaml: cfn-lint, zero findings"
else
    echo "FAIL  template.yaml: cfn-lint findings above"
    status=1
fi

echo "== docker-compose.yml, infra/k8s, settings, Dockerfiles ($PY)"
if ! "$PY" -c "import yaml, jsonschema, check_jsonschema, kubernetes_validate" 2>/dev/null; then
    echo "FAIL  missing Python packages: pip install pyyaml jsonschema check-jsonschema kubernetes-validate"
    exit 1
fi
"$PY" infra/check_infra.py || status=1

if [[ $status -eq 0 ]]; then
    echo "== all infra checks passed"
else
    echo "== infra checks FAILED"
fi
exit $status

"""Offline checks of infra/knative (``tests/infra/test_deploy_files.py`` runs them).

The Knative kinds have no schemas in ``kubernetes-validate``, so each is checked against a schema
written here from the Knative API reference (serving.knative.dev/v1 Service,
eventing.knative.dev/v1 Broker and Trigger, eventing-redis's sources.knative.dev/v1alpha1
RedisStreamSource), closed to unknown fields so a misspelt one fails. A Service's pod spec is
Kubernetes' own PodSpec plus Knative's revision fields: the revision fields are checked here, the
rest against the Kubernetes PodSpec schema. Then the project's own rules: the HTTP functions
scale to zero with ``containerConcurrency`` = ``THREADS`` x ``WORKERS``, the Trigger delivers to
the transcribe Service, and the webhook dispatcher runs on its own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parents[1]
KNATIVE_DIR = ROOT / "infra" / "knative"

_DURATION = {"type": "string", "pattern": r"^P(T(\d+H)?(\d+M)?(\d+(\.\d+)?S)?)$"}
_NAME = {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 63}
_META = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": _NAME,
        "namespace": _NAME,
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
    "additionalProperties": False,
}
_REF = {
    "type": "object",
    "required": ["apiVersion", "kind", "name"],
    "properties": {
        "apiVersion": {"type": "string"},
        "kind": {"type": "string"},
        "name": _NAME,
        "namespace": _NAME,
    },
    "additionalProperties": False,
}
_DESTINATION = {
    "type": "object",
    "minProperties": 1,
    "properties": {"ref": _REF, "uri": {"type": "string"}},
    "additionalProperties": False,
}
_DELIVERY = {
    "type": "object",
    "properties": {
        "retry": {"type": "integer", "minimum": 0},
        "backoffPolicy": {"enum": ["linear", "exponential"]},
        "backoffDelay": _DURATION,
        "timeout": _DURATION,
        "deadLetterSink": _DESTINATION,
    },
    "additionalProperties": False,
}
#: autoscaling.knative.dev annotations the manifests may use, with the form of their values.
_AUTOSCALING = {
    "autoscaling.knative.dev/min-scale": r"^\d+$",
    "autoscaling.knative.dev/max-scale": r"^\d+$",
    "autoscaling.knative.dev/target": r"^\d+(\.\d+)?$",
    "autoscaling.knative.dev/target-utilization-percentage": r"^\d+(\.\d+)?$",
    "autoscaling.knative.dev/scale-to-zero-pod-retention-period": r"^\d+(s|m|h)$",
    "autoscaling.knative.dev/window": r"^\d+(s|m)$",
}
_REVISION_FIELDS = {
    "containerConcurrency": {"type": "integer", "minimum": 0, "maximum": 1000},
    "timeoutSeconds": {"type": "integer", "minimum": 0},
    "responseStartTimeoutSeconds": {"type": "integer", "minimum": 0},
    "idleTimeoutSeconds": {"type": "integer", "minimum": 0},
}


def _resource(spec: dict[str, Any], spec_required: bool = True) -> dict[str, Any]:
    """A whole object: apiVersion, kind, metadata and ``spec``, nothing else."""
    return {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", *(["spec"] if spec_required else [])],
        "properties": {"apiVersion": {}, "kind": {}, "metadata": _META, "spec": spec},
        "additionalProperties": False,
    }


SCHEMAS: dict[tuple[str, str], dict[str, Any]] = {
    ("serving.knative.dev/v1", "Service"): _resource(
            {
                "type": "object",
                "required": ["template"],
                "properties": {
                    "template": {
                        "type": "object",
                        "required": ["spec"],
                        "properties": {
                            "metadata": {
                                "type": "object",
                                "properties": {
                                    "annotations": {
                                        "type": "object",
                                        "propertyNames": {"enum": list(_AUTOSCALING)},
                                        "additionalProperties": {"type": "string"},
                                    },
                                    "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                                },
                                "additionalProperties": False,
                            },
                            "spec": {
                                "type": "object", "required": ["containers"], "properties": _REVISION_FIELDS,
                            },
                        },
                        "additionalProperties": False,
                    },
                    "traffic": {"type": "array"},
                },
                "additionalProperties": False,
            },
        ),
    ("eventing.knative.dev/v1", "Broker"): _resource(
            {
                "type": "object",
                "properties": {"config": _REF, "delivery": _DELIVERY},
                "additionalProperties": False,
            },
            spec_required=False,
        ),
    ("eventing.knative.dev/v1", "Trigger"): _resource(
            {
                "type": "object",
                "required": ["broker", "subscriber"],
                "properties": {
                    "broker": _NAME,
                    "filter": {
                        "type": "object",
                        "properties": {
                            "attributes": {"type": "object", "additionalProperties": {"type": "string"}},
                        },
                        "additionalProperties": False,
                    },
                    "subscriber": _DESTINATION,
                    "delivery": _DELIVERY,
                },
                "additionalProperties": False,
            },
        ),
    ("sources.knative.dev/v1alpha1", "RedisStreamSource"): _resource(
            {
                "type": "object",
                "required": ["address", "stream", "sink"],
                "properties": {
                    "address": {"type": "string", "pattern": r"^[^:/\s]+:\d+$"},
                    "stream": {"type": "string", "minLength": 1},
                    "group": {"type": "string"},
                    "consumers": {"type": "integer", "minimum": 1},
                    "sink": _DESTINATION,
                    "dialOptions": {"type": "object"},
                    "ceOverrides": {"type": "object"},
                },
                "additionalProperties": False,
            },
        ),
}  # fmt: skip


def documents() -> list[tuple[str, Any]]:
    return [
        (path.name, doc)
        for path in sorted(KNATIVE_DIR.glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc
    ]


def _pod_problems(where: str, spec: dict[str, Any], k8s_version: str) -> list[str]:
    """The revision's pod spec, less Knative's own fields, against Kubernetes' PodSpec (which
    wants container names: Knative names an unnamed container itself)."""
    pod_spec = {k: v for k, v in spec.items() if k not in _REVISION_FIELDS}
    pod_spec["containers"] = [{"name": "user-container", **c} for c in pod_spec.get("containers", [])]
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "revision"}, "spec": pod_spec}
    try:
        kubernetes_validate.validate(pod, k8s_version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return [f"{where}: pod spec: {'/'.join(map(str, exc.path))}: {exc.message}"]
    return []


def schema_problems(k8s_version: str) -> list[str]:
    problems = []
    for name, doc in documents():
        where = f"infra/knative/{name} {doc.get('kind')}/{(doc.get('metadata') or {}).get('name')}"
        schema = SCHEMAS.get((doc.get("apiVersion"), doc.get("kind")))
        if schema is None:
            try:
                kubernetes_validate.validate(doc, k8s_version, strict=True)
            except (kubernetes_validate.ValidationError, kubernetes_validate.SchemaNotFoundError) as exc:
                problems.append(f"{where}: {exc}")
            continue
        errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(doc), key=lambda e: list(e.path))
        problems += [f"{where}: {'/'.join(map(str, e.path)) or '<root>'}: {e.message}" for e in errors]
        if doc["kind"] == "Service" and not errors:
            problems += _pod_problems(where, doc["spec"]["template"]["spec"], k8s_version)
    for schema in SCHEMAS.values():
        jsonschema.Draft202012Validator.check_schema(schema)
    return problems


def rule_problems() -> list[str]:
    docs = [doc for _, doc in documents()]
    by_kind: dict[str, dict[str, Any]] = {}
    for doc in docs:
        by_kind.setdefault(doc["kind"], {})[doc["metadata"]["name"]] = doc
    services = by_kind.get("Service", {})
    problems = []
    for name in ("auth", "jobs", "transcribe"):
        if name not in services:
            problems.append(f"no Knative Service {name}")
            continue
        template = services[name]["spec"]["template"]
        env = {e["name"]: e.get("value") for e in template["spec"]["containers"][0].get("env", [])}
        threads = int(env.get("THREADS") or 0) * int(env.get("WORKERS") or 1)
        if template["spec"].get("containerConcurrency") != threads:
            problems.append(f"Service/{name}: containerConcurrency is not THREADS x WORKERS ({threads})")
        if (
            template.get("metadata", {}).get("annotations", {}).get("autoscaling.knative.dev/min-scale")
            != "0"
        ):
            problems.append(f"Service/{name}: does not scale to zero")
    for name, trigger in by_kind.get("Trigger", {}).items():
        ref = trigger["spec"]["subscriber"].get("ref", {})
        if ref.get("kind") == "Service" and ref.get("name") not in services:
            problems.append(f"Trigger/{name}: no Service {ref.get('name')}")
        if trigger["spec"]["broker"] not in by_kind.get("Broker", {}):
            problems.append(f"Trigger/{name}: no Broker {trigger['spec']['broker']}")
    for name, source in by_kind.get("RedisStreamSource", {}).items():
        ref = source["spec"]["sink"].get("ref", {})
        if ref.get("kind") == "Broker" and ref.get("name") not in by_kind.get("Broker", {}):
            problems.append(f"RedisStreamSource/{name}: no Broker {ref.get('name')}")
        if source["spec"]["stream"] != "{jobs}":
            problems.append(f"RedisStreamSource/{name}: not on the jobs stream")
    dispatcher = by_kind.get("Deployment", {}).get("webhooks")
    if dispatcher is None or dispatcher["spec"]["template"]["spec"]["containers"][0]["command"] != [
        "whisper-api",
        "webhooks",
    ]:
        problems.append("no Deployment/webhooks running `whisper-api webhooks`")
    return problems

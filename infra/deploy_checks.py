"""Offline checks of the deployment files, each a function that lists the problems it finds;
``tests/infra/test_deploy_files.py`` runs them (``make test``, ``infra/check.sh``).

- ``docker-compose.yml``: interpolated against ``.env.example`` the way Compose does, then
  validated against the Compose Specification schema (the copy vendored in the
  ``check-jsonschema`` package, so no network), plus the rules this project relies on.
- ``infra/k8s/**.yaml``: every document has apiVersion, kind and metadata.name; built-in kinds
  validate against the Kubernetes schemas bundled in ``kubernetes-validate``; names that refer
  to each other (Service -> Deployment, Ingress -> Service, ScaledObject -> Deployment,
  Secret and ConfigMap keys) resolve.
- ``.env.example``, compose, the k8s config and ``template.yaml`` use the same variable names.
- Files the Dockerfiles and compose point at exist.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import jsonpatch
import jsonschema
import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parents[1]
K8S_DIR = ROOT / "infra" / "k8s"
#: Kubernetes version the manifests are validated against (kubernetes-validate bundles it).
K8S_VERSION = "1.33.0"

#: The settings every deployment file must set: the service cannot run without them.
#: (Every other setting has a working default; each must still be documented, see below.)
CORE_SETTINGS = (
    "REDIS_URL", "S3_ENDPOINT_URL", "S3_BUCKET", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
    "AWS_REGION", "JWT_SECRET", "JWT_ISSUER", "JWT_AUDIENCE", "JWT_TTL_SECONDS", "MAX_UPLOAD_BYTES",
    "WHISPER_MODELS", "WHISPER_MODEL_DIR", "WHISPER_DEFAULT_MODEL", "WHISPER_DEVICE",
    "WORKER_MODEL_CACHE_SIZE", "WORKER_HEARTBEAT_SECONDS", "LOG_LEVEL", "ENVIRONMENT",
)  # fmt: skip
#: Not in template.yaml: Lambda reserves the AWS_* names, and these others are worker-only.
NOT_IN_SAM = {
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION", "WHISPER_MODEL_DIR",
    "WHISPER_DEVICE", "WORKER_MODEL_CACHE_SIZE",
    "WEBHOOK_RETRY_SCHEDULE", "WEBHOOK_TIMEOUT_SECONDS",
}  # fmt: skip
#: Names deployment files may set that are not service settings (infrastructure's own).
INFRA_VARIABLES = {
    "REDIS_PASSWORD", "REDISCLI_AUTH", "S3_INBOX_BUCKET", "PORT", "MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD",
}  # fmt: skip


def code_settings() -> set[str]:
    """Every environment variable the service reads, from the settings classes themselves."""
    from shared.core import settings

    classes = (settings.AuthSettings, settings.JobsSettings, settings.WorkerSettings)
    classes += (settings.RealtimeSettings, settings.GatewaySettings)
    return {name.upper() for cls in classes for name in cls.model_fields}


#: Compose must refuse to start without these (a ${VAR:?} guard).
GUARDED_SECRETS = {
    "REDIS_PASSWORD", "JWT_SECRET", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "STORAGE_HOOK_TOKEN",
    "MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD",
}  # fmt: skip


# ---- Compose interpolation ------------------------------------------------------------------

_VAR = re.compile(
    r"\$(?:(?P<escaped>\$)"
    r"|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>(?:[^{}]|\{[^{}]*\})*))?\}"
    r"|(?P<named>[A-Za-z_][A-Za-z0-9_]*))"
)


class MissingVariable(ValueError):
    """A ``${VAR:?message}`` whose variable is unset (or empty, with the colon)."""


def read_dotenv(path: Path) -> dict[str, str]:
    """KEY=VALUE lines as Compose reads them; comments, blanks and surrounding quotes dropped."""
    env: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.removeprefix("export ").partition("=")
        if not sep:
            raise ValueError(f"{path.name}: not KEY=VALUE: {line!r}")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        env[key.strip()] = value
    return env


def interpolate(text: str, env: dict[str, str]) -> str:
    """Resolve ``$VAR``, ``${VAR}``, ``${VAR:-d}``, ``${VAR-d}``, ``${VAR:?e}``, ``${VAR?e}``,
    ``${VAR:+r}``, ``${VAR+r}`` and ``$$`` as the Compose Specification defines them."""

    def resolve(m: re.Match[str]) -> str:
        if m["escaped"]:
            return "$"
        name = m["braced"] or m["named"]
        op, arg = m["op"], interpolate(m["arg"] or "", env)
        value = env.get(name)
        present = value is not None and (value != "" or not (op or "").startswith(":"))
        if op in (":-", "-"):
            return value if present else arg  # type: ignore[return-value]
        if op in (":?", "?"):
            if not present:
                raise MissingVariable(f"{name}: {arg}")
            return value  # type: ignore[return-value]
        if op in (":+", "+"):
            return arg if present else ""
        return value or ""

    return _VAR.sub(resolve, text)


def interpolate_tree(node: Any, env: dict[str, str]) -> Any:
    """Interpolate every string value; keys are left alone, as Compose does."""
    if isinstance(node, dict):
        return {key: interpolate_tree(value, env) for key, value in node.items()}
    if isinstance(node, list):
        return [interpolate_tree(item, env) for item in node]
    if isinstance(node, str):
        return interpolate(node, env)
    return node


def guarded_variables(text: str) -> set[str]:
    """Names that carry a ``:?``/``?`` guard anywhere in the file."""
    return {m["braced"] for m in _VAR.finditer(text) if (m["op"] or "").endswith("?")}


# ---- Compose ------------------------------------------------------------------------------


def compose_schema() -> dict[str, Any]:
    """The Compose Specification schema vendored (from SchemaStore) in check-jsonschema."""
    vendor = resources.files("check_jsonschema.builtin_schemas.vendor")
    schema: dict[str, Any] = json.loads(vendor.joinpath("compose-spec.json").read_text())
    return schema


def schema_problems(document: Any, schema: dict[str, Any]) -> list[str]:
    validator_cls = jsonschema.validators.validator_for(schema)
    validator_cls.check_schema(schema)
    errors = sorted(validator_cls(schema).iter_errors(document), key=lambda e: list(e.path))
    return [f"{'/'.join(map(str, e.path)) or '<root>'}: {e.message}" for e in errors]


def compose_rules(compose: dict[str, Any]) -> list[str]:
    """What this project relies on beyond the schema."""
    services: dict[str, Any] = compose.get("services", {})
    problems = []
    if "ports" in services.get("redis", {}):
        problems.append("redis publishes ports: it must only be reachable on the compose network")
    for name, service in services.items():
        one_shot = service.get("restart") == "no"
        if not one_shot and "healthcheck" not in service:
            problems.append(f"{name}: long-running service without a healthcheck")
        depends = service.get("depends_on", {})
        if isinstance(depends, list):
            problems.append(f"{name}: depends_on without conditions (use the long form)")
            continue
        for dep, spec in depends.items():
            condition = spec.get("condition")
            if condition not in ("service_healthy", "service_completed_successfully"):
                problems.append(f"{name} -> {dep}: condition {condition!r}")
            if condition == "service_healthy" and "healthcheck" not in services.get(dep, {}):
                problems.append(f"{name} -> {dep}: waits for health that {dep} never reports")
    if _gpu_devices(services):
        problems.append("worker: reserves a GPU in docker-compose.yml (that is docker-compose.gpu.yml's job)")
    if "models:/models:ro" not in services.get("jobs", {}).get("volumes", []):
        problems.append("jobs: the models volume is not mounted read-only at /models")
    minio = services.get("minio", {}).get("environment", {})
    app_key = services.get("worker", {}).get("environment", {}).get("AWS_ACCESS_KEY_ID")
    if minio.get("MINIO_ROOT_USER") == app_key:
        problems.append("minio: the app's S3 key is MinIO's root user")
    if "localstack" not in services.get("localstack", {}).get("profiles", []):
        problems.append("localstack: must stay behind the `localstack` profile")
    return problems


def _gpu_devices(services: dict[str, Any]) -> list[Any]:
    devices: list[Any] = (
        services.get("worker", {}).get("deploy", {}).get("resources", {})
        .get("reservations", {}).get("devices", [])
    )  # fmt: skip
    return [d for d in devices if "gpu" in d.get("capabilities", [])]


def gpu_override_problems(schema: dict[str, Any]) -> list[str]:
    """docker-compose.gpu.yml: a valid Compose file giving the worker a GPU and CUDA torch."""
    override = yaml.safe_load((ROOT / "docker-compose.gpu.yml").read_text())
    problems = schema_problems(override, schema)
    worker = override.get("services", {}).get("worker", {})
    if not _gpu_devices(override.get("services", {})):
        problems.append("worker: no GPU device reservation")
    if "+cpu" in str(worker.get("build", {}).get("args", {}).get("TORCH_VERSION", "+cpu")):
        problems.append("worker: TORCH_VERSION is not a CUDA build")
    return problems


def compose_files_exist(compose: dict[str, Any]) -> list[str]:
    """Dockerfiles and bind-mounted files named by compose exist in the repository."""
    problems = []
    for name, service in compose.get("services", {}).items():
        build = service.get("build")
        if isinstance(build, dict) and "dockerfile" in build:
            dockerfile = ROOT / build.get("context", ".") / build["dockerfile"]
            if not dockerfile.is_file():
                problems.append(f"{name}: no {dockerfile.relative_to(ROOT)}")
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0] if isinstance(volume, str) else ""
            if source.startswith(".") and not (ROOT / source).exists():
                problems.append(f"{name}: bind mount source {source} does not exist")
    return problems


# ---- Kubernetes ---------------------------------------------------------------------------


def k8s_documents() -> Iterator[tuple[str, int, Any]]:
    """(file, index, document) for every manifest under infra/k8s, recursively: the base and the
    example Secret, not the kustomizations and overlays (rendered and checked on their own)."""
    for path in sorted([*K8S_DIR.rglob("*.yaml"), *K8S_DIR.rglob("*.yml")]):
        if path.name == "kustomization.yaml" or "overlays" in path.relative_to(K8S_DIR).parts:
            continue
        for index, doc in enumerate(yaml.safe_load_all(path.read_text())):
            if doc is not None:
                yield str(path.relative_to(ROOT)), index, doc


def identity_problems(docs: list[tuple[str, int, Any]]) -> list[str]:
    problems = []
    for where, index, doc in docs:
        if not isinstance(doc, dict):
            problems.append(f"{where}#{index}: not a mapping")
            continue
        name = (doc.get("metadata") or {}).get("name")
        for field, value in (
            ("apiVersion", doc.get("apiVersion")),
            ("kind", doc.get("kind")),
            ("metadata.name", name),
        ):
            if not isinstance(value, str) or not value:
                problems.append(f"{where}#{index}: missing {field}")
    return problems


def k8s_schema_problems(docs: list[tuple[str, int, Any]]) -> tuple[list[str], list[str]]:
    """Schema problems, and the kinds left unchecked (CRDs such as KEDA's have no bundled schema)."""
    problems, unchecked = [], []
    for where, index, doc in docs:
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            unchecked.append(f"{doc.get('apiVersion')}/{doc.get('kind')}")
        except kubernetes_validate.ValidationError as exc:
            path = "/".join(map(str, exc.path))
            problems.append(f"{where}#{index} {doc['kind']}/{doc['metadata']['name']}: {path}: {exc.message}")
    return problems, sorted(set(unchecked))


def _by_kind(docs: list[tuple[str, int, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for _, _, d in docs if d.get("kind") == kind}


def _containers(deployment: dict[str, Any]) -> list[dict[str, Any]]:
    return list(deployment["spec"]["template"]["spec"].get("containers", []))


def reference_problems(docs: list[tuple[str, int, Any]]) -> list[str]:
    """Names that point at other objects resolve, so a rename cannot half-happen."""
    deployments = _by_kind(docs, "Deployment")
    services = _by_kind(docs, "Service")
    secrets = {
        n: {**d.get("data", {}), **d.get("stringData", {})} for n, d in _by_kind(docs, "Secret").items()
    }
    configmaps = _by_kind(docs, "ConfigMap")
    problems = []
    for name, dep in deployments.items():
        labels = dep["spec"]["template"]["metadata"].get("labels", {})
        if not dep["spec"]["selector"]["matchLabels"].items() <= labels.items():
            problems.append(f"Deployment/{name}: selector does not match its pod labels")
        for container in _containers(dep):
            for source in container.get("envFrom", []):
                ref = source.get("configMapRef", {}).get("name")
                if ref and ref not in configmaps:
                    problems.append(f"Deployment/{name}: no ConfigMap {ref}")
            for var in container.get("env", []):
                ref = (var.get("valueFrom") or {}).get("secretKeyRef")
                if ref and ref.get("key") not in secrets.get(ref["name"], {}):
                    problems.append(
                        f"Deployment/{name}: {var['name']} -> secret "
                        f"{ref['name']}/{ref.get('key')} not in the example Secret"
                    )
    for name, svc in services.items():
        selector = svc["spec"].get("selector", {}).items()
        if not any(
            selector <= d["spec"]["template"]["metadata"]["labels"].items() for d in deployments.values()
        ):
            problems.append(f"Service/{name}: selector matches no Deployment")
    for route in _by_kind(docs, "HTTPRoute").values():
        for rule in route["spec"].get("rules", []):
            for ref in rule.get("backendRefs", []):
                if ref["name"] not in services:
                    problems.append(f"HTTPRoute/{route['metadata']['name']}: no Service {ref['name']}")
    for _, _, ing in ((w, i, d) for w, i, d in docs if d.get("kind") == "Ingress"):
        for rule in ing["spec"].get("rules", []):
            for path in rule.get("http", {}).get("paths", []):
                target = path["backend"]["service"]["name"]
                if target not in services:
                    problems.append(f"Ingress/{ing['metadata']['name']}: no Service {target}")
    for kind in ("ScaledObject", "HorizontalPodAutoscaler"):
        for name, obj in _by_kind(docs, kind).items():
            target = obj["spec"]["scaleTargetRef"]["name"]
            if target not in deployments:
                problems.append(f"{kind}/{name}: no Deployment {target}")
    return problems


def keda_problems(docs: list[tuple[str, int, Any]], scaler: str = "redis-streams") -> list[str]:
    """The worker scales on the `{jobs}` stream / `workers` group, pending-entries mode included,
    with ``scaler`` (KEDA's scaler for the Redis kind: single, Sentinel or Cluster)."""
    triggers = [
        t
        for so in _by_kind(docs, "ScaledObject").values()
        for t in so["spec"].get("triggers", [])
        if t.get("type") == scaler
    ]
    if len(triggers) != sum(
        len(so["spec"].get("triggers", [])) for so in _by_kind(docs, "ScaledObject").values()
    ):
        return [f"a ScaledObject trigger that is not {scaler}"]
    on_stream = [
        t["metadata"]
        for t in triggers
        if t["metadata"].get("stream") == "{jobs}" and t["metadata"].get("consumerGroup") == "workers"
    ]
    if not any("pendingEntriesCount" in m for m in on_stream):
        return [f"no {scaler} trigger on stream {{jobs}} / group workers with pendingEntriesCount"]
    return []


def worker_gpu_problems(docs: list[tuple[str, int, Any]]) -> list[str]:
    worker = _by_kind(docs, "Deployment").get("worker")
    if worker is None:
        return ["no Deployment/worker"]
    limits = [c.get("resources", {}).get("limits", {}) for c in _containers(worker)]
    volumes = worker["spec"]["template"]["spec"].get("volumes", [])
    problems = []
    if not any(str(lim.get("nvidia.com/gpu")) == "1" for lim in limits):
        problems.append("worker: no nvidia.com/gpu: 1 limit")
    if not any("persistentVolumeClaim" in v for v in volumes):
        problems.append("worker: no model PVC")
    return problems


#: The Redis kinds as kustomize components, and KEDA's scaler for each (the base: redis-streams).
REDIS_COMPONENTS = {"redis-sentinel": "redis-sentinel-streams", "redis-cluster": "redis-cluster-streams"}


def _redis_component_problems(name: str, scaler: str) -> list[str]:
    rendered = render_kustomization(K8S_DIR / "overlays" / "cpu", (f"../../components/{name}",))
    problems = keda_problems([("", 0, d) for d in rendered], scaler)
    for so in [d for d in rendered if d["kind"] == "ScaledObject"]:
        problems += [
            f"{t['name']}: no addresses" for t in so["spec"]["triggers"] if not t["metadata"].get("addresses")
        ]
    return problems


# ---- kustomize overlays (CPU and GPU workers) ------------------------------------------------


def render_kustomization(directory: Path, components: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """The subset of kustomize the overlays use (resources, components, images, JSON 6902
    patches through ``jsonpatch``), so the check needs no kubectl; where kubectl is installed,
    its rendering must agree (``overlay_problems``). ``components``: more of them, as if the
    kustomization listed them too."""
    spec = yaml.safe_load((directory / "kustomization.yaml").read_text())
    docs: list[dict[str, Any]] = []
    for resource in spec.get("resources", []):
        path = (directory / resource).resolve()
        if path.is_dir():
            docs += render_kustomization(path)
        else:
            docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    for component in [*spec.get("components", []), *components]:
        # A component adds its resources, then patches everything rendered so far.
        docs += render_kustomization((directory / component).resolve())
        _apply_patches(docs, yaml.safe_load(((directory / component) / "kustomization.yaml").read_text()))
    for image in spec.get("images", []):
        for doc in docs:
            pod = doc.get("spec", {}).get("template", {}).get("spec", {})
            for container in [*pod.get("containers", []), *pod.get("initContainers", [])]:
                name, _, tag = container["image"].rpartition(":")
                if name == image["name"]:
                    container["image"] = f"{image.get('newName', name)}:{image.get('newTag', tag)}"
    if spec.get("kind") != "Component":  # a component's patches apply where it is used
        _apply_patches(docs, spec)
    return docs


def _apply_patches(docs: list[dict[str, Any]], spec: dict[str, Any]) -> None:
    for patch in spec.get("patches", []):
        target = patch["target"]
        for doc in docs:
            if doc["kind"] == target["kind"] and doc["metadata"]["name"] == target["name"]:
                jsonpatch.apply_patch(doc, yaml.safe_load(patch["patch"]), in_place=True)


def overlay_problems(name: str) -> list[str]:
    """An overlay renders, its documents validate, and its worker is the variant it claims."""
    directory = K8S_DIR / "overlays" / name
    docs = render_kustomization(directory)
    problems, _ = k8s_schema_problems([(f"overlays/{name}", i, d) for i, d in enumerate(docs)])
    kubectl = shutil.which("kubectl")
    if kubectl:
        out = subprocess.run(
            [kubectl, "kustomize", str(directory)], capture_output=True, text=True, check=False
        )
        theirs = sorted((d["kind"], d["metadata"]["name"], json.dumps(d, sort_keys=True))
                        for d in yaml.safe_load_all(out.stdout) if d)  # fmt: skip
        ours = sorted((d["kind"], d["metadata"]["name"], json.dumps(d, sort_keys=True)) for d in docs)
        if out.returncode or theirs != ours:
            problems.append(
                f"kubectl kustomize renders overlays/{name} differently: {out.stderr.strip()[:200]}"
            )
    worker = _by_kind([("", 0, d) for d in docs], "Deployment")["worker"]
    limits = _containers(worker)[0]["resources"]["limits"]
    env = {e["name"]: e.get("value") for e in _containers(worker)[0].get("env", [])}
    gpu = str(limits.get("nvidia.com/gpu")) == "1"
    if (name == "gpu") != gpu:
        problems.append(f"overlays/{name}: worker GPU limit is {limits.get('nvidia.com/gpu')}")
    if name == "cpu" and env.get("WHISPER_DEVICE") != "cpu":
        problems.append("overlays/cpu: worker does not set WHISPER_DEVICE=cpu")
    if not all(c["image"].endswith(f"-{'cuda' if gpu else 'cpu'}") for c in _containers(worker)):
        problems.append(f"overlays/{name}: worker image is not the {name} build")
    return problems


# ---- names shared across files ------------------------------------------------------------


def _app_variable_names(compose: dict[str, Any], docs: list[tuple[str, int, Any]]) -> dict[str, set[str]]:
    """Variable names each deployment file hands to the service's own processes."""
    app_services = ("auth", "jobs", "worker")
    in_compose = {
        name
        for service, spec in compose.get("services", {}).items()
        if service in app_services
        for name in (spec.get("environment") or {})
    }
    in_k8s: set[str] = set()
    for _, _, doc in docs:
        if isinstance(doc, dict) and doc.get("kind") in ("ConfigMap", "Secret"):
            in_k8s |= {*doc.get("data", {}), *doc.get("stringData", {})}
    sam_text = (ROOT / "template.yaml").read_text()
    in_sam = set(re.findall(r"^\s+([A-Z][A-Z0-9_]+): ", sam_text, re.MULTILINE))
    return {"docker-compose.yml": in_compose, "infra/k8s": in_k8s, "template.yaml": in_sam}


def settings_problems(env: dict[str, str], docs: list[tuple[str, int, Any]]) -> list[str]:
    """Documented, set where needed, and never misspelled: each setting the code reads is in
    .env.example and the configuration page (docs/configuration.md); the core ones are set by
    every deployment file; and every name a deployment file sets is one the code reads."""
    known = code_settings()
    configuration = (ROOT / "docs" / "configuration.md").read_text()
    compose = interpolate_tree(yaml.safe_load((ROOT / "docker-compose.yml").read_text()), env)
    used = _app_variable_names(compose, docs)
    problems = [f"{name}: missing from .env.example" for name in sorted(known - set(env))]
    problems += [f"{name}: not in the configuration table (docs/configuration.md)" for name in sorted(known)
                 if f"`{name}`" not in configuration]  # fmt: skip
    for where, names in used.items():
        for name in sorted(names - known - INFRA_VARIABLES):
            problems.append(f"{name}: set by {where} but not read by the service (typo?)")
        needed = set(CORE_SETTINGS) - (NOT_IN_SAM if where == "template.yaml" else set())
        for name in sorted(needed - names):
            problems.append(f"{name}: not set by {where}")
    return problems


# ---- Dockerfiles and scripts --------------------------------------------------------------


def dockerfile_problems() -> list[str]:
    """Files COPY'd from the build context exist (a typo otherwise surfaces only at build)."""
    problems = []
    for dockerfile in sorted((ROOT / "infra" / "docker").glob("Dockerfile*")):
        for line in dockerfile.read_text().splitlines():
            parts = line.split()
            if not parts or parts[0].upper() != "COPY" or any(p.startswith("--from") for p in parts):
                continue
            for source in (p for p in parts[1:-1] if not p.startswith("--")):
                if not (ROOT / source).exists():
                    problems.append(f"{dockerfile.name}: COPY source {source} does not exist")
    return problems


#: Scripts an image runs from a mounted file, which it skips unless the file is executable.
HOOKS = (
    ROOT / "infra" / "localstack" / "init-s3.sh",  # LocalStack's ready hook
    ROOT / "infra" / "gateway" / "first-resolver.envsh",  # the nginx image's entrypoint
)


def script_problems() -> list[str]:
    problems = []
    for hook in HOOKS:
        if not os.access(hook, os.X_OK):
            problems.append(f"{hook.relative_to(ROOT)}: not executable (the image skips it)")
        result = subprocess.run(["sh", "-n", str(hook)], capture_output=True, text=True, check=False)
        if result.returncode:
            problems.append(f"{hook.relative_to(ROOT)}: {result.stderr.strip()}")
    return problems + resolver_problems()


def resolver_problems() -> list[str]:
    """first-resolver.envsh on podman-style resolv.conf files: only the first nameserver (the
    one that knows the services' names), IPv6 in brackets. The script is sourced from a copy
    that reads a test file instead of /etc/resolv.conf."""
    script = HOOKS[1].read_text()
    cases = ((["10.89.1.1", "10.255.255.53"], "10.89.1.1"), (["fd00::1"], "[fd00::1]"))
    problems = []
    with tempfile.TemporaryDirectory() as tmp:
        resolv, hook = Path(tmp) / "resolv.conf", Path(tmp) / "hook.sh"
        hook.write_text(script.replace("/etc/resolv.conf", str(resolv)))
        for servers, wanted in cases:
            resolv.write_text("search dns.podman\n" + "".join(f"nameserver {a}\n" for a in servers))
            got = subprocess.run(
                ["sh", "-c", f'. {hook} && printf %s "$NGINX_LOCAL_RESOLVERS"'],
                capture_output=True,
                text=True,
                check=False,
            ).stdout
            if got != wanted:
                problems.append(f"first-resolver.envsh: {got!r} for {servers}, not {wanted!r}")
    return problems


def nginx_problems() -> list[str]:
    """``nginx -t`` on the gateway config, rendered as the nginx image renders it
    (docker-compose.yml: the container's nameserver)."""
    nginx = shutil.which("nginx")
    if nginx is None:
        return ["nginx is not installed (make install installs nginx-light)"]
    template = (ROOT / "infra" / "gateway" / "nginx.conf").read_text()
    problems = [] if "${NGINX_LOCAL_RESOLVERS}" in template else ["no ${NGINX_LOCAL_RESOLVERS} resolver"]
    with tempfile.TemporaryDirectory() as tmp:
        conf = Path(tmp) / "nginx.conf"
        conf.write_text(template.replace("${NGINX_LOCAL_RESOLVERS}", "127.0.0.11"))
        result = subprocess.run(
            [nginx, "-t", "-q", "-c", str(conf)], capture_output=True, text=True, check=False
        )
    return problems + ([result.stderr.strip()] if result.returncode else [])

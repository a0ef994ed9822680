"""Every file that deploys whisper-api, checked offline (``infra/deploy_checks.py``,
``infra/check_bodies.py``, ``infra/check_knative.py``): Compose, Kubernetes and its overlays and
components, Knative, SAM, the gateway's nginx.conf, the Dockerfiles and the settings they share.
Each check lists the problems it finds; a test passes when the list is empty."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from infra import check_bodies, check_knative
from infra import deploy_checks as checks

ROOT = checks.ROOT


@pytest.fixture(scope="module")
def env() -> dict[str, str]:
    return checks.read_dotenv(ROOT / ".env.example")


@pytest.fixture(scope="module")
def compose(env: dict[str, str]) -> dict[str, Any]:
    """docker-compose.yml interpolated against .env.example, the way Compose does."""
    text = (ROOT / "docker-compose.yml").read_text()
    return checks.interpolate_tree(yaml.safe_load(text), env)  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def k8s() -> list[tuple[str, int, Any]]:
    docs = list(checks.k8s_documents())
    assert docs, "no manifests under infra/k8s"
    assert checks.identity_problems(docs) == []
    return docs


# ---- SAM --------------------------------------------------------------------------------------


def test_template_yaml_has_no_cfn_lint_findings() -> None:
    cfn_lint = Path(sys.executable).parent / "cfn-lint"
    result = subprocess.run(
        [str(cfn_lint), str(ROOT / "template.yaml")], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


# ---- Compose ----------------------------------------------------------------------------------


def test_compose_refuses_to_start_without_its_secrets() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    assert checks.GUARDED_SECRETS - checks.guarded_variables(text) == set()


def test_compose_matches_the_compose_specification(compose: dict[str, Any]) -> None:
    assert checks.schema_problems(compose, checks.compose_schema()) == []


def test_compose_rules_redis_healthchecks_cpu_worker_models_minio_profiles(compose: dict[str, Any]) -> None:
    assert checks.compose_rules(compose) == []


def test_the_gpu_override_reserves_a_gpu_and_builds_cuda_torch() -> None:
    assert checks.gpu_override_problems(checks.compose_schema()) == []


def test_compose_dockerfiles_and_mounted_files_exist(compose: dict[str, Any]) -> None:
    assert checks.compose_files_exist(compose) == []


# ---- Kubernetes -------------------------------------------------------------------------------


def test_k8s_built_in_kinds_match_the_kubernetes_schemas(k8s: list[tuple[str, int, Any]]) -> None:
    problems, unchecked = checks.k8s_schema_problems(k8s)
    assert problems == []
    # Custom resources have no schema in kubernetes-validate: these, and no built-in kind
    assert sorted(unchecked) == [
        "gateway.envoyproxy.io/v1alpha1/BackendTrafficPolicy",
        "gateway.networking.k8s.io/v1/Gateway",
        "gateway.networking.k8s.io/v1/HTTPRoute",
        "gateway.nginx.org/v1alpha1/ClientSettingsPolicy",
        "keda.sh/v1alpha1/ScaledObject",
        "keda.sh/v1alpha1/TriggerAuthentication",
    ]


def test_k8s_references_resolve(k8s: list[tuple[str, int, Any]]) -> None:
    assert checks.reference_problems(k8s) == []


def test_k8s_keda_scales_workers_on_the_jobs_stream(k8s: list[tuple[str, int, Any]]) -> None:
    assert checks.keda_problems(k8s) == []


def test_k8s_worker_has_a_gpu_limit_and_the_model_pvc(k8s: list[tuple[str, int, Any]]) -> None:
    assert checks.worker_gpu_problems(k8s) == []


@pytest.mark.parametrize("overlay", ["cpu", "gpu"])
def test_an_overlay_renders_validates_and_has_its_worker(overlay: str) -> None:
    assert checks.overlay_problems(overlay) == []


@pytest.mark.parametrize("name,scaler", sorted(checks.REDIS_COMPONENTS.items()))
def test_a_redis_component_renders_with_its_keda_scaler(name: str, scaler: str) -> None:
    assert checks._redis_component_problems(name, scaler) == []


# ---- request body limits, the same at every edge ----------------------------------------------


def test_nginx_gives_the_upload_routes_the_upload_limit_and_the_rest_the_small_one() -> None:
    small, big = check_bodies.expected_limits()
    assert check_bodies.nginx_problems(small, big) == []


def test_the_uploads_httproute_holds_exactly_the_upload_routes(k8s: list[tuple[str, int, Any]]) -> None:
    assert check_bodies.route_problems([doc for _, _, doc in k8s]) == []


@pytest.mark.parametrize("name", sorted(check_bodies.COMPONENT_CHECKS))
def test_a_gateway_component_gives_each_route_nginx_confs_limit(name: str) -> None:
    small, big = check_bodies.expected_limits()
    rendered = checks.render_kustomization(checks.K8S_DIR / "overlays" / "cpu", (f"../../components/{name}",))
    assert check_bodies.component_problems(name, rendered, small, big) == []


# ---- what the files share ---------------------------------------------------------------------


def test_settings_are_documented_set_where_needed_and_never_misspelt(
    env: dict[str, str], k8s: list[tuple[str, int, Any]]
) -> None:
    assert checks.settings_problems(env, k8s) == []


def test_dockerfile_copy_sources_exist() -> None:
    assert checks.dockerfile_problems() == []


def test_mounted_hook_scripts_are_executable_valid_sh_and_pick_the_first_resolver() -> None:
    assert checks.script_problems() == []


def test_the_gateway_nginx_conf_passes_nginx_t() -> None:
    assert checks.nginx_problems() == []


# ---- Knative ----------------------------------------------------------------------------------


def test_knative_documents_match_their_schemas() -> None:
    assert check_knative.schema_problems(checks.K8S_VERSION) == []


def test_knative_rules_scale_to_zero_concurrency_trigger_dispatcher() -> None:
    assert check_knative.rule_problems() == []

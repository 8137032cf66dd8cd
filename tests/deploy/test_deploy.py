"""Deployment files stay valid and in step with the code and with each other.

Checks every YAML and JSON file under deploy/ parses; that deploy/serve_config.yaml and
the RayService's serveConfigV2 are valid Serve configs running the same application, whose
import path imports, with Ray Serve's gRPC proxy off (the ingress replicas serve gRPC
themselves; a proxy on the same port would take a share of their connections); that the
settings files validate as ``ServerSettings`` and agree on ports with the Serve configs,
the pod specs and the gRPC Service; that the ingress's custom resources pin it to the
head, which the gRPC Service selects, and let it keep a Decompose batch at every model
replica; that the PodMonitor scrapes a named container port of the Ray pods; and that
every metric the Grafana dashboard queries is one the service exports through Ray.
No cluster, no Ray instance: ``python -m pytest tests/deploy``.
"""

from __future__ import annotations

import importlib
import json
import re
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from saeserve.server.app import APP_NAME, deployment_name
from saeserve.server.settings import ServerSettings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
YAML_FILES = sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yaml", ".yml"))
JSON_FILES = sorted(DEPLOY.rglob("*.json"))
HISTOGRAM_SERIES_SUFFIXES = ("_bucket", "_sum", "_count")


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _kind(path: Path, kind: str) -> dict[str, Any]:
    (doc,) = [d for d in _docs(path) if d.get("kind") == kind]
    return doc


def _app(config: dict[str, Any]) -> dict[str, Any]:
    (app,) = [a for a in config["applications"] if a["name"] == APP_NAME]
    return app


@pytest.fixture(scope="module")
def serve_config() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "serve_config.yaml").read_text())


@pytest.fixture(scope="module")
def rayservice() -> dict[str, Any]:
    return _kind(DEPLOY / "k8s" / "rayservice.yaml", "RayService")


@pytest.fixture(scope="module")
def serve_config_v2(rayservice: dict[str, Any]) -> dict[str, Any]:
    text = rayservice["spec"]["serveConfigV2"]
    assert isinstance(text, str), "serveConfigV2 must be a YAML string"
    return yaml.safe_load(text)


@pytest.fixture(scope="module")
def configmap() -> dict[str, Any]:
    return _kind(DEPLOY / "k8s" / "settings-configmap.yaml", "ConfigMap")


@pytest.fixture(scope="module")
def local_settings(serve_config: dict[str, Any]) -> ServerSettings:
    path = DEPLOY / _app(serve_config)["args"]["config"]  # read relative to the config's folder
    assert path.is_file(), path
    return ServerSettings.model_validate(yaml.safe_load(path.read_text()) or {})


@pytest.fixture(scope="module")
def cluster_settings(configmap: dict[str, Any]) -> ServerSettings:
    return ServerSettings.model_validate(yaml.safe_load(configmap["data"]["settings.yaml"]))


@pytest.fixture(scope="module")
def grpc_service() -> dict[str, Any]:
    (service,) = [
        d
        for d in _docs(DEPLOY / "k8s" / "rayservice.yaml")
        if d.get("kind") == "Service" and d["metadata"]["name"] == "saeserve-grpc"
    ]
    return service


def _pod_specs(rayservice: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(group name, group spec, pod template) for the head group and each worker group."""
    cluster = rayservice["spec"]["rayClusterConfig"]
    yield "head", cluster["headGroupSpec"], cluster["headGroupSpec"]["template"]
    for group in cluster["workerGroupSpecs"]:
        yield group["groupName"], group, group["template"]


def _head_spec(rayservice: dict[str, Any]) -> dict[str, Any]:
    return rayservice["spec"]["rayClusterConfig"]["headGroupSpec"]


def _custom_resources(params: dict[str, str]) -> dict[str, float]:
    """The custom resources a group's rayStartParams give its pods.

    KubeRay wants ``resources`` as a quoted JSON string with escaped quotes,
    ``'"{\\"name\\": 1}"'`` in YAML, which is a JSON string literal holding the JSON object.
    """
    if "resources" not in params:
        return {}
    inner = json.loads(params["resources"])
    assert isinstance(inner, str), "resources must be a quoted, escaped JSON object"
    resources = json.loads(inner)
    assert isinstance(resources, dict)
    return resources


def _ray_container(template: dict[str, Any]) -> dict[str, Any]:
    return template["spec"]["containers"][0]  # KubeRay: the Ray container comes first


def _ports(template: dict[str, Any]) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in _ray_container(template).get("ports", [])}


def _import(path: str) -> Any:
    module, sep, attr = path.partition(":")
    if not sep:
        module, _, attr = path.rpartition(".")
    return getattr(importlib.import_module(module), attr)


# --- every file parses ------------------------------------------------------------------------


def test_deploy_has_the_expected_files() -> None:
    names = {p.relative_to(DEPLOY).as_posix() for p in [*YAML_FILES, *JSON_FILES]}
    assert {
        "serve_config.yaml",
        "settings.yaml",
        "k8s/rayservice.yaml",
        "k8s/settings-configmap.yaml",
        "prometheus/podmonitor.yaml",
        "grafana/saeserve-dashboard.json",
    } <= names


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: p.relative_to(DEPLOY).as_posix())
def test_yaml_parses(path: Path) -> None:
    docs = _docs(path)
    assert docs and all(isinstance(d, dict) for d in docs)


@pytest.mark.parametrize("path", JSON_FILES, ids=lambda p: p.relative_to(DEPLOY).as_posix())
def test_json_parses(path: Path) -> None:
    with path.open() as f:
        assert isinstance(json.load(f), dict)


# --- the Serve application -------------------------------------------------------------------


def test_serve_configs_are_valid_serve_deploy_configs(
    serve_config: dict[str, Any], serve_config_v2: dict[str, Any]
) -> None:
    for config in (serve_config, serve_config_v2):
        ServeDeploySchema.model_validate(config)


def test_rayservice_runs_the_same_application(
    serve_config: dict[str, Any], serve_config_v2: dict[str, Any]
) -> None:
    local, cluster = _app(serve_config), _app(serve_config_v2)
    assert [a["name"] for a in serve_config_v2["applications"]] == [APP_NAME]
    for key in ("name", "import_path", "route_prefix"):
        assert cluster.get(key) == local.get(key), key
    assert set(cluster["args"]) == set(local["args"])
    assert serve_config_v2["http_options"]["port"] == serve_config["http_options"]["port"]
    assert serve_config_v2["proxy_location"] == serve_config["proxy_location"]


def test_serve_grpc_proxy_is_off(
    serve_config: dict[str, Any], serve_config_v2: dict[str, Any]
) -> None:
    """The ingress replicas bind grpc_port themselves; Serve's gRPC proxy must not start."""
    for config in (serve_config, serve_config_v2):
        assert "grpc_options" not in config


def test_every_named_import_path_imports(
    serve_config: dict[str, Any], serve_config_v2: dict[str, Any]
) -> None:
    paths = {a["import_path"] for c in (serve_config, serve_config_v2) for a in c["applications"]}
    assert paths
    for path in sorted(paths):
        assert callable(_import(path)), path


def test_deployment_overrides_name_deployments_the_app_builds(
    serve_config_v2: dict[str, Any], cluster_settings: ServerSettings
) -> None:
    built = {deployment_name(m.name) for m in cluster_settings.models} | {"SaeserveIngress"}
    overrides = {d["name"] for d in _app(serve_config_v2).get("deployments", [])}
    assert overrides <= built, (
        f"Serve refuses overrides of unknown deployments: {overrides - built}"
    )


# --- settings --------------------------------------------------------------------------------


def test_local_settings_validate_and_match_serve_config(
    serve_config: dict[str, Any], local_settings: ServerSettings
) -> None:
    assert local_settings.http_port == serve_config["http_options"]["port"]


def test_cluster_settings_match_serve_config_and_pods(
    serve_config_v2: dict[str, Any], rayservice: dict[str, Any], cluster_settings: ServerSettings
) -> None:
    assert cluster_settings.http_port == serve_config_v2["http_options"]["port"]
    assert all(str(m.path).startswith("/models/") for m in cluster_settings.models)
    for group, spec, template in _pod_specs(rayservice):
        ports = _ports(template)
        assert ports.get("serve") == cluster_settings.http_port, group
        assert ports.get("metrics") == cluster_settings.metrics_port, group
        params = spec["rayStartParams"]
        assert params.get("metrics-export-port") == str(cluster_settings.metrics_port), group


def test_head_exposes_the_grpc_port_and_the_grpc_service_targets_it(
    rayservice: dict[str, Any],
    grpc_service: dict[str, Any],
    local_settings: ServerSettings,
    cluster_settings: ServerSettings,
) -> None:
    assert local_settings.grpc_port == cluster_settings.grpc_port  # docs/deploy.md: 9000 both
    head = _ports(_head_spec(rayservice)["template"])
    named = [n for n, p in head.items() if p == cluster_settings.grpc_port]
    assert named == ["grpc"], f"head container ports on {cluster_settings.grpc_port}: {named}"
    # KubeRay copies `serve-*` ports onto the serve Service, which selects the workers.
    assert not named[0].startswith("serve")
    (port,) = grpc_service["spec"]["ports"]
    assert port["port"] == cluster_settings.grpc_port
    assert head[port["targetPort"]] == cluster_settings.grpc_port


def test_ingress_resources_pin_the_ingress_to_the_head(
    rayservice: dict[str, Any], cluster_settings: ServerSettings
) -> None:
    """The gRPC port is served where the ingress replicas run: only on the head."""
    wanted = cluster_settings.ingress_resources
    assert wanted, "without ingress_resources the ingress may land on any node"
    head = _custom_resources(_head_spec(rayservice)["rayStartParams"])
    for name, amount in wanted.items():
        assert name in head, f"the head provides no {name!r}"
        # every ingress replica fits on the one head
        assert cluster_settings.ingress_replicas * amount <= head[name], name
    for group, spec, _ in _pod_specs(rayservice):
        if group != "head":
            assert not wanted.keys() & _custom_resources(spec["rayStartParams"]).keys(), group


def test_every_model_replica_gets_a_decompose_batch(
    serve_config_v2: dict[str, Any], cluster_settings: ServerSettings
) -> None:
    """Each ingress keeps at most max_decompose_batches_in_flight batches at a model;
    fewer than its replicas would leave the extra replicas idle for Decompose."""
    in_flight = cluster_settings.limits.max_decompose_batches_in_flight or cluster_settings.replicas
    for deployment in _app(serve_config_v2).get("deployments", []):
        most = deployment.get("autoscaling_config", {}).get("max_replicas", 0)
        assert in_flight >= most, deployment["name"]


def test_every_pod_mounts_the_model_folders(
    rayservice: dict[str, Any], cluster_settings: ServerSettings
) -> None:
    """Model replicas read the weights; the ingress (on the head) reads the tokenizers."""
    for group, _, template in _pod_specs(rayservice):
        mounts = [PurePosixPath(m["mountPath"]) for m in _ray_container(template)["volumeMounts"]]
        for model in cluster_settings.models:
            path = PurePosixPath(str(model.path))
            assert any(path.is_relative_to(m) for m in mounts), (group, str(path))


def test_every_pod_mounts_the_settings_file_serve_reads(
    serve_config_v2: dict[str, Any], rayservice: dict[str, Any], configmap: dict[str, Any]
) -> None:
    config = PurePosixPath(_app(serve_config_v2)["args"]["config"])
    assert config.is_absolute()
    assert config.name in configmap["data"]
    for group, _, template in _pod_specs(rayservice):
        volumes = {v["name"]: v for v in template["spec"]["volumes"]}
        mounts = {m["mountPath"]: m["name"] for m in _ray_container(template)["volumeMounts"]}
        volume = volumes[mounts[str(config.parent)]]
        assert volume["configMap"]["name"] == configmap["metadata"]["name"], group


# --- the Ray cluster -------------------------------------------------------------------------


def test_head_runs_no_replicas_and_workers_have_gpus(
    rayservice: dict[str, Any], serve_config_v2: dict[str, Any], cluster_settings: ServerSettings
) -> None:
    cluster = rayservice["spec"]["rayClusterConfig"]
    assert cluster["enableInTreeAutoscaling"] is True
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    gpu_capacity = 0
    for group in cluster["workerGroupSpecs"]:
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        limits = _ray_container(group["template"])["resources"]["limits"]
        gpu_capacity += group["maxReplicas"] * int(limits["nvidia.com/gpu"])
    assert gpu_capacity > 0
    for deployment in _app(serve_config_v2).get("deployments", []):
        scaling = deployment.get("autoscaling_config", {})
        if "max_replicas" in scaling:  # every replica the Serve autoscaler may ask for fits
            assert scaling["max_replicas"] * cluster_settings.num_gpus <= gpu_capacity


def test_kubernetes_string_maps_hold_strings(
    rayservice: dict[str, Any], configmap: dict[str, Any]
) -> None:
    """The API server rejects `num-cpus: 0` or `value: 1`: these maps take strings only."""
    maps: list[dict[str, Any]] = [configmap["data"], rayservice["metadata"]["labels"]]
    for _, spec, template in _pod_specs(rayservice):
        maps += [spec["rayStartParams"], template["metadata"]["labels"]]
        maps += [{e["name"]: e["value"]} for e in _ray_container(template)["env"] if "value" in e]
    for mapping in maps:
        for key, value in mapping.items():
            assert isinstance(value, str), f"{key}: {value!r} is not a string"


def test_every_pod_gets_the_api_keys_from_a_secret(rayservice: dict[str, Any]) -> None:
    for group, _, template in _pod_specs(rayservice):
        env = {e["name"]: e for e in _ray_container(template)["env"]}
        assert "secretKeyRef" in env["SAESERVE_API_KEYS"]["valueFrom"], group


def test_grpc_service_selects_the_head_only(
    rayservice: dict[str, Any], grpc_service: dict[str, Any]
) -> None:
    selector = grpc_service["spec"]["selector"]
    assert not any(k.startswith("ray.io/") for k in selector), "select by the templates' labels"
    for group, _, template in _pod_specs(rayservice):
        selected = selector.items() <= template["metadata"]["labels"].items()
        assert selected == (group == "head"), group


# --- monitoring ------------------------------------------------------------------------------


def test_podmonitor_scrapes_a_named_port_of_every_ray_pod(rayservice: dict[str, Any]) -> None:
    monitor = _kind(DEPLOY / "prometheus" / "podmonitor.yaml", "PodMonitor")
    selector = monitor["spec"]["selector"]["matchLabels"]
    own = {k: v for k, v in selector.items() if not k.startswith("ray.io/")}  # KubeRay sets those
    for endpoint in monitor["spec"]["podMetricsEndpoints"]:
        for group, _, template in _pod_specs(rayservice):
            assert endpoint["port"] in _ports(template), group
            assert own.items() <= template["metadata"]["labels"].items(), group


def exported_name(name: str) -> str:
    """The name Ray's metrics endpoint gives an application metric recorded as ``name``.

    Ray 2.60 prefixes every ``ray.util.metrics`` metric with its namespace ``ray_`` (the
    OpenTelemetry recorder and the older OpenCensus exporter alike); a counter whose name
    lacks ``_total`` also gets that suffix (all of ours end in ``_total`` already), and a
    histogram is exported as ``NAME_bucket``, ``NAME_sum`` and ``NAME_count``.
    """
    return f"ray_{name}"


def test_ray_still_prefixes_application_metrics_with_ray() -> None:
    from ray._private.telemetry.open_telemetry_metric_recorder import NAMESPACE

    from saeserve.server.metrics import METRIC_NAMES, RAY_METRIC_NAMES

    assert NAMESPACE == "ray"
    assert sorted(exported_name(n) for n in METRIC_NAMES) == sorted(RAY_METRIC_NAMES)


def _queries(node: Any) -> Iterator[str]:
    """Every PromQL string in a Grafana dashboard: panel targets and templating queries."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("expr", "query", "definition") and isinstance(value, str):
                yield value
            else:
                yield from _queries(value)
    elif isinstance(node, list):
        for item in node:
            yield from _queries(item)


_IDENTIFIER = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')


def queried_metrics(expr: str) -> set[str]:
    """Names of saeserve metrics in a PromQL expression (label values are skipped)."""
    bare = _STRING.sub('""', expr)
    return {t for t in _IDENTIFIER.findall(bare) if t.startswith(("saeserve_", "ray_saeserve_"))}


def _series_of(name: str, exported: set[str]) -> bool:
    if name in exported:
        return True
    return any(
        name.endswith(s) and name.removesuffix(s) in exported for s in HISTOGRAM_SERIES_SUFFIXES
    )


def test_dashboard_queries_only_exported_metrics() -> None:
    from saeserve.server.metrics import METRIC_NAMES

    exported = {exported_name(n) for n in METRIC_NAMES}
    dashboard = json.loads((DEPLOY / "grafana" / "saeserve-dashboard.json").read_text())
    queried = set().union(*(queried_metrics(q) for q in _queries(dashboard)))
    assert queried, "the dashboard queries no saeserve metric"
    unknown = sorted(q for q in queried if not _series_of(q, exported))
    assert not unknown, f"not exported by the service: {unknown}"
    charted = {q.removesuffix(s) for q in queried for s in HISTOGRAM_SERIES_SUFFIXES} | queried
    assert not exported - charted, f"exported but not charted: {sorted(exported - charted)}"


def test_metric_name_extraction_skips_label_values() -> None:
    expr = 'sum by (rpc) (rate(ray_saeserve_x_bucket{app="saeserve_y", code!="OK"}[5m]))'
    assert queried_metrics(expr) == {"ray_saeserve_x_bucket"}


# --- the image -------------------------------------------------------------------------------


def test_dockerfile_installs_the_package_with_the_pinned_torch() -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    pyproject = (ROOT / "pyproject.toml").read_text()
    (torch_pin,) = re.findall(r'"(torch==[^"]+)"', pyproject)
    assert f'"{torch_pin}"' in dockerfile
    assert '".[server]"' in dockerfile
    for line in dockerfile.splitlines():
        if line.startswith("COPY") and "--from" not in line:
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), source

"""Deployment files stay valid and in step with the code and with each other.

Checks every YAML and JSON file under deploy/ parses; that deploy/serve_config.yaml and
the RayService's serveConfigV2 are valid Serve configs running the same application, whose
import path imports, with Ray Serve's gRPC proxy off (the ingress replicas serve gRPC
themselves; a proxy on the same port would take a share of their connections); that the
settings files validate as ``ServerSettings``, bind loopback locally and every interface
in the cluster, and agree on ports with the Serve configs, the pod specs and the API
Service; that the ingress's custom resources pin it to the ingress pods, which the API
Service selects, and let it keep a Decompose batch at every model replica; that every pod
runs as the image's non-root user with no privileges, mounts a memory /dev/shm and has
probes on the service's health that cannot stall KubeRay; that the NetworkPolicy keeps
Ray's ports inside the cluster; that the image is built from registry packages only; that
the PodMonitor scrapes a named container port of the Ray pods; and that every metric the
Grafana dashboard queries is one the service exports through Ray.
test_k8s_schemas.py validates the manifests against the Kubernetes and CRD schemas.
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
def api_service() -> dict[str, Any]:
    (service,) = [
        d
        for d in _docs(DEPLOY / "k8s" / "rayservice.yaml")
        if d.get("kind") == "Service" and d["metadata"]["name"] == "saeserve"
    ]
    return service


@pytest.fixture(scope="module")
def network_policy() -> dict[str, Any]:
    return _kind(DEPLOY / "k8s" / "networkpolicy.yaml", "NetworkPolicy")


def _pod_specs(rayservice: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(group name, group spec, pod template) for the head group and each worker group."""
    cluster = rayservice["spec"]["rayClusterConfig"]
    yield "head", cluster["headGroupSpec"], cluster["headGroupSpec"]["template"]
    for group in cluster["workerGroupSpecs"]:
        yield group["groupName"], group, group["template"]


def _head_spec(rayservice: dict[str, Any]) -> dict[str, Any]:
    return rayservice["spec"]["rayClusterConfig"]["headGroupSpec"]


def _selected(service: dict[str, Any], template: dict[str, Any]) -> bool:
    return service["spec"]["selector"].items() <= template["metadata"]["labels"].items()


def _ingress_groups(
    rayservice: dict[str, Any], settings: ServerSettings
) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """The groups whose rayStartParams provide a resource the ingress replicas ask for."""
    return {
        group: (spec, template)
        for group, spec, template in _pod_specs(rayservice)
        if settings.ingress_resources.keys() & _custom_resources(spec["rayStartParams"]).keys()
    }


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


def test_local_configs_bind_loopback_and_cluster_configs_every_interface(
    serve_config: dict[str, Any],
    serve_config_v2: dict[str, Any],
    local_settings: ServerSettings,
    cluster_settings: ServerSettings,
) -> None:
    """A laptop run listens on loopback only, like the settings' default; in a pod the
    ports must take the cluster's traffic, so the cluster configs say 0.0.0.0 themselves."""
    assert local_settings.host == serve_config["http_options"]["host"] == "127.0.0.1"
    assert ServerSettings.model_fields["host"].default == "127.0.0.1"
    assert cluster_settings.host == serve_config_v2["http_options"]["host"] == "0.0.0.0"


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


def test_ingress_pods_expose_the_api_ports_and_the_api_service_targets_them(
    rayservice: dict[str, Any],
    api_service: dict[str, Any],
    local_settings: ServerSettings,
    cluster_settings: ServerSettings,
) -> None:
    assert local_settings.grpc_port == cluster_settings.grpc_port  # docs/deploy.md: 9000 both
    ingress = _ingress_groups(rayservice, cluster_settings)
    assert ingress
    for group, _, template in _pod_specs(rayservice):
        ports = _ports(template)
        named = [n for n, p in ports.items() if p == cluster_settings.grpc_port]
        # KubeRay copies `serve-*` ports onto the serve Service, which selects every worker.
        assert named == (["grpc"] if group in ingress else []), (group, named)
    by_name = {p["name"]: p for p in api_service["spec"]["ports"]}
    assert set(by_name) == {"grpc", "http"}
    for name, port, target in [
        ("grpc", cluster_settings.grpc_port, "grpc"),
        ("http", cluster_settings.http_port, "serve"),
    ]:
        assert by_name[name]["port"] == port, name
        assert by_name[name]["targetPort"] == target, name
        for group, (_, template) in ingress.items():
            assert _ports(template)[target] == port, (group, name)


def test_ingress_resources_pin_the_ingress_to_the_pods_the_api_service_selects(
    rayservice: dict[str, Any], api_service: dict[str, Any], cluster_settings: ServerSettings
) -> None:
    """The gRPC port is served where the ingress replicas run: only on the ingress pods."""
    wanted = cluster_settings.ingress_resources
    assert wanted, "without ingress_resources the ingress may land on any node"
    ingress = _ingress_groups(rayservice, cluster_settings)
    assert "head" not in ingress, "KubeRay waits for the head's readiness before the app runs"
    for group, _, template in _pod_specs(rayservice):
        assert _selected(api_service, template) == (group in ingress), group
    for name, amount in wanted.items():
        # every ingress replica fits on the ingress pods that always run
        provided = sum(
            spec["minReplicas"] * _custom_resources(spec["rayStartParams"]).get(name, 0)
            for spec, _ in ingress.values()
        )
        assert cluster_settings.ingress_replicas * amount <= provided, name
    for group, (spec, _) in ingress.items():
        assert spec["rayStartParams"].get("num-cpus") == "0", f"{group}: no model replica there"


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
    """Model replicas read the weights; the ingress reads the tokenizers."""
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
        gpu_capacity += group["maxReplicas"] * int(limits.get("nvidia.com/gpu", 0))
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


def test_api_service_selects_by_the_templates_own_labels(api_service: dict[str, Any]) -> None:
    """KubeRay's ray.io/* labels name one cluster; the templates' own labels match the old
    and the new cluster during an upgrade, so the Service keeps endpoints throughout."""
    selector = api_service["spec"]["selector"]
    assert selector and not any(k.startswith("ray.io/") for k in selector)


# --- safe by default: users, /dev/shm, probes, upgrades -----------------------------------------

_QUANTITY = re.compile(r"^(\d+)(Ki|Mi|Gi|Ti)?$")


def _bytes(quantity: str) -> int:
    match = _QUANTITY.match(str(quantity))
    assert match, f"unexpected quantity {quantity!r}"
    scale = {None: 1, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}[match[2]]
    return int(match[1]) * scale


def _image_user() -> tuple[int, int]:
    (user,) = re.findall(r"^USER\s+(\S+)\s*$", (DEPLOY / "Dockerfile").read_text(), re.M)
    assert re.fullmatch(r"\d+:\d+", user), f"USER must be numeric uid:gid, not {user!r}"
    uid, gid = user.split(":")
    return int(uid), int(gid)


def test_every_pod_runs_as_the_images_non_root_user_without_privileges(
    rayservice: dict[str, Any],
) -> None:
    uid, gid = _image_user()
    assert uid != 0 and gid != 0
    for group, _, template in _pod_specs(rayservice):
        pod = template["spec"]["securityContext"]
        assert pod["runAsNonRoot"] is True, group
        assert (pod["runAsUser"], pod["runAsGroup"]) == (uid, gid), group
        assert pod["seccompProfile"]["type"] == "RuntimeDefault", group
        for container in template["spec"]["containers"]:
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, (group, container["name"])
            assert context["capabilities"]["drop"] == ["ALL"], (group, container["name"])
            assert not context["capabilities"].get("add"), (group, container["name"])
            assert not context.get("privileged"), (group, container["name"])
    # KubeRay's autoscaler sidecar on the head takes its own securityContext.
    sidecar = rayservice["spec"]["rayClusterConfig"]["autoscalerOptions"]["securityContext"]
    assert sidecar["runAsNonRoot"] is True and sidecar["allowPrivilegeEscalation"] is False
    assert sidecar["capabilities"]["drop"] == ["ALL"]


def test_every_pod_mounts_a_memory_emptydir_at_dev_shm(rayservice: dict[str, Any]) -> None:
    """Ray's object store lives in /dev/shm; the container runtime's default is 64 MiB."""
    for group, _, template in _pod_specs(rayservice):
        container = _ray_container(template)
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        volume = {v["name"]: v for v in template["spec"]["volumes"]}[mounts["/dev/shm"]]
        assert volume["emptyDir"]["medium"] == "Memory", group
        # tmpfs pages count against the container's memory limit
        limit = _bytes(container["resources"]["limits"]["memory"])
        assert 0 < _bytes(volume["emptyDir"]["sizeLimit"]) <= limit, group


def _probe_port(probe: dict[str, Any], template: dict[str, Any]) -> int:
    action = probe.get("grpc") or probe.get("httpGet") or {}
    port = action["port"]
    return port if isinstance(port, int) else _ports(template)[port]


def test_probes_use_the_service_health_and_cannot_stall_kuberay(
    rayservice: dict[str, Any], cluster_settings: ServerSettings
) -> None:
    """Readiness: the ingress pods answer gRPC health (SERVING once every model has a ready
    replica), the GPU workers Serve's /-/healthz. The head's readiness must not wait for the
    application: KubeRay deploys it only once the head is Ready. Liveness is Ray's node
    health everywhere: restarting a pod would not bring back a model replica elsewhere."""
    ingress = _ingress_groups(rayservice, cluster_settings)
    ray_node_health = {"path": "/api/healthz", "port": 52365}  # Ray's dashboard agent
    for group, _, template in _pod_specs(rayservice):
        container = _ray_container(template)
        readiness, liveness = container["readinessProbe"], container["livenessProbe"]
        assert liveness.get("httpGet") == ray_node_health, group
        assert liveness["failureThreshold"] * liveness["periodSeconds"] >= 300, group
        if group == "head":
            assert readiness.get("httpGet") == ray_node_health
        elif group in ingress:
            assert readiness["grpc"].get("service", "") == ""  # the server's overall status
            assert _probe_port(readiness, template) == cluster_settings.grpc_port, group
        else:
            assert readiness["httpGet"]["path"] == "/-/healthz", group
            assert _probe_port(readiness, template) == cluster_settings.http_port, group


def test_rayservice_upgrades_to_a_new_cluster_while_the_old_one_serves(
    rayservice: dict[str, Any],
) -> None:
    spec = rayservice["spec"]
    assert spec["upgradeStrategy"]["type"] == "NewCluster"
    assert spec.get("rayClusterDeletionDelaySeconds", 60) >= 60


def test_every_pod_exports_counters_as_counters(rayservice: dict[str, Any]) -> None:
    """Without RAY_EXPORT_COUNTER_AS_GAUGE=0 Ray also exports each counter as a gauge."""
    assert "RAY_EXPORT_COUNTER_AS_GAUGE=0" in (DEPLOY / "Dockerfile").read_text()
    for group, _, template in _pod_specs(rayservice):
        env = {e["name"]: e.get("value") for e in _ray_container(template)["env"]}
        assert env.get("RAY_EXPORT_COUNTER_AS_GAUGE") == "0", group


# --- the NetworkPolicy ---------------------------------------------------------------------------

RAY_INTERNAL_PORTS = {"gcs-server": 6379, "dashboard": 8265, "client": 10001}


def _policy_ports(rule: dict[str, Any], rayservice: dict[str, Any]) -> set[int] | None:
    """The port numbers a rule admits (named ports resolved in the pod specs); None = all."""
    if not rule.get("ports"):
        return None
    named: dict[str, int] = {}
    for _, _, template in _pod_specs(rayservice):
        named |= _ports(template)
    return {p["port"] if isinstance(p["port"], int) else named[p["port"]] for p in rule["ports"]}


def test_networkpolicy_keeps_rays_ports_inside_and_lets_the_api_in(
    network_policy: dict[str, Any], rayservice: dict[str, Any], cluster_settings: ServerSettings
) -> None:
    spec = network_policy["spec"]
    assert spec["policyTypes"] == ["Ingress"]
    own = spec["podSelector"]["matchLabels"]
    for group, _, template in _pod_specs(rayservice):
        assert own.items() <= template["metadata"]["labels"].items(), group
    api = {cluster_settings.grpc_port, cluster_settings.http_port}
    ray_ports = set(RAY_INTERNAL_PORTS.values())
    assert ray_ports <= set(_ports(_head_spec(rayservice)["template"]).values())
    open_ports: set[int] = set()
    for rule in spec["ingress"]:
        ports = _policy_ports(rule, rayservice)
        peers = rule.get("from")
        if not peers:  # any source, outside the cluster included
            assert ports is not None and ports <= api, ports
            open_ports |= ports
            continue
        for peer in peers:
            assert "ipBlock" not in peer, "Ray's ports are for pods, not address ranges"
            pods = peer.get("podSelector", {}).get("matchLabels")
            if ports is None or ports & ray_ports:  # only the cluster's own pods or KubeRay
                assert pods in (own, {"app.kubernetes.io/name": "kuberay-operator"}), rule
            if pods == {"app.kubernetes.io/name": "kuberay-operator"}:
                assert ports == {RAY_INTERNAL_PORTS["dashboard"]}, rule
    assert open_ports == api
    # the cluster's pods reach each other on every port (Ray binds worker ports at random)
    assert any(
        _policy_ports(r, rayservice) is None
        and [p.get("podSelector", {}).get("matchLabels") for p in r.get("from", [])] == [own]
        and all("namespaceSelector" not in p for p in r.get("from", []))
        for r in spec["ingress"]
    )


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


def _dockerfile_instructions() -> list[str]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    text = (DEPLOY / "Dockerfile").read_text()
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    return [
        i.strip() for i in re.split(r"\n(?=\S)", "\n".join(lines).replace("\\\n", " ")) if i.strip()
    ]


def test_dockerfile_builds_from_registry_packages_as_a_numeric_non_root_user() -> None:
    # a `# syntax=` line makes BuildKit pull a frontend image from Docker Hub first
    assert "# syntax=" not in (DEPLOY / "Dockerfile").read_text()
    instructions = _dockerfile_instructions()
    runs = " ".join(i for i in instructions if i.startswith("RUN"))
    # the interpreter comes from apt, not from a tool that downloads one
    assert re.search(r"apt-get install .*\bpython3\b.*\bpython3-venv\b", runs)
    downloaders = r"\b(uv|uvx|pyenv|conda|micromamba|mamba|curl)\b|python-build-standalone"
    assert not re.search(downloaders, " ".join(instructions))
    stages = [i for i in instructions if i.startswith("FROM")]
    assert len(stages) == 1, "one stage from the base image: no images of downloader tools"
    users = [i for i in instructions if i.startswith("USER")]
    assert users and users[-1] == "USER {}:{}".format(*_image_user())
    cmd = next(i for i in reversed(instructions) if i.startswith("CMD"))
    assert "host=0.0.0.0" in cmd, "alone in a container, the API must bind every interface"


def test_dockerignore_sends_what_the_dockerfile_copies_and_nothing_else() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "*", "an allowlist: everything else (.git, venvs, models) stays out"
    allowed = {p.removeprefix("!") for p in patterns if p.startswith("!")}
    copied = {
        source.rstrip("/")
        for line in _dockerfile_instructions()
        if line.startswith("COPY") and "--from" not in line
        for source in line.split()[1:-1]
    }
    assert copied == allowed


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

"""The Kubernetes manifests under deploy/ validate against the schemas a cluster applies.

Built-in kinds (Service, NetworkPolicy, ConfigMap) and the pod templates inside the
RayService validate against kubernetes-validate's strict Kubernetes schemas (the oldest
and newest version listed below); custom resources (RayService, PodMonitor) against the
openAPIV3Schema of their CRDs, vendored in tests/deploy/crds/ (its README says from where),
made strict as ``kubectl apply``'s field validation is: a field the schema does not know
is an error. CEL rules (x-kubernetes-validations) are not evaluated. The last tests break
the real manifests on purpose and check that validation fails.
No network and no cluster: ``python -m pytest tests/deploy/test_k8s_schemas.py``.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
CRDS = Path(__file__).resolve().parent / "crds"
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the RayService CRD is 1 MB
MANIFESTS = [
    *sorted((DEPLOY / "k8s").glob("*.yaml")),
    *sorted((DEPLOY / "k8s" / "sharded-sae").glob("*.yaml")),
    DEPLOY / "prometheus" / "podmonitor.yaml",
]
KUBERNETES_VERSIONS = ("1.30", kubernetes_validate.latest_version())
"""Native gRPC probes are GA since 1.27; KubeRay 1.7 supports recent releases."""


def _strict(schema: Any) -> Any:
    """A copy of an OpenAPI v3 schema in which objects refuse properties they do not list."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strict(v) if k != "enum" and k != "default" else v for k, v in schema.items()}
    if (
        "properties" in schema
        and "additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


@functools.cache
def crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) -> the strict schema of every served version of each vendored CRD."""
    schemas = {}
    for path in sorted(CRDS.glob("*.yaml")):
        for crd in yaml.load_all(path.read_text(), Loader=_LOADER):
            if not crd:
                continue
            group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
            for version in crd["spec"]["versions"]:
                if version.get("served", True):
                    schema = _strict(version["schema"]["openAPIV3Schema"])
                    schemas[f"{group}/{version['name']}", kind] = schema
    return schemas


def _pod_templates(rayservice: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    cluster = rayservice["spec"]["rayClusterConfig"]
    yield "headGroupSpec", cluster["headGroupSpec"]["template"]
    for i, group in enumerate(cluster["workerGroupSpecs"]):
        yield f"workerGroupSpecs[{i}]", group["template"]


def _builtin_problems(doc: dict[str, Any], version: str, where: str) -> list[str]:
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as e:
        return [f"{where}{'.'.join(map(str, e.path))}: {e.message} (Kubernetes {e.version})"]
    return []


def problems(doc: dict[str, Any], version: str) -> list[str]:
    """What is wrong with one manifest, per the schemas (empty = valid)."""
    key = (doc["apiVersion"], doc["kind"])
    if key not in crd_schemas():
        return _builtin_problems(doc, version, "")
    validator = jsonschema.Draft4Validator(crd_schemas()[key])
    found = [
        f"{'.'.join(map(str, e.path))}: {e.message}"
        for e in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.path)))
    ]
    if doc["kind"] == "RayService":  # its pods, against Kubernetes' own PodTemplateSpec too
        for where, template in _pod_templates(doc):
            pod_template = {
                "apiVersion": "v1",
                "kind": "PodTemplate",
                "metadata": {"name": "saeserve"},
                "template": template,
            }
            found += _builtin_problems(pod_template, version, f"{where}.")
    return found


def _documents() -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{path.relative_to(DEPLOY).as_posix()}:{doc['kind']}/{doc['metadata']['name']}", doc)
        for path in MANIFESTS
        for doc in yaml.safe_load_all(path.read_text())
        if doc
    ]


DOCUMENTS = _documents()


def _document(kind: str, name: str) -> dict[str, Any]:
    (doc,) = [d for _, d in DOCUMENTS if d["kind"] == kind and d["metadata"]["name"] == name]
    return copy.deepcopy(doc)


def test_every_custom_resource_has_a_vendored_crd() -> None:
    builtin = {"v1", "networking.k8s.io/v1"}
    for where, doc in DOCUMENTS:
        if doc["apiVersion"] not in builtin:
            assert (doc["apiVersion"], doc["kind"]) in crd_schemas(), where


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("doc", [d for _, d in DOCUMENTS], ids=[w for w, _ in DOCUMENTS])
def test_manifest_validates(doc: dict[str, Any], version: str) -> None:
    assert problems(doc, version) == []


# --- a broken manifest fails ----------------------------------------------------------------


def _set(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """``doc`` with ``path`` (keys between slashes, list indices as numbers) set to ``value``."""
    *parents, leaf = [int(p) if p.isdigit() else p for p in path.split("/")]
    node: Any = doc
    for part in parents:
        node = node[part]
    node[leaf] = value
    return doc


HEAD_POD = "spec/rayClusterConfig/headGroupSpec/template/spec"
INGRESS_CONTAINER = "spec/rayClusterConfig/workerGroupSpecs/0/template/spec/containers/0"

BROKEN = [
    # (kind, name, path, value, text the error must contain)
    ("RayService", "saeserve", f"{HEAD_POD}/securityContext/runAsNonroot", True, "runAsNonroot"),
    ("RayService", "saeserve", f"{INGRESS_CONTAINER}/readinessProbe/grpc/port", "grpc", "port"),
    ("RayService", "saeserve", "spec/upgradeStrategy/strategy", "NewCluster", "strategy"),
    (
        "RayService",
        "saeserve",
        "spec/rayClusterConfig/workerGroupSpecs/1/replicas",
        "1",
        "replicas",
    ),
    ("RayService", "saeserve", f"{HEAD_POD}/volumes/2/emptyDir/sizeLimit", [8], "sizeLimit"),
    ("Service", "saeserve", "spec/ports/0/port", "9000", "port"),
    ("NetworkPolicy", "saeserve", "spec/ingress/1/from/0/podSelectors", {}, "podSelectors"),
    ("ConfigMap", "saeserve-settings", "data/settings.yaml", 1, "settings.yaml"),
    ("PodMonitor", "saeserve", "spec/podMetricsEndpoints/0/interval", "15 seconds", "interval"),
]


@pytest.mark.parametrize(
    ("kind", "name", "path", "value", "named"),
    BROKEN,
    ids=[f"{kind}:{'/'.join(path.split('/')[-2:])}" for kind, _, path, *_ in BROKEN],
)
def test_a_broken_manifest_fails(kind: str, name: str, path: str, value: Any, named: str) -> None:
    doc = _document(kind, name)
    assert problems(doc, KUBERNETES_VERSIONS[-1]) == []
    found = problems(_set(doc, path, value), KUBERNETES_VERSIONS[-1])
    assert found, f"{kind} {path}={value!r} passed validation"
    assert any(named in p for p in found), found

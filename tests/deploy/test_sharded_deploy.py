"""The sharded-SAE KubeRay example (deploy/k8s/sharded-sae/) agrees with its settings.

Its settings validate; serveConfigV2 names exactly the deployments ``build_app`` makes
(the model and one per shard) and runs the same application as the base manifests; the
custom resource each shard replica asks for is offered by one worker group only, one unit
a pod, with a pod for every shard replica, each with a GPU the shard may use while Ray
hands none of them to a model replica; the model pods do not offer it. The CRD and
Kubernetes schemas are checked by test_k8s_schemas.py. ``python -m pytest tests/deploy``.
"""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from saeserve.server.app import build_app, deployment_name
from saeserve.server.settings import ServerSettings
from saeserve.server.shard_replica import shard_deployment_name
from tests.deploy.test_deploy import DEPLOY, _custom_resources, _kind, _pod_specs, _ray_container

FOLDER = DEPLOY / "k8s" / "sharded-sae"


@pytest.fixture(scope="module")
def rayservice() -> dict[str, Any]:
    return _kind(FOLDER / "rayservice.yaml", "RayService")


@pytest.fixture(scope="module")
def settings() -> ServerSettings:
    configmap = _kind(FOLDER / "settings-configmap.yaml", "ConfigMap")
    return ServerSettings.model_validate(yaml.safe_load(configmap["data"]["settings.yaml"]))


def test_serve_config_names_the_apps_deployments(
    rayservice: dict[str, Any], settings: ServerSettings
) -> None:
    (app,) = yaml.safe_load(rayservice["spec"]["serveConfigV2"])["applications"]
    (model,) = settings.models
    (sae,) = model.saes
    assert sae.sharding is not None
    shards = [
        shard_deployment_name(model.name, sae.effective_id, i) for i in range(sae.sharding.count)
    ]
    assert {d["name"] for d in app["deployments"]} == {deployment_name(model.name), *shards}
    assert app["import_path"] == "saeserve.server.app:app_builder"
    built = build_app(settings)  # binds the graph without Ray: every shard is in it
    assert set(shards) <= _bound_names(built)


def _bound_names(app: Any) -> set[str]:
    """Deployment names of a bound application graph (the ingress and what it was bound to)."""
    names, stack, seen = set(), [app], set()
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        bound = getattr(node, "_bound_deployment", None)
        if bound is not None:
            names.add(bound.name)
            stack += [*bound.init_args, *bound.init_kwargs.values()]
        elif isinstance(node, dict):
            stack += list(node.values())
        elif isinstance(node, list | tuple):
            stack += list(node)
    return names


def test_each_shard_replica_gets_a_pod_of_its_own(
    rayservice: dict[str, Any], settings: ServerSettings
) -> None:
    (sae,) = settings.models[0].saes
    sharding = sae.sharding
    assert sharding is not None and sharding.resources
    offering = {
        group: (spec, template)
        for group, spec, template in _pod_specs(rayservice)
        if sharding.resources.keys() & _custom_resources(spec.get("rayStartParams", {})).keys()
    }
    assert list(offering) == ["sae-shard"]
    spec, template = offering["sae-shard"]
    offered = _custom_resources(spec["rayStartParams"])
    for name, amount in sharding.resources.items():
        assert offered[name] == amount  # one shard replica per pod
    pods = sharding.count * sharding.replicas
    assert spec["replicas"] == spec["minReplicas"] == spec["maxReplicas"] == pods
    limits = _ray_container(template)["resources"]["limits"]
    assert sharding.device == "cuda" and limits["nvidia.com/gpu"] == 1
    # Ray hands out no GPU there, so the model replica (num_gpus 1) cannot land on it
    assert spec["rayStartParams"]["num-gpus"] == "0" and sharding.num_gpus == 0
    assert settings.num_gpus == 1
    assert float(limits["cpu"]) >= sharding.num_cpus

"""The local Ray cluster ``saeserve serve`` starts: where it listens, where metrics go.

Ray chooses its node address once, when it starts. On Linux it replaces a loopback
address with the machine's reachable one, so its GCS, raylet, object manager and metrics
exporter listen on every interface, unless ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` when
Ray is imported (Ray reads it into a constant then). With ``host`` a loopback address (the
default), ``prepare`` sets it, so the whole local cluster, metrics included, listens on
loopback only. A cluster started elsewhere (``--ray-address``, KubeRay) listens where it
was told; there the NetworkPolicy in deploy/k8s keeps its ports inside the cluster.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import sys
from typing import Any

from saeserve.server.settings import ServerSettings

log = logging.getLogger(__name__)

LOOPBACK_ONLY = ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
"""The variable (and value) that keeps a local Ray node on its loopback address."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def prepare(settings: ServerSettings) -> None:
    """Call before Ray is imported in this process: keeps a local cluster on loopback when
    the settings' host is loopback."""
    if is_loopback(settings.host):
        name, value = LOOPBACK_ONLY
        os.environ[name] = value


def init_options(settings: ServerSettings) -> dict[str, Any]:
    """``ray.init`` options for a local cluster: our metrics (and Serve's) on
    settings.metrics_port, no dashboard. Warns when the host is loopback but Ray was
    imported before ``prepare`` ran, so that the cluster will listen on every interface."""
    constants = sys.modules.get("ray._private.ray_constants")
    if is_loopback(settings.host) and getattr(constants, "ENABLE_RAY_CLUSTER", False):
        name, value = LOOPBACK_ONLY
        log.warning(
            "%s was not %s when Ray was imported (set it in the environment, or let "
            "saeserve start Ray): the local Ray cluster and its metrics port (%d) will "
            "listen on every interface, not only on %s",
            name,
            value,
            settings.metrics_port,
            settings.host,
        )
    return {"include_dashboard": False, "_metrics_export_port": settings.metrics_port}

"""saeserve's tests. Imported before any test module, so before Ray: the local Ray cluster
the session server starts (tests/conftest.py) listens on loopback only, as
``saeserve serve`` with its default host does (saeserve.server.local_ray)."""

import os

from saeserve.server.local_ray import LOOPBACK_ONLY

os.environ.setdefault(*LOOPBACK_ONLY)

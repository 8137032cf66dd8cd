"""The live test server's Ray replica processes, found by their titles under this process."""

from __future__ import annotations

import os
from pathlib import Path


def _descends_from(pid: int, ancestor: int) -> bool:
    while pid > 1:
        if pid == ancestor:
            return True
        try:
            stat = (Path("/proc") / str(pid) / "stat").read_text()
        except OSError:
            return False
        pid = int(stat.rsplit(")", 1)[1].split()[1])  # field 4: the parent's pid
    return False


def replica_pid(deployment: str) -> int:
    """PID of this test process's replica of ``deployment`` (``ray::ServeReplica:...``)."""
    wanted = f"ServeReplica:saeserve:{deployment}".encode()
    me = os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if wanted in cmdline and _descends_from(int(entry.name), me):
            return int(entry.name)
    raise LookupError(f"no replica process of {deployment} under pid {me}")


def rss_bytes(pid: int) -> int:
    for line in (Path("/proc") / str(pid) / "status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise LookupError(f"no VmRSS for pid {pid}")

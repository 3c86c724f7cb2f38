"""How much CPU this process may use under its cgroup's quota, in cores (reads /proc and /sys).

Why: admission (rtp.admission) refuses new calls once the process uses more than 90% of a
core. A worker held to half a core (a container's CPU limit, systemd's CPUQuota=, the
half-core workers of bench/cluster_load.py) never passes 90% of a whole one, so it kept
admitting calls while the quota throttled its media: one worker at 0.5 of a core set up 8
calls a second, refused none and lost 22% of the packets at 600 calls. Measured against
what it may use, it refuses with 503 instead, as a whole core does.
"""

from __future__ import annotations

import math
from pathlib import Path

PROC_CGROUP = Path("/proc/self/cgroup")
CGROUP_ROOT = Path("/sys/fs/cgroup")


def _v1_quota(directory: Path) -> float | None:
    try:
        quota = int((directory / "cpu.cfs_quota_us").read_text())
        period = int((directory / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None


def _v2_quota(directory: Path) -> float | None:
    try:
        quota, period = (directory / "cpu.max").read_text().split()[:2]
        return int(quota) / int(period) if quota != "max" and int(period) > 0 else None
    except (OSError, ValueError):
        return None


def cpu_quota(proc_cgroup: Path = PROC_CGROUP, root: Path = CGROUP_ROOT) -> float:
    """Cores this process may use: the tightest quota on its cgroup and the cgroup's
    ancestors (v1 `cpu` controller or v2 `cpu.max`); `math.inf` when none is set or none
    can be read (no cgroup file system: the whole machine)."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return math.inf
    best = math.inf
    for line in lines:
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and controllers == "":
            base, read = root, _v2_quota
        elif "cpu" in controllers.split(","):
            base, read = root / controllers, _v1_quota
            if not base.is_dir():
                base = root / "cpu"
        else:
            continue
        directory = base / path.lstrip("/")
        while True:
            quota = read(directory)
            if quota is not None:
                best = min(best, quota)
            if directory == base or base not in directory.parents:
                break
            directory = directory.parent
    return best

"""rtp.cpu_quota: the cores a process may use under its cgroup's CPU quota, read from fake
/proc/self/cgroup and /sys/fs/cgroup trees (v1 and v2); and what admission makes of it."""

from __future__ import annotations

import math
from pathlib import Path

from rtp.admission import UTIL_HIGH, Admission
from rtp.cpu_quota import cpu_quota

V1_PROC = "9:systemd:/\n4:memory:/x\n2:cpuacct:/\n1:cpu:/workers/w0\n0::/\n"


def tree(tmp_path: Path, proc: str, files: dict[str, str]) -> tuple[Path, Path]:
    root = tmp_path / "sys"
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    tmp_path.mkdir(parents=True, exist_ok=True)
    proc_file = tmp_path / "cgroup"
    proc_file.write_text(proc)
    return proc_file, root


def test_v1_half_a_core(tmp_path):
    proc, root = tree(tmp_path, V1_PROC, {"cpu/workers/w0/cpu.cfs_quota_us": "50000\n",
                                          "cpu/workers/w0/cpu.cfs_period_us": "100000\n"})
    assert cpu_quota(proc, root) == 0.5


def test_v1_the_tightest_ancestor_wins_and_minus_one_is_no_limit(tmp_path):
    proc, root = tree(tmp_path, V1_PROC, {"cpu/workers/w0/cpu.cfs_quota_us": "-1\n",
                                          "cpu/workers/w0/cpu.cfs_period_us": "100000\n",
                                          "cpu/workers/cpu.cfs_quota_us": "25000\n",
                                          "cpu/workers/cpu.cfs_period_us": "100000\n"})
    assert cpu_quota(proc, root) == 0.25


def test_v2_cpu_max(tmp_path):
    proc, root = tree(tmp_path, "0::/svc/b2bua\n", {"svc/b2bua/cpu.max": "150000 100000\n", "svc/cpu.max": "max 100000\n"})
    assert cpu_quota(proc, root) == 1.5


def test_no_quota_anywhere_or_nothing_readable_is_the_whole_machine(tmp_path):
    proc, root = tree(tmp_path, "0::/\n", {"cpu.max": "max 100000\n"})
    assert cpu_quota(proc, root) == math.inf
    assert cpu_quota(tmp_path / "absent", root) == math.inf
    proc, root = tree(tmp_path / "b", "1:cpu:/gone\n", {})  # a cgroup whose files cannot be read
    assert cpu_quota(proc, root) == math.inf


def test_admission_measures_a_worker_against_its_quota():
    # Half a core used out of half a core allowed: overloaded, refuses (503) and lowers the
    # ceiling; without the quota the same process looked half idle and took every call.
    held, free = Admission(), Admission()
    for admission, limit in ((held, 0.5), (free, 1.0)):
        admission.restart(0.0, 0.0)
        admission.sample(1.0, 0.48, 0.0, 500, limit=limit)
    assert held.last.overloaded and held.last.utilisation > UTIL_HIGH and held.last.limit == 0.5
    assert not held.admit(400, now=1.0)
    assert held.ceiling < 500
    assert not free.last.overloaded and free.admit(400, now=1.0)
    # A quota above one core changes nothing: the loop runs on one.
    more = Admission()
    more.restart(0.0, 0.0)
    more.sample(1.0, 0.48, 0.0, 500, limit=4.0)
    assert more.last.utilisation == 0.48 and not more.last.overloaded

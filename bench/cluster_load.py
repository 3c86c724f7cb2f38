"""`bench/load.py --workers N`: the same calls and streams, through `b2bua cluster`.

The trunk and the phones talk SIP to the edge (Kamailio) only; media goes straight to
the workers. Every worker can be held to a CPU quota in its own cgroup (v1:
/sys/fs/cgroup/cpu/<name>/cpu.cfs_quota_us of a 100000 us period; v2: cpu.max), so one
and two workers at the same quota each show how the zero-loss call count scales on a
machine with too few cores to give each worker its own. Workers and the edge run on
core 0, the generator on core 1.

Also measured: the edge's CPU per call set up (Kamailio's processes' CPU during the
REGISTER and INVITE phases, divided by the calls), and the setup rate it carried.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sys
import time
from pathlib import Path

import load  # bench/load.py: SipLoad, the generator, the checks

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.e2e.cluster import ClusterProcess, cluster_section, session_cpu  # noqa: E402  one way to configure and start a cluster

CGROUP_V1 = Path("/sys/fs/cgroup/cpu")
CGROUP_V2 = Path("/sys/fs/cgroup")
PERIOD_US = 100_000


class CpuQuota:
    """One cgroup per worker with `share` of a core (0.5: half a core); removed on close."""

    def __init__(self, name: str, share: float) -> None:
        self.share = share
        self.v2 = (CGROUP_V2 / "cgroup.controllers").exists()
        base = CGROUP_V2 if self.v2 else CGROUP_V1
        self.path = base / name
        self.path.mkdir()
        quota = int(PERIOD_US * share)
        if self.v2:
            (self.path / "cpu.max").write_text(f"{quota} {PERIOD_US}")
        else:
            (self.path / "cpu.cfs_period_us").write_text(str(PERIOD_US))
            (self.path / "cpu.cfs_quota_us").write_text(str(quota))

    def add(self, pid: int) -> None:
        (self.path / "cgroup.procs").write_text(str(pid))

    def throttled_s(self) -> float:
        stat = (self.path / "cpu.stat").read_text()
        m = re.search(r"throttled_usec (\d+)", stat) or re.search(r"throttled_time (\d+)", stat)
        if not m:
            return 0.0
        return int(m.group(1)) / (1e6 if "usec" in m.group(0) else 1e9)

    def close(self) -> None:
        parent = self.path.parent / "cgroup.procs"
        with contextlib.suppress(OSError):
            for pid in (self.path / "cgroup.procs").read_text().split():
                with contextlib.suppress(OSError):
                    parent.write_text(pid)
        with contextlib.suppress(OSError):
            self.path.rmdir()


def cluster_config(calls: int, edge_port: int, trunk_port: int, rtp: tuple[int, int], record: bool, recordings: Path,
                   workers: int, worker_low: int, redis_port: int) -> str:
    return load.b2bua_config(calls, edge_port, trunk_port, rtp, record, recordings) + "\n" + \
        cluster_section(workers, worker_low, redis_port)


def run(calls: int, seconds: float, record: bool, workdir: Path, workers: int, quota: float | None) -> dict:
    edge_port, redis_port = load.free_port(), load.free_port(load.socket.SOCK_STREAM)
    trunk, phone = load.udp(), load.udp()
    trunk_media, phone_media = load.udp(host="0.0.0.0"), load.udp(host="0.0.0.0")
    width = (calls * 4 + 200) * workers
    taken = {edge_port, redis_port, *(s.getsockname()[1] for s in (trunk, phone, trunk_media, phone_media))}
    worker_low = next(p for p in range(60000 + (os.getpid() % 500) * 8, 65000)
                      if not any(p <= t < p + workers for t in taken))  # above the media ports
    taken |= set(range(worker_low, worker_low + workers))
    rtp = load.media_range(width, taken)  # none of the ports the OS just gave us (config would refuse it)
    recordings = workdir / "recordings"
    cluster = ClusterProcess(cluster_config(calls, edge_port, trunk.getsockname()[1], rtp, record, recordings, workers,
                                            worker_low, redis_port), workdir,
                             argv_prefix=["taskset", "-c", str(load.B2BUA_CORE)], sip_trace=False)
    groups: list[CpuQuota] = []
    # A SIGTERM (timeout, Ctrl-C's cousin) still stops the cluster and removes the cgroups.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        os.sched_setaffinity(0, {load.LOAD_CORE})
        cluster.start(f"{load.LOCAL}:{edge_port}", workers, timeout=60, settle=2.0)
        pids = cluster.worker_pids()
        edge_pid = cluster.edge_pid()
        if quota:
            for i, pid in sorted(pids.items()):
                group = CpuQuota(f"b2bua-bench-{os.getpid()}-w{i}", quota)
                groups.append(group)
                group.add(pid)
        sip = load.SipLoad(edge_port, trunk, phone, trunk_media.getsockname()[1], phone_media.getsockname()[1])
        edge0 = session_cpu(edge_pid)
        t = time.monotonic()
        registered = sip.register(calls, "load", time.monotonic() + 60)
        reg_s = time.monotonic() - t
        edge_reg = session_cpu(edge_pid) - edge0
        time.sleep(3.0)  # a new binding reaches the other workers a few ms after its 200, later on a starved CPU
        t, edge1 = time.monotonic(), session_cpu(edge_pid)
        a_ports, b_ports, dialogs = sip.call(calls, rate=250, deadline=time.monotonic() + 60 + calls / 100)
        setup_s = time.monotonic() - t
        edge_calls = session_cpu(edge_pid) - edge1
        answered = len(a_ports)
        targets = [[(load.LOCAL, p) for _, p in a_ports], [(load.LOCAL, p) for p in b_ports]]
        sources = [[load.leg_ip(1, i) for i, _ in a_ports], [load.leg_ip(2, j) for j in range(len(b_ports))]]
        cpu0, wall0 = sum(load.cpu_seconds(p) for p in pids.values()), time.monotonic()
        throttled0 = sum(g.throttled_s() for g in groups)
        gen, pipe = load.run_generator([trunk_media, phone_media], targets, sources, seconds)
        stats = pipe.recv()
        gen.join()
        cpu = sum(load.cpu_seconds(p) for p in pids.values()) - cpu0
        wall = time.monotonic() - wall0
        throttled = sum(g.throttled_s() for g in groups) - throttled0
        ended = sip.hangup(dialogs, time.monotonic() + 30)
        time.sleep(2.0)
        wavs = sorted(recordings.rglob("*.wav"))
        wav_ok, lengths, audio = load.check_wavs(wavs, sip, calls if record else 0, seconds)
    finally:
        cluster.stop(30)
        for s in (trunk, phone, trunk_media, phone_media):
            s.close()
        for group in groups:
            group.close()
    offered, received = stats["offered"], stats["received"]
    return {
        "peer": f"cluster/{workers}", "record": record, "calls": calls, "workers": workers, "quota": quota,
        "registered": registered, "answered": answered, "refused_503": sip.refused, "ended": ended,
        "offered": offered, "relayed": received, "loss": round(1 - received / offered, 5) if offered else 1.0,
        "cpu_percent": round(100 * cpu / wall, 1), "throttled_s": round(throttled, 2), "rss_mb": 0.0,
        "wav_ok": wav_ok, "wavs": len(wavs), "wav_audio": audio,
        "register_s": round(reg_s, 2), "setup_s": round(setup_s, 2),
        "setup_rate": round(answered / setup_s, 1) if setup_s else 0.0,
        "edge_cpu_ms_per_register": round(1000 * edge_reg / max(registered, 1), 3),
        "edge_cpu_ms_per_call": round(1000 * edge_calls / max(answered, 1), 3),
        "generator_capacity_pps": round(offered / stats["busy_s"]) if stats["busy_s"] else 0,
        "offered_pps": round(offered / stats["wall_s"]),
    }


def line(r: dict) -> str:
    return (f"{r['peer']:<10} quota={r['quota']} calls={r['calls']} answered={r['answered']} refused_503={r['refused_503']} "
            f"loss={r['loss']:.4%} workers_cpu={r['cpu_percent']}% throttled={r['throttled_s']}s "
            f"wav_ok={r['wav_ok']} wav_audio={r['wav_audio']} setup={r['setup_rate']}/s "
            f"edge_cpu/call={r['edge_cpu_ms_per_call']}ms edge_cpu/register={r['edge_cpu_ms_per_register']}ms")

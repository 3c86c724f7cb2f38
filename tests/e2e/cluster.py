"""`b2bua cluster` as a subprocess: Kamailio, Redis and workers, for the end-to-end tests
and the benchmarks (bench/cluster_load.py, bench/soak.py --workers), one copy of how a
cluster is configured, started, watched and stopped.

Everything it starts is private: Kamailio on a generated config in the supervisor's own
run directory, redis-server on a free port (the supervisor starts it because the URL
names this host and nothing answers there), workers on free ports. `start()` returns
once the edge answers OPTIONS through a worker and every worker has logged `ready`.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .peers import LOCALHOST, REPO_ROOT, _Process, free_port, free_port_range, sip_options_ping, wait_until, alice_line

START_TIMEOUT_S = 20.0
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class ClusterPorts:
    edge: int
    trunk: int
    redis: int
    worker_low: int
    rtp_low: int
    rtp_high: int
    workers: int

    @classmethod
    def allocate(cls, workers: int = 2, rtp_per_worker: int = 40) -> "ClusterPorts":
        edge, trunk, redis = free_port("both"), free_port("both"), free_port("tcp")
        while True:
            low, _ = free_port_range(workers)  # consecutive UDP ports, one SIP port per worker
            if all(p not in (edge, trunk, redis) for p in range(low, low + workers)):
                break
        while True:
            rtp_low, rtp_high = free_port_range(workers * rtp_per_worker)
            if not any(rtp_low <= p <= rtp_high for p in (edge, trunk, redis, *range(low, low + workers))):
                break
        return cls(edge, trunk, redis, low, rtp_low, rtp_high, workers)

    @property
    def rtp_share(self) -> int:
        return ((self.rtp_high - self.rtp_low + 1) // self.workers) & ~1

    def worker_of_media_port(self, port: int) -> int:
        """Which worker advertised this media port (each has its own slice of rtp_ports)."""
        assert self.rtp_low <= port <= self.rtp_high, port
        return (port - self.rtp_low) // self.rtp_share


def cluster_section(workers: int, worker_low: int, redis_port: int) -> str:
    """flows.toml's `[cluster]`: `workers` workers on consecutive SIP ports from
    `worker_low`, a private Redis on this host at `redis_port`."""
    return f'''[cluster]
workers = {workers}
worker_ports = "{worker_low}-{worker_low + workers - 1}"
redis = "redis://127.0.0.1:{redis_port}/0"
'''


def cluster_config(ports: ClusterPorts, trunk: str, *, extra: str = "", host: str = LOCALHOST) -> str:
    return f'''
[server]
listen = "{host}:{ports.edge}"
media_ip = "{host}"
rtp_ports = "{ports.rtp_low}-{ports.rtp_high}"
recordings_dir = "recordings"
[organisation]
name = "Cluster test"
[security]
max_auth_failures = 5
failure_window = 60
lockout_seconds = 60
{alice_line(trunk)}{cluster_section(ports.workers, ports.worker_low, ports.redis)}{extra}'''


def session_cpu(leader: int) -> float:
    """CPU seconds (user + system) of every process in `leader`'s session: the edge's,
    as Kamailio forks its receivers and timers from its main process."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.getsid(int(entry.name)) == leader:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / CLK_TCK
        except (OSError, ValueError, IndexError):
            continue
    return total


class ClusterProcess:
    """`python -m b2bua cluster --config <dir>/flows.toml`, logs in `<dir>/<name>.log`.

    `argv_prefix` runs it under another command (`taskset -c 0`, `ip netns exec ...`);
    `sip_trace` (the tests' default) logs every SIP message, too much for a benchmark."""

    def __init__(self, config_text: str, directory: Path, *, argv_prefix: list[str] | None = None, name: str = "cluster",
                 sip_trace: bool = True, python: str = sys.executable):
        self.dir = Path(directory)
        self.config_path = self.dir / "flows.toml"
        self.config_path.write_text(config_text)
        self.recordings_dir = self.dir / "recordings"
        self.argv_prefix = argv_prefix or []
        self.name = name
        self.sip_trace = sip_trace
        self.python = python
        self._proc: _Process | None = None

    def start(self, edge: str, workers: int, timeout: float = START_TIMEOUT_S, settle: float = 0.0) -> "ClusterProcess":
        """Returns once every worker is ready and the edge answers OPTIONS through one; then
        `settle` seconds more, so the edge's probes have put every worker in its set (the
        benchmarks' first calls should be spread over all of them)."""
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH", "")]))
        env["PYTHONUNBUFFERED"] = "1"
        argv = [*self.argv_prefix, self.python, "-m", "b2bua", "cluster", "--config", str(self.config_path),
                *(["--sip-trace"] if self.sip_trace else [])]
        self._proc = _Process(argv, self.dir / f"{self.name}.log", cwd=self.dir, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self._proc.alive():
                raise RuntimeError(f"b2bua cluster exited with {self._proc.proc.returncode}:\n{self.logs()}")
            ready = len(set(re.findall(r"worker=(\d+) event=ready", self.logs())))
            if ready >= workers and (not edge or sip_options_ping(edge, 0.3) == "SIP/2.0 200 OK"):
                time.sleep(settle)
                return self
            time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"cluster not ready within {timeout}s:\n{self.logs()}")

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def alive(self) -> bool:
        return self._proc is not None and self._proc.alive()

    def logs(self) -> str:
        return self._proc.logs() if self._proc else ""

    def wait_for_log(self, pattern: str, timeout: float = 5.0) -> re.Match:
        return wait_until(lambda: re.search(pattern, self.logs()), timeout, what=f"log /{pattern}/")

    def worker_pid(self, index: int) -> int:
        """The pid of the latest start of worker `index`."""
        found = re.findall(rf"worker={index} pid=(\d+) port=\d+ event=started", self.logs())
        assert found, f"worker {index} never started:\n{self.logs()}"
        return int(found[-1])

    def worker_pids(self) -> dict[int, int]:
        """Every worker's latest pid, by index (a restarted worker has a new one)."""
        return {int(i): int(p) for i, p in re.findall(r"worker=(\d+) pid=(\d+) port=\d+ event=started", self.logs())}

    def edge_pid(self) -> int:
        """The pid of the latest start of the edge (Kamailio's main process)."""
        found = re.findall(r"edge pid=(\d+) port=\d+ event=started", self.logs())
        assert found, f"the edge never started:\n{self.logs()}"
        return int(found[-1])

    def kill9_worker(self, index: int) -> int:
        pid = self.worker_pid(index)
        os.kill(pid, signal.SIGKILL)
        return pid

    def signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def stop(self, timeout: float = 20.0) -> int | None:
        return self._proc.stop(timeout) if self._proc else None

    def recordings(self) -> list[Path]:
        return sorted(self.recordings_dir.rglob("*.wav")) if self.recordings_dir.exists() else []

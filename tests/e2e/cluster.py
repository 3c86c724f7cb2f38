"""`b2bua cluster` as a subprocess for the end-to-end tests: Kamailio, Redis and workers.

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
{alice_line(trunk)}[cluster]
workers = {ports.workers}
worker_ports = "{ports.worker_low}-{ports.worker_low + ports.workers - 1}"
redis = "redis://127.0.0.1:{ports.redis}/0"
{extra}'''


class ClusterProcess:
    """`python -m b2bua cluster --config <dir>/flows.toml`, logs in `<dir>/cluster.log`."""

    def __init__(self, config_text: str, directory: Path, *, argv_prefix: list[str] | None = None, name: str = "cluster"):
        self.dir = Path(directory)
        self.config_path = self.dir / "flows.toml"
        self.config_path.write_text(config_text)
        self.recordings_dir = self.dir / "recordings"
        self.argv_prefix = argv_prefix or []
        self.name = name
        self._proc: _Process | None = None

    def start(self, edge: str, workers: int, timeout: float = START_TIMEOUT_S) -> "ClusterProcess":
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH", "")]))
        env["PYTHONUNBUFFERED"] = "1"
        argv = [*self.argv_prefix, sys.executable, "-m", "b2bua", "cluster", "--config", str(self.config_path), "--sip-trace"]
        self._proc = _Process(argv, self.dir / f"{self.name}.log", cwd=self.dir, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self._proc.alive():
                raise RuntimeError(f"b2bua cluster exited with {self._proc.proc.returncode}:\n{self.logs()}")
            ready = len(set(re.findall(r"worker=(\d+) event=ready", self.logs())))
            if ready >= workers and (not edge or sip_options_ping(edge, 0.3) == "SIP/2.0 200 OK"):
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

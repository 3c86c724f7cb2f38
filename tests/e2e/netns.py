"""Two network namespaces joined by a veth pair: two "hosts" on one machine.

Addresses exist only inside the namespaces (nothing is added to the machine's own
network), names carry a random suffix so concurrent runs never collide, and `close()`
deletes both namespaces (which deletes the veth pair with them).
"""

from __future__ import annotations

import secrets
import subprocess
from dataclasses import dataclass, field


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=10)


@dataclass
class TwoHosts:
    edge_ns: str
    worker_ns: str
    edge_ip: str
    worker_ip: str
    _made: list[str] = field(default_factory=list)

    @classmethod
    def create(cls) -> "TwoHosts":
        tag = secrets.token_hex(3)
        net = f"10.{200 + secrets.randbelow(50)}.{secrets.randbelow(250)}"
        hosts = cls(f"b2bua-e2e-{tag}-edge", f"b2bua-e2e-{tag}-wrk", f"{net}.1", f"{net}.2")
        veth_edge, veth_worker = f"b2e{tag}e", f"b2e{tag}w"  # at most 15 characters
        try:
            for ns in (hosts.edge_ns, hosts.worker_ns):
                _ip("netns", "add", ns)
                hosts._made.append(ns)
                _ip("-n", ns, "link", "set", "lo", "up")
            # Created inside the edge namespace, one end moved: never a device in the root namespace.
            _ip("-n", hosts.edge_ns, "link", "add", veth_edge, "type", "veth", "peer", "name", veth_worker)
            _ip("-n", hosts.edge_ns, "link", "set", veth_worker, "netns", hosts.worker_ns)
            _ip("-n", hosts.edge_ns, "addr", "add", f"{hosts.edge_ip}/24", "dev", veth_edge)
            _ip("-n", hosts.worker_ns, "addr", "add", f"{hosts.worker_ip}/24", "dev", veth_worker)
            _ip("-n", hosts.edge_ns, "link", "set", veth_edge, "up")
            _ip("-n", hosts.worker_ns, "link", "set", veth_worker, "up")
        except BaseException:
            hosts.close()
            raise
        return hosts

    def exec_argv(self, ns: str, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", ns, *argv]

    def close(self) -> None:
        for ns in reversed(self._made):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)
        self._made.clear()

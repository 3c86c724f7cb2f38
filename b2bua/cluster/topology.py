"""Which ports, media ports and limits each worker of a `[cluster]` takes.

One place computes the split so `b2bua cluster`, `b2bua worker --index N` on another host
and `b2bua edge-config` agree on it without talking to each other.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from b2bua.config import Cluster, Config


@dataclass(frozen=True)
class WorkerSlot:
    index: int
    host: str  # the address this worker binds for SIP and media
    port: int  # its own SIP port
    rtp_ports: tuple[int, int]  # its own slice of [server] rtp_ports, inclusive


def cluster_of(config: Config) -> Cluster:
    if config.cluster is None:
        raise ValueError(f"{config.path}: no [cluster] section")
    return config.cluster


def slot(config: Config, index: int, host: str | None = None) -> WorkerSlot:
    """Worker `index` on `host` (default: this host's `[server] media_ip`).

    Media ports are split evenly (an even count each, RTP on even ports): worker i of N
    takes the i-th share, so workers on one host never compete for a port.
    """
    cluster = cluster_of(config)
    if not 0 <= index < cluster.workers:
        raise ValueError(f"worker index {index} is outside 0-{cluster.workers - 1}")
    low, high = config.server.rtp_ports
    per_worker = ((high - low + 1) // cluster.workers) & ~1
    first = low + index * per_worker
    return WorkerSlot(
        index=index,
        host=host or config.server.media_ip,
        port=cluster.worker_ports[0] + index,
        rtp_ports=(first, first + per_worker - 1),
    )


def all_slots(config: Config) -> list[WorkerSlot]:
    """Every worker on every host the edge dispatches to, in the dispatcher's order."""
    cluster = cluster_of(config)
    return [slot(config, i, host) for host in cluster.hosts for i in range(cluster.workers)]


def worker_config(config: Config, index: int) -> Config:
    """The Config worker `index` runs with: its own SIP port and media ports.

    `[server] max_calls` stays as written: it is one process's admission ceiling (one
    core's worth of calls), and each worker is one process with its own admission.
    """
    mine = slot(config, index)
    server = replace(config.server, host=mine.host, port=mine.port, rtp_ports=mine.rtp_ports)
    return replace(config, server=server)

"""Operating-system limits a deployment at load needs, checked once at start.

Each RTP port is a socket (an RTP and an RTCP port per party, two parties per call), so the
open-file limit bounds the calls; small socket buffers drop packets in bursts long before
the CPU is busy. Nothing here changes system settings except raising our own soft
RLIMIT_NOFILE to its hard limit, which any process may do.
"""

from __future__ import annotations

import resource
from pathlib import Path

#: Bytes a busy media or SIP socket may need to queue in a 100 ms stall: 4 MiB.
WANT_BUFFER = 4 << 20
#: Packets the kernel may queue per CPU before the stack drops them (the default 1000 is
#: a 5 ms burst at 200,000 packets/s).
WANT_BACKLOG = 10000
#: File descriptors beyond the media ports: SIP, TCP connections, recordings, SQLite.
SPARE_FDS = 2048


def check(rtp_ports: tuple[int, int], proc: Path = Path("/proc/sys/net/core")) -> list[str]:
    """Warnings, one line each, for limits too low for the configured port range."""
    warnings: list[str] = []
    ports = rtp_ports[1] - rtp_ports[0] + 1
    want_fds = ports + SPARE_FDS
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < want_fds and (hard == resource.RLIM_INFINITY or hard > soft):
        new = want_fds if hard == resource.RLIM_INFINITY else min(hard, want_fds)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
            soft = new
        except (ValueError, OSError):
            pass
    if soft < want_fds:
        warnings.append(f"open files limit is {soft}, {want_fds} wanted for {ports} media ports: raise `ulimit -n`")
    for name, want in (("rmem_max", WANT_BUFFER), ("wmem_max", WANT_BUFFER), ("netdev_max_backlog", WANT_BACKLOG)):
        try:
            value = int((proc / name).read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
        if value < want:
            warnings.append(f"net.core.{name} is {value}, {want} wanted at load: sysctl -w net.core.{name}={want}")
    return warnings

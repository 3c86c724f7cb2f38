"""`b2bua worker`: one B2BUA process behind the edge.

It is `b2bua run` with four differences, all here so the server stays one code path:
the real source of each request comes from the edge (edge_link), requests to phones and
trunks leave through the edge, a starting worker repairs only recordings no live process
holds (recovery), and a worker can drain: SIGUSR1 (or SIGTERM, which then also ends the
calls up) makes it answer the edge's OPTIONS probe and every new INVITE with 503, so the
dispatcher takes it out of the set within a probe interval and no call is lost; it exits
when its last call has ended.

A new INVITE the worker reads later than STALE_INVITE_S after the edge sent it (the
edge's X-B2BUA-Sent stamp) is answered 503 and goes no further: by then the edge has
tried the next worker, or is about to, and ringing the phone here too would ring it twice
and answer one call in two places. A 503 is safe either way: if the edge still waits
for this worker, it tries the next one (failure_route); if not, it drops the late reply.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from b2bua.cluster.edge_config import WORKER_ANSWER_MS
from b2bua.cluster.edge_link import EdgeLink
from b2bua.cluster.recovery import repair_orphans
from b2bua.cluster.topology import cluster_of, worker_config
from b2bua.config import Config
from b2bua.events import RequestReceived
from b2bua.message import make_response
from b2bua.peer import Peer

if TYPE_CHECKING:
    from b2bua.server import Server

log = logging.getLogger("b2bua.cluster")

#: The environment variable the supervisor passes a shared digest secret in (hex), so a
#: challenge issued by one worker is answered to another (the edge spreads requests).
SECRET_ENV = "B2BUA_CLUSTER_SECRET"
#: How often a draining worker looks whether its last call has ended (seconds).
DRAIN_POLL = 0.2
#: Retry-After on a draining worker's 503 (RFC 3261 §21.5.4): the edge tries the next
#: worker at once; a phone sent this directly waits a moment.
RETRY_AFTER = "5"
#: A new INVITE older than this (seconds since the edge sent it) is refused: two thirds
#: of the time the edge waits for a worker's 100 Trying before trying the next, so the
#: 100 of one taken just under it still reaches the edge in time.
STALE_INVITE_S = WORKER_ANSWER_MS / 1000 * 2 / 3


class WorkerRole:
    """What a worker adds to the server; the server calls these hooks when it has one."""

    def __init__(self, config: Config, index: int) -> None:
        cluster = cluster_of(config)
        self.index = index
        self.link = EdgeLink(cluster.edge_host, cluster.edge_port)
        self.draining = False
        self.stale_invites = 0
        self._server: Server | None = None
        self._watch: asyncio.Task[None] | None = None

    @property
    def nonce_secret(self) -> bytes | None:
        value = os.environ.get(SECRET_ENV, "")
        try:
            return bytes.fromhex(value) if value else None
        except ValueError:
            log.warning("worker=%d event=ignored-secret reason=not-hex env=%s", self.index, SECRET_ENV)
            return None

    def repair(self, directory: Path) -> list[Path]:
        return repair_orphans(directory)

    def attach(self, server: Server) -> None:
        """Signals: SIGUSR1 drains; SIGTERM/SIGINT refuse new calls, then shut down."""
        self._server = server
        # Every line of this process says which worker wrote it (workers share one stderr).
        for handler in logging.getLogger().handlers:
            handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s worker={self.index} %(name)s: %(message)s"))
        loop = server.loop
        assert loop is not None
        loop.add_signal_handler(signal.SIGUSR1, self.drain)
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._terminate)
        log.info("worker=%d event=ready pid=%d port=%d edge=%s:%d", self.index, os.getpid(),
                 server.config.server.port, self.link.edge.host, self.link.edge.port)

    def _terminate(self) -> None:
        self.draining = True
        if self._server is not None:
            self._server.stopping.set()

    def drain(self) -> None:
        if self.draining or self._server is None:
            return
        self.draining = True
        log.info("worker=%d event=draining calls=%d", self.index, len(self._server.core.calls))
        self._watch = asyncio.get_running_loop().create_task(self._exit_when_idle())

    async def _exit_when_idle(self) -> None:
        server = self._server
        assert server is not None
        while server.core.calls:
            await asyncio.sleep(DRAIN_POLL)
        log.info("worker=%d event=drained", self.index)
        server.stopping.set()

    def inbound(self, event: Any, now: float, wall_now: float | None = None) -> Any | None:
        """The event the core should see (real source), or None when answered here (503).

        `wall_now` (default: the wall clock) is compared with the edge's send stamp."""
        if isinstance(event, RequestReceived):
            request = event.request
            if self.draining and not request.to_tag and request.method in ("INVITE", "OPTIONS"):
                self._refuse(event, now)
                return None
            if not request.to_tag and request.method == "INVITE":
                age = self.link.age(request, event.peer, time.time() if wall_now is None else wall_now)
                if age is not None and age > STALE_INVITE_S:
                    self.stale_invites += 1
                    if self.stale_invites == 1 or self.stale_invites % 100 == 0:  # summarised: one line a hundred
                        log.warning("worker=%d event=stale-invite age_ms=%d sip-call-id=%s total=%d reason=%s",
                                    self.index, age * 1000, request.call_id, self.stale_invites,
                                    "behind (or this host's clock is ahead of the edge's)")
                    self._refuse(event, now)
                    return None
        return self.link.translate(event)

    def _refuse(self, event: RequestReceived, now: float) -> None:
        response = make_response(event.request, 503, "Service Unavailable", headers=[("Retry-After", RETRY_AFTER)])
        assert self._server is not None
        self._server.transactions.send_response(event.txn_id, response, now)

    def outbound(self, data: bytes, peer: Peer) -> tuple[bytes, Peer]:
        return self.link.outbound(data, peer)


def run_worker(config: Config, index: int, sip_trace: bool = False) -> int:
    from b2bua.server import serve

    role = WorkerRole(config, index)
    return serve(worker_config(config, index), sip_trace=sip_trace, worker=role)

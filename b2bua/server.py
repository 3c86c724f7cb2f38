"""`b2bua run`: the asyncio edge that owns the sockets and the clock.

It parses what the transport hands it, feeds the transaction layer and the B2BUA core
with `loop.time()` as `now`, sends what they queue, and keeps one timer armed at the
earliest deadline any of them has. Everything it wires together is sans-IO.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import time
from typing import Any

from b2bua import os_limits
from b2bua.auth import DigestAuthenticator
from b2bua.b2bua import B2BUA
from b2bua.clock import system_utc_at
from b2bua.config import Config
from b2bua.gc_policy import GcPolicy
from b2bua.hostile_summary import HostileSummary
from b2bua.lockout import Lockout
from b2bua.message import SipParseError, parse_message
from b2bua.peer import Peer
from b2bua.registrar import Registrar
from b2bua.shared_state import open_stores
from b2bua.strangers import policy_for
from b2bua.transaction import TransactionLayer
from b2bua.transport import SipTransport
from b2bua.wire_errors import error_response

#: SIGTERM: calls get BYE and recordings are finalised; this long is allowed for the
#: BYEs to leave before media is closed (issue 5 asks for everything within 5 s).
SHUTDOWN_GRACE = 0.5

log = logging.getLogger("b2bua")
wire = logging.getLogger("b2bua.wire")  # --sip-trace: every message in and out, at DEBUG


def setup_logging() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)


def serve(config: Config, sip_trace: bool = False, worker: Any = None) -> int:
    """Run until SIGINT/SIGTERM; the exit code for the command line."""
    setup_logging()
    if sip_trace:
        wire.setLevel(logging.DEBUG)
    try:
        import uvloop  # type: ignore[import-not-found]
    except ImportError:  # pragma: no cover - uvloop is a dependency, but optional at heart
        runner: Any = asyncio.run
    else:
        runner = uvloop.run
    try:
        return runner(Server(config, worker).run())
    except KeyboardInterrupt:  # pragma: no cover
        return 0


class Server:
    def __init__(self, config: Config, worker: Any = None) -> None:
        self.config = config
        # A cluster worker (b2bua.cluster.worker.WorkerRole) behind the edge; None: `b2bua run`.
        self.worker = worker
        self.loop: asyncio.AbstractEventLoop | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.stopping = asyncio.Event()

    async def run(self) -> int:
        config = self.config
        server = config.server
        self.loop = asyncio.get_running_loop()
        from rtp.engine import MediaEngine
        from rtp.recorder import repair

        try:
            server.recordings_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            log.error("startup event=failed reason=%r path=%s", str(exc), server.recordings_dir)
            return 1
        repaired = self.worker.repair(server.recordings_dir) if self.worker else repair(server.recordings_dir)
        for path in repaired:
            log.warning("recording event=repaired path=%s", path)

        utc_at = system_utc_at(self.loop.time)  # `now` is the loop's monotonic clock
        advertised = server.host if server.host not in ("0.0.0.0", "::") else server.media_ip
        self.summary = HostileSummary()  # hostile traffic: one line per source per minute
        self.transactions = TransactionLayer()
        # Registrations, nonces and lockout counters: SQLite/memory, or Redis with [cluster] redis.
        try:
            self.stores = open_stores(config)
            await self.stores.start()
        except Exception as exc:  # noqa: BLE001 - redis-py's errors: name the store, never half-start
            log.error("startup event=failed reason=%r redis=%s", str(exc) or type(exc).__name__,
                      getattr(getattr(config, "cluster", None), "redis", "-"))
            return 1
        if self.stores.shared:
            log.info("startup %s", self.stores.describe())
        # The nonce secret: Redis's when shared (every worker on every host has it), else the
        # one the supervisor handed this host's workers, else this process's own.
        secret = (None if self.stores.shared else self.worker.nonce_secret if self.worker else None) \
            or self.stores.digest_secret
        authenticator = DigestAuthenticator(server.realm, secret,
                                            algorithms=config.security.digest_algorithms, shared=self.stores.nonces,
                                            utc_at=utc_at)  # nonce times in UTC: workers on other hosts check them
        lockout = Lockout(
            max_failures=config.security.max_failures,
            window=config.security.failure_window,
            duration=config.security.lockout_seconds,
            per_hour=config.security.max_failures_per_hour,
            per_day=config.security.max_failures_per_day,
            max_duration=config.security.max_lockout_seconds,
            user_per_hour=config.security.max_user_failures_per_hour,
            utc_at=utc_at,
            summary=self.summary,
            store=self.stores.lockout,  # None: in memory; a cluster's counters are in Redis
        )
        passwords = {u.name: u.password for u in config.users}
        self.registrar = Registrar(passwords, server.realm, server.registrations_db, authenticator, lockout,
                                   utc_at=utc_at, store=self.stores.bindings)
        self.strangers = policy_for(config, self.registrar, self.summary,
                                    also_trusted=self.worker.link.is_edge if self.worker else None)
        self.transactions.strangers = self.strangers
        self.lockout = lockout
        # Recordings page, REST API, webhooks, metrics, retention ([http], [[webhooks]], ...).
        from b2bua.recordings_service.service import RecordingsService
        self.recordings = RecordingsService(config, self)
        self.media = MediaEngine(
            server.media_ip,
            server.rtp_ports,
            server.recordings_dir,
            pause_mode=server.pause,
            feature_timeout=server.feature_timeout,
            shared=server.media_sockets == "shared",
            poll_interval=server.media_poll,
            max_calls=server.max_calls,
            # Called on this loop once a recording's WAV and final sidecar are durable (the
            # media core's disk writer posts it; rtp.disk_writer).
            on_finalised=self.recordings.on_finalised,
        )
        self.media.writer.start()  # recordings' disk thread: its reserve file is made now, not at the first call
        self.core = B2BUA(
            config, self.transactions, self.registrar, authenticator, lockout, self.media,
            advertised_host=advertised, port=server.port,
        )
        try:  # before SIP: the API and the index are up when the first call can be
            await self.recordings.start(repaired)
        except OSError as exc:
            log.error("startup event=failed reason=%r http=%s", str(exc), config.http)
            await self.recordings.stop()
            return 1
        self.transport = SipTransport(server.host, server.port, self.on_message, log, hostile=self.summary.count)
        try:
            await self.transport.start()
        except OSError as exc:
            log.error("startup event=failed reason=%r listen=%s:%d", str(exc), server.host, server.port)
            await self.recordings.stop()
            return 1
        for sig in (signal.SIGINT, signal.SIGTERM):
            self.loop.add_signal_handler(sig, self.stopping.set)
        if self.worker:
            self.worker.attach(self)
        self.banner()
        self.arm()
        collector = GcPolicy(self.loop, lambda: len(self.core.calls), log)
        collector.start()
        try:
            await self.stopping.wait()
            await self.shutdown()
        finally:
            collector.stop()
        return 0

    def banner(self) -> None:
        c = self.config
        s = c.server
        log.info("startup listen=%s:%d (udp+tcp) media=%s ports=%d-%d", s.host, s.port, s.media_ip, *s.rtp_ports)
        log.info("startup organisation=%r call_recording=%s recordings=%s pause=%s", c.organisation.name,
                 "on" if c.organisation.call_recording else "off", s.recordings_dir, s.pause)
        for user in c.users:
            log.info("startup user=%s extension=%s", user.name, user.extension or "-")
        for number in c.numbers:
            log.info("startup number=%s to=%s:%s record=%s", number.ddi, *number.to, number.record.value)
        for trunk in c.trunks:
            log.info("startup trunk=%s uri=%s", trunk.name, trunk.uri)
        for warning in os_limits.check(s.rtp_ports):
            log.warning("startup os-limit: %s", warning)

    async def shutdown(self) -> None:
        log.info("shutdown event=begin calls=%d", len(self.core.calls))
        now = self.loop.time()
        self.core.shutdown(now)
        self.flush()
        if self.core.calls or self.transactions.next_deadline() is not None:
            await asyncio.sleep(SHUTDOWN_GRACE)
        await self.media.close()  # finalises recordings and waits for the disk writer to drain
        await self.recordings.stop()  # after media: the last finalised recordings are queued
        await self.transport.stop()
        await self.stores.aclose()
        log.info("shutdown event=done")

    # -- the pump

    def on_message(self, data: bytes, peer: Peer) -> None:
        cpu = time.process_time()
        try:
            self._on_message(data, peer)
        finally:  # what SIP costs the core: rtp.admission tells it from the calls' own load
            self.media.signalling_seconds += time.process_time() - cpu

    def _on_message(self, data: bytes, peer: Peer) -> None:
        now = self.loop.time()
        if wire.isEnabledFor(logging.DEBUG):
            wire.debug("recv %s:%s:%d\n%s", peer.transport, peer.host, peer.port, data.decode("utf-8", "replace"))
        try:
            message = parse_message(data)
        except SipParseError as exc:
            self.summary.count(peer.host, "malformed", now, line=(
                f"sip event=malformed source={peer.host}:{peer.port} status={exc.status} reason={exc.reason!r}"))
            reply = error_response(data, exc.status, exc.reason, peer)
            if reply is not None and (self.strangers.trusted(peer, now) or self.strangers.admit(peer, None, now)):
                self.transport.send(reply, peer)
            return
        try:
            for event in self.transactions.receive(message, peer, now):
                if self.worker:
                    event = self.worker.inbound(event, now)
                    if event is None:
                        continue
                self.core.handle(event, now)
        except Exception:  # a bug must cost one message, never the server
            log.exception("sip event=internal-error source=%s:%d", peer.host, peer.port)
        if peer.transport == "tcp":  # a SIP message keeps the slot; a phone's or trunk's, for good
            self.transport.heard(peer, trusted=self.strangers.trusted(peer, now))
        self.flush()
        self.arm()

    def flush(self) -> None:
        for data, peer in self.transactions.outgoing():
            if self.worker:
                data, peer = self.worker.outbound(data, peer)
            if wire.isEnabledFor(logging.DEBUG):
                wire.debug("send %s:%s:%d\n%s", peer.transport, peer.host, peer.port, data.decode("utf-8", "replace"))
            self.transport.send(data, peer)

    def arm(self) -> None:
        deadlines = [d for d in (self.transactions.next_deadline(), self.core.next_deadline()) if d is not None]
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if deadlines:
            self.timer = self.loop.call_at(max(min(deadlines), self.loop.time()), self.on_timer)

    def on_timer(self) -> None:
        self.timer = None
        cpu = time.process_time()
        now = self.loop.time()
        try:
            for event in self.transactions.handle_timers(now):
                self.core.handle(event, now)
            self.core.handle_timers(now)
            self.summary.flush(now)
        except Exception:
            log.exception("sip event=internal-error in=timers")
        self.flush()
        self.arm()
        self.media.signalling_seconds += time.process_time() - cpu

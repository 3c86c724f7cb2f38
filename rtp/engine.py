"""The media engine (`MediaEngine`): every call's media on one event loop, its sockets, ports and clock.

Everything about media decisions lives in the sans-IO `rtp.relay.CallRelay`; this module
only moves datagrams between UDP sockets and relays, and ticks their timers.

Every datagram takes one path, whatever `[server] media_sockets` says and whichever the
media_ip's family: the ports of `rtp.mux.SharedPorts` (shared by many legs, IPv4 only; or
with `media_sockets = "per_call"`, the only mode of an IPv6 media_ip, a pair per leg:
`dedicated`) are read in batches on the poll clock, the common packet forwarded and recorded
by `rtp.fastpath.LegTable.forward` (a lone packet is a batch of one), the rest by
`CallRelay.receive`. Sessions are opened synchronously (the signalling side needs our ports
for the SDP it is writing).

`MediaSession` (a reader per socket, `recvfrom` and `CallRelay.receive` per datagram) is
left for a system without recvmmsg/sendmmsg (not Linux): per-call ports only there (shared
ones need recvmmsg). Sends are `sendto` on a non-blocking socket; a full socket buffer drops
the packet (counted), as the network would.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import socket
import time
from collections.abc import Callable
from pathlib import Path

from rtp import batch_io
from rtp.call import Call, MediaEndpoint
from rtp.admission import Admission
from rtp.cpu_quota import cpu_quota
from rtp.disk_writer import DiskWriter
from rtp.fastpath import LegTable
from rtp.feature import FEATURE_TIMEOUT
from rtp.lateness import Lateness
from rtp.mux import POLL_INTERVAL, SharedPorts, SharedSession, ipv4
from rtp.ports import MAX_DATAGRAM, PortRange, PortsExhausted, read_datagrams
from rtp.prompts import Prompts, load_prompts
from rtp.relay import TICK_INTERVAL, CallRelay, Datagram, recorder_factory

MAX_READS_PER_WAKEUP = 64  # datagrams drained per readiness callback before yielding to other sockets
PORTS_PER_SESSION = 2  # one RTP/RTCP pair facing each party
LAG_SMOOTHING = 0.1  # weight of the newest tick in the moving average
LATENESS_WINDOW = 5.0  # seconds per `media event=lateness` log line (rtp.lateness)
# Sessions a tick drives between two reads of the shared ports. Why: at 2,000 calls a tick
# flushes ~40 recorders (one a second each), ~150 us apiece (bench/recorder.py): 6 ms
# without a read, the stall the lateness histogram showed; 8 keep a read within ~1.2 ms.
SESSIONS_PER_READ = 8
# Receive areas (rtp.mux.READ_BATCH datagrams each) such a read between flushes may take.
# Why one: behind (a core shared with other work, a burst), every read finds full areas, and
# a read that caught all of them up (up to 16 areas, ~50-100 ms at 2,000 calls) every 8
# flushes made a tick of 80 flushes last a second: 4 ticks ran in 5 s, the recorders'
# flushes fell behind, their timelines held the audio (RSS 0.3 -> 1 GB) and each flush grew
# dearer. The poll (rtp.mux.POLL_INTERVAL) catches up; the tick keeps its flushes on time.
AREAS_PER_READ_BETWEEN_FLUSHES = 1
MIN_FLUSHES_PER_TICK = 16  # recorder flushes a tick may always do (see _tick_sessions)
LATE_READ_BUCKET = 8  # stats()["late_reads"]: reads of this window later than EDGES_MS[7] (5 ms)
_RELAY_COUNTERS = ("forwarded", "malformed", "oversize", "unlatched", "no_target", "swallowed", "injected", "rtcp")


def _add_relay_stats(out: dict[str, int], session: MediaSession | SharedSession) -> None:
    stats = session.relay.stats
    for key in _RELAY_COUNTERS:
        out[key] += getattr(stats, key)


class MediaSession:
    """One call's media on its own two RTP/RTCP port pairs, a reader per socket: only for a
    system without recvmmsg (see the module doc). Every datagram goes
    through `CallRelay.receive`: on IPv4 this cost ~3x a shared port's per packet
    (bench/media_edge.py, docs/performance.md 2026-12-07)."""

    def __init__(self, core: MediaEngine, call: Call, base_ports: tuple[int, int], sockets: list[socket.socket]) -> None:
        self.core = core
        self.call = call
        self.relay = CallRelay(call, core.prompts, core.make_recorder, feature_timeout=core.feature_timeout,
                               table=core.leg_table)
        self._base_ports = base_ports
        # [rtp leg 0, rtcp leg 0, rtp leg 1, rtcp leg 1]
        self._sockets = sockets
        self._rtp = (sockets[0], sockets[2])
        self._rtcp = (sockets[1], sockets[3])
        self.send_errors = 0
        self.closed = False
        now = core.now()
        for channel, party in enumerate(call.parties):
            if party.media is not None:  # SDP signalling already knew when it opened the session
                self.relay.set_media(channel, party.media, now)
        loop = core.loop
        for channel in (0, 1):
            loop.add_reader(self._rtp[channel].fileno(), self._on_rtp, channel)
            loop.add_reader(self._rtcp[channel].fileno(), self._on_rtcp, channel)

    @property
    def ports(self) -> tuple[int, int]:
        """Our RTP port facing channel 1's party (leg 0), and facing channel 2's (leg 1)."""
        return self._base_ports

    def set_media(self, channel: int, endpoint: MediaEndpoint) -> None:
        """A party's negotiated stream (channel 0 or 1); again on re-INVITE or hold."""
        self.relay.set_media(channel, endpoint, self.core.now())

    def answered(self, now: float | None = None) -> None:
        """The call is answered: starts the recording clock (call.record_at_answer)."""
        self.relay.answered(self.core.now() if now is None else now)
        self.core.wake(self)

    def dtmf(self, channel: int, digit: str, now: float | None = None) -> None:
        """A digit from SIP INFO: the same *1 rules as RFC 4733 digits."""
        self._send(self.relay.dtmf(channel, digit, self.core.now() if now is None else now))
        self.core.wake(self)

    def close(self) -> None:
        """Finalise the recording and free the ports. Idempotent."""
        if self.closed:
            return
        self.closed = True
        loop = self.core.loop
        for sock in self._sockets:
            try:
                loop.remove_reader(sock.fileno())
            except (ValueError, RuntimeError):  # loop already closed at shutdown
                pass
            sock.close()
        try:
            self.relay.close(self.core.now())
        finally:
            self.core.leg_table.remove(self.relay.slot)
            self.core.release(self)

    # -- datagrams -------------------------------------------------------------------

    def _on_rtp(self, channel: int) -> None:
        sock = self._rtp[channel]
        relay = self.relay
        now = self.core.now  # the one media clock: the loop's
        for _ in range(MAX_READS_PER_WAKEUP):
            try:
                data, addr = sock.recvfrom(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # e.g. ICMP port unreachable reported on a later read
                continue
            try:
                out = relay.receive(channel, data, addr[:2], now())
            except Exception:  # a relay bug must cost one packet, not the event loop's reader
                self.core.log.exception("media relay failed on a packet for call %s", self.call.call_id)
                continue
            if relay.busy:
                self.core.wake(self)
            if out:
                self._send(out)

    def _on_rtcp(self, channel: int) -> None:
        for data, addr in read_datagrams(self._rtcp[channel], MAX_READS_PER_WAKEUP):
            for leg, payload, target in self.relay.receive_rtcp(channel, data, addr, self.core.now()):
                self._sendto(self._rtcp[leg], payload, target)

    def _send(self, out: list[Datagram]) -> None:
        rtp = self._rtp
        for leg, payload, target in out:
            self._sendto(rtp[leg], payload, target)

    def _sendto(self, sock: socket.socket, payload: bytes, target: tuple[str, int]) -> None:
        try:
            sock.sendto(payload, target)
        except OSError:  # full buffer, unreachable network: a lost packet, as on the wire
            self.send_errors += 1

    def _tick(self, now: float) -> None:
        out = self.relay.tick(now)
        if out:
            self._send(out)


class MediaEngine:
    """All calls' media on one event loop: port allocation and the shared 20 ms tick."""

    def __init__(
        self,
        media_ip: str,
        port_range: tuple[int, int],
        recordings_dir: Path | str,
        pause_mode: str = "silence",
        feature_timeout: float = FEATURE_TIMEOUT,
        log: logging.Logger | None = None,
        *,
        prompts: Prompts | None = None,
        make_recorder: Callable | None = None,
        writer: DiskWriter | None = None,
        shared: bool = False,
        max_calls: int = 0,
        cpu_clock: Callable[[], float] = time.process_time,
        cpu_limit: Callable[[], float] = cpu_quota,
        poll_interval: float = POLL_INTERVAL,
        on_finalised: Callable[[Path], None] | None = None,
    ) -> None:
        low, high = port_range
        if low % 2:
            low += 1  # RTP on even ports, RTCP on the odd port above (RFC 3550 §11)
        if high - low < 2 * PORTS_PER_SESSION - 1:
            raise ValueError(f"RTP port range {port_range} holds fewer than {PORTS_PER_SESSION} even/odd pairs")
        self.media_ip = media_ip
        self.port_range = (low, high)
        self.recordings_dir = Path(recordings_dir)
        self.pause_mode = pause_mode
        self.feature_timeout = feature_timeout
        self.log = log if log is not None else logging.getLogger("rtp")
        self.prompts = prompts if prompts is not None else load_prompts()
        # Recordings' disk work, on the writer's thread (rtp.disk_writer): `on_finalised` is
        # called on this loop with each sidecar's path once the recording is final and durable.
        self.on_finalised = on_finalised
        self.writer = writer if writer is not None else DiskWriter(self.recordings_dir)
        self.make_recorder = (
            make_recorder if make_recorder is not None
            else recorder_factory(self.recordings_dir, pause_mode, writer=self.writer, on_finalised=on_finalised)
        )
        self.sessions: list[MediaSession | SharedSession] = []
        # Which sessions the tick drives (see _tick_sessions): a heap of (next flush, n,
        # session), the time each is scheduled for, and those with timers running now.
        self._flushes: list[tuple[float, int, MediaSession | SharedSession]] = []
        self._scheduled: dict[MediaSession | SharedSession, float] = {}
        self._busy: set[MediaSession | SharedSession] = set()
        self._scheduled_n = 0
        # [server] media_sockets = "shared": legs share a few ports (rtp.mux), IPv4 only.
        if shared and not ipv4(media_ip):
            raise ValueError(f"shared media sockets need an IPv4 media_ip, not {media_ip}")
        self.port_pool = PortRange(media_ip, low, high)
        # Every call's per-leg stream state, the only copy (rtp.fastpath.LegTable).
        self.leg_table = LegTable()
        # The ports every call's media is read from (rtp.mux): shared, or (per_call, and any
        # IPv6 media_ip) a pair per leg on the same batch path; None: MediaSession's reader
        # per socket (no recvmmsg on this system).
        self.pool: SharedPorts | None = None
        if shared or batch_io.available():
            self.pool = SharedPorts(self, self.port_pool, poll_interval, self.leg_table, dedicated=not shared)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._next_tick = 0.0
        self.lag = 0.0  # smoothed lateness of the tick (seconds)
        # How late each shared-port read and each tick ran, logged per LATENESS_WINDOW.
        self.read_lateness = Lateness()
        self.tick_lateness = Lateness()
        self._lateness_at = 0.0
        # stats() of calls already over (their relays are gone)
        self._closed_stats = {key: 0 for key in _RELAY_COUNTERS} | {"send_errors": 0}
        # Past a core's capacity every call would degrade together (SIP read seconds late,
        # audio too late to record): new calls are refused instead (rtp.admission).
        self.admission = Admission(max_calls=max_calls)
        self._cpu_clock = cpu_clock
        self._cpu_limit = cpu_limit  # cores this process may use (its cgroup's quota), read each sample
        self._overloaded = False  # as of the last admission sample (for the log line)
        # CPU seconds the SIP side has spent (b2bua.server adds to it): an overload that
        # signalling causes must not lower the ceiling on calls (rtp.admission).
        self.signalling_seconds = 0.0

    def stats(self) -> dict[str, int]:
        """Counters for metrics (b2bua/recordings_service/metrics.py; cheap: one pass over
        the live calls, calls already over kept as totals). `forwarded`: packets relayed.
        Drops by reason, each packet counted once under the first rule it broke:
        `malformed` (of which `oversize`: longer than MAX_PACKET_SIZE), `unlatched` (not
        the party's address; on a per-call port every source the party may not latch
        to), `no_target` (nowhere to send), `strangers` and `ambiguous` (shared ports
        only: from nobody known / an address several calls claim and no SSRC tells
        apart), `send_errors` (RTCP, and sends of MediaSession's sockets) and `send_dropped`
        (RTP sent from the ports' batch path) when the kernel refused the send.
        `late_reads`: port reads (shared or per-call) of the current lateness
        window over 5 ms late. Also `swallowed` (*1 digits), `injected` (prompts,
        regenerated digits), `rtcp`, `calls_active`, `sessions_active`,
        `recordings_active`, `shared_ports` (0 with per-call ports)."""
        out = dict(self._closed_stats)
        for session in self.sessions:
            _add_relay_stats(out, session)
        out["send_errors"] += sum(session.send_errors for session in self.sessions)
        out["calls_active"] = out["sessions_active"] = len(self.sessions)
        out["recordings_active"] = sum(
            1 for session in self.sessions if session.relay.recorder is not None and session.relay.recorder.recording
        )
        shared = self.pool.stats if self.pool is not None else {}
        for key in ("strangers", "ambiguous", "send_dropped", "shared_ports"):
            out[key] = shared.get(key, 0)
        out["late_reads"] = self.read_lateness.total - sum(self.read_lateness.counts[:LATE_READ_BUCKET])
        return out

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    def now(self) -> float:
        """The one clock media runs on: the event loop's (monotonic) time."""
        return self.loop.time()

    @property
    def free_pairs(self) -> int:
        """Even/odd port pairs not in use (some may still be taken by other processes)."""
        return self.port_pool.free_pairs

    def open_session(self, call: Call) -> MediaSession | SharedSession:
        """Bind two RTP/RTCP pairs for `call` at once (per_call), or place its legs on shared
        ports; PortsExhausted when the range is full."""
        if self.pool is not None:
            shared = SharedSession(self, self.pool, call)
            self.sessions.append(shared)
            self._start_ticking()
            return shared
        sockets: list[socket.socket] = []
        bases: list[int] = []
        try:
            while len(bases) < PORTS_PER_SESSION:
                base, rtp, rtcp = self.port_pool.bind_pair(calls=len(self.sessions))
                bases.append(base)
                sockets += [rtp, rtcp]
        except BaseException:
            for sock in sockets:
                sock.close()
            for base in bases:
                self.port_pool.release(base)
            raise
        session = MediaSession(self, call, (bases[0], bases[1]), sockets)
        self.sessions.append(session)
        self._start_ticking()
        return session

    def release(self, session: MediaSession | SharedSession) -> None:
        if isinstance(session, MediaSession):
            for base in session.ports:
                self.port_pool.release(base)
        try:
            self.sessions.remove(session)
        except ValueError:
            pass
        else:  # its counters join the ended calls' (stats())
            _add_relay_stats(self._closed_stats, session)
            self._closed_stats["send_errors"] += session.send_errors
        self._busy.discard(session)
        self._scheduled.pop(session, None)  # its heap entry is skipped when it comes up
        if not self._scheduled:
            self._flushes.clear()
        if not self.sessions and self._timer is not None:
            self._timer.cancel()
            self._timer = None
            self.lag = 0.0

    # -- the shared clock --------------------------------------------------------------

    def _start_ticking(self) -> None:
        if self._timer is None:
            self._next_tick = self.loop.time() + TICK_INTERVAL
            self.admission.restart(self._next_tick, self._cpu_clock(), self.signalling_seconds)
            self._timer = self.loop.call_at(self._next_tick, self._tick)

    @property
    def overloaded(self) -> bool:
        """No new call fits (b2bua answers 503): the learned ceiling or max_calls is reached,
        the last second's sample was overloaded, or the tick runs late right now."""
        return not self.admission.admit(len(self.sessions), self.lag, self.loop.time() if self._timer else None)

    def note_lag(self, late: float) -> None:
        """One tick's lateness into the average; a single stall counts as at most 0.5 s, so
        one pause (a slow disk, a collection) alone never refuses calls."""
        self.lag += LAG_SMOOTHING * (min(max(late, 0.0), 0.5) - self.lag)

    def _tick(self) -> None:
        """Every 20 ms: drive only the relays with something due (held `*`, prompt, flush)."""
        loop = self.loop
        now = loop.time()
        self.note_lag(now - self._next_tick)
        self.tick_lateness.add(now - self._next_tick)
        if now >= self._lateness_at:
            self._log_lateness(now)
        if self.admission.due(now):
            self._sample(now)
        self._tick_sessions(now)
        self._next_tick += TICK_INTERVAL
        if self._next_tick < loop.time():  # fell behind: skip missed ticks instead of bursting
            self._next_tick = loop.time() + TICK_INTERVAL
        self._timer = loop.call_at(self._next_tick, self._tick) if self.sessions else None

    def _log_lateness(self, now: float) -> None:
        """One line per window: how late the media reads and ticks ran (bench/load.py reads it)."""
        if self._lateness_at:
            for what, hist in (("read", self.read_lateness), ("tick", self.tick_lateness)):
                if hist.total:
                    self.log.info("media event=lateness what=%s window_s=%.0f calls=%d %s", what, LATENESS_WINDOW,
                                  len(self.sessions), hist.line())
        self.read_lateness = Lateness()
        self.tick_lateness = Lateness()
        self._lateness_at = now + LATENESS_WINDOW

    def _sample(self, now: float) -> None:
        """One admission sample a second; a log line when the core enters or leaves overload."""
        sample = self.admission.sample(now, self._cpu_clock(), self.lag, len(self.sessions), self.signalling_seconds,
                                       self._cpu_limit())
        if sample is None or sample.overloaded == self._overloaded:
            return
        self._overloaded = sample.overloaded
        ceiling = self.admission.ceiling
        self.log.warning(
            "media event=%s calls=%d ceiling=%s cpu_percent=%.0f sip_percent=%.0f lag_ms=%.0f%s",
            "overloaded" if sample.overloaded else "recovered", sample.calls,
            int(ceiling) if ceiling != float("inf") else "none", 100 * sample.utilisation,
            100 * sample.signalling, 1000 * sample.lag,
            f" of_cpu_quota={sample.limit:g}" if sample.limit < 1.0 else "",
        )

    def wake(self, session: MediaSession | SharedSession) -> None:
        """`session`'s relay may have something for the tick: a timer running (`busy`: a *1
        pending, a prompt playing) or a recorder flush at `next_flush`. Called after
        anything that can change either (receive, dtmf, answered)."""
        relay = session.relay
        if relay.busy:
            self._busy.add(session)
        due = relay.next_flush
        if due != float("inf") and self._scheduled.get(session) != due:
            self._scheduled[session] = due
            self._scheduled_n += 1
            heapq.heappush(self._flushes, (due, self._scheduled_n, session))

    def _tick_sessions(self, now: float) -> None:
        """Drive the relays with something due: the busy ones, and those whose flush came.

        Why a schedule and not a look at every session: at 2,000 calls that look was
        100,000 Python iterations a second to find the ~40 sessions a tick has work for."""
        due = set(self._busy)
        flushes, scheduled = self._flushes, self._scheduled
        # At most twice the steady rate (a second of flushes over 50 ticks) per tick: after a
        # stall every recorder is due at once, and flushing them all in one callback (while
        # the reads between them keep filling the others) made a stall of seconds out of one
        # of 100 ms. The rest wait in the heap for the next ticks, oldest first.
        limit = max(MIN_FLUSHES_PER_TICK, 2 * len(self.sessions) // 50)
        taken = 0
        while flushes and flushes[0][0] <= now and taken < limit:
            at, _, session = heapq.heappop(flushes)
            if scheduled.get(session) == at:  # else stale: rescheduled or closed since
                del scheduled[session]
                due.add(session)
                taken += 1
        shared = self.pool
        driven = 0
        for session in due:
            if session.closed:
                self._busy.discard(session)
                continue
            driven += 1
            if shared is not None and driven % SESSIONS_PER_READ == 0:
                try:
                    shared.read_waiting(AREAS_PER_READ_BETWEEN_FLUSHES)  # between flushes, not after all
                except Exception:
                    self.log.exception("media read between flushes failed")
            relay = session.relay
            if relay.busy or now >= relay.next_flush:
                try:
                    session._tick(now)
                except Exception:  # one call's failure must not stop every call's clock
                    self.log.exception("media tick failed for call %s", session.call.call_id)
            if not relay.busy:
                self._busy.discard(session)
            self.wake(session)
        if shared is not None:
            shared.flush()

    async def close(self) -> None:
        """Finalise every recording and free every port (graceful shutdown, SIGTERM)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for session in list(self.sessions):
            try:
                session.close()
            except Exception:
                self.log.exception("closing media for call %s failed", session.call.call_id)
        if self.pool is not None:
            self.pool.close_all()
        await self.writer.aclose()  # the last recordings reach the disk before the process exits

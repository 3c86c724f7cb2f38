"""MediaSession over real UDP sockets on 127.0.0.1 (asyncio)."""

from __future__ import annotations

import asyncio
import json
import socket
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from rtp.call import Call, MediaEndpoint, Party
from rtp import g711
from rtp.engine import MediaEngine, PortsExhausted
from rtp.events import event_payload
from rtp.mux import POLL_INTERVAL
from rtp.packet import RtpPacket, build
from rtp.prompts import Prompts
from tests.conftest import make_call

HOST = "127.0.0.1"
PROMPTS = Prompts(paused=np.full(1600, 3000, dtype=np.int16), recording=np.full(1600, -3000, dtype=np.int16))


def free_range(pairs: int) -> tuple[int, int]:
    """An even-based port range nobody seems to use right now."""
    for base in range(30000, 60000, 200):
        socks = []
        try:
            for port in range(base, base + 2 * pairs):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                socks.append(s)
                s.bind((HOST, port))
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
        return base, base + 2 * pairs - 1
    raise RuntimeError("no free ports")


def phone() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((HOST, 0))
    sock.setblocking(False)
    return sock


async def receive(sock: socket.socket, timeout: float = 1.0) -> tuple[bytes, tuple[str, int]]:
    loop = asyncio.get_running_loop()
    return await asyncio.wait_for(loop.sock_recvfrom(sock, 2048), timeout)


async def until(condition, seconds: float = 0.5) -> None:  # type: ignore[no-untyped-def]
    """Wait (polling) until `condition()` holds or `seconds` pass; the caller asserts."""
    for _ in range(int(seconds / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)


async def drain(sock: socket.socket, seconds: float) -> list[RtpPacket]:
    packets = []
    deadline = asyncio.get_running_loop().time() + seconds
    while True:
        remaining = deadline - asyncio.get_running_loop().time()
        if remaining <= 0:
            return packets
        try:
            data, _ = await receive(sock, remaining)
        except TimeoutError:
            return packets
        packet = RtpPacket.parse(data)
        if packet is not None:
            packets.append(packet)

def count_paths(media: MediaEngine, monkeypatch: pytest.MonkeyPatch) -> tuple[list[int], list[str]]:
    """Count the packets `LegTable.forward` takes ([n]) and the calls `CallRelay.receive` is
    called for (a call id per packet)."""
    from rtp.relay import CallRelay

    lane = [0]
    received: list[str] = []
    forward = media.leg_table.forward

    def counted_forward(rows, lens, legs, now):  # type: ignore[no-untyped-def]
        slow = forward(rows, lens, legs, now)
        lane[0] += len(legs) - len(slow)
        return slow

    receive = CallRelay.receive

    def counted_receive(self, channel, data, addr, now):  # type: ignore[no-untyped-def]
        received.append(self.call.call_id)
        return receive(self, channel, data, addr, now)

    monkeypatch.setattr(media.leg_table, "forward", counted_forward)
    monkeypatch.setattr(CallRelay, "receive", counted_receive)
    return lane, received


async def talk(ext: socket.socket, user: socket.socket, to_ext_port: tuple[str, int],
               to_user_port: tuple[str, int], first: int = 0) -> tuple[list[RtpPacket], list[RtpPacket]]:
    """20 packets each way (sequence numbers from `first`), each party's first one read
    alone whatever the machine's load; what the user and the external party received."""
    to_user: list[RtpPacket] = []
    to_ext: list[RtpPacket] = []
    for i in range(first, first + 20):
        ext.sendto(build(0, i, i * 160, 0x1111, b"\xff" * 160), to_ext_port)
        user.sendto(build(0, i, i * 160, 0x2222, b"\x7f" * 160), to_user_port)
        if i == first:
            to_user += await drain(user, 0.2)
            to_ext += await drain(ext, 0.05)
        await asyncio.sleep(0.02)
    to_user += await drain(user, 0.2)
    to_ext += await drain(ext, 0.05)
    return to_user, to_ext



@pytest.fixture(params=["per_call", "shared", "per_call_on_readiness"])
async def core(tmp_path: Path, request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    """Every test runs with a socket per leg and with shared sockets (rtp.mux), both read on
    the poll clock; and per-call sockets read as datagrams come (`media_poll_ms = 0`)."""
    media = MediaEngine(HOST, free_range(4), tmp_path, prompts=PROMPTS, feature_timeout=0.5, shared=request.param == "shared",
                        poll_interval=0.0 if request.param.endswith("on_readiness") else POLL_INTERVAL)
    yield media
    await media.close()


def shared(core: MediaEngine) -> bool:
    return core.pool is not None and not core.pool.dedicated


async def test_audio_flows_both_ways_and_is_recorded(core: MediaEngine, tmp_path: Path) -> None:
    ext, user = phone(), phone()
    session = core.open_session(make_call("core1"))
    rtp_ext, rtp_user = session.ports
    assert rtp_ext % 2 == 0 and rtp_user % 2 == 0
    assert (rtp_ext == rtp_user) if shared(core) else (rtp_ext != rtp_user)  # shared: one port, told apart by source
    session.set_media(0, MediaEndpoint(ext.getsockname(), HOST))
    session.set_media(1, MediaEndpoint(user.getsockname(), HOST))
    session.answered()
    for i in range(25):
        ext.sendto(build(0, i, i * 160, 0x1111, g711.encode(np.full(160, 1000, dtype=np.int16), 0)), (HOST, rtp_ext))
        user.sendto(build(0, i, i * 160, 0x2222, g711.encode(np.full(160, -1000, dtype=np.int16), 0)), (HOST, rtp_user))
        await asyncio.sleep(0.02)
    to_user = await drain(user, 0.2)
    to_ext = await drain(ext, 0.05)
    assert len(to_user) == 25 and len(to_ext) == 25
    assert {p.ssrc for p in to_user} != {0x1111}  # our own SSRC towards each party
    assert [(p.sequence - to_user[0].sequence) & 0xFFFF for p in to_user] == list(range(25))
    session.close()
    wavs = list(tmp_path.rglob("core1.wav"))
    assert len(wavs) == 1
    sidecar = json.loads(wavs[0].with_suffix(".json").read_text())
    assert sidecar["call_id"] == "core1"
    assert core.sessions == []
    ext.close()
    user.close()


async def test_rtcp_is_relayed_to_rtp_port_plus_one(core: MediaEngine) -> None:
    ext_rtp, user_rtp = phone(), phone()
    user_rtcp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    user_rtcp.setblocking(False)
    try:
        user_rtcp.bind((HOST, user_rtp.getsockname()[1] + 1))
    except OSError:
        pytest.skip("the port above the phone's RTP port is taken")
    session = core.open_session(make_call("core2"))
    session.set_media(0, MediaEndpoint(ext_rtp.getsockname(), HOST))
    session.set_media(1, MediaEndpoint(user_rtp.getsockname(), HOST))
    report = bytes.fromhex("80c90001") + (0x1111).to_bytes(4, "big")
    ext_rtp.sendto(report, (HOST, session.ports[0] + 1))
    data, source = await receive(user_rtcp)
    assert data == report and source == (HOST, session.ports[1] + 1)
    session.close()
    for s in (ext_rtp, user_rtp, user_rtcp):
        s.close()


async def test_strangers_are_not_relayed(core: MediaEngine) -> None:
    ext, user = phone(), phone()
    session = core.open_session(make_call("core3"))
    session.set_media(0, MediaEndpoint(("127.0.0.2", 4000), "127.0.0.2"))  # the trunk lives elsewhere
    session.set_media(1, MediaEndpoint(user.getsockname(), HOST))
    ext.sendto(build(0, 1, 160, 0x1111, b"\xff" * 160), (HOST, session.ports[0]))
    assert await drain(user, 0.1) == []
    if shared(core):  # the port does not say which leg: a source nobody may latch from is a stranger
        assert core.pool.stats["strangers"] == 1 and session.relay.stats.forwarded == 0
    else:
        assert session.relay.stats.unlatched == 1
    session.close()
    ext.close()
    user.close()


@pytest.mark.parametrize("shared", [False, True])
async def test_star_one_prompt_from_the_tick(tmp_path: Path, shared: bool) -> None:
    """The digits make the relay busy; the tick's schedule (MediaEngine.wake) must then drive
    it every 20 ms, on per-call and on shared sockets alike."""
    core = MediaEngine(HOST, free_range(8), tmp_path, prompts=PROMPTS, shared=shared)
    ext, user = phone(), phone()
    session = core.open_session(make_call("core4"))
    session.set_media(0, MediaEndpoint(ext.getsockname(), HOST))
    session.set_media(1, MediaEndpoint(user.getsockname(), HOST))
    session.answered()
    seq = 0
    for code in (10, 1):
        for i in range(5):
            seq += 1
            payload = event_payload(code, i >= 2, 160 * (i + 1))
            user.sendto(build(101, seq, 1000 * (code + 1), 0x2222, payload, marker=i == 0), (HOST, session.ports[1]))
            await asyncio.sleep(0.005)
    heard = await drain(user, 0.6)  # the carrier is silent: the 20 ms tick plays the prompt
    assert session.relay.recorder is not None and not session.relay.recorder.recording
    levels = [int(g711.decode(p.payload, 0)[0]) for p in heard if p.payload_type == 0]
    assert len(levels) >= 8 and all(abs(v - 3000) < 200 for v in levels)
    assert await drain(ext, 0.05) == []  # the carrier heard neither digits nor prompt
    session.close()
    ext.close()
    user.close()
    await core.close()


async def test_the_tick_drives_only_sessions_with_something_due(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A session is ticked when its recorder's flush comes (a second after answer, then
    every second) or while its relay is busy; an unanswered, idle or closed one is not."""
    media = MediaEngine(HOST, free_range(8), tmp_path, prompts=PROMPTS)
    ticked: list[str] = []
    sessions = [media.open_session(make_call(f"tick{i}")) for i in range(3)]
    for session in sessions:
        original = session._tick
        monkeypatch.setattr(session, "_tick", lambda now, s=session, f=original: (ticked.append(s.call.call_id), f(now)))
    sessions[0].answered(100.0)
    sessions[1].answered(100.5)  # sessions[2] is never answered: nothing to flush
    media._tick_sessions(100.9)
    assert ticked == []
    media._tick_sessions(101.0)
    assert ticked == ["tick0"]
    media._tick_sessions(101.6)
    assert ticked == ["tick0", "tick1"]
    ticked.clear()
    sessions[1].relay.busy = True  # as a digit leaves it: a *1 pending
    media.wake(sessions[1])
    media._tick_sessions(101.62)
    media._tick_sessions(101.64)  # the relay's tick found nothing running: no longer busy
    assert ticked == ["tick1"]
    sessions[0].close()
    media._tick_sessions(102.0)  # its flush was due, but it is closed
    assert ticked == ["tick1"]
    media._tick_sessions(102.5)
    assert ticked == ["tick1", "tick1"]
    for session in sessions[1:]:
        session.close()
    await media.close()


@pytest.mark.parametrize("shared", [False, True])
async def test_media_sockets_send_with_df_set_and_no_per_datagram_ip_id(tmp_path: Path, shared: bool) -> None:
    """IP_PMTUDISC_PROBE on every IPv4 media socket (rtp.ports.bind_socket): DF set, so Linux sends
    IP ID 0 (RFC 6864) instead of drawing one per datagram from its shared generator."""
    media = MediaEngine(HOST, free_range(8), tmp_path, prompts=PROMPTS, shared=shared)
    session = media.open_session(make_call("df"))
    socks = [s for port in media.pool.ports for s in (port.rtp, port.rtcp)]
    assert len(socks) == (2 if shared else 4)  # per call: the call's own two RTP/RTCP pairs
    for sock in socks:
        assert sock.getsockopt(socket.IPPROTO_IP, 10) == 3  # IP_MTU_DISCOVER: IP_PMTUDISC_PROBE
    session.close()
    await media.close()


async def test_port_exhaustion_is_a_clear_error(tmp_path: Path) -> None:
    media = MediaEngine(HOST, free_range(2), tmp_path, prompts=PROMPTS)
    first = media.open_session(make_call("a"))
    with pytest.raises(PortsExhausted, match="no free RTP port pair"):
        media.open_session(make_call("b"))
    first.close()
    second = media.open_session(make_call("c"))  # freed ports are reused
    assert set(second.ports) == set(first.ports)
    await media.close()
    assert media.sessions == []


async def test_a_tick_running_late_marks_the_core_overloaded_and_it_recovers(tmp_path: Path) -> None:
    """The smoothed lateness of the 20 ms tick (a loop past its core's capacity) is what
    b2bua checks before taking a new call; one late tick is not overload, a run of them is."""
    media = MediaEngine(HOST, free_range(2), tmp_path, prompts=PROMPTS)
    media.note_lag(0.5)
    assert not media.overloaded  # one hiccup (a GC pause, a slow disk write)
    for _ in range(20):
        media.note_lag(0.3)
    assert media.overloaded
    for _ in range(40):
        media.note_lag(0.0)
    assert not media.overloaded
    await media.close()


async def test_a_core_using_most_of_its_cpu_refuses_calls_above_what_it_carries(tmp_path: Path) -> None:
    """The media clock samples the process's CPU share once a second (rtp.admission): at 95%
    with three calls up the ceiling drops under three, so a fourth INVITE would get 503."""
    loop = asyncio.get_running_loop()
    media = MediaEngine(HOST, free_range(8), tmp_path, prompts=PROMPTS, cpu_clock=lambda: 0.95 * loop.time())
    for name in "abc":
        media.open_session(make_call(name))
    assert not media.overloaded
    await asyncio.sleep(1.2)
    assert media.admission.last is not None and media.admission.last.utilisation > 0.9
    assert media.overloaded
    await media.close()


async def test_max_calls_refuses_the_call_past_the_limit(tmp_path: Path) -> None:
    media = MediaEngine(HOST, free_range(8), tmp_path, prompts=PROMPTS, max_calls=2)
    media.open_session(make_call("a"))
    assert not media.overloaded
    media.open_session(make_call("b"))
    assert media.overloaded
    await media.close()


async def test_stats_count_relayed_packets_drops_by_reason_and_live_calls(core: MediaEngine) -> None:
    """MediaEngine.stats(): what the metrics endpoint exports; calls already over still count."""
    ext, user = phone(), phone()
    session = core.open_session(make_call("stats"))
    session.set_media(0, MediaEndpoint(ext.getsockname(), HOST))
    session.set_media(1, MediaEndpoint(user.getsockname(), HOST))
    session.answered()
    for k in range(3):
        ext.sendto(build(0, k, 160 * k, 0x1111, b"\xff" * 160), (HOST, session.ports[0]))
    ext.sendto(b"\x80\x00\x01", (HOST, session.ports[0]))  # too short for RTP
    for _ in range(30):
        await asyncio.sleep(0.01)
        if core.stats()["malformed"]:
            break
    stats = core.stats()
    assert stats["forwarded"] == 3 and stats["malformed"] == 1
    assert stats["calls_active"] == 1 and stats["recordings_active"] == 1
    assert all(isinstance(v, int) for v in stats.values())
    for key in ("unlatched", "no_target", "oversize", "strangers", "ambiguous", "send_errors", "send_dropped",
                "late_reads", "swallowed"):
        assert key in stats
    session.close()
    after = core.stats()
    assert after["forwarded"] == 3 and after["calls_active"] == 0 and after["recordings_active"] == 0
    ext.close()
    user.close()


async def test_per_call_ports_take_the_batch_path_and_still_name_the_call(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """`media_sockets = "per_call"` on IPv4: the call's own ports are read in batches with the
    shared ports' (rtp.mux SharedPorts, dedicated), its steady packets forwarded and recorded
    by `LegTable.forward`, `CallRelay.receive` seeing only each party's first packet. The port
    still names the call: a second source is the leg's `unlatched`, never a `stranger`."""
    media = MediaEngine(HOST, free_range(4), tmp_path, prompts=PROMPTS, shared=False)
    assert media.pool is not None and media.pool.dedicated
    lane, received = count_paths(media, monkeypatch)
    ext, user, other = phone(), phone(), phone()
    session = media.open_session(make_call("lane"))
    rtp_ext, rtp_user = session.ports
    assert rtp_ext != rtp_user and {p.port for p in media.pool.ports} == {rtp_ext, rtp_user}
    session.set_media(0, MediaEndpoint(ext.getsockname(), HOST))
    session.set_media(1, MediaEndpoint(user.getsockname(), HOST))
    session.answered()
    to_user, to_ext = await talk(ext, user, (HOST, rtp_ext), (HOST, rtp_user))
    assert len(to_user) == 20 and len(to_ext) == 20
    assert [(p.sequence - to_user[0].sequence) & 0xFFFF for p in to_user] == list(range(20))
    assert len(received) == 2 and lane[0] == 38  # a party's first packet latches it and starts the stream
    other.sendto(build(0, 99, 99 * 160, 0x3333, b"\xff" * 160), (HOST, rtp_ext))  # a second source, same host
    await until(lambda: media.stats()["unlatched"])
    stats = media.stats()
    assert stats["unlatched"] == 1 and stats["strangers"] == 0 and stats["forwarded"] == 40
    assert await drain(user, 0.05) == []
    session.close()
    assert media.pool.ports == [] and media.free_pairs == 4  # the call's ports are free at once
    for sock in (ext, user, other):
        sock.close()
    await media.close()
    assert list(tmp_path.rglob("lane.wav"))


def v6_sockets(count: int) -> list[socket.socket]:
    """Peers on ::1, each its own non-blocking UDP socket."""
    socks = []
    for _ in range(count):
        sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        sock.bind(("::1", 0))
        sock.setblocking(False)
        socks.append(sock)
    return socks


async def test_an_ipv6_media_ip_takes_the_batch_path_with_the_same_rules(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """An IPv6 media_ip's per-call ports are read like IPv4's (rtp.mux SharedPorts, dedicated;
    sockaddr_in6 sources keyed by rtp.source_keys): steady packets are `LegTable.forward`'s,
    `CallRelay.receive` sees each party's first packet; the port still names the call (a
    second source is `unlatched`, not a stranger); audio is recorded."""
    low, high = free_range(4)
    media = MediaEngine("::1", (low, high), tmp_path, prompts=PROMPTS)
    assert media.pool is not None and media.pool.dedicated
    lane, received = count_paths(media, monkeypatch)
    ext, user, other = socks = v6_sockets(3)
    session = media.open_session(make_call("v6"))
    rtp_ext, rtp_user = session.ports
    assert {p.port for p in media.pool.ports} == {rtp_ext, rtp_user}
    session.set_media(0, MediaEndpoint(ext.getsockname()[:2], "::1"))
    session.set_media(1, MediaEndpoint(user.getsockname()[:2], "::1"))
    session.answered()
    to_user, to_ext = await talk(ext, user, ("::1", rtp_ext), ("::1", rtp_user))
    assert len(to_user) == 20 and len(to_ext) == 20
    assert [(p.sequence - to_user[0].sequence) & 0xFFFF for p in to_user] == list(range(20))
    assert len(received) == 2 and lane[0] == 38  # a party's first packet latches it and starts the stream
    # A re-INVITE naming the same addresses: their routes go and come back (the keys with
    # them), and the lane still takes every packet.
    session.set_media(0, MediaEndpoint(ext.getsockname()[:2], "::1"))
    session.set_media(1, MediaEndpoint(user.getsockname()[:2], "::1"))
    to_user, to_ext = await talk(ext, user, ("::1", rtp_ext), ("::1", rtp_user), first=20)
    assert len(to_user) == 20 and len(to_ext) == 20
    assert len(received) == 2 and lane[0] == 78
    other.sendto(build(0, 99, 99 * 160, 0x3333, b"\xff" * 160), ("::1", rtp_ext))  # a second source, same host
    await until(lambda: media.stats()["unlatched"])
    stats = media.stats()
    assert stats["unlatched"] == 1 and stats["forwarded"] == 80 and stats["strangers"] == 0
    assert await drain(user, 0.05) == []
    assert 0 < len(media.pool.keys) <= 4  # the parties' addresses the routes hold, not the stranger's
    session.close()
    assert len(media.pool.keys) == 0  # the routes went with the call, and their keys with them
    assert media.pool.ports == [] and media.free_pairs == 4
    for sock in socks:
        sock.close()
    await media.close()
    assert list(tmp_path.rglob("v6.wav"))


async def test_an_ipv6_flood_from_many_sources_is_unlatched_and_keeps_no_state(tmp_path: Path) -> None:
    """Hostile IPv6 traffic at a call's own port: every source but the party's is the leg's
    `unlatched` (the relay's rules, as on IPv4), and the source-key table (rtp.source_keys)
    still holds only what the routes name: a flood costs no memory."""
    media = MediaEngine("::1", free_range(4), tmp_path, prompts=PROMPTS)
    assert media.pool is not None
    party = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    party.bind(("::1", 0))
    session = media.open_session(make_call("v6flood"))
    rtp_ext, _ = session.ports
    # Its signalling from elsewhere: no source on this host may be latched to by IP (NAT's rule).
    session.set_media(0, MediaEndpoint(party.getsockname()[:2], "2001:db8::9"))
    held = len(media.pool.keys)
    assert held == 1
    flood = 300
    for i in range(flood):
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as attacker:
            attacker.sendto(build(0, i, i * 160, 0x4000 + i, b"\xff" * 160), ("::1", rtp_ext))
        if i % 50 == 49:
            await asyncio.sleep(0.01)  # the reads keep up, as with a real flood's pace
    await until(lambda: media.stats()["unlatched"] >= flood, 3.0)
    stats = media.stats()
    assert stats["unlatched"] == flood and stats["strangers"] == 0 and stats["forwarded"] == 0
    assert len(media.pool.keys) == held
    session.close()
    assert len(media.pool.keys) == 0
    party.close()
    await media.close()


async def test_without_recvmmsg_per_call_ports_keep_a_reader_per_socket_and_the_same_rules(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A system without recvmmsg/sendmmsg (rtp.batch_io.available() False: not Linux) cannot
    read the batch path: a call's own ports are `MediaSession`'s (a reader per socket,
    `CallRelay.receive` per datagram), with the same latching rules: audio both ways and
    recorded, a second source `unlatched`."""
    from rtp import batch_io
    from rtp.engine import MediaSession

    monkeypatch.setattr(batch_io, "available", lambda: False)
    media = MediaEngine(HOST, free_range(4), tmp_path, prompts=PROMPTS)
    assert media.pool is None
    ext, user, other = phone(), phone(), phone()
    session = media.open_session(make_call("noblk"))
    assert isinstance(session, MediaSession)
    rtp_ext, rtp_user = session.ports
    session.set_media(0, MediaEndpoint(ext.getsockname(), HOST))
    session.set_media(1, MediaEndpoint(user.getsockname(), HOST))
    session.answered()
    for i in range(10):
        ext.sendto(build(0, i, i * 160, 0x1111, b"\xff" * 160), (HOST, rtp_ext))
        user.sendto(build(0, i, i * 160, 0x2222, b"\x7f" * 160), (HOST, rtp_user))
        await asyncio.sleep(0.02)
    assert len(await drain(user, 0.2)) == 10 and len(await drain(ext, 0.05)) == 10
    other.sendto(build(0, 99, 99 * 160, 0x3333, b"\xff" * 160), (HOST, rtp_ext))
    await until(lambda: media.stats()["unlatched"])
    stats = media.stats()
    assert stats["unlatched"] == 1 and stats["forwarded"] == 20 and stats["strangers"] == 0
    session.close()
    assert media.free_pairs == 4
    for sock in (ext, user, other):
        sock.close()
    await media.close()
    assert list(tmp_path.rglob("noblk.wav"))


async def test_an_ipv6_party_behind_nat_is_latched_and_then_on_the_lane(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """An IPv6 party whose SDP names another address (a NAT'd or translated one) is learnt
    from its signalling IP's first source, as on IPv4: that source is then a route (its key
    interned, rtp.source_keys) and its steady packets the lane's."""
    media = MediaEngine("::1", free_range(4), tmp_path, prompts=PROMPTS)
    lane, received = count_paths(media, monkeypatch)
    ext, user = socks = v6_sockets(2)
    session = media.open_session(make_call("v6nat"))
    rtp_ext, rtp_user = session.ports
    session.set_media(0, MediaEndpoint(("fd00::5", 4000), "::1"))  # not where it sends from
    session.set_media(1, MediaEndpoint(user.getsockname()[:2], "::1"))
    session.answered()
    assert len(media.pool.keys) == 2
    to_user, to_ext = await talk(ext, user, ("::1", rtp_ext), ("::1", rtp_user))
    assert len(to_user) == 20 and len(to_ext) == 20  # the external party hears us at its real address
    assert len(received) == 2 and lane[0] == 38
    assert len(media.pool.keys) == 3  # its SDP address, the address it was learnt at, the user's
    session.close()
    assert len(media.pool.keys) == 0
    for sock in socks:
        sock.close()
    await media.close()

"""Shared media sockets (rtp.mux): many calls on one port, routed by source address.

What each source gets: a party's SDP address or latched address routes to its own leg;
a source behind NAT (SDP naming a private address) is learnt from the party's signalling
IP when it is the only leg waiting there; a second phone behind the same NAT waiting at
the same time makes that source `ambiguous` (dropped, counted); anyone else is a
`stranger` (dropped, counted), even from a party's own host on another port.
"""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import numpy as np
import pytest

from rtp.call import MediaEndpoint
from rtp import g711, mux
from rtp.batch_io import BatchMux, available, key_address, source_key
from rtp.call import Party
from rtp.engine import MediaEngine
from rtp.packet import MAX_PACKET_SIZE, build
from tests.conftest import make_call
from tests.test_media_core import HOST, PROMPTS, drain, free_range, phone

pytestmark = pytest.mark.skipif(not available(), reason="recvmmsg/sendmmsg are Linux-only")

AUDIO = g711.encode(np.full(160, 1000, dtype=np.int16), 0)


@pytest.fixture
async def core(tmp_path: Path):  # type: ignore[no-untyped-def]
    media = MediaEngine(HOST, free_range(8), tmp_path, prompts=PROMPTS, shared=True)
    yield media
    await media.close()


def test_source_keys_round_trip_and_match_what_recvmmsg_reports() -> None:
    for addr in [("127.0.0.1", 5004), ("192.0.2.250", 65535), ("10.1.2.3", 1)]:
        assert key_address(source_key(addr)) == addr
    a, b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM), socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    a.bind((HOST, 0))
    b.bind((HOST, 0))
    try:
        sender, receiver = BatchMux(a), BatchMux(b)
        for i in range(200):  # more than one batch
            sender.queue(bytes([i % 256]) * (12 + i), b.getsockname())
        assert sender.flush() == 200
        got = []
        for _ in range(100):
            n, raw, stride, lens, keys = receiver.recv_batch()
            got += [(raw[i * stride : i * stride + int(lens[i])], int(keys[i])) for i in range(n)]
            if len(got) == 200:
                break
        assert [d for d, _ in got] == [bytes([i % 256]) * (12 + i) for i in range(200)]
        assert {k for _, k in got} == {source_key(a.getsockname())}
    finally:
        a.close()
        b.close()


async def test_forty_calls_share_one_port_and_each_party_hears_only_its_own_call(core: MediaEngine) -> None:
    calls = []
    for i in range(40):
        ext, user = phone(), phone()
        session = core.open_session(make_call(f"m{i}"))
        session.set_media(0, MediaEndpoint(ext.getsockname(), HOST))
        session.set_media(1, MediaEndpoint(user.getsockname(), HOST))
        session.answered()
        calls.append((session, ext, user))
    assert len({s.ports for s, _, _ in calls}) == 1 and len(core.pool.ports) == 1
    port = calls[0][0].ports[0]
    for k in range(5):
        for i, (_, ext, user) in enumerate(calls):
            ext.sendto(build(0, k, k * 160, 0x10000 + i, AUDIO), (HOST, port))
            user.sendto(build(0, k, k * 160, 0x20000 + i, AUDIO), (HOST, port))
        await asyncio.sleep(0.02)
    for i, (session, ext, user) in enumerate(calls):
        to_user, to_ext = await drain(user, 0.05), await drain(ext, 0.01)
        assert len(to_user) == 5 and len(to_ext) == 5, i
        # Each party hears its own call's other side (the relay's SSRC towards it), nobody else's.
        assert {p.ssrc for p in to_user} == {session.relay.legs[1].out.ssrc}
        assert {p.ssrc for p in to_ext} == {session.relay.legs[0].out.ssrc}
        assert session.relay.stats.forwarded == 10  # the batch lane counts in the leg table itself
    assert core.pool.stats["strangers"] == 0
    for session, ext, user in calls:
        session.close()
        ext.close()
        user.close()
    assert core.sessions == []


async def test_a_phone_behind_nat_is_learnt_from_its_signalling_ip(core: MediaEngine) -> None:
    ext, user = phone(), phone()
    session = core.open_session(make_call("nat"))
    session.set_media(0, MediaEndpoint(ext.getsockname(), HOST))
    session.set_media(1, MediaEndpoint(("192.168.1.20", 4000), HOST))  # private SDP, public source
    session.answered()
    user.sendto(build(0, 1, 160, 0x2222, AUDIO), (HOST, session.ports[1]))
    assert len(await drain(ext, 0.1)) == 1
    ext.sendto(build(0, 1, 160, 0x1111, AUDIO), (HOST, session.ports[0]))
    assert len(await drain(user, 0.1)) == 1  # we answer where it really is (RFC 4961)
    assert session.relay.legs[1].latched == user.getsockname()
    stranger = phone()  # another port on the same host, after the latch: refused
    stranger.sendto(build(0, 2, 320, 0x2222, AUDIO), (HOST, session.ports[1]))
    assert await drain(ext, 0.1) == []
    assert core.pool.stats["strangers"] == 1
    session.close()
    for s in (ext, user, stranger):
        s.close()


async def each_hears_only_its_own_call(core, a, b, ext_a, ext_b, same, ssrcs) -> None:  # noqa: ANN001
    """Two calls whose callees send from one address (`same`), each to its own port: three
    packets each reach only their own call's other party, nothing is ambiguous; then both
    calls and the sockets are closed."""
    for k in range(3):
        same.sendto(build(0, k, 160 * k, ssrcs[0], AUDIO), (HOST, a.ports[1]))
        same.sendto(build(0, k, 160 * k, ssrcs[1], AUDIO), (HOST, b.ports[1]))
        await asyncio.sleep(0.01)
    to_a, to_b = await drain(ext_a, 0.1), await drain(ext_b, 0.05)
    assert len(to_a) == 3 and {p.ssrc for p in to_a} == {a.relay.legs[0].out.ssrc}
    assert len(to_b) == 3 and {p.ssrc for p in to_b} == {b.relay.legs[0].out.ssrc}
    assert core.pool.stats["ambiguous"] == 0
    a.close()
    b.close()
    for s in (ext_a, ext_b, same):
        s.close()


def call_for(call_id: str, user: str, trunk: str = "carrier"):  # noqa: ANN201 - a Call
    """A call between `trunk` and `user` (parties named apart: the port choice looks at them)."""
    call = make_call(call_id)
    call.parties = (Party("external", trunk), Party("user", user))
    return call


async def test_two_phones_behind_one_nat_get_their_own_ports(core: MediaEngine) -> None:
    """Two calls to phones behind one NAT, both waiting to latch from its IP: each leg is
    given its own port before the port goes into an SDP, so each phone is learnt."""
    ext_a, ext_b, src_a, src_b = phone(), phone(), phone(), phone()
    a = core.open_session(make_call("a"))
    b = core.open_session(make_call("b"))
    for session, ext, private in ((a, ext_a, ("192.168.1.20", 4000)), (b, ext_b, ("192.168.1.21", 4000))):
        session.set_media(0, MediaEndpoint(ext.getsockname(), HOST))
        session.set_media(1, MediaEndpoint(private, HOST))
    assert a.ports[1] != b.ports[1]
    src_a.sendto(build(0, 1, 160, 0x2222, AUDIO), (HOST, a.ports[1]))
    src_b.sendto(build(0, 1, 160, 0x3333, AUDIO), (HOST, b.ports[1]))
    assert len(await drain(ext_a, 0.1)) == 1 and len(await drain(ext_b, 0.1)) == 1
    assert core.pool.stats["ambiguous"] == 0
    a.close()
    b.close()
    for s in (ext_a, ext_b, src_a, src_b):
        s.close()


async def test_two_phones_behind_one_nat_on_one_published_port_are_ambiguous_not_swapped(core: MediaEngine) -> None:
    """Ports already in SDPs (callees) cannot move: from one NAT IP, two waiting legs on one
    port are ambiguous, dropped and counted, never guessed."""
    ext_a, ext_b, src = phone(), phone(), phone()
    a = core.open_session(call_for("a", "alice", "carrier-a"))
    b = core.open_session(call_for("b", "bob", "carrier-b"))  # two users: nothing says they share an address
    assert a.ports == b.ports  # published before any SDP
    for session, ext, private in ((a, ext_a, ("192.168.1.20", 4000)), (b, ext_b, ("192.168.1.21", 4000))):
        session.set_media(0, MediaEndpoint(ext.getsockname(), HOST))
        session.set_media(1, MediaEndpoint(private, HOST))
    assert a.ports[1] == b.ports[1]
    src.sendto(build(0, 1, 160, 0x2222, AUDIO), (HOST, a.ports[1]))
    assert await drain(ext_a, 0.1) == [] and await drain(ext_b, 0.01) == []
    assert core.pool.stats["ambiguous"] == 1
    b.close()  # once only one call waits from that IP, its phone is learnt
    src.sendto(build(0, 2, 320, 0x2222, AUDIO), (HOST, a.ports[1]))
    assert len(await drain(ext_a, 0.1)) == 1
    a.close()
    for s in (ext_a, ext_b, src):
        s.close()


async def test_a_party_on_its_sdp_ip_must_send_from_its_sdp_port(core: MediaEngine) -> None:
    ext, user, other_port = phone(), phone(), phone()
    session = core.open_session(make_call("sym"))
    session.set_media(0, MediaEndpoint(ext.getsockname(), HOST))
    session.set_media(1, MediaEndpoint(user.getsockname(), HOST))
    other_port.sendto(build(0, 1, 160, 0x2222, AUDIO), (HOST, session.ports[1]))
    assert await drain(ext, 0.1) == []
    assert core.pool.stats["strangers"] == 1
    session.close()
    for s in (ext, user, other_port):
        s.close()


async def test_a_new_sdp_address_replaces_the_old_route(core: MediaEngine) -> None:
    ext, old, new = phone(), phone(), phone()
    session = core.open_session(make_call("move"))
    session.set_media(0, MediaEndpoint(ext.getsockname(), HOST))
    session.set_media(1, MediaEndpoint(old.getsockname(), HOST))
    session.set_media(1, MediaEndpoint(new.getsockname(), HOST))  # re-INVITE: the phone moved
    old.sendto(build(0, 1, 160, 0x2222, AUDIO), (HOST, session.ports[1]))
    assert await drain(ext, 0.1) == []
    new.sendto(build(0, 2, 320, 0x2222, AUDIO), (HOST, session.ports[1]))
    assert len(await drain(ext, 0.1)) == 1
    session.close()
    for s in (ext, old, new):
        s.close()


async def test_ports_open_as_legs_grow_and_close_when_empty(core: MediaEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mux, "LEGS_PER_SOCKET", 4)
    sessions = [core.open_session(call_for(f"g{i}", f"user{i}", f"trunk{i}")) for i in range(5)]  # 10 legs: 3 ports
    assert len(core.pool.ports) == 3
    assert len({p for s in sessions for p in s.ports}) == 3
    for s in sessions[:4]:
        s.close()
    assert len(core.pool.ports) == 1  # emptied ports are closed, one is kept
    sessions[4].close()
    assert len(core.pool.ports) == 1


def test_shared_mode_needs_ipv4(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="IPv4"):
        MediaEngine("::1", (30000, 30099), tmp_path, prompts=PROMPTS, shared=True)


def open_calls(media: MediaEngine, count: int, prefix: str) -> list:
    """`count` calls, each with its two phones: (session, external phone, user phone)."""
    calls = []
    for i in range(count):
        ext, user = phone(), phone()
        session = media.open_session(make_call(f"{prefix}{i}"))
        session.set_media(0, MediaEndpoint(ext.getsockname(), HOST))
        session.set_media(1, MediaEndpoint(user.getsockname(), HOST))
        calls.append((session, ext, user))
    return calls


def close_calls(calls: list) -> None:
    for session, ext, user in calls:
        session.close()
        ext.close()
        user.close()


async def test_calls_spread_over_several_ports_all_flow(core: MediaEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mux, "LEGS_PER_SOCKET", 3)  # legs of one call land on different ports too
    calls = open_calls(core, 6, "s")
    assert len(core.pool.ports) == 4
    for k in range(3):
        for session, ext, user in calls:
            ext.sendto(build(0, k, k * 160, 0x1111, AUDIO), (HOST, session.ports[0]))
            user.sendto(build(0, k, k * 160, 0x2222, AUDIO), (HOST, session.ports[1]))
        await asyncio.sleep(0.02)
    for i, (session, ext, user) in enumerate(calls):
        assert len(await drain(user, 0.05)) == 3 and len(await drain(ext, 0.01)) == 3, i
    close_calls(calls)


async def test_a_read_bigger_than_the_receive_area_takes_every_port_in_turn(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every port reads into one area (rtp.mux.SharedPorts.read); with more waiting than it
    holds, the lane takes it area by area, a different port first each time: nothing is
    lost, nothing reordered, on any port."""
    monkeypatch.setattr(mux, "READ_BATCH", 5)
    monkeypatch.setattr(mux, "LEGS_PER_SOCKET", 3)
    media = MediaEngine(HOST, free_range(8), tmp_path, prompts=PROMPTS, shared=True)
    calls = open_calls(media, 6, "a")
    assert len(media.pool.ports) == 4
    for k in range(3):  # 4 packets per leg per step: 48 waiting for an area of 5
        for session, ext, user in calls:
            for j in range(4):
                seq = 4 * k + j
                ext.sendto(build(0, seq, seq * 160, 0x1111, AUDIO), (HOST, session.ports[0]))
                user.sendto(build(0, seq, seq * 160, 0x2222, AUDIO), (HOST, session.ports[1]))
        await asyncio.sleep(0.03)
    for i, (session, ext, user) in enumerate(calls):
        for got in (await drain(user, 0.05), await drain(ext, 0.01)):
            seqs = [p.sequence for p in got]
            assert len(seqs) == 12, i
            assert all((b - a) & 0xFFFF == 1 for a, b in zip(seqs, seqs[1:])), (i, seqs)  # in order, none lost
    close_calls(calls)
    await media.close()


async def test_per_call_ports_behind_are_read_area_by_area_none_asked_twice_when_empty(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Per-call ports (SharedPorts dedicated) fall behind: 12 ports with 4 datagrams each for
    an area of 5 and at most 2 a port per ask. The read takes area after area, the ports
    not yet read first, then those that had more: nothing lost or reordered, and a port that
    came back empty is not asked again in that read."""
    monkeypatch.setattr(mux, "READ_BATCH", 5)
    monkeypatch.setattr(mux, "DEDICATED_READ", 2)
    media = MediaEngine(HOST, free_range(16), tmp_path, prompts=PROMPTS, shared=False)
    pool = media.pool
    assert pool is not None and pool.dedicated and pool.area.batch == 5
    calls = open_calls(media, 6, "behind")
    asked: list[int] = []
    recv = pool.area.recv

    def counted(fd: int, start: int = 0, limit: int = 0) -> int:
        n = recv(fd, start, limit)
        asked.append(n)
        return n

    monkeypatch.setattr(pool.area, "recv", counted)
    for session, ext, user in calls:
        for seq in range(4):
            ext.sendto(build(0, seq, seq * 160, 0x1111, AUDIO), (HOST, session.ports[0]))
            user.sendto(build(0, seq, seq * 160, 0x2222, AUDIO), (HOST, session.ports[1]))
    await asyncio.sleep(0.05)  # read on the poll clock meanwhile
    for i, (session, ext, user) in enumerate(calls):
        for got in (await drain(user, 0.05), await drain(ext, 0.01)):
            seqs = [p.sequence for p in got]
            assert len(seqs) == 4 and all((b - a) & 0xFFFF == 1 for a, b in zip(seqs, seqs[1:])), (i, seqs)
    assert sum(asked) == 48
    assert asked.count(0) <= 12  # a port is asked once more only after it gave all it was asked for
    close_calls(calls)
    await media.close()


async def test_oversize_datagrams_on_a_shared_port_are_dropped_not_cut_to_fit(core: MediaEngine) -> None:
    """The kernel cuts a datagram to the receive slot; one longer than MAX_PACKET_SIZE must
    still be the counted oversize drop it is on a per-call port (tests/test_rtp_hostile.py),
    not forwarded as a 1,500-byte packet, whether the lane or receive() sees it."""
    calls = open_calls(core, 1, "big")
    session, ext, user = calls[0]
    session.answered()
    ext.sendto(build(0, 1, 160, 0x1111, AUDIO), (HOST, session.ports[0]))  # latches, then the lane has it
    assert len(await drain(user, 0.1)) == 1
    for seq, size in ((2, MAX_PACKET_SIZE + 1), (3, 3000), (4, 9000)):
        ext.sendto(build(0, seq, seq * 160, 0x1111, b"\xff" * (size - 12)), (HOST, session.ports[0]))
    ext.sendto(build(0, 5, 5 * 160, 0x1111, b"\xff" * (MAX_PACKET_SIZE - 12)), (HOST, session.ports[0]))  # at the limit
    got = await drain(user, 0.1)
    assert [p.sequence - got[0].sequence for p in got] == [0] and len(got[0].payload) == MAX_PACKET_SIZE - 12
    assert session.relay.stats.malformed == 3
    close_calls(calls)


async def test_two_calls_whose_parties_share_one_address_get_their_own_ports(core: MediaEngine) -> None:
    """SIPp's rtp_stream (or an SBC) sends every call's RTP from one address: a leg whose
    party's address is known before its port goes into an SDP gets a port where that
    address is free, so both calls flow, on the batch lane."""
    ext_a, ext_b, same = phone(), phone(), phone()
    a = core.open_session(make_call("first"))
    a.set_media(0, MediaEndpoint(ext_a.getsockname(), HOST))
    a.set_media(1, MediaEndpoint(same.getsockname(), HOST))
    b = core.open_session(make_call("second"))
    b.set_media(0, MediaEndpoint(ext_b.getsockname(), HOST))
    b.set_media(1, MediaEndpoint(same.getsockname(), HOST))  # the same address as call a's phone
    assert a.ports[1] != b.ports[1]
    await each_hears_only_its_own_call(core, a, b, ext_a, ext_b, same, (0x2222, 0x3333))


async def test_a_shared_address_on_one_published_port_is_dropped_never_crossed(core: MediaEngine) -> None:
    """Two users' callee legs published on one port before their answers, which then name
    one address (an SBC): nothing tells their packets apart (an SSRC would not: a sender may
    use one for every call), so they are dropped and counted, never heard in the wrong call;
    when one call ends, the other is routed exactly again."""
    ext_a, ext_b, same = phone(), phone(), phone()
    a = core.open_session(call_for("first", "alice", "carrier-a"))
    b = core.open_session(call_for("second", "bob", "carrier-b"))
    assert a.ports[1] == b.ports[1]  # published: fixed
    port = a.ports[1]
    a.set_media(0, MediaEndpoint(ext_a.getsockname(), HOST))
    a.set_media(1, MediaEndpoint(same.getsockname(), HOST))
    same.sendto(build(0, 1, 160, 0x2222, AUDIO), (HOST, port))
    assert len(await drain(ext_a, 0.1)) == 1
    b.set_media(0, MediaEndpoint(ext_b.getsockname(), HOST))
    b.set_media(1, MediaEndpoint(same.getsockname(), HOST))  # the same address, the same port
    for seq, ssrc in ((2, 0x2222), (1, 0x3333)):
        same.sendto(build(0, seq, 160 * seq, ssrc, AUDIO), (HOST, port))
    assert await drain(ext_a, 0.1) == [] and await drain(ext_b, 0.01) == []
    assert core.pool.stats["ambiguous"] == 2
    a.close()  # one call left on the address: routed exactly again
    same.sendto(build(0, 2, 320, 0x3333, AUDIO), (HOST, port))
    assert len(await drain(ext_b, 0.1)) == 1
    b.close()
    for s in (ext_a, ext_b, same):
        s.close()


async def test_a_callers_own_port_gives_its_unnamed_callee_one_too(core: MediaEngine) -> None:
    """SIPp calling in: every call's RTP from one address, so each caller leg gets its own
    port; the callee (not known by name yet: a ring group) probably answers the same way
    (SIPp's UAS), so its leg gets a port of its own before it is published too."""
    trunk, callee = phone(), phone()
    sessions = []
    for i in range(3):
        session = core.open_session(call_for(f"sipp{i}", "", "sipp"))
        session.set_media(0, MediaEndpoint(trunk.getsockname(), HOST))  # one address for every call
        sessions.append(session)
    callee_ports = [s.ports[1] for s in sessions]
    assert len({s.ports[0] for s in sessions}) == 3 and len(set(callee_ports)) == 3
    for session in sessions:
        session.set_media(1, MediaEndpoint(callee.getsockname(), HOST))
        session.answered()
    assert core.pool.stats["ambiguous"] == 0
    for i, session in enumerate(sessions):
        callee.sendto(build(0, 1, 160, 0x5555, AUDIO), (HOST, callee_ports[i]))  # one SSRC for all, as SIPp
    got = await drain(trunk, 0.2)
    assert sorted(p.ssrc for p in got) == sorted(s.relay.legs[0].out.ssrc for s in sessions)
    for session in sessions:
        session.close()
    for s in (trunk, callee):
        s.close()



async def test_one_user_called_twice_gets_a_port_per_call_before_its_address_is_known(core: MediaEngine) -> None:
    """A callee's port goes into our offer before its answer names its address. Calls to the
    same user (SIPp's UAS, a trunk behind an SBC) probably answer from one address, so each
    such leg is given a port no other leg of that user is on: both calls flow, on the lane."""
    ext_a, ext_b, same = phone(), phone(), phone()
    a = core.open_session(call_for("first", "alice"))
    b = core.open_session(call_for("second", "alice"))
    assert a.ports[1] != b.ports[1]  # published apart, though nothing was known yet
    for session, ext in ((a, ext_a), (b, ext_b)):
        session.set_media(0, MediaEndpoint(ext.getsockname(), HOST))
        session.set_media(1, MediaEndpoint(same.getsockname(), HOST))
        session.answered()
    await each_hears_only_its_own_call(core, a, b, ext_a, ext_b, same, (0x2222, 0x2222))  # even one SSRC for both


async def test_many_shared_ports_are_read_through_epoll(tmp_path: Path) -> None:
    """Past EPOLL_FROM_PORTS a read asks epoll which ports have datagrams: calls kept apart
    by port (one user called many times) still flow on every port."""
    media = MediaEngine(HOST, free_range(40), tmp_path, prompts=PROMPTS, shared=True)
    calls = []
    for i in range(mux.EPOLL_FROM_PORTS + 3):
        ext, user = phone(), phone()
        session = media.open_session(call_for(f"e{i}", "alice"))
        session.ports  # published before the callee's SDP: each on its own port
        session.set_media(0, MediaEndpoint(ext.getsockname(), HOST))
        session.set_media(1, MediaEndpoint(user.getsockname(), HOST))
        session.answered()
        calls.append((session, ext, user))
    assert len(media.pool.ports) > mux.EPOLL_FROM_PORTS
    for session, ext, user in calls:
        ext.sendto(build(0, 1, 160, 0x1111, AUDIO), (HOST, session.ports[0]))
    for session, ext, user in calls:
        assert len(await drain(user, 0.1)) == 1
    for session, ext, user in calls:
        session.close()
        ext.close()
        user.close()
    await media.close()


async def test_a_tick_with_many_flushes_reads_the_shared_ports_between_them(tmp_path: Path) -> None:
    """A tick that flushes many recorders (2,000 calls: ~40 a tick) reads the shared ports
    every SESSIONS_PER_READ of them, and after a stall (every flush due at once) it does at
    most twice the steady share, leaving the rest for the next ticks."""
    import rtp.engine

    media = MediaEngine(HOST, free_range(8), tmp_path, prompts=PROMPTS, shared=True)
    sessions = [media.open_session(call_for(f"f{i}", f"user{i}", f"trunk{i}")) for i in range(3 * rtp.engine.MIN_FLUSHES_PER_TICK // 2)]
    now = media.now()
    for session in sessions:
        session.answered(now)
    reads = []
    media.pool.read_waiting = lambda *_: reads.append(1)  # type: ignore[method-assign]
    media._tick_sessions(now + 1.5)  # every recorder's flush is due: at most MIN_FLUSHES_PER_TICK now
    flushed = sum(s.relay.next_flush > now + 1.5 for s in sessions)
    assert flushed == rtp.engine.MIN_FLUSHES_PER_TICK and len(reads) == flushed // rtp.engine.SESSIONS_PER_READ
    media._tick_sessions(now + 1.52)  # the rest at the next tick, not all in one callback
    assert all(s.relay.next_flush > now + 1.5 for s in sessions)
    for session in sessions:
        session.close()
    await media.close()


async def test_ending_calls_leave_the_waiting_table_and_only_their_own_legs(core: MediaEngine) -> None:
    """Every leg signalled from one IP (a trunk, an office) waits under that IP until it
    latches; a call that ends takes out exactly its two legs (in O(1): at 2,000 calls from
    one trunk a scan per hangup was the setup's hot spot), the others keep their order."""
    calls = open_calls(core, 30, "w")
    port = core.pool.ports[0]
    assert list(port.waiting[HOST]) == [(s, c) for s, _, _ in calls for c in (0, 1)]
    for session, ext, user in calls[:29:2]:  # every other call ends
        session.close()
    left = [s for s, _, _ in calls[1::2]]
    assert list(port.waiting[HOST]) == [(s, c) for s in left for c in (0, 1)]
    close_calls([c for c in calls[1::2]])
    assert HOST not in port.waiting
    for _, ext, user in calls[:29:2]:
        ext.close()
        user.close()


async def test_a_read_between_flushes_takes_one_receive_area_and_the_poll_the_rest(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Behind, every read finds full areas: the one a tick makes between its flushes takes
    one area (so the tick's flushes stay on time), the poll's takes up to
    MAX_BATCHES_PER_WAKEUP of them; nothing is lost either way."""
    import rtp.engine

    monkeypatch.setattr(mux, "READ_BATCH", 5)
    media = MediaEngine(HOST, free_range(8), tmp_path, prompts=PROMPTS, shared=True)
    media.pool.area = mux.ReceiveArea(5)
    [(session, ext, user)] = open_calls(media, 1, "r")
    await asyncio.sleep(0.01)
    media.pool._poller.cancel()  # this test makes the reads itself
    for seq in range(20):
        ext.sendto(build(0, seq, seq * 160, 0x1111, AUDIO), (HOST, session.ports[0]))
    await asyncio.sleep(0.01)
    port = media.pool.ports[0]
    received = port.received
    media.pool.read_waiting(rtp.engine.AREAS_PER_READ_BETWEEN_FLUSHES)
    assert port.received - received == 5
    media.pool.read_waiting()
    assert port.received - received == 20
    assert len(await drain(user, 0.05)) == 20
    close_calls([(session, ext, user)])
    await media.close()

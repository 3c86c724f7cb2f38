"""Hostile RTP (issue 5): strangers, garbage floods, oversize packets and SSRC collisions.

Each test says what the hostile packet gets: a stranger's packets are counted drops that
never reach the other party or the recording; a flood of garbage on one call's ports
costs that call counted drops and leaves another call's media untouched; a datagram over
MAX_PACKET_SIZE is a counted malformed drop; a party that uses the SSRC we send it makes
us move to a new one (RFC 3550 §8.2), and two parties sharing one SSRC stay on their own
recording channels.
"""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import numpy as np
import soundfile

from rtp.call import MediaEndpoint
from rtp import g711
from rtp.engine import MediaEngine
from rtp.packet import MAX_PACKET_SIZE, RtpPacket, build
from rtp.relay import CallRelay, recorder_factory
from tests.conftest import make_call
from tests.test_media_core import HOST, PROMPTS as CORE_PROMPTS, drain, free_range, phone
from tests.test_relay import EXT, EXT_ADDR, PROMPTS, USER, USER_NAT, USER_SDP, USER_SIG_IP, Harness

RATE = 8000


def tone(freq: float, start: int, n: int = 160) -> np.ndarray:
    t = (np.arange(n) + start) / RATE
    return (8000 * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def dominant(x: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(x.astype(np.float64) * np.hanning(len(x))))
    return float(np.argmax(spectrum) * RATE / len(x))


def real_relay(tmp_path: Path) -> CallRelay:
    relay = CallRelay(make_call(), PROMPTS, recorder_factory(tmp_path, "silence"), ssrcs=(0xAAAA0000, 0xBBBB0000))
    relay.set_media(EXT, MediaEndpoint(EXT_ADDR, EXT_ADDR[0]), 0.0)
    relay.set_media(USER, MediaEndpoint(USER_SDP, USER_SIG_IP), 0.0)
    relay.answered(0.0)
    return relay


def test_strangers_never_reach_the_other_party_or_the_recording(tmp_path: Path) -> None:
    """A stranger sprays a 2 kHz tone with the trunk's own SSRC and sequence numbers at the
    trunk leg, from another host, from the trunk's host on another port, and (after the
    phone latched) from the phone's NAT IP on another port: every one is an `unlatched` drop,
    nothing of it is forwarded, and the WAV holds only the parties' 440/1000 Hz tones."""
    relay = real_relay(tmp_path)
    strangers = [("192.0.2.66", 40000), (EXT_ADDR[0], EXT_ADDR[1] + 2)]
    forwarded = []
    drops = 0
    for i in range(150):  # 3 s
        now = i * 0.02
        forwarded += relay.receive(EXT, build(0, i, i * 160, 0x1111, g711.encode(tone(440, i * 160), 0)), EXT_ADDR, now)
        forwarded += relay.receive(USER, build(0, i, i * 160, 0x2222, g711.encode(tone(1000, i * 160), 0)), USER_NAT, now)
        bad = build(0, i, i * 160, 0x1111, g711.encode(tone(2000, i * 160), 0))
        for who in strangers:
            assert relay.receive(EXT, bad, who, now) == []
            drops += 1
        assert relay.receive(USER, bad, (USER_SIG_IP, USER_NAT[1] + 7), now) == []  # same NAT IP, other port
        drops += 1
        relay.tick(now)  # the 20 ms tick: the recorder is flushed each second, as in production
    relay.close(3.0)
    assert relay.stats.unlatched == drops
    assert relay.stats.forwarded == 300
    for leg, data, target in forwarded:
        packet = RtpPacket.parse(data)
        assert packet is not None and target in (EXT_ADDR, USER_NAT, USER_SDP)
        assert abs(dominant(g711.decode(packet.payload, 0)) - 2000) > 100, "no stranger audio forwarded"
    x, rate = soundfile.read(str(next(tmp_path.rglob("*.wav"))), dtype="int16")
    assert rate == RATE and x.shape[1] == 2
    for channel, wanted in ((0, 440), (1, 1000)):
        for start in range(800, len(x) - 1600, 1600):
            assert abs(dominant(x[start:start + 1600, channel]) - wanted) < 20, (channel, start)


def test_oversize_datagrams_are_counted_malformed_drops() -> None:
    """Over MAX_PACKET_SIZE (one MTU) it is not G.711 audio: dropped, not forwarded, not
    recorded; a packet exactly at the limit still passes."""
    h = Harness()
    big = build(0, 1, 160, 0x1111, b"\xff" * (MAX_PACKET_SIZE - 12 + 1))
    assert len(big) == MAX_PACKET_SIZE + 1
    assert h.relay.receive(EXT, big, EXT_ADDR, 0.1) == []
    huge = build(0, 2, 320, 0x1111, b"\x00" * 60000)
    assert h.relay.receive(EXT, huge, EXT_ADDR, 0.12) == []
    assert h.relay.stats.malformed == 2 and h.recorder.added == []
    limit = build(0, 3, 480, 0x1111, b"\xff" * (MAX_PACKET_SIZE - 12))
    assert len(h.relay.receive(EXT, limit, EXT_ADDR, 0.14)) == 1
    assert h.relay.stats.malformed == 2


def test_truncated_and_non_rtp_datagrams_are_counted_not_raised() -> None:
    """Header-only, short, version 0/1/3, bad padding, STUN and random bytes: all counted drops."""
    h = Harness()
    rng = np.random.default_rng(5)
    junk = [b"", b"\x80", b"\x80" * 11, b"\x00" * 200, b"\x40" + b"\x00" * 171, b"\xc0" + b"\x00" * 171,
            bytes.fromhex("0001000021124a42") + b"\x00" * 12,  # a STUN binding request
            b"\xa0\x00" + b"\x00" * 10 + b"\x00" * 3 + b"\xff"]  # padding count larger than the packet
    junk += [rng.integers(0, 256, int(rng.integers(0, 400)), dtype=np.uint8).tobytes() for _ in range(300)]
    for i, data in enumerate(junk):
        for leg, payload, _ in h.relay.receive(i % 2, data, EXT_ADDR if i % 2 == 0 else USER_NAT, 0.01 * i):
            assert RtpPacket.parse(payload) is not None  # only well-formed RTP ever leaves
    assert h.relay.stats.malformed >= 8


def test_a_party_using_the_ssrc_we_send_it_makes_us_change_ours() -> None:
    """RFC 3550 §8.2: the phone picks the SSRC we use towards it; we move, so it never sees
    its own SSRC arrive. The trunk side keeps flowing, sequence numbers continuous."""
    h = Harness()
    ours_to_user = h.relay.legs[USER].out.ssrc
    ours_to_ext = h.relay.legs[EXT].out.ssrc
    to_user = []
    for i in range(10):
        to_user += [d for leg, d, _ in h.audio(EXT, 0.02 * i) if leg == USER]
    payload = g711.encode(np.full(160, 500, dtype=np.int16), 0)
    out = h.relay.receive(USER, build(0, 1, 160, ours_to_user, payload), USER_NAT, 0.3)
    assert [RtpPacket.parse(d).ssrc for leg, d, _ in out] == [ours_to_ext]  # forwarded to the trunk as ours
    assert h.relay.legs[USER].out.ssrc != ours_to_user
    for i in range(10):
        to_user += [d for leg, d, _ in h.audio(EXT, 0.32 + 0.02 * i) if leg == USER]
    packets = [RtpPacket.parse(d) for d in to_user]
    assert {p.ssrc for p in packets[10:]} == {h.relay.legs[USER].out.ssrc}
    assert all(p.ssrc != ours_to_user for p in packets[10:])
    assert [(b.sequence - a.sequence) & 0xFFFF for a, b in zip(packets, packets[1:])] == [1] * 19


def test_both_parties_with_one_ssrc_stay_on_their_own_channels(tmp_path: Path) -> None:
    """Two phones that happen to pick the same SSRC: the recording keys by leg, not SSRC."""
    relay = real_relay(tmp_path)
    for i in range(100):
        now = i * 0.02
        relay.receive(EXT, build(0, i, i * 160, 0x5555, g711.encode(tone(440, i * 160), 0)), EXT_ADDR, now)
        relay.receive(USER, build(0, 9000 + i, 77 + i * 160, 0x5555, g711.encode(tone(1000, i * 160), 0)), USER_NAT, now)
    relay.close(2.0)
    x, _ = soundfile.read(str(next(tmp_path.rglob("*.wav"))), dtype="int16")
    assert abs(dominant(x[800:8800, 0]) - 440) < 20 and abs(dominant(x[800:8800, 1]) - 1000) < 20


async def test_a_garbage_flood_on_one_call_does_not_disturb_another(tmp_path: Path) -> None:
    """Call A's four ports get 20,000 datagrams of garbage, stranger RTP and oversize junk
    while call B carries 50 packets each way: B loses nothing (all 100 arrive, in order)
    and A counts the flood as drops."""
    core = MediaEngine(HOST, free_range(4), tmp_path, prompts=CORE_PROMPTS, feature_timeout=0.5)
    socks = [phone() for _ in range(5)]
    a_ext, a_user, b_ext, b_user, flooder = socks
    flooder.close()
    flooder = socks[4] = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    flooder.bind(("127.0.0.2", 0))  # a stranger: not the parties' signalling IP
    flooder.setblocking(False)
    try:
        a = core.open_session(make_call("flood-a"))
        b = core.open_session(make_call("flood-b"))
        for session, ext, user in ((a, a_ext, a_user), (b, b_ext, b_user)):
            session.set_media(0, MediaEndpoint(ext.getsockname(), HOST))
            session.set_media(1, MediaEndpoint(user.getsockname(), HOST))
            session.answered()
        targets = [(HOST, p + k) for p in a.ports for k in (0, 1)]
        rng = np.random.default_rng(1)
        garbage = [rng.integers(0, 256, int(n), dtype=np.uint8).tobytes() for n in rng.integers(1, 1400, 64)]
        garbage += [build(0, 7, 7, 0x1111, b"\xff" * 160), b"\x80" * 1800]

        async def flood() -> int:
            sent = 0
            for burst in range(100):
                for i in range(200):
                    try:
                        flooder.sendto(garbage[(burst + i) % len(garbage)], targets[i % 4])
                        sent += 1
                    except BlockingIOError:
                        pass
                await asyncio.sleep(0)
            return sent

        async def talk() -> None:
            for i in range(50):
                b_ext.sendto(build(0, i, i * 160, 0x1111, g711.encode(tone(440, i * 160), 0)), (HOST, b.ports[0]))
                b_user.sendto(build(0, i, i * 160, 0x2222, g711.encode(tone(1000, i * 160), 0)), (HOST, b.ports[1]))
                await asyncio.sleep(0.02)

        sent, _ = await asyncio.gather(flood(), talk())
        to_b_user = await drain(b_user, 0.3)
        to_b_ext = await drain(b_ext, 0.05)
        assert sent > 10000
        assert len(to_b_user) == 50 and len(to_b_ext) == 50, "the other call lost nothing"
        assert [(p.sequence - to_b_user[0].sequence) & 0xFFFF for p in to_b_user] == list(range(50))
        stats = a.relay.stats
        assert stats.forwarded == 0 and stats.malformed + stats.unlatched > 1000
        assert b.relay.stats.malformed == 0 and b.relay.stats.unlatched == 0
        a.close()
        b.close()
    finally:
        for s in socks:
            s.close()
        await core.close()

"""Property fuzzing of everything that reads bytes from the network (issue 5).

Random and mutated inputs get exactly one of two fates: parsed (and then usable: the fields
the B2BUA reads do not raise, and re-serialising parses again), or refused the documented
way. parse_message and StreamFramer raise only SipParseError, carrying a 4xx/5xx status;
RtpPacket.parse returns a packet or None; CallRelay.receive returns only well-formed RTP
to known addresses and never raises. Seeds are the RFC 4475/5118 torture files and the
captured real messages, mutated by byte flips, splices, truncation and duplication.
bench/fuzz_atheris.py runs the same targets coverage-guided, for a bounded time.
"""

from __future__ import annotations

import pathlib

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from b2bua.message import MAX_MESSAGE_SIZE, Request, Response, SipParseError, StreamFramer, parse_message
from rtp.packet import MAX_PACKET_SIZE, RtpPacket, build
from tests.test_relay import EXT, EXT_ADDR, USER, USER_NAT, USER_SDP, Harness

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
SEEDS = sorted({p.read_bytes() for p in (*FIXTURES.glob("torture/*.sip"), *FIXTURES.glob("sip/*.sip"))})


def _parses(data: bytes) -> bool:
    try:
        parse_message(data)
    except SipParseError:
        return False
    return True


GOOD_SEEDS = [s for s in SEEDS if _parses(s)]
FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

#: Byte strings with meaning to a SIP parser, spliced in by the mutator.
TOKENS = [b"\r\n", b"\n", b"\r\n\r\n", b" ", b"\t", b":", b";", b",", b"<", b">", b'"', b"\\", b"@", b"[", b"]",
          b"?", b"%", b"%00", b"\x00", b"\xff", b"\xc3", b"SIP/2.0", b"SIP/7.0", b"Content-Length: ", b"l: ",
          b"-1", b"99999999999999999999", b"Via: SIP/2.0/UDP [::1", b"CSeq: 1 ", b"\r\n ", b"=", b"/"]


@st.composite
def mutated(draw, seeds=SEEDS) -> bytes:
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "splice", "delete", "truncate", "duplicate"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[at] = draw(st.integers(0, 255))
        elif op == "splice":
            data[at:at] = draw(st.sampled_from(TOKENS) | st.binary(max_size=8))
        elif op == "delete":
            del data[at:at + draw(st.integers(1, 40))]
        elif op == "truncate":
            del data[at:]
        else:
            end = min(len(data), at + draw(st.integers(1, 200)))
            data[at:at] = data[at:end] * draw(st.integers(1, 3))
    return bytes(data)


def check_parse(data: bytes) -> None:
    """The fate of one input: SipParseError with a status, or a usable message."""
    try:
        m = parse_message(data)
    except SipParseError as exc:
        assert 400 <= exc.status <= 599 and exc.reason
        return
    assert isinstance(m, (Request, Response))
    m.call_id, m.cseq, m.via, m.branch, m.from_tag, m.to_tag, m.headers.get_all("Contact")
    again = parse_message(m.to_bytes())
    assert (again.call_id, again.cseq, again.body) == (m.call_id, m.cseq, m.body)


@FAST
@given(st.binary(max_size=2000))
def test_random_bytes_get_parse_error_or_a_message(data):
    check_parse(data)


@FAST
@given(mutated())
def test_mutated_torture_and_real_messages_get_parse_error_or_a_usable_message(data):
    check_parse(data)


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(GOOD_SEEDS), st.integers(1, 300))
def test_header_floods_and_oversize_are_refused_with_400_or_513(seed, copies):
    """A message grown past the header bound or 64 KiB gets 400/513, never our memory or time."""
    head, _, body = seed.partition(b"\r\n\r\n")
    line = b"X-Flood: " + b"a" * (copies * 7) + b"\r\n"
    data = head + b"\r\n" + line * copies * 3 + b"\r\n" + body
    try:
        parse_message(data)
    except SipParseError as exc:
        assert exc.status in (400, 513)
        if len(data) > MAX_MESSAGE_SIZE:
            assert exc.status == 513
    else:
        assert len(data) <= MAX_MESSAGE_SIZE


@FAST
@given(st.lists(mutated() | st.binary(max_size=300), min_size=1, max_size=6), st.lists(st.integers(1, 700), max_size=8))
def test_stream_framer_frames_or_refuses_and_stays_bounded(messages, cuts):
    """Any byte stream, cut anywhere into reads: messages come out, or SipParseError (400/513)
    ends the connection; the buffer never holds more than the bound."""
    stream = b"".join(messages)
    framer = StreamFramer()
    pos = 0
    pieces = []
    for cut in cuts:
        pieces.append(stream[pos:pos + cut])
        pos += cut
    pieces.append(stream[pos:])
    out = []
    try:
        for piece in pieces:
            out += framer.feed(piece)
            assert framer.buffered <= MAX_MESSAGE_SIZE + len(piece)
    except SipParseError as exc:
        assert exc.status in (400, 513)
        return
    assert sum(map(len, out)) + framer.buffered <= len(stream)
    for message in out:
        check_parse(message)


@FAST
@given(st.binary(max_size=MAX_PACKET_SIZE + 100))
def test_rtp_parse_gives_a_packet_or_none(data):
    packet = RtpPacket.parse(data)
    if packet is not None:
        assert len(data) <= MAX_PACKET_SIZE and data[0] >> 6 == 2
        assert RtpPacket.parse(packet.serialize()) is not None


@st.composite
def rtp_mutated(draw) -> bytes:
    data = bytearray(build(draw(st.sampled_from([0, 8, 101, 13, 96])), draw(st.integers(0, 0xFFFF)),
                           draw(st.integers(0, 0xFFFFFFFF)), draw(st.integers(0, 0xFFFFFFFF)),
                           draw(st.binary(min_size=0, max_size=200))))
    for _ in range(draw(st.integers(0, 4))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        data += draw(st.binary(max_size=1600))
    return bytes(data)


@FAST
@given(st.lists(st.tuples(st.sampled_from([EXT, USER]), rtp_mutated() | st.binary(max_size=400),
                          st.sampled_from([EXT_ADDR, USER_NAT, USER_SDP, ("192.0.2.9", 4000)])), max_size=30))
def test_call_relay_receive_never_raises_and_sends_only_rtp_to_the_parties(steps):
    h = Harness()
    now = 0.0
    for channel, data, addr in steps:
        now += 0.01
        for leg, payload, target in h.relay.receive(channel, data, addr, now) + h.relay.tick(now):
            assert leg in (EXT, USER) and target in (EXT_ADDR, USER_NAT, USER_SDP)
            assert RtpPacket.parse(payload) is not None
    stats = h.relay.stats
    assert stats.forwarded + stats.malformed + stats.unlatched + stats.no_target + stats.swallowed <= len(steps) + stats.injected


# ---------------------------------------------------------------------------
# Coverage-guided: atheris (libFuzzer) on the same four targets, bounded to a few seconds
# each so CI runs it on every change. A finding fails the test with the crashing input's
# traceback. atheris ships wheels for Linux x86_64 only, and the test extra installs it there.

import json  # noqa: E402
import platform  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402


@pytest.mark.skipif(
    not (sys.platform == "linux" and platform.machine() == "x86_64"), reason="atheris has wheels for Linux x86_64 only"
)
def test_atheris_finds_nothing_in_the_parser_framer_rtp_and_relay_in_a_bounded_run():
    script = pathlib.Path(__file__).parents[1] / "bench" / "fuzz_atheris.py"
    proc = subprocess.run([sys.executable, str(script), "--seconds", "4"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])["fuzz"]
    assert [r["target"] for r in results] == ["sip", "framer", "rtp", "relay"]
    assert all(r["ok"] and r["runs"] > 100 for r in results), results

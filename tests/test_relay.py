"""The sans-IO relay as a trace: datagrams in, datagrams out, recorder calls observed."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rtp.call import Call, MediaEndpoint, Party
from rtp import g711
from rtp.events import EventDetector, event_payload, parse_event
from rtp.packet import RtpPacket, build
from rtp.prompts import Prompts
from rtp.relay import LATCH_WINDOW, CallRelay, recorder_factory
from rtp.timeline import StreamClock
from tests.conftest import make_call

EXT_ADDR = ("198.51.100.7", 40000)
USER_SDP = ("192.168.1.10", 5000)  # a phone behind NAT puts its private address in SDP
USER_SIG_IP = "203.0.113.5"  # ...and its SIP arrives from the NAT's public address
USER_NAT = (USER_SIG_IP, 61000)
EXT_SSRC, USER_SSRC = 0x11111111, 0x22222222
EXT, USER = 0, 1
PROMPTS = Prompts(
    paused=np.full(800, 3000, dtype=np.int16),  # 5 packets of a constant: easy to spot in a mix
    recording=np.full(480, -3000, dtype=np.int16),
)


class FakeRecorder:
    """Records what the relay hands the recorder: (channel, timeline position, samples)."""

    timeline_base = 0  # nothing is ever final here

    def __init__(self, call: Call, t0: float) -> None:
        self.t0 = t0
        self.recording = call.record_at_answer
        self.added: list[tuple[int, int, np.ndarray]] = []
        self.changes: list[tuple[bool, float, str | None]] = []
        self.flushes: list[float] = []
        self.closed_at: float | None = None
        self._clocks = (StreamClock(), StreamClock())

    def place_g711(self, channel: int, payload_type: int, positions: np.ndarray, lengths: np.ndarray,
                   payloads: np.ndarray) -> None:
        """The media engine's packets, already placed, payloads end to end (reused after: copied here)."""
        at = 0
        for pos, n in zip(positions.tolist(), lengths.tolist()):
            self.added.append((channel, pos, g711.decode(bytes(payloads[at : at + n]), payload_type)))
            at += n
        assert at == len(payloads)

    def add_g711(self, channel: int, ssrc: int, seq: int, timestamp: int, payload: bytes, payload_type: int,
                 arrival: float) -> None:
        """The recorder's own per-packet placing (the oracle tests/test_fastpath.py compares with)."""
        pos = self._clocks[channel].position(ssrc, seq & 0xFFFF, timestamp & 0xFFFFFFFF, len(payload),
                                             round((arrival - self.t0) * 8000), self.timeline_base)
        self.added.append((channel, pos, g711.decode(payload, payload_type)))

    def set_recording(self, on: bool, now: float, by: str | None) -> None:
        self.changes.append((on, now, by))
        self.recording = on

    def flush(self, now: float) -> None:
        self.flushes.append(now)

    def close(self, now: float) -> None:
        self.closed_at = now


class Harness:
    def __init__(self, record: bool = True, enabled: bool = True, answer: bool = True, user_pt: int = 0,
                 table=None, relay_class=CallRelay) -> None:  # noqa: ANN001 - a LegTable: the relay's state goes in it
        self.recorders: list[FakeRecorder] = []

        def factory(call: Call, t0: float) -> FakeRecorder:
            recorder = FakeRecorder(call, t0)
            self.recorders.append(recorder)
            return recorder

        self.relay = relay_class(make_call(record=record, enabled=enabled), PROMPTS, factory, feature_timeout=2.0,
                                 ssrcs=(0xAAAA0000, 0xBBBB0000), table=table)
        self.relay.set_media(EXT, MediaEndpoint(EXT_ADDR, EXT_ADDR[0]), 0.0)
        self.relay.set_media(
            USER, MediaEndpoint(USER_SDP, USER_SIG_IP, payload_type=user_pt, codec="PCMU" if user_pt == 0 else "PCMA"), 0.0
        )
        self.seq = {EXT: 100, USER: 5000}
        self.ts = {EXT: 16000, USER: 80000}
        if answer:
            self.relay.answered(0.0)

    @property
    def recorder(self) -> FakeRecorder:
        """The call's recorder, once the relay handed it what it holds (as before a flush)."""
        if self.relay.recorder is not None:
            self.relay.deliver_audio()
        return self.recorders[0]

    def audio(self, channel: int, now: float, value: int = 1000, addr: tuple[str, int] | None = None, pt: int = 0) -> list:
        """One 20 ms packet of a constant level from a party."""
        self.seq[channel] = (self.seq[channel] + 1) & 0xFFFF
        self.ts[channel] = (self.ts[channel] + 160) & 0xFFFFFFFF
        ssrc = EXT_SSRC if channel == EXT else USER_SSRC
        payload = g711.encode(np.full(160, value, dtype=np.int16), pt)
        data = build(pt, self.seq[channel], self.ts[channel], ssrc, payload)
        source = addr or (EXT_ADDR if channel == EXT else USER_NAT)
        return self.relay.receive(channel, data, source, now)

    def press(self, channel: int, digit_code: int, now: float) -> list:
        """A whole RFC 4733 key press, as a phone sends it; audio packets interleaved."""
        ssrc = EXT_SSRC if channel == EXT else USER_SSRC
        source = EXT_ADDR if channel == EXT else USER_NAT
        start = (self.ts[channel] + 160) & 0xFFFFFFFF
        out = []
        for i in range(6):
            self.seq[channel] = (self.seq[channel] + 1) & 0xFFFF
            end = i >= 3
            payload = event_payload(digit_code, end, 160 * (i + 1) if not end else 480)
            out += self.relay.receive(channel, build(101, self.seq[channel], start, ssrc, payload, marker=i == 0), source, now)
            out += self.audio(channel, now)
            now += 0.02
        return out


def packets_to(out: list, channel: int) -> list[RtpPacket]:
    parsed = [RtpPacket.parse(data) for leg, data, _ in out if leg == channel]
    assert all(p is not None for p in parsed)
    return parsed  # type: ignore[return-value]


def digits_in(packets: list[RtpPacket]) -> list[str]:
    detector = EventDetector()
    found = []
    for p in packets:
        if p.payload_type == 101:
            press = detector.feed(p.timestamp, p.marker, p.payload)
            if press is not None:
                found.append(press.digit)
    return found


def assert_continuous(packets: list[RtpPacket]) -> None:
    """One SSRC, sequence numbers +1 each, audio timestamps never going back."""
    assert len({p.ssrc for p in packets}) == 1
    for before, after in zip(packets, packets[1:]):
        assert (after.sequence - before.sequence) & 0xFFFF == 1, (before, after)
    audio = [p for p in packets if p.payload_type in (0, 8)]
    for before, after in zip(audio, audio[1:]):
        assert 0 < (after.timestamp - before.timestamp) & 0xFFFFFFFF < 0x80000000, (before, after)


# -- latching and bleed --------------------------------------------------------------------


def test_audio_is_forwarded_under_our_ssrc() -> None:
    h = Harness()
    out = h.audio(EXT, 0.1)
    assert [(leg, addr) for leg, _, addr in out] == [(USER, USER_SDP)]  # not latched yet: the SDP address
    packet = packets_to(out, USER)[0]
    assert packet.ssrc == 0xBBBB0000 and packet.payload == g711.encode(np.full(160, 1000, dtype=np.int16), 0)


def test_nat_latching_from_the_signalling_ip() -> None:
    h = Harness()
    assert h.audio(USER, 0.1)  # from the NAT's public address, port unknown to SDP
    out = h.audio(EXT, 0.12)
    assert out[0][2] == USER_NAT  # now sent where the phone really is (symmetric RTP)
    assert h.relay.stats.unlatched == 0


def test_no_latching_from_signalling_ip_after_the_window() -> None:
    h = Harness()
    assert h.audio(USER, LATCH_WINDOW + 1) == []
    assert h.relay.stats.unlatched == 1
    assert h.audio(USER, LATCH_WINDOW + 1.1, addr=USER_SDP)  # the SDP address is always accepted


def test_latched_address_keeps_working_after_the_window() -> None:
    h = Harness()
    h.audio(USER, 0.1)
    assert h.audio(USER, LATCH_WINDOW + 30)
    assert h.audio(USER, LATCH_WINDOW + 31, addr=(USER_SIG_IP, 61002)) == []  # a new port is not the phone


def test_rtp_bleed_is_refused_and_counted() -> None:
    h = Harness()
    for stranger in [("192.0.2.66", 40000), ("198.51.100.8", 40000), USER_NAT]:
        assert h.audio(EXT, 0.1, addr=stranger) == []
    assert h.audio(EXT, LATCH_WINDOW + 1, addr=(EXT_ADDR[0], 40002)) == []  # same host, another port, too late
    assert h.relay.stats.unlatched == 4
    assert h.recorder.added == []


def test_nothing_before_sdp_and_nothing_to_hold() -> None:
    relay = CallRelay(make_call(), PROMPTS, None)
    data = build(0, 1, 160, EXT_SSRC, b"\xff" * 160)
    assert relay.receive(EXT, data, EXT_ADDR, 0.0) == []
    h = Harness()
    h.relay.set_media(USER, MediaEndpoint(None, USER_SIG_IP), 1.0)  # hold: 0.0.0.0
    assert h.audio(EXT, 1.1) == []
    assert h.relay.stats.no_target == 1


def test_rtcp_goes_to_the_other_party_rtp_port_plus_one() -> None:
    h = Harness()
    rtcp = bytes.fromhex("80c80006") + bytes(24)
    assert h.relay.receive_rtcp(EXT, rtcp, (EXT_ADDR[0], 40001), 0.1) == [(USER, rtcp, (USER_SDP[0], 5001))]
    assert h.relay.receive_rtcp(EXT, rtcp, ("192.0.2.66", 40001), 0.1) == []
    assert h.relay.receive_rtcp(USER, rtcp, (USER_SIG_IP, 61001), 0.2) == [(EXT, rtcp, (EXT_ADDR[0], 40001))]


def test_rtcp_latches_only_within_the_window_as_rtp_does() -> None:
    """Issue 16: RTCP learnt the first source from the party's IP with no time limit. Now,
    as RTP: a new source is learnt only in the latch window, and nobody takes over after."""
    rtcp = bytes.fromhex("80c80006") + bytes(24)
    h = Harness()
    late = LATCH_WINDOW + 1
    # After the window: the RFC 3550 §11 address (SDP port + 1) still works, a new source does not.
    assert h.relay.receive_rtcp(EXT, rtcp, (EXT_ADDR[0], 40001), late) == [(USER, rtcp, (USER_SDP[0], 5001))]
    assert h.relay.receive_rtcp(EXT, rtcp, (EXT_ADDR[0], 40007), late) == []
    assert h.relay.receive_rtcp(USER, rtcp, (USER_SIG_IP, 61001), late) == []  # behind NAT, too late to learn
    assert h.relay.stats.unlatched == 2
    # Within the window the first source on the party's IP is learnt, and only it.
    h = Harness()
    assert h.relay.receive_rtcp(USER, rtcp, (USER_SIG_IP, 61001), 0.5) == [(EXT, rtcp, (EXT_ADDR[0], 40001))]
    assert h.relay.receive_rtcp(USER, rtcp, (USER_SIG_IP, 61009), 0.6) == []  # a second source: refused
    assert h.relay.receive_rtcp(USER, rtcp, (USER_SIG_IP, 61001), late) != []  # the learnt one keeps working
    assert h.relay.receive_rtcp(EXT, rtcp, (EXT_ADDR[0], 40001), 0.7) == [(USER, rtcp, (USER_SIG_IP, 61001))]


def test_a_source_port_of_zero_is_never_latched() -> None:
    """Issue 16: UDP source port 0 cannot be answered; neither RTP nor RTCP latches to it."""
    rtcp = bytes.fromhex("80c80006") + bytes(24)
    h = Harness()
    assert h.audio(USER, 0.5, addr=(USER_SIG_IP, 0)) == []
    assert h.relay.legs[USER].latched is None
    assert h.relay.receive_rtcp(USER, rtcp, (USER_SIG_IP, 0), 0.5) == []
    assert h.relay.legs[USER].rtcp_latched is None
    assert h.relay.stats.unlatched == 2
    assert h.audio(USER, 0.6)  # the real source is still learnt
    assert h.relay.legs[USER].latched == USER_NAT


# -- recording feed --------------------------------------------------------------------------


def test_recorder_gets_each_party_on_its_channel_with_rtp_timing() -> None:
    h = Harness()
    h.audio(EXT, 0.1, value=1000)
    h.audio(USER, 0.11, value=-2000)
    (c0, p0, s0), (c1, p1, s1) = h.recorder.added
    assert (c0, p0) == (EXT, 800) and (c1, p1) == (USER, 880)  # each first packet anchored at its arrival (8 kHz since answer)
    assert abs(int(s0[0]) - 1000) < 40 and abs(int(s1[0]) + 2000) < 80


def test_nothing_recorded_before_answer_but_media_flows() -> None:
    h = Harness(answer=False)
    assert h.audio(EXT, 0.1) and h.audio(USER, 0.1)
    assert h.recorders == []


def test_not_recorded_at_answer_feeds_nothing() -> None:
    h = Harness(record=False)
    h.audio(EXT, 0.1)
    assert h.recorder.added == []


def test_flush_every_second_and_close() -> None:
    h = Harness()
    for i in range(1, 151):
        h.relay.tick(i * 0.02)
    assert h.recorder.flushes == [1.0, 2.0, 3.0]
    h.relay.close(3.5)
    assert h.recorder.closed_at == 3.5


# -- *1 ----------------------------------------------------------------------------------------


def test_user_star_one_pauses_and_only_the_presser_hears_it() -> None:
    h = Harness()
    out = []
    now = 0.0
    for _ in range(10):  # both talk
        now += 0.02
        out += h.audio(EXT, now, value=0) + h.audio(USER, now + 0.001, value=500)
    out += h.press(USER, 10, now)  # *
    out += h.press(USER, 1, now + 0.3)  # 1
    now += 0.5
    assert h.recorder.changes == [(False, pytest.approx(now - 0.2 + 0.0), "alice")]
    for _ in range(10):
        now += 0.02
        out += h.audio(EXT, now, value=0) + h.audio(USER, now + 0.001, value=500)
    # The external party got neither digit and no prompt.
    to_ext = packets_to(out, EXT)
    assert digits_in(to_ext) == []
    assert_continuous(to_ext)
    sent = {g711.encode(np.full(160, v, dtype=np.int16), 0) for v in (500, 1000)}  # what the user said
    assert {p.payload for p in to_ext if p.payload_type == 0} == sent
    # The user heard "recording paused" mixed into the silence the other party sends.
    to_user = packets_to(out, USER)
    assert_continuous(to_user)
    heard = np.concatenate([g711.decode(p.payload, 0) for p in to_user])
    assert (np.abs(heard - 3000) < 200).sum() == 800  # the whole prompt, once
    # While paused, nothing is fed to the recorder; before, only the parties' own audio.
    fed = [int(s[0]) for _, _, s in h.recorder.added]
    assert fed and all(abs(v) < 1100 for v in fed)  # never the prompt (3000)


def test_second_star_one_resumes_with_the_other_prompt() -> None:
    h = Harness()
    h.press(USER, 10, 0.1)
    h.press(USER, 1, 0.3)
    h.press(USER, 10, 3.0)
    h.press(USER, 1, 3.2)
    assert [(on, by) for on, _, by in h.recorder.changes] == [(False, "alice"), (True, "alice")]
    assert h.relay.legs[USER].prompt is PROMPTS.recording


def test_first_toggle_starts_a_call_not_recorded_at_answer() -> None:
    h = Harness(record=False)
    h.press(USER, 10, 0.1)
    h.press(USER, 1, 0.3)
    assert [(on, by) for on, _, by in h.recorder.changes] == [(True, "alice")]


def test_prompt_from_our_own_clock_when_the_other_party_is_silent() -> None:
    h = Harness()
    out = []
    now = 0.0
    for _ in range(5):
        now += 0.02
        out += h.audio(EXT, now, value=0)
    out += h.press(USER, 10, now)
    out += h.press(USER, 1, now + 0.2)
    now += 0.4
    for _ in range(40):  # the other party sends nothing: the relay's 20 ms tick makes packets
        now += 0.02
        out += h.relay.tick(now)
    for _ in range(5):  # and when it talks again the stream carries on
        now += 0.02
        out += h.audio(EXT, now, value=0)
    to_user = packets_to(out, USER)
    assert_continuous(to_user)
    generated = [p for p in to_user if p.payload_type == 0 and abs(int(g711.decode(p.payload, 0)[0]) - 3000) < 200]
    assert len(generated) == 5  # 800 samples of prompt
    assert generated[0].marker  # first packet after silence (RFC 3551 §4.1)
    assert h.relay.busy is False


def test_external_star_one_is_passed_on() -> None:
    h = Harness()
    out = h.press(EXT, 10, 0.1) + h.press(EXT, 1, 0.3)
    assert h.recorder.changes == []
    to_user = packets_to(out, USER)
    assert digits_in(to_user) == ["*", "1"]
    assert len([p for p in to_user if p.payload_type == 101]) == 12  # every event packet, intact
    assert_continuous(to_user)


def test_star_then_other_digit_regenerates_the_star_first() -> None:
    h = Harness()
    out = h.press(USER, 10, 0.1) + h.press(USER, 2, 0.3)
    to_ext = packets_to(out, EXT)
    assert digits_in(to_ext) == ["*", "2"]
    assert_continuous(to_ext)
    events = [parse_event(p.payload) for p in to_ext if p.payload_type == 101]
    assert sum(1 for e in events if e and e.code == 2) == 6  # the 2 forwarded as the phone sent it
    assert h.recorder.changes == []


def test_star_alone_is_passed_on_after_the_timeout() -> None:
    h = Harness()
    out = h.press(USER, 10, 0.1)
    assert digits_in(packets_to(out, EXT)) == []
    assert h.relay.busy
    out = []
    now = 0.1
    while now < 2.5:
        now += 0.02
        out += h.relay.tick(now)
    assert digits_in(packets_to(out, EXT)) == ["*"]
    assert not h.relay.busy


def test_star_then_one_too_late() -> None:
    h = Harness()
    out = h.press(USER, 10, 0.1) + h.press(USER, 1, 3.0)
    assert digits_in(packets_to(out, EXT)) == ["*", "1"]
    assert h.recorder.changes == []


def test_three_toggles_with_rfc4733() -> None:
    h = Harness()
    now = 0.1
    out = []
    for code in (10, 1, 10, 1, 10, 1):
        out += h.press(USER, code, now)
        now += 0.2
    assert [on for on, _, _ in h.recorder.changes] == [False, True, False]
    assert digits_in(packets_to(out, EXT)) == []


def test_no_call_recording_means_star_one_is_ordinary() -> None:
    h = Harness(enabled=False)
    out = h.press(USER, 10, 0.1) + h.press(USER, 1, 0.3)
    assert h.recorders == []
    assert digits_in(packets_to(out, EXT)) == ["*", "1"]


def test_digits_before_answer_pass() -> None:
    h = Harness(answer=False)
    out = h.press(USER, 10, 0.1) + h.press(USER, 1, 0.3)
    assert digits_in(packets_to(out, EXT)) == ["*", "1"]


def test_sip_info_digits() -> None:
    h = Harness()
    assert h.relay.dtmf(USER, "*", 0.1) == []
    assert h.relay.dtmf(USER, "1", 0.2) == []
    assert [on for on, _, _ in h.recorder.changes] == [False]
    out = h.relay.dtmf(USER, "5", 0.3)
    assert digits_in(packets_to(out, EXT)) == ["5"]


def test_inband_star_one_toggles_for_phones_without_telephone_event() -> None:
    h = Harness()
    h.relay.set_media(USER, MediaEndpoint(USER_SDP, USER_SIG_IP, dtmf_payload_type=None), 0.0)
    rate = 8000
    t = np.arange(int(0.1 * rate)) / rate
    star = 6000 * np.sin(2 * np.pi * 941 * t) + 6000 * np.sin(2 * np.pi * 1209 * t)
    one = 6000 * np.sin(2 * np.pi * 697 * t) + 6000 * np.sin(2 * np.pi * 1209 * t)
    audio = np.concatenate([np.zeros(800), star, np.zeros(800), one, np.zeros(800)]).astype(np.int16)
    now = 0.0
    for i in range(0, len(audio), 160):
        now += 0.02
        h.seq[USER] += 1
        h.ts[USER] += 160
        data = build(0, h.seq[USER], h.ts[USER], USER_SSRC, g711.encode(audio[i : i + 160], 0))
        h.relay.receive(USER, data, USER_NAT, now)
    assert [(on, by) for on, _, by in h.recorder.changes] == [(False, "alice")]


def test_transcoding_between_pcmu_and_pcma() -> None:
    h = Harness(user_pt=8)
    out = h.audio(EXT, 0.1, value=1000)
    packet = packets_to(out, USER)[0]
    assert packet.payload_type == 8
    assert abs(int(g711.decode_alaw(packet.payload)[0]) - 1000) < 64


def test_sequence_wrap_and_source_ssrc_change_stay_continuous() -> None:
    h = Harness()
    h.seq[EXT] = 0xFFF0
    out = []
    now = 0.0
    for _ in range(30):
        now += 0.02
        out += h.audio(EXT, now)
    h.seq[EXT] = 7  # the carrier restarts its stream: new SSRC, new numbering
    h.ts[EXT] = 123
    for i in range(5):
        now += 0.02
        h.seq[EXT] += 1
        h.ts[EXT] += 160
        out += h.relay.receive(EXT, build(0, h.seq[EXT], h.ts[EXT], 0x99, b"\xff" * 160), EXT_ADDR, now)
    assert_continuous(packets_to(out, USER))


def test_real_recorder_writes_a_file(tmp_path: Path) -> None:
    relay = CallRelay(make_call(), PROMPTS, recorder_factory(tmp_path, "silence"), ssrcs=(1, 2))
    relay.set_media(EXT, MediaEndpoint(EXT_ADDR, EXT_ADDR[0]), 0.0)
    relay.set_media(USER, MediaEndpoint(USER_SDP, USER_SIG_IP), 0.0)
    relay.answered(100.0)
    for i in range(100):
        now = 100.0 + i * 0.02
        relay.receive(EXT, build(0, i, i * 160, EXT_SSRC, b"\x80" * 160), EXT_ADDR, now)
        relay.receive(USER, build(0, i, i * 160, USER_SSRC, b"\x00" * 160), USER_NAT, now)
        relay.tick(now)
    relay.close(102.0)
    wavs = list(tmp_path.rglob("*.wav"))
    assert [w.name for w in wavs] == ["c1.wav"]
    import soundfile

    audio, rate = soundfile.read(str(wavs[0]), dtype="int16")
    assert rate == 8000 and audio.shape[1] == 2 and 1.5 * rate < len(audio) <= 2.1 * rate


# -- robustness ----------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([EXT, USER]),
            st.one_of(
                st.binary(max_size=200),
                st.builds(
                    lambda pt, seq, ts, ssrc, payload, marker: build(pt, seq, ts, ssrc, payload, marker),
                    st.sampled_from([0, 8, 13, 101, 127]),
                    st.integers(0, 0xFFFF),
                    st.integers(0, 0xFFFFFFFF),
                    st.sampled_from([EXT_SSRC, USER_SSRC, 5]),
                    st.binary(max_size=170),
                    st.booleans(),
                ),
            ),
            st.sampled_from([EXT_ADDR, USER_NAT, USER_SDP, ("192.0.2.1", 1)]),
            st.sampled_from(["rtp", "rtcp", "tick", "info"]),
        ),
        max_size=40,
    )
)
def test_arbitrary_datagrams_never_raise(steps: list) -> None:  # type: ignore[type-arg]
    h = Harness()
    now = 0.0
    for channel, data, addr, kind in steps:
        now += 0.013
        if kind == "rtp":
            out = h.relay.receive(channel, data, addr, now)
        elif kind == "rtcp":
            out = h.relay.receive_rtcp(channel, data, addr, now)
        elif kind == "info":
            out = h.relay.dtmf(channel, "*1#"[len(data) % 3], now)
        else:
            out = h.relay.tick(now)
        for leg, payload, target in out:
            assert leg in (EXT, USER) and isinstance(payload, bytes) and target is not None


def test_a_second_source_on_the_signalling_ip_cannot_take_over_the_stream():
    """RTP bleed: once a party's source is known, a stranger on the same host is refused."""
    from rtp.call import Call, MediaEndpoint, Party
    from rtp.relay import CallRelay
    from rtp.prompts import load_prompts

    relay = CallRelay(make_call(), load_prompts(), None)
    relay.set_media(0, MediaEndpoint(("10.0.0.1", 4000), "10.0.0.1"), 0.0)
    relay.set_media(1, MediaEndpoint(("10.0.0.2", 5000), "10.0.0.2"), 0.0)
    header = bytes([0x80, 0x00, 0, 1, 0, 0, 0, 160, 0, 0, 0, 7])
    packet = header + b"\xff" * 160
    assert relay.receive(0, packet, ("10.0.0.1", 4000), 0.1)  # the SDP address
    assert relay.receive(0, packet, ("10.0.0.1", 4444), 0.2) == []  # same host, other port: refused
    assert relay.receive(0, packet, ("192.0.2.66", 4000), 0.3) == []  # another host: refused
    assert relay.receive(1, packet, ("10.0.0.2", 5002), 0.1)  # NAT/asymmetric: first source learnt
    assert relay.receive(1, packet, ("10.0.0.2", 5004), 0.2) == []  # ...and no second one
    assert relay.receive(1, packet, ("10.0.0.2", 5000), 0.3)  # the SDP address still may
    assert relay.stats.unlatched == 3

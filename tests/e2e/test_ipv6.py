"""A real recorded call over IPv6: `b2bua run` on [::1] with `media_ip = "::1"` (per-call media
ports on the engine's batch path), a trunk (PyTrunk on ::1) calling a number routed to alice
(baresip on ::1, registered over IPv6); audio both ways, BYE, and the recording. Then the other
direction: ::1 from a port that is not the trunk's is refused (the trunk source match is by
address and port over IPv6 too), and alice's outbound call reaches the IPv6 trunk.
"""

from __future__ import annotations

import re
import socket
import time

import numpy as np

from tests.e2e.audio import channel, describe, has_tone, load_wav
from tests.e2e.peers import PyTrunk, alice_line, free_port, free_port_range

V6 = "::1"
RATE = 8000
DDI = "441632960000"


def flows(sip_port: int, rtp_low: int, rtp_high: int, trunk: str) -> str:
    """The shared organisation (number 441632960000 -> alice, recorded) with everything on ::1."""
    return f'''
[server]
listen = "[{V6}]:{sip_port}"
rtp_ports = "{rtp_low}-{rtp_high}"
media_ip = "{V6}"
[organisation]
name = "Test"
{alice_line(trunk)}'''


def v6_ports() -> tuple[int, int, int]:
    """The B2BUA's SIP port and a 40-port RTP range, all free on ::1 now, not overlapping."""
    sip_port = free_port("both", V6)
    rtp_low, rtp_high = free_port_range(40, V6)
    while rtp_low <= sip_port <= rtp_high:
        rtp_low, rtp_high = free_port_range(40, V6)
    return sip_port, rtp_low, rtp_high


def test_a_trunk_call_over_ipv6_is_answered_carries_audio_both_ways_and_is_recorded(b2bua, baresip):
    sip_port, rtp_low, rtp_high = v6_ports()
    trunk = PyTrunk(host=V6)
    try:
        pbx = b2bua(flows(sip_port, rtp_low, rtp_high, trunk.address), extra_args=["--sip-trace"])
        assert pbx.sip_address == f"[{V6}]:{sip_port}"
        alice = baresip("alice", "alice-secret", pbx.sip_address, tone_hz=1000, host=V6)

        call = trunk.call(pbx.sip_address, DDI)
        assert call.wait_answered(10) == 200
        answered = time.monotonic()
        assert re.search(rf"^c=IN IP6 {re.escape(V6)}\r?$", call.final_response.body, re.M), call.final_response.body
        media_host, media_port = call.remote_media
        assert media_host == V6 and rtp_low <= media_port <= rtp_high, call.remote_media
        call.rtp.send_tone(440, 3.0, remote=call.remote_media)
        alice.wait_for("established", 5)

        time.sleep(max(0.0, answered + 2.0 - time.monotonic()))
        heard = call.rtp.received()
        assert len(heard) > 50, f"the trunk hears alice through the B2BUA over IPv6: {len(heard)} packets"
        assert {p.source[0] for p in heard} == {V6} and {p.source[1] for p in heard} == {media_port}, \
            "symmetric RTP: from the port the B2BUA's SDP gave"
        trunk_audio = call.rtp.audio()
        assert has_tone(trunk_audio, RATE, 1000), describe(trunk_audio, RATE)
        assert call.bye() == 200
        duration = time.monotonic() - answered
        alice.wait_for("closed", 5)

        assert has_tone(*channel(alice.heard_wav()), 440), "alice hears the trunk's 440 Hz"
        wav = pbx.wait_for_recording(timeout=10)
        x, rate = load_wav(wav)
        assert rate == RATE and x.shape[1] == 2
        assert abs(len(x) / RATE - duration) < 0.5, (len(x) / RATE, duration)
        assert has_tone(x[int(0.3 * RATE):, 0], RATE, 440), describe(x[:, 0], RATE)
        assert has_tone(x[int(0.3 * RATE):, 1], RATE, 1000), describe(x[:, 1], RATE)
        assert np.abs(x).max() > 0
        meta = pbx.sidecar(wav)
        assert wav.stem == meta["call_id"]
        assert meta["direction"] == "inbound" and meta["ddi"] == DDI and meta["user"] == "alice"
        assert "447700900000" in meta["from"], meta["from"]
        assert meta["sample_rate"] == RATE and meta["channels"] == 2 and meta["events"] == []
        assert len(meta["segments"]) == 1 and meta["segments"][0][0] == 0
        assert meta["ended"] > meta["started"]

        pbx.wait_for_log(r"event=ended cause=bye-from-caller")
        logs = pbx.logs()
        assert "Traceback" not in logs and " ERROR " not in logs, logs[-3000:]
    finally:
        trunk.close()


def test_an_ipv6_stranger_is_refused_then_an_outbound_call_over_ipv6_carries_audio_both_ways(b2bua, baresip):
    sip_port, rtp_low, rtp_high = v6_ports()
    trunk = PyTrunk(host=V6, auto_answer=True)
    try:
        pbx = b2bua(flows(sip_port, rtp_low, rtp_high, trunk.address), extra_args=["--sip-trace"])
        # Before any phone registers from ::1: ::1 from another port is neither the trunk nor a phone.
        assert stranger_invite(sip_port).startswith("SIP/2.0 403")
        pbx.wait_for_log(rf"reason=unknown-source ip={re.escape(V6)} ")
        assert trunk.received("INVITE") == []
        alice = baresip("alice", "alice-secret", pbx.sip_address, tone_hz=1000, host=V6)
        alice.dial("447700900999")
        call = trunk.wait_for_call(10)
        invite = call.invite
        assert invite.uri == f"sip:447700900999@{trunk.address}", invite.uri
        assert invite.source[0] == V6 and invite.source[1] == sip_port
        assert re.search(rf"^c=IN IP6 {re.escape(V6)}\r?$", invite.body, re.M), invite.body
        media_host, media_port = call.remote_media
        assert media_host == V6 and rtp_low <= media_port <= rtp_high, call.remote_media
        alice.wait_for("established", 5)
        call.rtp.send_tone(440, 2.0, remote=call.remote_media)
        time.sleep(1.5)
        heard = call.rtp.received()
        assert len(heard) > 30 and {p.source[1] for p in heard} == {media_port}, len(heard)
        assert has_tone(call.rtp.audio(), RATE, 1000)
        alice.hangup()
        call.wait_ended(5)
        assert has_tone(*channel(alice.heard_wav()), 440), "alice hears the trunk's 440 Hz"
        pbx.wait_for_log(r"event=ended cause=bye-from-caller")
        logs = pbx.logs()
        assert "Traceback" not in logs and " ERROR " not in logs, logs[-3000:]
    finally:
        trunk.close()


def stranger_invite(sip_port: int) -> str:
    """An INVITE for the DDI from ::1 but not the trunk's port; returns the final response's start line."""
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
        s.bind((V6, 0))
        s.settimeout(3)
        port = s.getsockname()[1]
        s.sendto((f"INVITE sip:{DDI}@[{V6}]:{sip_port} SIP/2.0\r\n"
                  f"Via: SIP/2.0/UDP [{V6}]:{port};branch=z9hG4bKv6stranger{port}\r\n"
                  f"From: <sip:100@[{V6}]>;tag=s1\r\nTo: <sip:{DDI}@[{V6}]:{sip_port}>\r\n"
                  f"Call-ID: v6-stranger-{port}\r\nCSeq: 1 INVITE\r\nMax-Forwards: 70\r\n"
                  "Content-Length: 0\r\n\r\n").encode(), (V6, sip_port))
        reply = s.recv(65535).decode()
        while reply.startswith("SIP/2.0 1"):
            reply = s.recv(65535).decode()
        return reply.split("\r\n", 1)[0]

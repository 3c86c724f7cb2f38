"""The end-to-end harness proved against the real peers, without the B2BUA.

If one of these fails, the scenario tests' failures mean nothing: fix the harness first.
"""

from __future__ import annotations

import os
import signal
import textwrap
import time

import numpy as np
import pytest

from .audio import channel, describe, dominant_frequency, has_tone, is_silence, make_tone_wav, rms_per_window, segments
from .pcap import PT_PCMU, PT_TELEPHONE_EVENT, Digit, Tone, read_pcap_rtp, write_pcap
from .peers import (B2buaProcess, PyTrunk, PyVoipPhone, Sipp, free_port, free_port_range, free_udp_port_pair,
                    sip_options_ping, wait_until)

# -- offline: packet trains, pcap files, analysis ---------------------------------------------


def test_pcap_file_holds_tone_then_digits(tmp_path):
    path = write_pcap(tmp_path / "t.pcap", [Tone(440, 1.0), Tone(0, 0.5)], [Digit("*", 0.2), Digit("1", 0.6)])
    pkts = read_pcap_rtp(path)
    audio = [p for p in pkts if p.payload_type == PT_PCMU]
    events = [p for p in pkts if p.payload_type == PT_TELEPHONE_EVENT]
    assert all(len(p.payload) == 160 for p in audio)
    # Two events: first packet has the marker, end packets (E bit) are sent three times.
    starts = [p for p in events if p.marker]
    assert [p.payload[0] for p in starts] == [10, 1]
    assert sum(1 for p in events if p.payload[1] & 0x80) == 6
    assert abs(starts[0].t - 0.2) < 0.002 and abs(starts[1].t - 0.6) < 0.002
    seqs = [int.from_bytes(p.data[2:4], "big") for p in pkts]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    assert pkts[-1].t == pytest.approx(1.48, abs=0.01)


def test_audio_analysis_finds_tones_and_silence(tmp_path):
    x = np.concatenate([channel(make_tone_wav(tmp_path / "a.wav", 440, 1.0), 0)[0],
                        np.zeros(4000),
                        channel(make_tone_wav(tmp_path / "b.wav", 1000, 1.0), 0)[0]])
    assert dominant_frequency(x[:8000], 8000) == pytest.approx(440, abs=2)
    assert segments(x, 8000) == [(0.0, 1.0, 440.0), (1.0, 1.5, 0.0), (1.5, 2.5, 1000.0)]
    assert is_silence(x[8000:12000]) and not is_silence(x[:8000])
    assert has_tone(x, 8000, 1000, min_fraction=0.4)
    assert rms_per_window(x, 8000).shape == (25,)


def test_ports_are_free_and_shaped():
    p = free_udp_port_pair()
    assert p % 2 == 0
    low, high = free_port_range(10)
    assert high - low == 9 and low % 2 == 0
    assert free_port("both") > 0


# -- SIPp <-> baresip ---------------------------------------------------------------------------


def test_sipp_uac_calls_auto_answering_baresip_media_both_ways(tmp_path, baresip, rtp):
    """SIPp calls baresip directly; baresip hears 440 Hz and the RFC 4733 digit; SIPp's SDP side hears 1000 Hz."""
    phone = baresip("alice", tone_hz=1000)
    ep = rtp()
    pcap = write_pcap(tmp_path / "in.pcap", [Tone(440, 3.0)], [Digit("5", 1.0)])
    result = Sipp("uac_call.xml", tmp_path, remote=phone.sip_address, service="alice", media_port=ep.port,
                  params={"pcap": pcap, "pause_ms": 3500}).run()
    result.check()
    phone.wait_for("established", 1)
    heard, rate = channel(phone.heard_wav())
    assert has_tone(heard, rate, 440), describe(heard, rate)
    assert phone.received_digits() == "5"
    back = ep.audio()
    assert has_tone(back, 8000, 1000), describe(back, 8000)
    assert len(back) / 8000 > 2.5


def test_sipp_cancels_while_baresip_rings(tmp_path, baresip):
    phone = baresip("alice", auto_answer=False)
    Sipp("uac_call_cancel.xml", tmp_path, remote=phone.sip_address, service="alice",
         params={"ring_ms": 800}).run().check()
    phone.wait_for("incoming", 1)
    phone.wait_for("closed", 3)
    assert not phone.events("established")


def test_baresip_calls_sipp_uas_and_hangs_up(tmp_path, baresip):
    """baresip dials SIPp (the trunk side of an outbound call), hears its pcap, hangs up; SIPp sees BYE."""
    uas = Sipp("uas_answer.xml", tmp_path, params={"pcap": write_pcap(tmp_path / "o.pcap", [Tone(700, 2.5)]),
                                                   "ring_ms": 200}).start()
    phone = baresip("alice", tone_hz=1000)
    phone.dial(f"sip:441632960000@{uas.address}")
    phone.wait_for("established", 5)
    time.sleep(2.5)
    phone.hangup()
    uas.wait().check()
    heard, rate = channel(phone.heard_wav())
    assert has_tone(heard, rate, 700), describe(heard, rate)


def test_baresip_sends_rfc4733_digits(tmp_path, baresip, rtp):
    """send_dtmf puts PT 101 telephone-events on the wire, one event per digit.

    Media on the SIPp side is all RtpEndpoint (pcap=None): it hears baresip, and sends a
    tone from the SDP port to the address baresip offered (Sipp.remote_media)."""
    ep = rtp()
    uas = Sipp("uas_answer.xml", tmp_path, media_port=ep.port, params={"pcap": None, "ring_ms": 100}).start()
    phone = baresip("alice", tone_hz=1000)
    phone.dial(f"sip:5000@{uas.address}")
    phone.wait_for("established", 5)
    ep.send_tone(700, 2.0, remote=uas.remote_media())
    ep.wait_for_packets(5, 3)
    phone.send_dtmf("*1#")
    time.sleep(1.2)
    phone.hangup()
    uas.wait().check()
    assert ep.received(PT_TELEPHONE_EVENT), "no PT 101 packets"
    assert ep.digits() == "*1#"
    assert has_tone(ep.audio(), 8000, 1000)
    heard, rate = channel(phone.heard_wav())
    assert has_tone(heard, rate, 700), describe(heard, rate)


def test_baresip_registers_with_digest_auth(tmp_path, baresip):
    registrar = Sipp("harness_registrar.xml", tmp_path, params={"user": "alice", "password": "s3cret"}).start()
    phone = baresip("alice", "s3cret", registrar.address)  # returns once registered
    assert phone.is_registered()
    registrar.wait().check()


def test_baresip_with_wrong_password_is_not_registered(tmp_path, baresip):
    registrar = Sipp("harness_registrar.xml", tmp_path, params={"user": "alice", "password": "right"}, timeout=5).start()
    phone = baresip("alice", "wrong", registrar.address, wait_registered=False)
    result = registrar.wait()
    assert not result.ok and "bad digest credentials" in result.errors
    assert not phone.is_registered()


def test_sipp_expect_status_against_busy_uas(tmp_path):
    uas = Sipp("uas_busy.xml", tmp_path).start()
    Sipp("uac_expect_status.xml", tmp_path, remote=uas.address, service="201", params={"status": 486}).run().check()
    uas.wait().check()


def test_sipp_failure_is_reported(tmp_path):
    """A scenario that gets the wrong answer exits non-zero and check() says why."""
    uas = Sipp("uas_busy.xml", tmp_path).start()
    result = Sipp("uac_expect_status.xml", tmp_path, remote=uas.address, service="201",
                  params={"status": 404}, timeout=4).run()
    uas.stop()
    assert not result.ok
    with pytest.raises(AssertionError, match="sipp exited"):
        result.check()


def test_sipp_uas_hangs_up_on_sipp_uac(tmp_path, rtp):
    """uas_answer_hangup ends the call; uac_call_wait_bye accepts that; the UAC's RtpEndpoint hears the pcap."""
    ep = rtp()
    uas = Sipp("uas_answer_hangup.xml", tmp_path, params={
        "pcap": write_pcap(tmp_path / "h.pcap", [Tone(600, 1.5)], [Digit("9", 0.5)]), "ring_ms": 100,
        "pause_ms": 2000}).start()
    Sipp("uac_call_wait_bye.xml", tmp_path, remote=uas.address, service="7000", media_port=ep.port,
         params={"pcap": write_pcap(tmp_path / "q.pcap", [Tone(0, 1.0)])}).run().check()
    uas.wait().check()
    assert ep.digits() == "9"
    assert has_tone(ep.audio(), 8000, 600)


# -- PyTrunk <-> baresip ----------------------------------------------------------------------


def test_pytrunk_calls_baresip_and_hangs_up(baresip):
    phone = baresip("alice", tone_hz=1000)
    with PyTrunk() as trunk:
        call = trunk.call(phone.sip_address, "alice")
        assert call.wait_answered(5) == 200
        call.rtp.send_tone(440, 2.0, digits=[Digit("7", 0.5)], remote=call.remote_media)
        time.sleep(2.3)
        assert call.bye() == 200
        phone.wait_for("closed", 3)
        back = call.rtp.audio()
    assert has_tone(back, 8000, 1000), describe(back, 8000)
    heard, rate = channel(phone.heard_wav())
    assert has_tone(heard, rate, 440), describe(heard, rate)
    assert phone.received_digits() == "7"


def test_pytrunk_answers_baresip_and_is_hung_up_on(baresip):
    phone = baresip("alice", tone_hz=1000)
    with PyTrunk(auto_answer=True) as trunk:
        phone.dial(f"sip:441632960000@{trunk.address}")
        call = trunk.wait_for_call(5)
        phone.wait_for("established", 5)
        assert call.invite.uri.startswith("sip:441632960000@")
        call.rtp.send_tone(700, 2.0, remote=call.remote_media)
        time.sleep(2.0)
        phone.hangup()
        call.wait_ended(3)
        assert call.ended_by == "them"
        back = call.rtp.audio()
    assert has_tone(back, 8000, 1000), describe(back, 8000)
    heard, rate = channel(phone.heard_wav())
    assert has_tone(heard, rate, 700), describe(heard, rate)


def test_pytrunk_cancel_and_reject(baresip):
    ringing = baresip("alice", auto_answer=False)
    with PyTrunk() as trunk:
        call = trunk.call(ringing.sip_address, "alice")
        call.wait_status(180, 5)
        call.cancel()
        assert call.wait_answered(3) == 487
        ringing.wait_for("closed", 3)
        # and the other way round: the trunk rejects baresip's call
        ringing.dial(f"sip:441632960000@{trunk.address}")
        incoming = trunk.wait_for_call(5)
        incoming.reject(486, "Busy Here")
        ringing.wait_for("closed", 3)
        wait_until(lambda: trunk.received("ACK"), 2, what="the ACK for 486")


# -- pyVoIP --------------------------------------------------------------------------------------


def test_pyvoip_phone_answers_sipp_call(tmp_path, rtp):
    ep = rtp()
    sipp = Sipp("harness_registrar_then_call.xml", tmp_path, media_port=ep.port, params={
        "user": "carol", "pcap": write_pcap(tmp_path / "p.pcap", [Tone(440, 2.5)]), "pause_ms": 3500}).start()
    phone = PyVoipPhone("carol", "pw", sipp.address, tone_hz=1000)
    try:
        phone.start()
        phone.wait_answered(5)
        sipp.wait().check()
        phone.wait_ended(3)
    finally:
        phone.stop()
    back = ep.audio()
    assert has_tone(back, 8000, 1000), describe(back, 8000)
    heard = phone.heard()
    assert has_tone(heard, 8000, 440), describe(heard, 8000)


# -- the B2BUA process wrapper, with a stub server -----------------------------------------------

STUB = '''
import signal, socket, sys, time
sys.stderr.write("stub: starting " + " ".join(sys.argv[1:]) + "\\n"); sys.stderr.flush()
cfg = open(sys.argv[sys.argv.index("--config") + 1]).read()
port = int(cfg.split('listen = "127.0.0.1:')[1].split('"')[0])
time.sleep(0.5)  # a slow start: the harness must wait for OPTIONS
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", port)); s.settimeout(0.1)
stop = []
signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
while not stop:
    try:
        data, addr = s.recvfrom(65535)
    except socket.timeout:
        continue
    s.sendto(b"SIP/2.0 200 OK\\r\\nContent-Length: 0\\r\\n\\r\\n", addr)
    sys.stderr.write("stub: answered " + data.split(b" ")[0].decode() + "\\n"); sys.stderr.flush()
sys.stderr.write("stub: graceful stop\\n")
'''


def test_b2bua_process_waits_for_options_and_stops_gracefully(tmp_path):
    pkg = tmp_path / "stubpbx"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "__main__.py").write_text(STUB)
    port = free_port("both")
    config = textwrap.dedent(f"""
        [server]
        listen = "127.0.0.1:{port}"
        recordings_dir = "recs"
    """)
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    with B2buaProcess(config, tmp_path, module="stubpbx", env=env) as pbx:
        assert pbx.sip_port == port and pbx.recordings_dir == tmp_path / "recs"
        assert sip_options_ping(pbx.sip_address) == "SIP/2.0 200 OK"
        pbx.wait_for_log("answered OPTIONS")
    assert pbx.returncode == 0
    assert "graceful stop" in pbx.logs()
    with B2buaProcess(config, tmp_path, name="again", module="stubpbx", env=env) as pbx2:
        pbx2.kill9()
        assert pbx2.returncode == -signal.SIGKILL


def test_b2bua_process_reports_early_exit(tmp_path):
    pkg = tmp_path / "badpbx"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "__main__.py").write_text("import sys; sys.stderr.write('config error: no such key\\n'); sys.exit(1)")
    config = f'[server]\nlisten = "127.0.0.1:{free_port()}"\n'
    with pytest.raises(RuntimeError, match="no such key"):
        B2buaProcess(config, tmp_path, module="badpbx", env=dict(os.environ, PYTHONPATH=str(tmp_path))).start()

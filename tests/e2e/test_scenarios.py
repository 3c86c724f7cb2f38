"""Issue 4, scenarios 1, 3-7, 12-14: the seed's Record Calls rules on real calls.

Each test places a real call through the running B2BUA (trunk: PyTrunk, which hears its
media and lets the test time the call, or SIPp; phones: baresip with digest auth, and
pyVoIP for scenarios 1 and 3), then checks the outcome three ways:

- the recording: the WAV's format and length (the answered duration, on the call's wall
  clock), which tone is on which channel and *when* (channel 1 the external party or the
  caller, channel 2 the user or the callee), and the sidecar's fields; or no file at all;
- the B2BUA's log line ``event=answered ... recorded=yes|no``;
- ``b2bua check --json``, which must predict the same outcome for the route.

Tones: the trunk sends 440 Hz, phones 1000 Hz (callee on internal calls: 600 Hz).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest
import soundfile

from tests.e2e.audio import describe, dominant_frequencies, is_silence, load_wav
from tests.e2e.pcap import Tone, build_stream, write_pcap
from tests.e2e.peers import B2buaProcess, Ports, PyTrunk, PyTrunkCall, PyVoipPhone, Sipp

pytestmark = pytest.mark.e2e

RATE = 8000
DDI = "441632960000"
DDI2 = "441632960001"
TRUNK_HZ, PHONE_HZ, CALLEE_HZ = 440, 1000, 600
SIDECAR_KEYS = ("call_id", "direction", "from", "to", "ddi", "user", "started", "ended", "sample_rate",
                "channels", "pause", "segments", "events")


# ----------------------------------------------------------------------------- configuration

def flows(ports: Ports, trunk: str, *, numbers: list[tuple[str, str, str]] | None = None,
          groups: dict[str, tuple[str, list[str]]] | None = None,
          users: dict[str, tuple[str, str]] | None = None, ring_timeout: int = 10) -> str:
    """An organisation: numbers (ddi, record, to), ring groups name -> (record, members),
    users name -> (record_inbound, record_outbound), extensions 201, 202, ... in order."""
    numbers = numbers if numbers is not None else [(DDI, "dont_care", "user:alice")]
    users = users or {"alice": ("dont_care", "dont_care")}
    text = f'''
[server]
listen = "{ports.listen}"
rtp_ports = "{ports.rtp_ports}"
[organisation]
name = "Scenarios Ltd"
[[trunks]]
name = "carrier"
sources = ["{trunk}"]
uri = "sip:{trunk}"
'''
    for ddi, record, to in numbers:
        text += f'[[numbers]]\nddi = "{ddi}"\nrecord = "{record}"\nto = "{to}"\n'
    for name, (record, members) in (groups or {}).items():
        text += (f'[[ring_groups]]\nname = "{name}"\nrecord = "{record}"\nmembers = {json.dumps(members)}\n'
                 f'ring_timeout = {ring_timeout}\n')
    for i, (name, (inbound, outbound)) in enumerate(users.items()):
        text += (f'[[users]]\nname = "{name}"\nextension = "{201 + i}"\npassword = "{name}-secret"\n'
                 f'record_inbound = "{inbound}"\nrecord_outbound = "{outbound}"\n')
    return text


def start(b2bua, trunk_address: str, ports: Ports | None = None, **kw) -> B2buaProcess:
    return b2bua(flows(ports or Ports.allocate(), trunk_address, **kw), extra_args=["--sip-trace"])


def check_routes(pbx: B2buaProcess) -> dict[tuple[str, ...], bool]:
    """``b2bua check --json`` on the running B2BUA's file: route -> starts recorded."""
    out = subprocess.run([sys.executable, "-m", "b2bua", "check", "--config", str(pbx.config_path), "--json"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return {tuple(r["route"]): r["recorded"] for r in json.loads(out.stdout)}


@pytest.fixture
def trunk():
    t = PyTrunk()
    yield t
    t.close()


@pytest.fixture
def answering_trunk():
    t = PyTrunk(auto_answer=True, ring_s=0.3)
    yield t
    t.close()


# ----------------------------------------------------------------------------- checks

def dominated_by(x: np.ndarray, freq: float, fraction: float = 0.8) -> bool:
    """At least ``fraction`` of the non-silent 100 ms windows of ``x`` are ``freq``, and some are."""
    f = dominant_frequencies(x, RATE, 0.1)
    f = f[f > 0]
    return len(f) > 0 and float(np.mean(np.abs(f - freq) <= 15)) >= fraction


def span(x: np.ndarray, a: float, b: float | None = None) -> np.ndarray:
    """Samples of ``x`` from ``a`` to ``b`` seconds (negative: from the end)."""
    n = len(x)
    i = int(a * RATE) if a >= 0 else n + int(a * RATE)
    j = n if b is None else (int(b * RATE) if b >= 0 else n + int(b * RATE))
    return x[i:j]


def parse_iso(text: str) -> datetime:
    assert text.endswith("Z"), f"{text!r}: ISO 8601 UTC with Z"
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def recording(pbx: B2buaProcess) -> tuple[Path, np.ndarray, dict]:
    """The one finalised recording: its path, samples, sidecar; checks format and file naming."""
    wav = pbx.wait_for_recording()
    wavs, sides = pbx.recordings(), sorted(pbx.recordings_dir.rglob("*.json"))
    assert len(wavs) == 1 and len(sides) == 1, f"one call, one recording: {wavs} {sides}"
    info = soundfile.info(str(wav))
    assert (info.samplerate, info.channels, info.subtype) == (RATE, 2, "PCM_16"), info
    x, _ = load_wav(wav)
    meta = pbx.sidecar(wav)
    missing = [k for k in SIDECAR_KEYS if k not in meta]
    assert not missing, f"sidecar lacks {missing}: {meta}"
    assert wav.stem == meta["call_id"]
    rel = wav.relative_to(pbx.recordings_dir).parts
    assert len(rel) == 4 and rel[0] + rel[1] + rel[2] == meta["call_id"][:8], \
        f"{rel}: <recordings_dir>/YYYY/MM/DD/<call_id>.wav, dated by the call's start"
    assert meta["sample_rate"] == RATE and meta["channels"] == 2 and meta["pause"] == "silence"
    return wav, x, meta


def check_timing(x: np.ndarray, meta: dict, answered_wall: float, ended_wall: float) -> None:
    """Recorded from answer to hangup: file length, sidecar times and the single segment agree."""
    length = len(x) / RATE
    duration = ended_wall - answered_wall
    assert abs(length - duration) < 0.5, f"WAV is {length:.2f}s, the answered call lasted {duration:.2f}s"
    started, ended = parse_iso(meta["started"]).timestamp(), parse_iso(meta["ended"]).timestamp()
    assert abs(started - answered_wall) < 0.5, f"started {meta['started']} vs answer at {answered_wall}"
    assert abs(ended - ended_wall) < 0.5, f"ended {meta['ended']} vs hangup at {ended_wall}"
    assert abs((ended - started) - length) < 0.3, (meta["started"], meta["ended"], length)
    assert meta["events"] == [], meta["events"]
    assert len(meta["segments"]) == 1, meta["segments"]
    (s, e), = meta["segments"]
    assert s == 0 and abs(e - length) < 0.05, (meta["segments"], length)


def assert_no_recording(pbx: B2buaProcess) -> None:
    time.sleep(0.3)  # a file would be created at answer; the call is over by now
    leftovers = [p for p in pbx.recordings_dir.rglob("*") if p.is_file()] if pbx.recordings_dir.exists() else []
    assert leftovers == [], f"a call never recorded leaves no file at all: {leftovers}"


def assert_clean_log(pbx: B2buaProcess) -> None:
    bad = [line for line in pbx.logs().splitlines()
           if " ERROR " in line or " CRITICAL " in line or "Traceback" in line or "Exception" in line]
    assert not bad, "\n".join(bad[:20])


def answered_log(pbx: B2buaProcess, by: str, recorded: bool) -> None:
    pbx.wait_for_log(rf"event=answered by={by} recorded={'yes' if recorded else 'no'}")


def trunk_calls_in(pbx: B2buaProcess, trunk: PyTrunk, ddi: str = DDI, *, tones=(Tone(TRUNK_HZ, 3.0),),
                   talk: float = 3.0, answer_timeout: float = 10) -> tuple[PyTrunkCall, float, float]:
    """PyTrunk calls ``ddi``, sends ``tones`` from the answer on, hangs up ``talk`` s after the answer.
    Returns (call, wall time of the answer, wall time of the hangup)."""
    call = trunk.call(pbx.sip_address, ddi)
    assert call.wait_answered(answer_timeout) == 200
    answered = time.time()
    call.rtp.send(build_stream(list(tones)), remote=call.remote_media)
    time.sleep(talk)
    assert call.bye() == 200
    return call, answered, time.time()


# ----------------------------------------------------------------------------- 1

def test_1_number_yes_baresip_recorded_from_answer_to_hangup(b2bua, baresip, trunk):
    pbx = start(b2bua, trunk.address, numbers=[(DDI, "yes", "user:alice")])
    assert check_routes(pbx)[(f"number:{DDI}", "user:alice")] is True
    alice = baresip("alice", "alice-secret", pbx.sip_address, tone_hz=PHONE_HZ)
    # The trunk is silent for 1 s, sends 440 Hz for 2 s, then silence: the WAV must show it
    # at those offsets from the answer (the file starts at the answer, on the call's clock).
    call, answered, ended = trunk_calls_in(pbx, trunk, tones=(Tone(0, 1.0), Tone(TRUNK_HZ, 2.0), Tone(0, 1.5)),
                                           talk=4.0)
    alice.wait_for("closed", 5)
    answered_log(pbx, "alice", True)
    wav, x, meta = recording(pbx)
    check_timing(x, meta, answered, ended)
    ext, user = x[:, 0], x[:, 1]
    assert is_silence(span(ext, 0.1, 0.8)), describe(ext, RATE)
    assert dominated_by(span(ext, 1.25, 2.8), TRUNK_HZ, 0.95), describe(ext, RATE)
    assert is_silence(span(ext, 3.3, -0.2)), describe(ext, RATE)
    assert dominated_by(span(user, 0.3, -0.2), PHONE_HZ, 0.95), describe(user, RATE)
    assert meta["direction"] == "inbound" and meta["ddi"] == DDI and meta["user"] == "alice"
    assert "447700900000" in meta["from"] and DDI in meta["to"], (meta["from"], meta["to"])
    # what each side heard went through the B2BUA both ways
    assert dominated_by(call.rtp.audio()[RATE // 2:], PHONE_HZ, 0.9)
    assert_clean_log(pbx)


def test_1_number_yes_pyvoip_recorded_from_answer_to_hangup(b2bua, trunk):
    pbx = start(b2bua, trunk.address, numbers=[(DDI, "yes", "user:alice")])
    assert check_routes(pbx)[(f"number:{DDI}", "user:alice")] is True
    phone = PyVoipPhone("alice", "alice-secret", pbx.sip_address, tone_hz=PHONE_HZ).start()
    try:
        call, answered, ended = trunk_calls_in(pbx, trunk, tones=(Tone(TRUNK_HZ, 4.0),), talk=3.5)
        phone.wait_ended(5)
        answered_log(pbx, "alice", True)
        wav, x, meta = recording(pbx)
        check_timing(x, meta, answered, ended)
        assert dominated_by(span(x[:, 0], 0.3, -0.2), TRUNK_HZ, 0.95), describe(x[:, 0], RATE)
        # pyVoIP's 8-bit source, paced by its own thread: mostly 1000 Hz
        assert dominated_by(span(x[:, 1], 0.5, -0.3), PHONE_HZ, 0.7), describe(x[:, 1], RATE)
        assert meta["direction"] == "inbound" and meta["user"] == "alice" and meta["ddi"] == DDI
        assert dominated_by(phone.heard()[RATE // 2:], TRUNK_HZ, 0.7), "the phone heard the trunk"
        assert_clean_log(pbx)
    finally:
        phone.stop()


# ----------------------------------------------------------------------------- 3

def test_3_number_dont_care_baresip_no_file(b2bua, baresip, trunk):
    pbx = start(b2bua, trunk.address, numbers=[(DDI, "dont_care", "user:alice")])
    assert check_routes(pbx)[(f"number:{DDI}", "user:alice")] is False
    alice = baresip("alice", "alice-secret", pbx.sip_address, tone_hz=PHONE_HZ)
    call, _, _ = trunk_calls_in(pbx, trunk, talk=2.0)
    alice.wait_for("closed", 5)
    answered_log(pbx, "alice", False)
    assert dominated_by(call.rtp.audio()[RATE // 2:], PHONE_HZ, 0.9), "the call itself worked"
    assert_no_recording(pbx)
    assert_clean_log(pbx)


def test_3_number_dont_care_pyvoip_no_file(b2bua, trunk):
    pbx = start(b2bua, trunk.address, numbers=[(DDI, "dont_care", "user:alice")])
    assert check_routes(pbx)[(f"number:{DDI}", "user:alice")] is False
    phone = PyVoipPhone("alice", "alice-secret", pbx.sip_address, tone_hz=PHONE_HZ).start()
    try:
        trunk_calls_in(pbx, trunk, talk=2.0)
        phone.wait_ended(5)
        answered_log(pbx, "alice", False)
        assert_no_recording(pbx)
        assert_clean_log(pbx)
    finally:
        phone.stop()


# ----------------------------------------------------------------------------- 4

def test_4_ring_group_no_overrides_number_yes_and_member_yes_overrides_the_group(b2bua, baresip, trunk):
    """Two numbers (yes), each to a ring group (no): sales' member alice is dont_care (not
    recorded), support's member bob has record_inbound = yes (recorded)."""
    pbx = start(b2bua, trunk.address,
                numbers=[(DDI, "yes", "ring_group:sales"), (DDI2, "yes", "ring_group:support")],
                groups={"sales": ("no", ["alice"]), "support": ("no", ["bob"])},
                users={"alice": ("dont_care", "dont_care"), "bob": ("yes", "dont_care")})
    routes = check_routes(pbx)
    assert routes[(f"number:{DDI}", "ring_group:sales", "user:alice")] is False
    assert routes[(f"number:{DDI2}", "ring_group:support", "user:bob")] is True
    alice = baresip("alice", "alice-secret", pbx.sip_address, tone_hz=PHONE_HZ)
    bob = baresip("bob", "bob-secret", pbx.sip_address, tone_hz=PHONE_HZ)
    trunk_calls_in(pbx, trunk, DDI, talk=1.5)
    alice.wait_for("closed", 5)
    answered_log(pbx, "alice", False)
    assert_no_recording(pbx)
    _, answered, ended = trunk_calls_in(pbx, trunk, DDI2, talk=2.5)
    bob.wait_for("closed", 5)
    answered_log(pbx, "bob", True)
    wav, x, meta = recording(pbx)
    check_timing(x, meta, answered, ended)
    assert meta["user"] == "bob" and meta["ddi"] == DDI2 and meta["direction"] == "inbound"
    assert dominated_by(span(x[:, 0], 0.3, -0.2), TRUNK_HZ) and dominated_by(span(x[:, 1], 0.3, -0.2), PHONE_HZ)
    assert_clean_log(pbx)


# ----------------------------------------------------------------------------- 5

def test_5_number_no_ring_group_yes_user_dont_care_recorded(b2bua, baresip, trunk):
    pbx = start(b2bua, trunk.address, numbers=[(DDI, "no", "ring_group:sales")],
                groups={"sales": ("yes", ["alice"])})
    assert check_routes(pbx)[(f"number:{DDI}", "ring_group:sales", "user:alice")] is True
    alice = baresip("alice", "alice-secret", pbx.sip_address, tone_hz=PHONE_HZ)
    _, answered, ended = trunk_calls_in(pbx, trunk, talk=2.5)
    alice.wait_for("closed", 5)
    answered_log(pbx, "alice", True)
    wav, x, meta = recording(pbx)
    check_timing(x, meta, answered, ended)
    assert meta["user"] == "alice" and meta["direction"] == "inbound"
    assert dominated_by(span(x[:, 0], 0.3, -0.2), TRUNK_HZ), describe(x[:, 0], RATE)
    assert dominated_by(span(x[:, 1], 0.3, -0.2), PHONE_HZ), describe(x[:, 1], RATE)
    assert_clean_log(pbx)


# ----------------------------------------------------------------------------- 6

@pytest.mark.parametrize("setting, recorded", [("yes", True), ("no", False), ("dont_care", False)])
def test_6_outbound_follows_record_outbound(b2bua, baresip, answering_trunk, setting, recorded):
    pbx = start(b2bua, answering_trunk.address, users={"alice": ("yes", setting)})
    assert check_routes(pbx)[("user:alice", "outbound")] is recorded
    alice = baresip("alice", "alice-secret", pbx.sip_address, tone_hz=PHONE_HZ)
    alice.dial("447700900999")
    call = answering_trunk.wait_for_call(10)
    alice.wait_for("established", 5)
    answered = time.time()
    call.rtp.send(build_stream([Tone(TRUNK_HZ, 3.0)]), remote=call.remote_media)
    time.sleep(2.5)
    alice.hangup()
    call.wait_ended(5)
    ended = time.time()
    answered_log(pbx, "trunk", recorded)
    assert "447700900999" in call.invite.uri, "the dialled number reached the trunk"
    assert dominated_by(call.rtp.audio()[RATE // 2:], PHONE_HZ, 0.9), "the trunk heard the phone"
    if not recorded:
        assert_no_recording(pbx)
        assert_clean_log(pbx)
        return
    wav, x, meta = recording(pbx)
    check_timing(x, meta, answered, ended)
    assert dominated_by(span(x[:, 0], 0.3, -0.3), TRUNK_HZ, 0.95), "channel 1 is the trunk side: " + describe(x[:, 0], RATE)
    assert dominated_by(span(x[:, 1], 0.3, -0.3), PHONE_HZ, 0.95), "channel 2 is the user: " + describe(x[:, 1], RATE)
    assert meta["direction"] == "outbound" and meta["user"] == "alice"
    assert "447700900999" in meta["to"] and "alice" in meta["from"], (meta["from"], meta["to"])
    assert_clean_log(pbx)


def test_6_outbound_recorded_with_a_sipp_trunk(b2bua, baresip, tmp_path):
    """The same rule with SIPp as the trunk (answers after 0.5 s, plays 440 Hz from its SDP port)."""
    ports = Ports.allocate()
    pbx = start(b2bua, ports.trunk, ports, users={"alice": ("dont_care", "yes")})
    assert check_routes(pbx)[("user:alice", "outbound")] is True
    alice = baresip("alice", "alice-secret", pbx.sip_address, tone_hz=PHONE_HZ)
    sipp = Sipp("uas_answer.xml", tmp_path, port=ports.trunk_port,
                params={"pcap": write_pcap(tmp_path / "out.pcap", [Tone(TRUNK_HZ, 4.0)]), "ring_ms": 500}).start()
    alice.dial("447700900999")
    alice.wait_for("established", 5)
    answered = time.time()
    time.sleep(2.5)
    alice.hangup()
    sipp.wait(10).check()
    ended = time.time()
    answered_log(pbx, "trunk", True)
    wav, x, meta = recording(pbx)
    check_timing(x, meta, answered, ended)
    assert dominated_by(span(x[:, 0], 0.3, -0.3), TRUNK_HZ, 0.95), "channel 1 is the trunk side: " + describe(x[:, 0], RATE)
    assert dominated_by(span(x[:, 1], 0.3, -0.3), PHONE_HZ, 0.95), "channel 2 is the user: " + describe(x[:, 1], RATE)
    assert meta["direction"] == "outbound" and meta["user"] == "alice" and "447700900999" in meta["to"]
    assert_clean_log(pbx)


# ----------------------------------------------------------------------------- 7

@pytest.mark.parametrize("caller_out, callee_in, recorded", [
    ("yes", "dont_care", True),
    ("yes", "no", False),
    ("no", "yes", True),
    ("dont_care", "dont_care", False),
])
def test_7_internal_call_caller_outbound_then_callee_inbound(b2bua, baresip, trunk, caller_out, callee_in, recorded):
    pbx = start(b2bua, trunk.address, users={"alice": ("dont_care", caller_out), "bob": (callee_in, "dont_care")})
    routes = check_routes(pbx)
    assert routes[("user:alice", "outbound")] is (caller_out == "yes")  # what the first application says
    if ("user:alice", "user:bob") in routes:  # internal routes, where `check` lists them
        assert routes[("user:alice", "user:bob")] is recorded
    alice = baresip("alice", "alice-secret", pbx.sip_address, tone_hz=PHONE_HZ)
    bob = baresip("bob", "bob-secret", pbx.sip_address, tone_hz=CALLEE_HZ)
    alice.dial("202")
    bob.wait_for("established", 10)
    alice.wait_for("established", 5)
    answered = time.time()
    time.sleep(2.5)
    alice.hangup()
    bob.wait_for("closed", 5)
    ended = time.time()
    pbx.wait_for_log(rf"event=answered by=bob recorded={'yes' if recorded else 'no'} route=user:alice>user:bob")
    if not recorded:
        assert_no_recording(pbx)
        assert_clean_log(pbx)
        return
    wav, x, meta = recording(pbx)
    check_timing(x, meta, answered, ended)
    assert dominated_by(span(x[:, 0], 0.3, -0.3), PHONE_HZ, 0.95), "channel 1 is the caller: " + describe(x[:, 0], RATE)
    assert dominated_by(span(x[:, 1], 0.3, -0.3), CALLEE_HZ, 0.95), "channel 2 is the callee: " + describe(x[:, 1], RATE)
    assert meta["direction"] == "internal" and meta["user"] == "bob"
    assert "202" in meta["to"] and ("alice" in meta["from"] or "201" in meta["from"]), (meta["from"], meta["to"])
    assert_clean_log(pbx)


# ----------------------------------------------------------------------------- 12

@pytest.mark.parametrize("answerer, recorded", [("alice", False), ("bob", True)])
def test_12_ring_group_recording_follows_the_answering_user(b2bua, baresip, trunk, answerer, recorded):
    """Number and group dont_care; alice's record_inbound = no, bob's = yes; both phones ring,
    only ``answerer`` answers (the other is cancelled)."""
    pbx = start(b2bua, trunk.address, numbers=[(DDI, "dont_care", "ring_group:sales")],
                groups={"sales": ("dont_care", ["alice", "bob"])},
                users={"alice": ("no", "dont_care"), "bob": ("yes", "dont_care")})
    routes = check_routes(pbx)
    assert routes[(f"number:{DDI}", "ring_group:sales", "user:alice")] is False
    assert routes[(f"number:{DDI}", "ring_group:sales", "user:bob")] is True
    phones = {name: baresip(name, f"{name}-secret", pbx.sip_address, tone_hz=PHONE_HZ,
                            auto_answer=name == answerer) for name in ("alice", "bob")}
    other = phones["bob" if answerer == "alice" else "alice"]
    _, answered, ended = trunk_calls_in(pbx, trunk, talk=2.5)
    other.wait_for("incoming", 1)
    other.wait_for("closed", 1)  # cancelled at the answer, long before now
    phones[answerer].wait_for("closed", 5)
    answered_log(pbx, answerer, recorded)
    if not recorded:
        assert_no_recording(pbx)
    else:
        wav, x, meta = recording(pbx)
        check_timing(x, meta, answered, ended)
        assert meta["user"] == answerer and meta["direction"] == "inbound"
        assert dominated_by(span(x[:, 1], 0.3, -0.2), PHONE_HZ), describe(x[:, 1], RATE)
    assert_clean_log(pbx)


def test_12_ring_group_baresip_answers_and_the_cancelled_pyvoip_answers_late(b2bua, baresip, trunk):
    """alice (baresip, record_inbound = no) answers at once; bob (pyVoIP, yes) is cancelled, but
    pyVoIP ignores CANCEL and answers 1 s later anyway: its late 2xx gets ACK and BYE, and the
    call, answered by alice, is not recorded."""
    pbx = start(b2bua, trunk.address, numbers=[(DDI, "yes", "ring_group:sales")],
                groups={"sales": ("dont_care", ["alice", "bob"])},
                users={"alice": ("no", "dont_care"), "bob": ("yes", "dont_care")})
    routes = check_routes(pbx)
    assert routes[(f"number:{DDI}", "ring_group:sales", "user:alice")] is False
    assert routes[(f"number:{DDI}", "ring_group:sales", "user:bob")] is True
    bob = PyVoipPhone("bob", "bob-secret", pbx.sip_address, tone_hz=CALLEE_HZ).start()
    try:
        alice = baresip("alice", "alice-secret", pbx.sip_address, tone_hz=PHONE_HZ)
        call, _, _ = trunk_calls_in(pbx, trunk, talk=2.5)
        alice.wait_for("closed", 5)
        answered_log(pbx, "alice", False)
        assert dominated_by(call.rtp.audio()[RATE // 2:], PHONE_HZ, 0.9), "the trunk talked to alice only"
        bob.wait_ended(3)  # pyVoIP's late answer was hung up
        pbx.wait_for_log(r"event=late-answer by=bob")
        assert_no_recording(pbx)
        assert_clean_log(pbx)
    finally:
        bob.stop()


def test_12_ring_group_pyvoip_answers_while_baresip_rings(b2bua, baresip, trunk):
    """bob (pyVoIP, record_inbound = yes) answers after its 1 s; alice (baresip, no) only rings
    and is cancelled: recorded, as bob's setting says."""
    pbx = start(b2bua, trunk.address, numbers=[(DDI, "no", "ring_group:sales")],
                groups={"sales": ("dont_care", ["alice", "bob"])},
                users={"alice": ("no", "dont_care"), "bob": ("yes", "dont_care")})
    bob = PyVoipPhone("bob", "bob-secret", pbx.sip_address, tone_hz=CALLEE_HZ).start()
    try:
        alice = baresip("alice", "alice-secret", pbx.sip_address, auto_answer=False)
        _, answered, ended = trunk_calls_in(pbx, trunk, talk=2.5)
        alice.wait_for("incoming", 1)
        alice.wait_for("closed", 1)
        bob.wait_ended(5)
        answered_log(pbx, "bob", True)
        wav, x, meta = recording(pbx)
        check_timing(x, meta, answered, ended)
        assert meta["user"] == "bob" and meta["direction"] == "inbound"
        assert dominated_by(span(x[:, 0], 0.3, -0.2), TRUNK_HZ), describe(x[:, 0], RATE)
        assert dominated_by(span(x[:, 1], 0.5, -0.3), CALLEE_HZ, 0.7), describe(x[:, 1], RATE)
        assert_clean_log(pbx)
    finally:
        bob.stop()


def test_12_ring_group_both_phones_answer_at_once_the_winner_decides(b2bua, baresip, trunk):
    """Both baresips auto-answer: the first 2xx wins, the other gets ACK and BYE; whether the
    call is recorded follows the winner (alice: no, bob: yes) and nobody else."""
    pbx = start(b2bua, trunk.address, numbers=[(DDI, "dont_care", "ring_group:sales")],
                groups={"sales": ("dont_care", ["alice", "bob"])},
                users={"alice": ("no", "dont_care"), "bob": ("yes", "dont_care")})
    phones = {name: baresip(name, f"{name}-secret", pbx.sip_address, tone_hz=PHONE_HZ) for name in ("alice", "bob")}
    _, answered, ended = trunk_calls_in(pbx, trunk, talk=2.0)
    for phone in phones.values():
        phone.wait_for("closed", 5)
    winner = re.search(r"event=answered by=(\w+)", pbx.logs()).group(1)
    recorded = winner == "bob"
    answered_log(pbx, winner, recorded)
    if recorded:
        wav, x, meta = recording(pbx)
        check_timing(x, meta, answered, ended)
        assert meta["user"] == "bob"
    else:
        assert_no_recording(pbx)
    assert_clean_log(pbx)


# ----------------------------------------------------------------------------- 13

def test_13_inbound_caller_hangs_up_while_ringing_busy_and_no_answer(b2bua, baresip, trunk):
    """A number that records everything; none of these calls is answered, so: no file, clean log."""
    pbx = start(b2bua, trunk.address, numbers=[(DDI, "yes", "ring_group:sales")],
                groups={"sales": ("yes", ["alice"])}, users={"alice": ("yes", "yes")}, ring_timeout=2)
    assert check_routes(pbx)[(f"number:{DDI}", "ring_group:sales", "user:alice")] is True
    alice = baresip("alice", "alice-secret", pbx.sip_address, auto_answer=False)
    # the caller hangs up while it rings
    call = trunk.call(pbx.sip_address, DDI)
    alice.wait_for("incoming", 5)
    call.wait_status(180, 5)
    call.cancel()
    assert call.wait_answered(5) == 487
    alice.wait_for("closed", 5)
    pbx.wait_for_log(r"event=ended cause=caller-cancelled")
    # busy: the phone rejects
    call = trunk.call(pbx.sip_address, DDI)
    alice.wait_for("incoming", 5)
    alice.hangup()
    assert call.wait_answered(5) in (486, 603)
    alice.wait_for("closed", 5)
    # no answer: ring_timeout = 2 s
    began = time.monotonic()
    call = trunk.call(pbx.sip_address, DDI)
    alice.wait_for("incoming", 5)
    assert call.wait_answered(6) == 480
    assert 1.5 < time.monotonic() - began < 4.5
    alice.wait_for("closed", 5)
    pbx.wait_for_log(r"event=no-answer")
    assert "event=answered" not in pbx.logs()
    assert_no_recording(pbx)
    assert_clean_log(pbx)


def test_13_outbound_and_internal_phone_hangs_up_while_ringing_and_trunk_busy(b2bua, baresip, trunk):
    """record_outbound = yes, but never answered: the phone cancels, then the trunk is busy;
    then alice calls bob (record_inbound = yes) and hangs up while bob's phone rings."""
    pbx = start(b2bua, trunk.address, users={"alice": ("yes", "yes"), "bob": ("yes", "yes")})
    assert check_routes(pbx)[("user:alice", "outbound")] is True
    alice = baresip("alice", "alice-secret", pbx.sip_address)
    alice.dial("447700900999")
    call = trunk.wait_for_call(10)
    call.ring()
    alice.wait_for("ringing", 5)
    alice.hangup()  # CANCEL
    call.wait_ended(5)
    assert call.final_status == 487, "the phone's CANCEL reached the trunk"
    alice.wait_for("closed", 5)
    alice.dial("447700900998")
    call = trunk.wait_for_call(10)
    call.reject(486, "Busy Here")
    alice.wait_for("closed", 5)
    pbx.wait_for_log(r"event=ended cause=486")
    # and a call to another user (record_inbound = yes) that alice gives up while it rings
    bob = baresip("bob", "bob-secret", pbx.sip_address, auto_answer=False)
    alice.dial("202")
    bob.wait_for("incoming", 5)
    alice.wait_for("ringing", 5)
    alice.hangup()
    bob.wait_for("closed", 5)
    alice.wait_for("closed", 5)
    pbx.wait_for_log(r"event=ended cause=caller-cancelled")
    assert "event=answered" not in pbx.logs()
    assert_no_recording(pbx)
    assert_clean_log(pbx)


# ----------------------------------------------------------------------------- 14

def test_14_phone_holds_and_resumes_one_file_timeline_intact(b2bua, baresip, trunk):
    """baresip puts the recorded call on hold (re-INVITE a=sendonly, relayed to the trunk)
    and resumes it; the trunk sends 440 Hz throughout."""
    pbx = start(b2bua, trunk.address, numbers=[(DDI, "yes", "user:alice")])
    alice = baresip("alice", "alice-secret", pbx.sip_address, tone_hz=PHONE_HZ)
    call = trunk.call(pbx.sip_address, DDI)
    assert call.wait_answered(10) == 200
    answered = time.time()
    call.rtp.send(build_stream([Tone(TRUNK_HZ, 7.0)]), remote=call.remote_media)
    alice.wait_for("established", 5)
    time.sleep(1.5)
    assert alice.command("hold").get("ok", True), "baresip hold"
    time.sleep(2.0)
    assert alice.command("resume").get("ok", True), "baresip resume"
    time.sleep(2.0)
    assert call.bye() == 200
    ended = time.time()
    alice.wait_for("closed", 5)
    reinvites = [m for m in trunk.received("INVITE") if m.tag("to")]
    assert len(reinvites) >= 2, "hold and resume reached the trunk as re-INVITEs"
    assert "a=sendonly" in reinvites[0].body or "a=inactive" in reinvites[0].body, reinvites[0].body
    wav, x, meta = recording(pbx)
    check_timing(x, meta, answered, ended)
    ext, user = x[:, 0], x[:, 1]
    assert dominated_by(span(ext, 0.3, -0.3), TRUNK_HZ, 0.95), "the trunk's side, before, during, after: " + describe(ext, RATE)
    assert dominated_by(span(user, 0.3, 1.4), PHONE_HZ, 0.95), describe(user, RATE)
    assert dominated_by(span(user, -1.5, -0.3), PHONE_HZ, 0.95), "the phone after the resume: " + describe(user, RATE)
    assert_clean_log(pbx)


@pytest.mark.parametrize("direction, hold_ip", [("sendonly", "[media_ip]"), ("inactive", "[media_ip]"),
                                               ("sendrecv", "0.0.0.0")])
def test_14_trunk_holds_and_resumes_one_file_timeline_intact(b2bua, baresip, tmp_path, direction, hold_ip):
    """SIPp as the trunk: re-INVITE a=sendonly (music on hold: it plays 660 Hz), a=inactive or
    c=0.0.0.0 (RFC 2543 hold; it plays silence) 2 s in, a=sendrecv 2 s later, BYE 2 s after that; before the hold it
    plays 440 Hz, after it 880 Hz. The phone, held, stops sending. Each tone must sit where
    it was sent on the file's timeline: nothing shifted by the gap in the phone's stream."""
    ports = Ports.allocate()
    pbx = start(b2bua, ports.trunk, ports, numbers=[(DDI, "yes", "user:alice")])
    alice = baresip("alice", "alice-secret", pbx.sip_address, tone_hz=PHONE_HZ)
    hold_tone = 660 if direction == "sendonly" else 0
    expected_hold = f"a={direction}" if hold_ip != "0.0.0.0" else "a=sendonly"  # told the RFC 3264 way
    pcap = write_pcap(tmp_path / "hold.pcap", [Tone(440, 2.0), Tone(hold_tone, 2.0), Tone(880, 2.5)])
    began = time.time()
    sipp = Sipp("uac_call_hold.xml", tmp_path, remote=pbx.sip_address, port=ports.trunk_port, service=DDI,
                params={"pcap": pcap, "hold_after_ms": 2000, "hold_direction": direction, "hold_ip": hold_ip,
                        "hold_ms": 2000,
                        "pause_ms": 2000}).run().check()
    ended = time.time()
    alice.wait_for("closed", 5)
    assert len(alice.events("CALL_CLOSED")) == 1, "one call, held and resumed, not a new one"
    records = re.split(r"\n(?=\d{4}-\d\d-\d\d )", pbx.logs())  # one per log record (--sip-trace)
    relayed = list({r.split("\n", 1)[1]: r for r in records if "send " in r and "\nINVITE sip:alice" in r})
    assert len(relayed) == 3 and expected_hold in relayed[1], f"hold and resume relayed to the phone: {relayed}"
    assert "a=sendrecv" in sipp.messages.rsplit("CSeq: 3 INVITE", 1)[-1], "the resume's answer"
    wav, x, meta = recording(pbx)
    length = len(x) / RATE
    assert 5.5 < length < ended - began + 0.3, f"WAV {length:.2f}s for a ~6 s call"
    assert meta["events"] == [] and len(meta["segments"]) == 1
    ext, user = x[:, 0], x[:, 1]
    assert dominated_by(span(ext, 0.3, 1.7), 440, 0.95), describe(ext, RATE)
    if hold_tone:
        assert dominated_by(span(ext, 2.4, 3.7), hold_tone, 0.95), describe(ext, RATE)
    else:
        assert is_silence(span(ext, 2.4, 3.7)), describe(ext, RATE)
    assert dominated_by(span(ext, 4.4, 5.7), 880, 0.95), describe(ext, RATE)
    assert dominated_by(span(user, 0.3, 1.7), PHONE_HZ, 0.95), describe(user, RATE)
    assert is_silence(span(user, 2.5, 3.7)), "the held phone sends nothing: " + describe(user, RATE)
    assert dominated_by(span(user, 4.5, 5.7), PHONE_HZ, 0.95), "the phone after the resume: " + describe(user, RATE)
    assert_clean_log(pbx)


def test_13_pyvoip_caller_hangs_up_while_it_rings_no_recording_and_no_stuck_call(b2bua, trunk):
    """pyVoIP ignores CANCEL (it answers 200 to the CANCEL, never 487) and answers the INVITE
    1 s after ringing anyway: that late 2xx must get an ACK and a BYE (RFC 3261 §9.1, §15),
    so the phone is not left in a call nobody is on, and nothing is recorded."""
    pbx = start(b2bua, trunk.address, numbers=[(DDI, "yes", "user:alice")])
    phone = PyVoipPhone("alice", "alice-secret", pbx.sip_address, tone_hz=PHONE_HZ).start()
    try:
        call = trunk.call(pbx.sip_address, DDI)
        call.wait_status(180, 5)
        call.cancel()
        assert call.wait_answered(5) == 487
        phone.wait_answered(3)  # pyVoIP's answer, after the CANCEL
        phone.wait_ended(5)  # ... hung up by the B2BUA
        pbx.wait_for_log(r"event=ended cause=caller-cancelled")
        assert "event=answered" not in pbx.logs()
        assert_no_recording(pbx)
        assert_clean_log(pbx)
    finally:
        phone.stop()

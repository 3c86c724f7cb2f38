"""Issue 4 end to end: every Record Calls rule of the seed on real calls.

Phones are baresip (digest auth) and, for scenarios 1 and 3, pyVoIP; the trunk is
PyTrunk (sends 440 Hz, hears its media). Each scenario checks the WAV and sidecar (or
that there is no file at all), and that `b2bua check --json` predicts the outcome.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.e2e.audio import describe, dominant_frequencies, load_wav
from tests.e2e.peers import B2buaProcess, Ports, PyTrunk, PyVoipPhone

pytestmark = pytest.mark.e2e

RATE = 8000


def org(ports: Ports, trunk: str, *, number: str = "dont_care", group: str = "dont_care",
        users: dict[str, tuple[str, str]] | None = None, members: tuple[str, ...] = ("alice",),
        group_name: str = "sales") -> str:
    """A one-number organisation: number → ring group → members; users: name -> (inbound, outbound)."""
    users = users or {"alice": ("dont_care", "dont_care")}
    text = f'''
[server]
listen = "{ports.listen}"
rtp_ports = "{ports.rtp_ports}"
[organisation]
name = "Test"
[[trunks]]
name = "carrier"
sources = ["{trunk}"]
uri = "sip:{trunk}"
[[numbers]]
ddi = "441632960000"
record = "{number}"
to = "ring_group:{group_name}"
[[ring_groups]]
name = "{group_name}"
record = "{group}"
members = {json.dumps(list(members))}
'''
    for i, (name, (inbound, outbound)) in enumerate(users.items()):
        text += f'''
[[users]]
name = "{name}"
extension = "{201 + i}"
password = "{name}-secret"
record_inbound = "{inbound}"
record_outbound = "{outbound}"
'''
    return text


@pytest.fixture
def trunk():
    t = PyTrunk()
    yield t
    t.close()


@pytest.fixture
def answering_trunk():
    t = PyTrunk(auto_answer=True)
    yield t
    t.close()


def check_json(pbx: B2buaProcess) -> dict[tuple[str, ...], bool]:
    out = subprocess.run([sys.executable, "-m", "b2bua", "check", "--config", str(pbx.config_path), "--json"],
                         capture_output=True, text=True, timeout=30, check=True)
    return {tuple(r["route"]): r["recorded"] for r in json.loads(out.stdout)}


def dominated_by(x: np.ndarray, freq: float, fraction: float = 0.8) -> bool:
    f = dominant_frequencies(x, RATE, 0.1)
    f = f[f > 0]
    return len(f) > 0 and float(np.mean(np.abs(f - freq) <= 15)) >= fraction


def inbound_call(pbx: B2buaProcess, trunk: PyTrunk, seconds: float = 3.0):
    call = trunk.call(pbx.sip_address, "441632960000")
    assert call.wait_answered(10) == 200
    began = time.monotonic()
    call.rtp.send_tone(440, seconds + 0.5, remote=call.remote_media)
    time.sleep(seconds)
    assert call.bye() == 200
    return time.monotonic() - began


def assert_no_recording(pbx: B2buaProcess) -> None:
    time.sleep(0.5)
    assert pbx.recordings() == [] and not list(pbx.recordings_dir.rglob("*.json")), "a call never recorded leaves no file"


def clean_log(pbx: B2buaProcess) -> None:
    logs = pbx.logs()
    assert "Traceback" not in logs and " ERROR " not in logs, logs[-3000:]


# 1. Number = yes, user answers: recorded from answer to hangup.

def test_1_number_yes_recorded_from_answer_to_hangup_baresip(b2bua, baresip, trunk):
    pbx = b2bua(org(Ports.allocate(), trunk.address, number="yes"), extra_args=["--sip-trace"])
    assert check_json(pbx)[("number:441632960000", "ring_group:sales", "user:alice")] is True
    alice = baresip("alice", "alice-secret", pbx.sip_address, tone_hz=1000)
    duration = inbound_call(pbx, trunk, 3.0)
    alice.wait_for("closed", 5)
    wav = pbx.wait_for_recording()
    x, rate = load_wav(wav)
    assert rate == RATE and x.shape[1] == 2 and x.dtype is not None
    assert abs(len(x) / RATE - duration) < 0.5, (len(x) / RATE, duration)
    assert dominated_by(x[int(0.3 * RATE):, 0], 440), describe(x[:, 0], RATE)
    assert dominated_by(x[int(0.3 * RATE):, 1], 1000), describe(x[:, 1], RATE)
    meta = pbx.sidecar(wav)
    for key in ("call_id", "direction", "from", "to", "ddi", "user", "started", "ended", "sample_rate",
                "channels", "pause", "segments", "events"):
        assert key in meta, key
    assert wav.stem == meta["call_id"] and wav.parent.parts[-3:] == tuple(meta["started"][:10].split("-"))
    assert meta["direction"] == "inbound" and meta["ddi"] == "441632960000" and meta["user"] == "alice"
    assert meta["sample_rate"] == 8000 and meta["channels"] == 2 and meta["events"] == []
    assert len(meta["segments"]) == 1 and meta["segments"][0][0] == 0
    assert meta["ended"] > meta["started"]
    clean_log(pbx)


def test_1_number_yes_recorded_with_pyvoip_phone(b2bua, trunk):
    pbx = b2bua(org(Ports.allocate(), trunk.address, number="yes"), extra_args=["--sip-trace"])
    phone = PyVoipPhone("alice", "alice-secret", pbx.sip_address, tone_hz=1000).start()
    try:
        call = trunk.call(pbx.sip_address, "441632960000")
        assert call.wait_answered(10) == 200
        phone.wait_answered(5)
        call.rtp.send_tone(440, 3.5, remote=call.remote_media)
        time.sleep(3.0)
        assert call.bye() == 200
        wav = pbx.wait_for_recording()
        x, _ = load_wav(wav)
        assert 2.5 <= len(x) / RATE <= 4.0
        assert dominated_by(x[int(0.5 * RATE):, 0], 440), describe(x[:, 0], RATE)
        assert dominated_by(x[int(0.5 * RATE):, 1], 1000, fraction=0.6), describe(x[:, 1], RATE)
        assert pbx.sidecar(wav)["user"] == "alice"
    finally:
        phone.stop()


# 3. Number = dont_care → not recorded, no file at all.

def test_3_number_dont_care_leaves_no_file_baresip(b2bua, baresip, trunk):
    pbx = b2bua(org(Ports.allocate(), trunk.address, number="dont_care"), extra_args=["--sip-trace"])
    assert check_json(pbx)[("number:441632960000", "ring_group:sales", "user:alice")] is False
    baresip("alice", "alice-secret", pbx.sip_address, tone_hz=1000)
    inbound_call(pbx, trunk, 2.0)
    assert_no_recording(pbx)
    pbx.wait_for_log(r"event=answered by=alice recorded=no")


def test_3_number_dont_care_leaves_no_file_pyvoip(b2bua, trunk):
    pbx = b2bua(org(Ports.allocate(), trunk.address, number="dont_care"), extra_args=["--sip-trace"])
    phone = PyVoipPhone("alice", "alice-secret", pbx.sip_address, tone_hz=1000).start()
    try:
        call = trunk.call(pbx.sip_address, "441632960000")
        assert call.wait_answered(10) == 200
        phone.wait_answered(5)
        time.sleep(1.5)
        assert call.bye() == 200
        assert_no_recording(pbx)
    finally:
        phone.stop()


# 4. Number = yes → ring group = no: not recorded; a member with record_inbound = yes: recorded.

def test_4_ring_group_no_overrides_number_yes(b2bua, baresip, trunk):
    pbx = b2bua(org(Ports.allocate(), trunk.address, number="yes", group="no"), extra_args=["--sip-trace"])
    assert check_json(pbx)[("number:441632960000", "ring_group:sales", "user:alice")] is False
    baresip("alice", "alice-secret", pbx.sip_address)
    inbound_call(pbx, trunk, 1.5)
    assert_no_recording(pbx)


def test_4_member_inbound_yes_overrides_ring_group_no(b2bua, baresip, trunk):
    users = {"alice": ("yes", "dont_care")}
    pbx = b2bua(org(Ports.allocate(), trunk.address, number="yes", group="no", users=users),
                extra_args=["--sip-trace"])
    assert check_json(pbx)[("number:441632960000", "ring_group:sales", "user:alice")] is True
    baresip("alice", "alice-secret", pbx.sip_address)
    inbound_call(pbx, trunk, 1.5)
    assert len(pbx.recordings()) == 1 or pbx.wait_for_recording()


# 5. Number = no → ring group = yes → user dont_care: recorded.

def test_5_ring_group_yes_overrides_number_no(b2bua, baresip, trunk):
    pbx = b2bua(org(Ports.allocate(), trunk.address, number="no", group="yes"), extra_args=["--sip-trace"])
    assert check_json(pbx)[("number:441632960000", "ring_group:sales", "user:alice")] is True
    baresip("alice", "alice-secret", pbx.sip_address)
    inbound_call(pbx, trunk, 1.5)
    meta = pbx.sidecar(pbx.wait_for_recording())
    assert meta["user"] == "alice" and meta["events"] == []


# 6. Outbound from a phone with record_outbound = yes / no / dont_care.

@pytest.mark.parametrize("setting, recorded", [("yes", True), ("no", False), ("dont_care", False)])
def test_6_outbound_follows_record_outbound(b2bua, baresip, answering_trunk, setting, recorded):
    users = {"alice": ("dont_care", setting)}
    pbx = b2bua(org(Ports.allocate(), answering_trunk.address, users=users), extra_args=["--sip-trace"])
    assert check_json(pbx)[("user:alice", "outbound")] is recorded
    alice = baresip("alice", "alice-secret", pbx.sip_address, tone_hz=1000)
    alice.dial("447700900999")
    call = answering_trunk.wait_for_call(10)
    alice.wait_for("established", 5)
    call.rtp.send_tone(440, 2.5, remote=call.remote_media)
    time.sleep(2.0)
    alice.hangup()
    call.wait_ended(5)
    if not recorded:
        assert_no_recording(pbx)
        return
    wav = pbx.wait_for_recording()
    x, _ = load_wav(wav)
    assert dominated_by(x[int(0.5 * RATE):int(1.8 * RATE), 0], 440), "channel 1 is the trunk side"
    assert dominated_by(x[int(0.3 * RATE):, 1], 1000), "channel 2 is the user"
    meta = pbx.sidecar(wav)
    assert meta["direction"] == "outbound" and meta["user"] == "alice"
    assert "447700900999" in meta["to"]


# 7. A call between two users by extension: caller's outbound, then callee's inbound.

@pytest.mark.parametrize("caller_out, callee_in, recorded", [("yes", "dont_care", True), ("yes", "no", False),
                                                            ("no", "yes", True)])
def test_7_internal_call_walks_caller_outbound_then_callee_inbound(b2bua, baresip, trunk, caller_out, callee_in,
                                                                    recorded):
    users = {"alice": ("dont_care", caller_out), "bob": (callee_in, "dont_care")}
    pbx = b2bua(org(Ports.allocate(), trunk.address, users=users, members=("alice", "bob")),
                extra_args=["--sip-trace"])
    alice = baresip("alice", "alice-secret", pbx.sip_address, tone_hz=1000)
    bob = baresip("bob", "bob-secret", pbx.sip_address, tone_hz=600)
    alice.dial("202")
    bob.wait_for("established", 10)
    alice.wait_for("established", 5)
    time.sleep(2.0)
    alice.hangup()
    bob.wait_for("closed", 5)
    pbx.wait_for_log(rf"event=answered by=bob recorded={'yes' if recorded else 'no'} route=user:alice>user:bob")
    if not recorded:
        assert_no_recording(pbx)
        return
    wav = pbx.wait_for_recording()
    x, _ = load_wav(wav)
    assert dominated_by(x[int(0.3 * RATE):, 0], 1000), "channel 1 is the caller"
    assert dominated_by(x[int(0.3 * RATE):, 1], 600), "channel 2 is the callee"
    meta = pbx.sidecar(wav)
    assert meta["direction"] == "internal" and meta["user"] == "bob"


# 12. Ring group with two phones, one answers: the recording follows the answering user's setting.

@pytest.mark.parametrize("answerer, recorded", [("alice", False), ("bob", True)])
def test_12_recording_follows_the_user_who_answers(b2bua, baresip, trunk, answerer, recorded):
    users = {"alice": ("no", "dont_care"), "bob": ("yes", "dont_care")}
    pbx = b2bua(org(Ports.allocate(), trunk.address, number="dont_care", users=users, members=("alice", "bob")),
                extra_args=["--sip-trace"])
    routes = check_json(pbx)
    assert routes[("number:441632960000", "ring_group:sales", "user:alice")] is False
    assert routes[("number:441632960000", "ring_group:sales", "user:bob")] is True
    baresip("alice", "alice-secret", pbx.sip_address, auto_answer=answerer == "alice")
    baresip("bob", "bob-secret", pbx.sip_address, auto_answer=answerer == "bob")
    inbound_call(pbx, trunk, 1.5)
    pbx.wait_for_log(rf"event=answered by={answerer} recorded={'yes' if recorded else 'no'}")
    if recorded:
        assert pbx.sidecar(pbx.wait_for_recording())["user"] == answerer
    else:
        assert_no_recording(pbx)


# 13. Caller hangs up while ringing; busy; no answer: no recording file, clean logs.

def test_13_unanswered_calls_leave_no_recording_and_clean_logs(b2bua, baresip, trunk):
    ports = Ports.allocate()
    pbx = b2bua(org(ports, trunk.address, number="yes").replace("members =", "ring_timeout = 2\nmembers ="),
                extra_args=["--sip-trace"])
    alice = baresip("alice", "alice-secret", pbx.sip_address, auto_answer=False)
    # the caller hangs up while ringing
    call = trunk.call(pbx.sip_address, "441632960000")
    alice.wait_for("incoming", 5)
    call.cancel()
    assert call.wait_answered(5) == 487
    alice.wait_for("closed", 5)
    # busy
    call = trunk.call(pbx.sip_address, "441632960000")
    alice.wait_for("incoming", 5)
    alice.hangup()
    assert call.wait_answered(5) in (486, 603)
    # no answer
    call = trunk.call(pbx.sip_address, "441632960000")
    assert call.wait_answered(8) == 480
    assert_no_recording(pbx)
    clean_log(pbx)


# 14. Hold and resume (re-INVITE) in the middle of a recorded call: one file, timeline intact.

def test_14_hold_and_resume_keep_one_file_and_the_timeline(b2bua, baresip, trunk):
    pbx = b2bua(org(Ports.allocate(), trunk.address, number="yes"), extra_args=["--sip-trace"])
    alice = baresip("alice", "alice-secret", pbx.sip_address, tone_hz=1000)
    call = trunk.call(pbx.sip_address, "441632960000")
    assert call.wait_answered(10) == 200
    began = time.monotonic()
    call.rtp.send_tone(440, 6.5, remote=call.remote_media)
    alice.wait_for("established", 5)
    time.sleep(1.5)
    alice.command("hold")
    time.sleep(2.0)
    alice.command("resume")
    time.sleep(2.0)
    assert call.bye() == 200
    duration = time.monotonic() - began
    reinvites = [m for m in trunk.received("INVITE") if m.header("to") and "tag=" in m.header("to")]
    assert len(reinvites) >= 2, "hold and resume were relayed to the trunk as re-INVITEs"
    wav = pbx.wait_for_recording()
    assert len(pbx.recordings()) == 1
    x, _ = load_wav(wav)
    assert abs(len(x) / RATE - duration) < 0.6, "the timeline kept the call's length"
    assert dominated_by(x[int(0.3 * RATE):int(1.4 * RATE), 1], 1000)
    assert dominated_by(x[int(4.2 * RATE):int(5.3 * RATE), 1], 1000), describe(x[:, 1], RATE)
    assert dominated_by(x[int(0.3 * RATE):int(5.3 * RATE), 0], 440), describe(x[:, 0], RATE)

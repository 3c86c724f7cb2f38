"""*1 end to end (issues 3 and 4): pause and resume with real RFC 4733 digits.

The trunk is PyTrunk sending a 440 Hz tone and recording what it hears; the user is
baresip sending 880 Hz and pressing *1 as RFC 4733 telephone-events. The WAV, the
sidecar, what the trunk heard and what the phone heard are all checked.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from tests.e2e.audio import describe, dominant_frequencies, load_wav, rms_per_window
from tests.e2e.peers import B2buaProcess, Ports, PyTrunk

pytestmark = pytest.mark.e2e

RATE = 8000


def flows(ports: Ports, trunk: str, *, number_record: str = "yes", call_recording: bool = True,
          pause: str = "silence", media_sockets: str = "per_call") -> str:
    return f'''
[server]
listen = "{ports.listen}"
rtp_ports = "{ports.rtp_ports}"
pause = "{pause}"
media_sockets = "{media_sockets}"
[organisation]
name = "Test"
call_recording = {"true" if call_recording else "false"}
[[trunks]]
name = "carrier"
sources = ["{trunk}"]
uri = "sip:{trunk}"
[[numbers]]
ddi = "441632960000"
record = "{number_record}"
to = "ring_group:sales"
[[ring_groups]]
name = "sales"
record = "dont_care"
members = ["alice"]
[[users]]
name = "alice"
extension = "201"
password = "alice-secret"
'''


@pytest.fixture
def trunk():
    t = PyTrunk()
    yield t
    t.close()


def window(x: np.ndarray, start: float, end: float) -> np.ndarray:
    return x[int(start * RATE) : int(end * RATE)]


def dominated_by(x: np.ndarray, freq: float, fraction: float = 0.8) -> bool:
    f = dominant_frequencies(x, RATE, 0.1)
    return len(f) > 0 and float(np.mean(np.abs(f - freq) <= 15)) >= fraction


def silent(x: np.ndarray) -> bool:
    return len(x) > 0 and float(np.max(np.abs(x))) < 0.01


def place_call(pbx: B2buaProcess, trunk: PyTrunk, seconds: float):
    call = trunk.call(pbx.sip_address, "441632960000")
    assert call.wait_answered(10) == 200
    answered = time.monotonic()
    call.rtp.send_tone(440, seconds, remote=call.remote_media)
    return call, answered


def at(answered: float, t: float) -> None:
    delay = answered + t - time.monotonic()
    if delay > 0:
        time.sleep(delay)


@pytest.mark.parametrize("media_sockets", ["per_call", "shared"])
def test_star1_pauses_and_resumes_one_file_prompt_only_to_the_presser(b2bua, baresip, trunk, media_sockets):
    """Issue 3: *1 at ~2 s and ~4 s, hang up at ~6 s; number record = yes."""
    pbx = b2bua(flows(Ports.allocate(), trunk.address, media_sockets=media_sockets), extra_args=["--sip-trace"])
    alice = baresip("alice", "alice-secret", pbx.sip_address, tone_hz=880)
    call, answered = place_call(pbx, trunk, 7.0)
    alice.wait_for("established", 5)
    at(answered, 2.0)
    alice.send_dtmf("*1")
    at(answered, 4.0)
    alice.send_dtmf("*1")
    at(answered, 6.0)
    assert call.bye() == 200
    alice.wait_for("closed", 5)

    wav = pbx.wait_for_recording()
    assert len(pbx.recordings()) == 1
    x, rate = load_wav(wav)
    assert rate == RATE and x.shape[1] == 2
    assert 5.4 <= len(x) / RATE <= 6.8, f"one file of the answered call's length, got {len(x) / RATE:.2f}s"
    ext, user = x[:, 0], x[:, 1]
    # Recorded before the first *1, paused between, recorded again after the second.
    assert dominated_by(window(ext, 0.4, 1.8), 440), describe(ext, RATE)
    assert dominated_by(window(user, 0.4, 1.8), 880), describe(user, RATE)
    assert silent(window(ext, 2.9, 3.9)) and silent(window(user, 2.9, 3.9)), describe(ext, RATE)
    assert dominated_by(window(ext, 4.9, 5.7), 440), describe(ext, RATE)
    assert dominated_by(window(user, 4.9, 5.7), 880), describe(user, RATE)
    # No prompt in the recording: the recorded spans hold only the two tones.
    for lo, hi in ((0.4, 1.8), (4.9, 5.7)):
        assert dominated_by(window(ext, lo, hi), 440, fraction=0.95)

    meta = pbx.sidecar(wav)
    assert [(e["event"], e["by"]) for e in meta["events"]] == [("paused", "alice"), ("resumed", "alice")]
    assert len(meta["segments"]) == 2
    (s1, e1), (s2, e2) = meta["segments"]
    assert s1 == 0 and 1.9 < e1 < 3.0 and 3.9 < s2 < 5.0 and abs(e2 - len(x) / RATE) < 0.3
    assert meta["pause"] == "silence" and meta["direction"] == "inbound" and meta["user"] == "alice"

    # The trunk never heard the digits nor the prompt: only 880 Hz (or silence).
    assert call.rtp.digits() == ""
    heard = call.rtp.audio()
    f = dominant_frequencies(heard, RATE, 0.1)
    loud = f[rms_per_window(heard, RATE, 0.1)[: len(f)] > 0.01]
    assert len(loud) > 30 and float(np.mean(np.abs(loud - 880) <= 15)) > 0.95, describe(heard, RATE)

    # The phone heard the prompt after each *1: speech, not the 440 Hz tone, for a while.
    import soundfile

    phone, _ = soundfile.read(str(alice.heard_wav()), always_2d=False)
    prompt_seconds = 0.1 * np.sum(off_tone_ratio(phone, 440) > 0.03)
    assert prompt_seconds >= 1.5, f"prompt heard for {prompt_seconds:.1f}s"
    # ...while the trunk's audio held nothing but alice's tone.
    assert np.sum(off_tone_ratio(heard, 880) > 0.03) <= 3


def off_tone_ratio(x: np.ndarray, freq: float, window_s: float = 0.1) -> np.ndarray:
    """Per window, the share of energy away from `freq`: ~0 for the bare tone, large with speech mixed in."""
    n = int(window_s * RATE)
    ratios = []
    for i in range(0, len(x) - n + 1, n):
        spectrum = np.abs(np.fft.rfft(x[i : i + n] * np.hanning(n))) ** 2
        freqs = np.fft.rfftfreq(n, 1 / RATE)
        total = spectrum.sum()
        if total < 1e-6:
            ratios.append(0.0)
            continue
        ratios.append(float(spectrum[np.abs(freqs - freq) > 60].sum() / total))
    return np.array(ratios)


def test_trunk_star1_toggles_nothing_and_reaches_the_phone(b2bua, baresip, trunk):
    """Issue 3/4 scenario 11: the external party's *1 is ordinary digits."""
    from tests.e2e.pcap import Digit

    pbx = b2bua(flows(Ports.allocate(), trunk.address), extra_args=["--sip-trace"])
    alice = baresip("alice", "alice-secret", pbx.sip_address, tone_hz=880)
    call = trunk.call(pbx.sip_address, "441632960000")
    assert call.wait_answered(10) == 200
    alice.wait_for("established", 5)
    call.rtp.send_tone(440, 4.0, digits=[Digit("*", 1.0), Digit("1", 1.5)], remote=call.remote_media).join()
    assert call.bye() == 200
    alice.wait_for("closed", 5)
    wav = pbx.wait_for_recording()
    meta = pbx.sidecar(wav)
    assert meta["events"] == [] and len(meta["segments"]) == 1
    assert alice.received_digits().replace(" ", "").startswith("*1")


def test_star1_starts_a_call_that_was_not_recorded(b2bua, baresip, trunk):
    """Issue 4 scenario 2 (seconds, not twenty, apart): number no, ring group dont_care."""
    pbx = b2bua(flows(Ports.allocate(), trunk.address, number_record="no"), extra_args=["--sip-trace"])
    alice = baresip("alice", "alice-secret", pbx.sip_address, tone_hz=880)
    call, answered = place_call(pbx, trunk, 8.0)
    alice.wait_for("established", 5)
    at(answered, 1.5)
    assert pbx.recordings() == []
    alice.send_dtmf("*1")  # on
    at(answered, 3.5)
    alice.send_dtmf("*1")  # off
    at(answered, 5.5)
    alice.send_dtmf("*1")  # on
    at(answered, 7.0)
    assert call.bye() == 200
    wav = pbx.wait_for_recording()
    assert len(pbx.recordings()) == 1
    meta = pbx.sidecar(wav)
    assert [e["event"] for e in meta["events"]] == ["resumed", "paused", "resumed"]
    x, _ = load_wav(wav)
    # The file starts at the first *1 (~1.7 s into the call), so it is ~5.3 s long.
    assert 4.6 <= len(x) / RATE <= 6.0, len(x) / RATE
    assert dominated_by(window(x[:, 0], 0.5, 1.6), 440)
    assert silent(window(x[:, 0], 2.6, 3.6))


def test_recording_switched_off_passes_star1_on_and_records_nothing(b2bua, baresip, trunk):
    """Issue 4 scenario 8: call_recording = false."""
    pbx = b2bua(flows(Ports.allocate(), trunk.address, call_recording=False), extra_args=["--sip-trace"])
    alice = baresip("alice", "alice-secret", pbx.sip_address, tone_hz=880)
    call, answered = place_call(pbx, trunk, 4.0)
    alice.wait_for("established", 5)
    at(answered, 1.0)
    alice.send_dtmf("*1")
    at(answered, 3.0)
    assert call.bye() == 200
    alice.wait_for("closed", 5)
    time.sleep(0.5)
    assert pbx.recordings() == [] and not list(pbx.recordings_dir.rglob("*.json"))
    assert call.rtp.digits() == "*1", "with recording off, *1 is ordinary digits"


@pytest.mark.parametrize("pause", ["silence", "skip"])
def test_card_number_read_while_paused_is_never_recorded(b2bua, baresip, trunk, pause):
    """Issue 4 scenario 9: the paused span is silence, or absent with pause = "skip"."""
    pbx = b2bua(flows(Ports.allocate(), trunk.address, pause=pause), extra_args=["--sip-trace"])
    alice = baresip("alice", "alice-secret", pbx.sip_address, tone_hz=880)
    call, answered = place_call(pbx, trunk, 7.0)
    alice.wait_for("established", 5)
    at(answered, 1.5)
    alice.send_dtmf("*1")  # pause: the card number is read from here
    at(answered, 4.5)
    alice.send_dtmf("*1")  # resume
    at(answered, 6.0)
    assert call.bye() == 200
    wav = pbx.wait_for_recording()
    x, _ = load_wav(wav)
    meta = pbx.sidecar(wav)
    assert meta["pause"] == pause and len(meta["segments"]) == 2
    length = len(x) / RATE
    if pause == "silence":
        assert 5.4 <= length <= 6.8
        assert silent(window(x[:, 0], 2.3, 4.3)) and silent(window(x[:, 1], 2.3, 4.3))
        (a0, a1), (b0, b1) = meta["segments"]
        assert b0 - a1 > 2.5  # the gap is in the timeline
    else:
        assert 2.4 <= length <= 4.0, f"paused span left out: {length:.2f}s"
        (a0, a1), (b0, b1) = meta["segments"]
        assert abs(b0 - a1) < 0.05  # segments abut: nothing between them in the file
        loud = rms_per_window(x[:, 0], RATE, 0.1) > 0.01
        assert float(np.mean(loud[1:-2])) > 0.85, describe(x[:, 0], RATE)


def test_ten_pauses_leave_one_file_with_eleven_segments(b2bua, baresip, trunk):
    """Issue 4 scenario 10."""
    pbx = b2bua(flows(Ports.allocate(), trunk.address), extra_args=["--sip-trace"])
    alice = baresip("alice", "alice-secret", pbx.sip_address, tone_hz=880)
    call, answered = place_call(pbx, trunk, 16.0)
    alice.wait_for("established", 5)
    for i in range(20):
        at(answered, 0.8 + i * 0.7)
        alice.send_dtmf("*1", gap=0.2)
    at(answered, 15.2)
    assert call.bye() == 200
    wav = pbx.wait_for_recording()
    assert len(pbx.recordings()) == 1
    meta = pbx.sidecar(wav)
    assert [e["event"] for e in meta["events"]] == ["paused", "resumed"] * 10
    assert len(meta["segments"]) == 11
    times = [e["t"] for e in meta["events"]]
    assert times == sorted(times)


"""Issue 18 end to end: webhooks from `b2bua run` to a real HTTP receiver started here,
through a receiver outage, a restart of the B2BUA, a SIGTERM and a crash mid-call: none is lost."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.e2e.peers import Baresip, free_port
from tests.e2e.recordings_setup import DDI, READ_TOKEN, WEBHOOK_SECRET, start_pbx, wait_indexed

pytestmark = pytest.mark.e2e


class Receiver:
    """A webhook receiver on a fixed port that can be taken down and brought back."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.got: list[tuple[dict, bytes, str]] = []
        self.server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/recordings"

    def start(self) -> "Receiver":
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                owner.got.append((json.loads(body), body, self.headers.get("X-B2BUA-Signature", "")))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def wait_for(self, call_ids: set[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not call_ids <= {d["call_id"] for d, _, _ in self.got}:
            assert time.monotonic() < deadline, f"webhooks for {call_ids} not received; got {self.ids()}"
            time.sleep(0.1)

    def ids(self) -> list[str]:
        return [d["call_id"] for d, _, _ in self.got]


def metric(pbx, name: str) -> float:
    _, _, body = pbx.http("/metrics", None)
    for line in body.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(name)


@pytest.fixture
def hooked(tmp_path):
    """A receiver, a B2BUA posting to it, and alice registered; all stopped at the end."""
    receiver = Receiver(free_port("tcp")).start()
    pbx = start_pbx(tmp_path, webhook_url=receiver.url)
    alice = Baresip("alice", "alice-secret", pbx.proc.sip_address, tmp_path, tone_hz=1000).start()
    try:
        yield receiver, pbx, alice
    finally:
        alice.stop()
        pbx.proc.stop()
        pbx.trunk.close()
        receiver.stop()
        print(f"--- b2bua log ---\n{pbx.proc.logs()[-20000:]}")


def test_webhooks_signed_and_none_lost_through_an_outage_and_a_restart(hooked):
    receiver, pbx, alice = hooked
    # 1. A finalised recording is POSTed once, signed, with the sidecar and wav_url.
    pbx.sipp_call(2.0)
    alice.wait_for("closed", 5)
    first = wait_indexed(pbx, 1)[0]
    receiver.wait_for({first["call_id"]}, 10)
    data, body, signature = receiver.got[0]
    assert signature == "sha256=" + hmac.new(WEBHOOK_SECRET.encode(), body, hashlib.sha256).hexdigest()
    wav_url = data.pop("wav_url")
    assert data == first  # the finalised sidecar, plus wav_url
    assert wav_url == f"{pbx.base}/api/recordings/{first['call_id']}.wav"
    status, _, wav = pbx.http(wav_url[len(pbx.base):], READ_TOKEN)
    assert status == 200 and wav[:4] == b"RIFF"

    # 2. The receiver goes down; a call is recorded; its delivery waits in the outbox.
    receiver.stop()
    pbx.sipp_call(2.0)
    alice.wait_for("closed", 5)
    second = wait_indexed(pbx, 2)[0]
    assert second["call_id"] != first["call_id"]
    deadline = time.monotonic() + 10
    while metric(pbx, 'b2bua_webhook_attempts_total{result="failed"}') < 1:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert metric(pbx, "b2bua_webhook_outbox_depth") == 1

    # 3. The B2BUA restarts while the receiver is still down; then the receiver is back.
    pbx.proc.stop()
    pbx.proc.start()
    time.sleep(1.0)
    receiver.start()
    receiver.wait_for({second["call_id"]}, 30)
    deadline = time.monotonic() + 10
    while metric(pbx, "b2bua_webhook_outbox_depth") != 0:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    # None lost; a duplicate, if any, carries the same call_id (at-least-once).
    assert set(receiver.ids()) == {first["call_id"], second["call_id"]}
    for data, body, signature in receiver.got:
        assert signature == "sha256=" + hmac.new(WEBHOOK_SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert "webhook event=receiver-failing" in pbx.proc.logs()


def test_a_recording_cut_by_a_crash_is_repaired_indexed_and_announced_at_the_next_start(hooked):
    receiver, pbx, alice = hooked
    call = pbx.trunk.call(pbx.proc.sip_address, DDI)
    assert call.wait_answered(10) == 200
    call.rtp.send_tone(440, 3.0, remote=call.remote_media)
    alice.wait_for("established", 5)
    time.sleep(2.0)
    pbx.proc.kill9()  # mid-call: the sidecar still says ended = null
    (wav,) = pbx.proc.recordings()
    assert json.loads(wav.with_suffix(".json").read_text())["ended"] is None
    assert receiver.got == []
    pbx.proc.start()
    receiver.wait_for({wav.stem}, 15)
    data, _, _ = receiver.got[0]
    assert data["recovered"] is True and data["wav_url"].endswith(f"/{wav.stem}.wav")
    listed = pbx.json("/api/recordings")["recordings"]
    assert [r["call_id"] for r in listed] == [wav.stem] and listed[0]["recovered"] is True
    status, _, body = pbx.http(f"/api/recordings/{wav.stem}.wav")
    assert status == 200 and body == wav.read_bytes()


def test_a_call_up_at_sigterm_is_finalised_indexed_and_queued_before_the_process_exits(hooked):
    receiver, pbx, alice = hooked
    receiver.stop()  # so the delivery must wait in the outbox across the restart
    call = pbx.trunk.call(pbx.proc.sip_address, DDI)
    assert call.wait_answered(10) == 200
    call.rtp.send_tone(440, 3.0, remote=call.remote_media)
    alice.wait_for("established", 5)
    time.sleep(1.5)
    assert pbx.proc.stop() == 0  # SIGTERM: BYE, finalise, then the recordings service stops
    logs = pbx.proc.logs()
    assert "index-failed" not in logs and "Traceback" not in logs
    (wav,) = pbx.proc.recordings()
    assert json.loads(wav.with_suffix(".json").read_text())["ended"]
    pbx.proc.start()
    receiver.start()
    receiver.wait_for({wav.stem}, 15)
    assert [r["call_id"] for r in pbx.json("/api/recordings")["recordings"]] == [wav.stem]
    assert "index-reconciled" not in pbx.proc.logs()  # it was indexed at shutdown, not found again at start

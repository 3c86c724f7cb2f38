"""Issue 18 end to end: the REST API, /metrics and the index against a running `b2bua run`
with real recorded calls (SIPp trunk and PyTrunk to a registered baresip; one call paused
with *1, one outbound)."""

from __future__ import annotations

import hashlib
import http.client
import json
import re
import time
from pathlib import Path

import pytest

from tests.e2e.peers import Baresip
from tests.e2e.recordings_setup import ADMIN_TOKEN, DDI, READ_TOKEN, start_pbx, wait_indexed

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("recordings_api")
    pbx = start_pbx(tmp)
    alice = Baresip("alice", "alice-secret", pbx.proc.sip_address, tmp, tone_hz=1000).start()
    try:
        pbx.sipp_call()
        alice.wait_for("closed", 5)
        pbx.paused_call(alice)
        pbx.outbound_call(alice)
        pbx.proc.wait_for_recording(3)
        listed = wait_indexed(pbx, 3)
        assert len(listed) == 3, listed
        yield pbx, listed
    finally:
        alice.stop()
        pbx.proc.stop()
        pbx.trunk.close()
        print(f"--- b2bua log ---\n{pbx.proc.logs()[-20000:]}")


def test_list_is_newest_first_and_matches_the_sidecars_on_disk(recorded):
    pbx, listed = recorded
    started = [r["started"] for r in listed]
    assert started == sorted(started, reverse=True)
    on_disk = {p.stem: json.loads(p.with_suffix(".json").read_text()) for p in pbx.proc.recordings()}
    assert {r["call_id"]: r for r in listed} == on_disk  # the listing is the sidecars, unchanged
    assert [r["direction"] for r in listed] == ["outbound", "inbound", "inbound"]
    # The index lives beside the tree: the tree holds recordings only.
    assert {p.suffix for p in Path(pbx.proc.recordings_dir).rglob("*") if p.is_file()} == {".wav", ".json"}
    paused = listed[1]
    assert [e["event"] for e in paused["events"]] == ["paused", "resumed"] and len(paused["segments"]) == 2


def test_search_by_number_user_direction_and_date(recorded):
    pbx, listed = recorded
    ids = lambda q: [r["call_id"] for r in pbx.json("/api/recordings?" + q)["recordings"]]  # noqa: E731
    assert ids(f"number={DDI}") == [r["call_id"] for r in listed if r["ddi"] == DDI]
    assert ids("number=%2B447700900999") == [listed[0]["call_id"]]  # the dialled number, + ignored
    assert ids("direction=outbound") == [listed[0]["call_id"]]
    assert ids("user=alice&direction=inbound") == [r["call_id"] for r in listed[1:]]
    assert ids("user=bob") == []
    today = listed[0]["started"][:10]
    assert ids(f"from={today}&to={today}") == [r["call_id"] for r in listed]
    assert ids("to=2000-01-01") == []
    # Pages of one, through the cursor, give the same list.
    seen, cursor = [], ""
    while True:
        body = pbx.json("/api/recordings?limit=1" + (f"&cursor={cursor}" if cursor else ""))
        seen += [r["call_id"] for r in body["recordings"]]
        if body["next"] is None:
            break
        cursor = body["next"]
    assert seen == [r["call_id"] for r in listed]


def test_sidecar_and_wav_with_range(recorded):
    pbx, listed = recorded
    call_id = listed[1]["call_id"]
    assert pbx.json(f"/api/recordings/{call_id}") == listed[1]
    wav_path = next(p for p in pbx.proc.recordings() if p.stem == call_id)
    whole = wav_path.read_bytes()
    status, headers, body = pbx.http(f"/api/recordings/{call_id}.wav")
    assert status == 200 and body == whole and headers["Content-Type"] == "audio/wav"
    assert headers.get("Accept-Ranges") == "bytes"
    status, headers, body = pbx.http(f"/api/recordings/{call_id}.wav", headers={"Range": "bytes=44-1043"})
    assert status == 206 and body == whole[44:1044]
    assert headers["Content-Range"] == f"bytes 44-1043/{len(whole)}"
    status, _, body = pbx.http(f"/api/recordings/{call_id}.wav", headers={"Range": f"bytes={len(whole) + 10}-"})
    assert status == 416


def test_without_a_valid_token_every_api_request_is_401(recorded):
    pbx, listed = recorded
    call_id = listed[0]["call_id"]
    for token in (None, "wrong-token", hashlib.sha256(READ_TOKEN.encode()).hexdigest()):
        for path in ("/api/recordings", f"/api/recordings/{call_id}", f"/api/recordings/{call_id}.wav",
                     "/api/recordings/no-such-call"):
            status, headers, body = pbx.http(path, token)
            assert status == 401, (path, token)
            assert json.loads(body)["status"] == 401 and "Bearer" in headers["WWW-Authenticate"]
    status, _, _ = pbx.http(f"/api/recordings/{call_id}", None, method="DELETE")
    assert status == 401


def test_bad_requests_get_json_4xx_and_nothing_outside_recordings(recorded):
    pbx, _ = recorded
    (pbx.tmp_path / "outside.txt").write_text("SECRET-OUTSIDE")
    for path in ("/api/recordings/no-such-call", "/api/recordings/no-such-call.wav",
                 "/api/recordings?cursor=not-a-cursor", "/api/recordings?limit=100000",
                 "/api/recordings?from=tuesday", "/api/recordings?direction=upwards"):
        status, _, body = pbx.http(path)
        assert status in (400, 404), path
        assert set(json.loads(body)) == {"error", "status"}
    host, port = "127.0.0.1", pbx.http_port
    for raw in ("/api/recordings/../../etc/passwd", "/api/recordings/..%2F..%2F..%2F..%2Fetc%2Fpasswd",
                "/api/recordings/..%2Foutside.txt", "/api/recordings/%2e%2e%2f%2e%2e%2foutside.txt.wav",
                "/static/..%2F..%2F..%2Fetc%2Fpasswd", "/api/recordings/x/../../../outside.txt"):
        conn = http.client.HTTPConnection(host, port, timeout=5)
        conn.putrequest("GET", raw, skip_accept_encoding=True)
        conn.putheader("Authorization", f"Bearer {READ_TOKEN}")
        conn.endheaders()
        response = conn.getresponse()
        body = response.read()
        conn.close()
        assert 400 <= response.status < 500, raw
        assert b"root:" not in body and b"SECRET-OUTSIDE" not in body and b"Traceback" not in body
        assert json.loads(body)["status"] == response.status
    assert "Traceback" not in pbx.proc.logs()


def test_metrics_count_the_calls_and_recordings(recorded):
    pbx, _ = recorded
    status, headers, body = pbx.http("/metrics", None)
    text = body.decode()
    assert status == 200 and headers["Content-Type"].startswith("text/plain")

    def value(name: str) -> float:
        match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
        assert match, name
        return float(match.group(1))

    assert value("b2bua_calls_active") == 0
    assert value("b2bua_calls_total") >= 3
    assert value("b2bua_recordings_active") == 0
    assert value("b2bua_recordings_total") == 3
    assert value("b2bua_rtp_packets_total") > 300  # three calls of a few seconds at 50 pps a side
    for reason in ("malformed", "unlatched", "send_error"):
        assert value(f'b2bua_rtp_dropped_total{{reason="{reason}"}}') >= 0
    assert value("b2bua_recordings_disk_free_bytes") > 0
    assert value("b2bua_recordings_indexed") == 3
    assert value('b2bua_calls_refused_total{reason="overload"}') == 0
    assert "b2bua_media_lag_seconds" in text and "b2bua_admission_ceiling_calls" in text
    assert 'b2bua_lockouts_total{scope="ip"} 0.0' in text and "b2bua_recorder_backlog_seconds" in text


def test_page_is_served_with_nothing_from_outside(recorded):
    pbx, _ = recorded
    status, headers, body = pbx.http("/", None)
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert b'id="token"' in body and b"http://" not in body and b"https://" not in body
    assert "default-src 'self'" in headers["Content-Security-Policy"]


def test_z_delete_needs_admin_and_is_logged_with_the_token_name(recorded):
    """Runs last in the module (name): it removes one recording."""
    pbx, listed = recorded
    call_id = listed[-1]["call_id"]
    wav = next(p for p in pbx.proc.recordings() if p.stem == call_id)
    status, _, body = pbx.http(f"/api/recordings/{call_id}", READ_TOKEN, method="DELETE")
    assert status == 403 and wav.exists()
    status, _, body = pbx.http(f"/api/recordings/{call_id}", ADMIN_TOKEN, method="DELETE")
    assert status == 200 and json.loads(body) == {"deleted": call_id}
    assert not wav.exists() and not wav.with_suffix(".json").exists()
    assert pbx.http(f"/api/recordings/{call_id}")[0] == 404
    assert [r["call_id"] for r in pbx.json("/api/recordings")["recordings"]] == [r["call_id"] for r in listed[:-1]]
    pbx.proc.wait_for_log(rf"call={re.escape(call_id)} event=recording-deleted by=ops-admin")


def test_z_index_is_rebuilt_from_the_sidecars_when_missing(recorded):
    """Restart without the index file: the listing comes back from the sidecars."""
    pbx, _ = recorded
    before = [r["call_id"] for r in pbx.json("/api/recordings")["recordings"]]
    pbx.proc.stop()
    recordings = Path(pbx.proc.recordings_dir)
    index = recordings.parent / f"{recordings.name}-index.sqlite3"
    assert index.exists()
    for suffix in ("", "-wal", "-shm"):
        Path(str(index) + suffix).unlink(missing_ok=True)
    pbx.proc.start()
    deadline = time.monotonic() + 10
    while True:
        status, _, body = pbx.http("/api/recordings")
        if status == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert [r["call_id"] for r in json.loads(body)["recordings"]] == before
    pbx.proc.wait_for_log(r"recordings event=index-built recordings=2")

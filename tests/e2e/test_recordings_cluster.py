"""Issue 18 in `b2bua cluster` (real Kamailio, redis-server, two workers): worker N serves the
page, API and its own /metrics on the `[http]` port + N, and the index is the cluster's (in
Redis), so each worker lists and serves the recordings both workers made."""

from __future__ import annotations

import hashlib
import json
import re
import time
import urllib.request

import pytest

from tests.e2e.cluster import ClusterPorts, ClusterProcess, cluster_config
from tests.e2e.peers import PyTrunk, free_port, wait_until

pytestmark = pytest.mark.e2e

TOKEN = "cluster-read-token"


def free_tcp_pair() -> int:
    for _ in range(50):
        port = free_port("tcp")
        if port < 65535 and free_port_is(port + 1):
            return port
    raise RuntimeError("no two consecutive free TCP ports")


def free_port_is(port: int) -> bool:
    import socket

    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def get(port: int, path: str, token: str | None = TOKEN) -> tuple[int, bytes]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status, response.read()


def metric(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    assert match, name
    return float(match.group(1))


def test_each_worker_serves_http_on_its_port_and_lists_every_workers_recordings(tmp_path, baresip):
    trunk = PyTrunk()
    http = free_tcp_pair()
    ports = ClusterPorts.allocate(workers=2)
    extra = f'''
[http]
listen = "127.0.0.1:{http}"
[[api_tokens]]
name = "viewer"
token_sha256 = "{hashlib.sha256(TOKEN.encode()).hexdigest()}"
'''
    cluster = ClusterProcess(cluster_config(ports, trunk.address, extra=extra), tmp_path)
    edge = f"127.0.0.1:{ports.edge}"
    cluster.start(edge, workers=2)
    try:
        for port in (http, http + 1):  # both workers' HTTP is up
            wait_until(lambda port=port: free_port_is(port) is False, 10, what=f"HTTP on {port}")
        baresip("alice", "alice-secret", edge, tone_hz=1000)
        workers = set()
        for _ in range(2):
            call = trunk.call(edge, "441632960000")
            assert call.wait_answered(10) == 200
            workers.add(ports.worker_of_media_port(call.remote_media[1]))
            call.rtp.send_tone(440, 1.5, remote=call.remote_media)
            time.sleep(1.5)
            assert call.bye() == 200
        assert workers == {0, 1}, "the two calls landed on both workers"
        wait_until(lambda: len(cluster.recordings()) == 2, 10, what="two recordings")

        def listed(port: int) -> list[str]:
            return [r["call_id"] for r in json.loads(get(port, "/api/recordings")[1])["recordings"]]

        wait_until(lambda: len(listed(http)) == 2 and len(listed(http + 1)) == 2, 10, what="both indexed")
        assert listed(http) == listed(http + 1)
        assert set(listed(http)) == {w.stem for w in cluster.recordings()}
        for port in (http, http + 1):
            for call_id in listed(port):
                status, body = get(port, f"/api/recordings/{call_id}.wav")
                assert status == 200 and body[:4] == b"RIFF"
        # Each worker's /metrics is its own: one finalised recording each.
        totals = [metric(get(port, "/metrics", None)[1].decode(), "b2bua_recordings_total") for port in (http, http + 1)]
        assert totals == [1.0, 1.0]
    finally:
        cluster.stop()
        trunk.close()
        print(f"--- cluster log (tail) ---\n{cluster.logs()[-30000:]}")

"""Many hosts, on one machine: the edge in one network namespace, a worker in another.

The operator's path for several hosts: Kamailio runs on the edge host from
`b2bua edge-config --out DIR`; each worker host runs `b2bua worker --config FILE --index N`
with its own media address; Redis runs beside the edge. A trunk call placed at the edge
in one namespace is answered by a phone registered at the edge and recorded by the worker
in the other namespace; the worker saw the trunk's real address through the edge.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.audio import has_tone, load_wav
from tests.e2e.netns import TwoHosts
from tests.e2e.peers import REPO_ROOT, _Process, alice_line, wait_until

pytestmark = pytest.mark.e2e

EDGE_PORT, WORKER_PORT, TRUNK_PORT, REDIS_PORT = 5060, 5100, 5080, 6379  # fresh namespaces: all free


def host_config(hosts: TwoHosts, media_ip: str, recordings: Path) -> str:
    return f'''
[server]
listen = "{hosts.edge_ip}:{EDGE_PORT}"
media_ip = "{media_ip}"
rtp_ports = "20000-20099"
recordings_dir = "{recordings}"
[organisation]
name = "Two hosts"
{alice_line(f"{hosts.edge_ip}:{TRUNK_PORT}")}[cluster]
workers = 1
worker_ports = "{WORKER_PORT}-{WORKER_PORT}"
hosts = ["{hosts.worker_ip}"]
redis = "redis://{hosts.edge_ip}:{REDIS_PORT}/0"
'''


@pytest.fixture
def hosts():
    two = TwoHosts.create()
    yield two
    two.close()


def test_a_call_at_the_edge_in_one_namespace_is_recorded_by_a_worker_in_the_other(tmp_path, hosts):
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), PYTHONUNBUFFERED="1")
    recordings = tmp_path / "worker-host" / "recordings"
    edge_toml, worker_toml = tmp_path / "edge.toml", tmp_path / "worker.toml"
    edge_toml.write_text(host_config(hosts, hosts.edge_ip, tmp_path / "edge-host" / "recordings"))
    worker_toml.write_text(host_config(hosts, hosts.worker_ip, recordings))
    out = subprocess.run([sys.executable, "-m", "b2bua", "edge-config", "--config", str(edge_toml),
                          "--out", str(tmp_path / "edge")], capture_output=True, text=True, env=env, timeout=30)
    assert out.returncode == 0, out.stderr
    cfg = tmp_path / "edge" / "kamailio.cfg"
    assert f"sip:{hosts.worker_ip}:{WORKER_PORT};transport=udp" in (tmp_path / "edge" / "dispatcher.list").read_text()

    procs: list[_Process] = []
    try:
        procs.append(_Process(hosts.exec_argv(hosts.edge_ns, [
            "redis-server", "--bind", hosts.edge_ip, "--port", str(REDIS_PORT), "--save", "", "--appendonly", "no",
            # The worker host reaches it over the veth pair (registrations, nonces, lockouts are
            # shared); protected mode would refuse it. The address exists inside the namespaces only.
            "--protected-mode", "no", "--dir", str(tmp_path)]), tmp_path / "redis.log"))
        edge = _Process(hosts.exec_argv(hosts.edge_ns, [
            "/usr/sbin/kamailio", "-DD", "-E", "-f", str(cfg), "-Y", str(tmp_path / "edge"), "-w", str(tmp_path / "edge"),
            "-m", "64", "-M", "8"]), tmp_path / "kamailio.log")
        procs.append(edge)
        worker = _Process(hosts.exec_argv(hosts.worker_ns, [
            sys.executable, "-m", "b2bua", "worker", "--config", str(worker_toml), "--index", "0"]),
            tmp_path / "worker.log", cwd=tmp_path, env=env)
        procs.append(worker)
        wait_until(lambda: "event=ready" in worker.logs() or not worker.alive(), 20, what="the worker")
        assert worker.alive(), worker.logs()
        time.sleep(1.2)  # one probe interval: the edge has seen the worker answer OPTIONS

        peer = subprocess.run(hosts.exec_argv(hosts.edge_ns, [
            sys.executable, "-m", "tests.e2e.netns_peer", hosts.edge_ip, str(EDGE_PORT), str(TRUNK_PORT),
            str(tmp_path / "peers")]), capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=60)
        lines = [line for line in peer.stdout.splitlines() if line.startswith("{")]
        assert lines, f"peer script failed:\n{peer.stdout}\n{peer.stderr}\n{worker.logs()}\n{edge.logs()}"
        result = json.loads(lines[-1])
        assert "error" not in result, f"{result}\n{worker.logs()}\n{edge.logs()}"
        assert result["registered"] and result["status"] == 200 and result["bye"] == 200
        assert result["remote_media"][0] == hosts.worker_ip, "media goes straight to the worker's host, not the edge"
        assert result["heard_packets"] > 50, "the trunk heard alice through the worker"

        wavs = wait_until(lambda: sorted(recordings.rglob("*.wav")), 5, what="the recording")
        assert len(wavs) == 1
        meta = json.loads(wavs[0].with_suffix(".json").read_text())
        assert meta["ended"] is not None
        x, rate = load_wav(wavs[0])
        assert 1.5 <= len(x) / rate <= 3.5
        assert has_tone(x[:, 0], rate, 440) and has_tone(x[:, 1], rate, 1000)
        # The worker judged the call by the trunk's own address, which it learned from the edge.
        assert f"source={hosts.edge_ip}:{TRUNK_PORT}" in worker.logs()
        assert not list((tmp_path / "edge-host").rglob("*.wav")), "nothing recorded on the edge's host"
    finally:
        for proc in reversed(procs):
            proc.stop(5)
        for proc in procs:
            print(f"--- {proc.log_path.name} ---\n{proc.logs()[-4000:]}")

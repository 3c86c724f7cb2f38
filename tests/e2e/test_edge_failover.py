"""The edge's failover and in-dialog timers, with a real Kamailio and two fake workers.

The workers are UDP sockets this test drives message by message (they answer the edge's
OPTIONS probes with 200 in the background), so each can be made slow on purpose:
- the worker that gets a new INVITE first stays silent; 1.5 s later the edge sends the
  INVITE to the other one, each copy stamped with the time it left (X-B2BUA-Sent), so a
  real worker that reads its copy late refuses it instead of ringing the phone too; its
  late 503 does not reach the caller, who gets the other worker's 200;
- the worker holding the call answers the caller's BYE 2.5 s late (busy): the caller gets
  that 200, not a 408 from the edge (in-dialog requests get RFC 3261's timers).
"""

from __future__ import annotations

import queue
import re
import socket
import threading
import time
from pathlib import Path

import pytest

from b2bua.cluster import edge_config
from b2bua.cluster.edge_link import SENT_HEADER
from b2bua.config import load_file
from tests.e2e.peers import LOCALHOST, _Process, free_port, free_port_range

pytestmark = pytest.mark.e2e

KAMAILIO = "/usr/sbin/kamailio"


class FakeWorker:
    """A worker's socket: OPTIONS get 200 at once, everything else is queued for the test."""

    def __init__(self, port: int) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((LOCALHOST, port))
        self.sock.settimeout(0.2)
        self.port = port
        self.inbox: queue.Queue[tuple[str, tuple[str, int]]] = queue.Queue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data, addr = self.sock.recvfrom(65535)
            except OSError:
                continue
            text = data.decode("utf-8", "replace")
            if text.startswith("OPTIONS "):
                self.sock.sendto(reply(text, 200, "OK", "probe").encode(), addr)
            elif not text.startswith("SIP/2.0"):
                self.inbox.put((text, addr))

    def next(self, method: str, timeout: float) -> tuple[str, tuple[str, int]] | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                text, addr = self.inbox.get(timeout=0.05)
            except queue.Empty:
                continue
            if text.startswith(method + " "):
                return text, addr
        return None

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


def headers(text: str, name: str) -> list[str]:
    return re.findall(rf"^{name}:\s*(.*?)\r?$", text, re.M | re.I)


def reply(request: str, status: int, reason: str, to_tag: str, contact: str = "") -> str:
    """A response to `request` (RFC 3261 §8.2.6: its Vias, From, Call-ID, CSeq; To with our
    tag; for a dialog, its Record-Route and our Contact)."""
    lines = [f"SIP/2.0 {status} {reason}"]
    lines += [f"Via: {v}" for v in headers(request, "Via")]
    lines += [f"From: {headers(request, 'From')[0]}"]
    to = headers(request, "To")[0]
    lines += [f"To: {to if ';tag=' in to else f'{to};tag={to_tag}'}"]
    lines += [f"Call-ID: {headers(request, 'Call-ID')[0]}", f"CSeq: {headers(request, 'CSeq')[0]}"]
    if contact:
        lines += [f"Record-Route: {rr}" for rr in headers(request, "Record-Route")]
        lines += [f"Contact: <{contact}>"]
    return "\r\n".join(lines + ["Content-Length: 0", "", ""])


def recv_status(sock: socket.socket, timeout: float) -> list[str]:
    """Every response the caller gets within `timeout` s, as status lines with CSeq."""
    got = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            data, _ = sock.recvfrom(65535)
        except OSError:
            break
        text = data.decode()
        got.append(f"{text.splitlines()[0]} / {headers(text, 'CSeq')[0]}")
    return got


@pytest.fixture
def edge(tmp_path: Path):
    edge_port = free_port("both")
    while True:
        low, _ = free_port_range(2)
        if edge_port not in (low, low + 1):
            break
    rtp_low, rtp_high = free_port_range(8)
    (tmp_path / "flows.toml").write_text(f'''
[server]
listen = "{LOCALHOST}:{edge_port}"
media_ip = "{LOCALHOST}"
rtp_ports = "{rtp_low}-{rtp_high}"
[cluster]
workers = 2
worker_ports = "{low}-{low + 1}"
''')
    workers = [FakeWorker(low), FakeWorker(low + 1)]
    cfg, _ = edge_config.write(load_file(tmp_path / "flows.toml"), tmp_path / "edge")
    kamailio = _Process([KAMAILIO, "-DD", "-E", "-f", str(cfg), "-Y", str(tmp_path / "edge"), "-w", str(tmp_path / "edge"),
                         "-m", "32", "-M", "8"], tmp_path / "kamailio.log")
    time.sleep(2.5)  # listening, and both workers answered a probe
    assert kamailio.alive(), kamailio.logs()
    yield edge_port, workers
    kamailio.stop()
    for w in workers:
        w.close()
    print(kamailio.logs()[-4000:])


def test_failover_copies_are_stamped_a_late_refusal_is_dropped_and_a_slow_bye_still_gets_its_200(edge):
    edge_port, workers = edge
    trunk = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    trunk.bind((LOCALHOST, 0))
    tport = trunk.getsockname()[1]
    invite = (f"INVITE sip:441632960000@{LOCALHOST}:{edge_port} SIP/2.0\r\n"
              f"Via: SIP/2.0/UDP {LOCALHOST}:{tport};branch=z9hG4bKinv1;rport\r\n"
              f"From: <sip:447700900123@{LOCALHOST}>;tag=t1\r\nTo: <sip:441632960000@{LOCALHOST}>\r\n"
              f"Call-ID: failover-1\r\nCSeq: 1 INVITE\r\nContact: <sip:447700900123@{LOCALHOST}:{tport}>\r\n"
              f"Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n")
    trunk.sendto(invite.encode(), (LOCALHOST, edge_port))

    # The first worker to get it stays silent; 1.5 s later the other gets its own stamped copy.
    first = None
    for _ in range(40):
        for i, w in enumerate(workers):
            got = w.next("INVITE", 0.05)
            if got:
                first = (i, *got)
        if first:
            break
    assert first, "the edge sent the INVITE to a worker"
    slow_index, slow_copy, slow_addr = first
    other = workers[1 - slow_index]
    fast = other.next("INVITE", 3.0)
    assert fast, "the edge tried the other worker when the first stayed silent"
    fast_copy, fast_addr = fast
    stamps = [float(headers(copy, SENT_HEADER)[-1]) for copy in (slow_copy, fast_copy)]
    assert abs(stamps[0] - time.time()) < 10, "wall-clock seconds"
    assert stamps[1] - stamps[0] >= 1.4, "each copy says when it left, not when the first did"

    # The slow worker reads its copy late and refuses it (as b2bua.cluster.worker does); the
    # caller never sees that 503, and gets the other worker's answer.
    workers[slow_index].sock.sendto(reply(slow_copy, 503, "Service Unavailable", "late").encode(), slow_addr)
    contact = f"sip:w@{LOCALHOST}:{other.port}"
    other.sock.sendto(reply(fast_copy, 100, "Trying", "w2").encode(), fast_addr)
    other.sock.sendto(reply(fast_copy, 200, "OK", "w2", contact).encode(), fast_addr)
    answers = recv_status(trunk, 1.0)
    assert [a for a in answers if not a.startswith("SIP/2.0 1")] == ["SIP/2.0 200 OK / 1 INVITE"], answers

    # ACK and BYE through the edge (its Record-Route) to the worker that answered, which is
    # busy and answers the BYE 2.5 s late: the caller gets that 200, not the edge's 408.
    route = "\r\n".join(f"Route: {rr}" for rr in headers(fast_copy, "Record-Route"))
    assert route, "the edge record-routes"
    for method, cseq in (("ACK", 1), ("BYE", 2)):
        trunk.sendto((f"{method} {contact} SIP/2.0\r\n"
                      f"Via: SIP/2.0/UDP {LOCALHOST}:{tport};branch=z9hG4bK{method.lower()}1;rport\r\n{route}\r\n"
                      f"From: <sip:447700900123@{LOCALHOST}>;tag=t1\r\nTo: <sip:441632960000@{LOCALHOST}>;tag=w2\r\n"
                      f"Call-ID: failover-1\r\nCSeq: {cseq} {method}\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n").encode(),
                     (LOCALHOST, edge_port))
    assert other.next("ACK", 2.0), "the ACK reached the worker holding the call"
    bye = other.next("BYE", 2.0)
    assert bye, "the BYE reached the worker holding the call"
    assert workers[slow_index].next("BYE", 0.1) is None
    time.sleep(2.5)
    other.sock.sendto(reply(bye[0], 200, "OK", "w2").encode(), bye[1])
    assert recv_status(trunk, 1.5) == ["SIP/2.0 200 OK / 2 BYE"]

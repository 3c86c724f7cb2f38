"""Hostile traffic: reflection factor, memory held per unauthenticated request, log bytes.

    python bench/hostile.py                 # the issue 16 figures, policy on (as `b2bua run`)
    python bench/hostile.py --no-policy     # the same traffic without the stranger policy
    python bench/hostile.py --requests 4000 # more requests per kind

What runs: the real sans-IO stack of `b2bua run` (TransactionLayer with the server's
StrangerPolicy, Registrar, Lockout, B2BUA core), fed parsed datagrams from spoofed
sources with a fake monotonic clock, so no sockets and no timing noise. For each kind of
hostile request (a 168-byte friendly-scanner INVITE, an OPTIONS probe as svmap sends, a
REGISTER as svwar sends, a REGISTER with a wrong password as svcrack sends) it prints:

- reflection: bytes the server sends in answer, over 40 s of timers (Timer G/J's whole
  life), divided by the bytes received;
- held: bytes still allocated (tracemalloc) one second after the requests arrived at
  4,000 a second, per request;
- log: bytes of log (the server's format, INFO and up) per 1,000 hostile requests, with
  the summaries written in that time.

The last line is one JSON object with every figure. Figures, not pass/fail.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import io
import json
import logging
import sys
import tempfile
import tracemalloc
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from b2bua.auth import DigestAuthenticator  # noqa: E402
from b2bua.b2bua import B2BUA  # noqa: E402
from b2bua.clock import FakeClock  # noqa: E402
from b2bua.config import load_file  # noqa: E402
from b2bua.hostile_summary import HostileSummary  # noqa: E402
from b2bua.lockout import Lockout  # noqa: E402
from b2bua.message import SipParseError, parse_message  # noqa: E402
from b2bua.peer import Peer  # noqa: E402
from b2bua.registrar import Registrar  # noqa: E402
from b2bua.strangers import policy_for  # noqa: E402
from b2bua.transaction import TransactionLayer  # noqa: E402

CONFIG = """
[server]
listen = "192.0.2.1:5060"
media_ip = "192.0.2.1"
rtp_ports = "30000-30099"
recordings_dir = "rec"
realm = "pbx.test"
[organisation]
name = "Bench"
[[trunks]]
name = "carrier"
sources = ["198.51.100.7:5060"]
uri = "sip:198.51.100.7:5060"
[[users]]
name = "alice"
extension = "201"
password = "alice-secret"
"""


def scanner_invite(n: int, host: str) -> bytes:
    return (f"INVITE sip:100@192.0.2.1 SIP/2.0\r\nVia: SIP/2.0/UDP {host}:5060;branch=z9hG4bK{n:06d}\r\n"
            f"From: <sip:100@1.1.1.1>;tag={n}\r\nTo: <sip:100@1.1.1.1>\r\nCall-ID: {n:08d}\r\nCSeq: 1 INVITE\r\n"
            "Content-Length: 0\r\n\r\n").encode()


def options(n: int, host: str) -> bytes:
    return (f"OPTIONS sip:100@192.0.2.1 SIP/2.0\r\nVia: SIP/2.0/UDP {host}:5060;branch=z9hG4bK{n:06d};rport\r\n"
            f"From: \"sipvicious\"<sip:100@1.1.1.1>;tag={n}\r\nTo: \"sipvicious\"<sip:100@1.1.1.1>\r\n"
            f"Call-ID: {n:010d}\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContact: <sip:100@{host}:5060>\r\n"
            "User-Agent: friendly-scanner\r\nAccept: application/sdp\r\nContent-Length: 0\r\n\r\n").encode()


def register(n: int, host: str, auth: str = "") -> bytes:
    return (f"REGISTER sip:192.0.2.1 SIP/2.0\r\nVia: SIP/2.0/UDP {host}:5060;branch=z9hG4bK{n:06d};rport\r\n"
            f"From: <sip:{100 + n % 900}@192.0.2.1>;tag={n}\r\nTo: <sip:{100 + n % 900}@192.0.2.1>\r\n"
            f"Call-ID: {n:010d}\r\nCSeq: 1 REGISTER\r\nMax-Forwards: 70\r\nContact: <sip:100@{host}:5060>\r\n"
            f"User-Agent: friendly-scanner\r\n{auth}Content-Length: 0\r\n\r\n").encode()


def guess(n: int, host: str, nonce: str) -> bytes:
    """svcrack: REGISTER for alice with a wrong password against a real nonce."""
    response = hashlib.md5(f"guess{n}".encode()).hexdigest()
    auth = (f'Authorization: Digest username="alice",realm="pbx.test",nonce="{nonce}",uri="sip:192.0.2.1",'
            f'response="{response}",algorithm=MD5\r\n')
    return register(n, host, auth).replace(b"From: <sip:", b"From: <sip:").replace(
        f"sip:{100 + n % 900}@".encode(), b"sip:alice@")


class Stack:
    def __init__(self, policy: bool, log: logging.Logger) -> None:
        tmp = Path(tempfile.mkdtemp())
        (tmp / "flows.toml").write_text(CONFIG)
        self.config = load_file(tmp / "flows.toml")
        self.clock = FakeClock(now=1000.0)
        self.summary = HostileSummary(log.info, first_log=log.warning)
        self.lockout = Lockout(log=log.warning, summary=self.summary, utc_at=self.clock.utc_at)
        auth = DigestAuthenticator("pbx.test", b"k" * 32, algorithms=("MD5",))
        self.auth = auth
        self.registrar = Registrar({"alice": "alice-secret"}, "pbx.test", None, auth, self.lockout,
                                   utc_at=self.clock.utc_at)
        self.txn = TransactionLayer()
        if policy:
            self.txn.strangers = policy_for(self.config, self.registrar, self.summary)
        media = SimpleNamespace(overloaded=False, sessions=[], open_session=lambda call: None)
        self.core = B2BUA(self.config, self.txn, self.registrar, auth, self.lockout, media,
                          advertised_host="192.0.2.1", port=5060)
        self.bytes_out = 0
        self.log = log

    def feed(self, data: bytes, peer: Peer) -> None:
        now = self.clock.now
        try:
            message = parse_message(data)
        except SipParseError:
            self.summary.count(peer.host, "malformed", now)
            return
        for event in self.txn.receive(message, peer, now):
            self.core.handle(event, now)
        self._drain()

    def advance(self, seconds: float) -> None:
        end = self.clock.now + seconds
        while True:
            deadline = self.txn.next_deadline()
            if deadline is None or deadline > end:
                break
            self.clock.now = max(self.clock.now, deadline)
            for event in self.txn.handle_timers(self.clock.now):
                self.core.handle(event, self.clock.now)
            self._drain()
        self.clock.now = end
        self.summary.flush(self.clock.now)

    def _drain(self) -> None:
        for data, _ in self.txn.outgoing():
            self.bytes_out += len(data)


def make(kind: str, n: int, host: str, stack: Stack) -> bytes:
    if kind == "invite":
        return scanner_invite(n, host)
    if kind == "options":
        return options(n, host)
    if kind == "register":
        return register(n, host)
    return guess(n, host, stack.auth.make_nonce(stack.clock.now))


def source(kind: str, n: int, spread: bool) -> Peer:
    """Spoofed sources: many (a reflection attack names many victims) or one (a scanner)."""
    if spread:
        return Peer("udp", f"10.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}", 5060)
    return Peer("udp", "203.0.113.66", 5060)


def run_kind(kind: str, requests: int, policy: bool, spread: bool) -> dict[str, float]:
    logging.disable(logging.NOTSET)
    log = logging.getLogger(f"bench.hostile.{kind}")
    log.propagate = False
    log.setLevel(logging.INFO)
    sink = io.StringIO()
    handler = logging.StreamHandler(sink)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    log.handlers[:] = [handler]
    # The core's own loggers (b2bua, b2bua.security) go to the same sink, as in the server.
    for name in ("b2bua", "b2bua.security"):
        logging.getLogger(name).handlers[:] = [handler]
        logging.getLogger(name).setLevel(logging.INFO)
        logging.getLogger(name).propagate = False
    stack = Stack(policy, log)
    packets = [make(kind, n, source(kind, n, spread).host, stack) for n in range(requests)]
    bytes_in = sum(map(len, packets))
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    for n, data in enumerate(packets):
        stack.feed(data, source(kind, n, spread))
        stack.clock.now += 1 / 4000  # 4,000 a second
    stack.advance(1.0)
    del data
    gc.collect()
    held = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    transactions = len(stack.txn)
    stack.advance(40.0)
    stack.advance(61.0)  # the last summary
    return {
        "requests": requests,
        "bytes_in": bytes_in,
        "bytes_out": stack.bytes_out,
        "reflection": round(stack.bytes_out / bytes_in, 3),
        "held_bytes_per_request": round(held / requests),
        "log_bytes_per_1000": round(len(sink.getvalue().encode()) * 1000 / requests),
        "held_mb": round(held / 1e6, 2),
        "transactions_after_1s": transactions,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--no-policy", action="store_true", help="no StrangerPolicy (every source a peer)")
    args = parser.parse_args()
    results = {}
    for kind, spread in (("invite", True), ("options", True), ("register", True), ("guess", False)):
        label = f"{kind}-{'spoofed-sources' if spread else 'one-source'}"
        results[label] = run_kind(kind, args.requests, not args.no_policy, spread)
        r = results[label]
        print(f"{label:28} reflection {r['reflection']:6.3f}  held {r['held_bytes_per_request']:6d} B/request  "
              f"({r['held_mb']:5.2f} MB)  log {r['log_bytes_per_1000']:6d} B/1000 requests  "
              f"transactions held after 1 s {r['transactions_after_1s']}")
    print(json.dumps({"policy": not args.no_policy, **results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

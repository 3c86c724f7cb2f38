"""Issue 16 end to end, against a running `b2bua run`: the lockout locks out the attacker
(SIPVicious svcrack), not the user; strangers are answered once (no reflection); the
REGISTER's Date is today's; TCP slots are not held by keep-alives alone.

Before: svcrack's guesses for alice locked her own phone out (403) for 600 s; one INVITE
from a stranger drew 100 Trying and retransmitted 403s; Date said 1970.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import socket
import subprocess
import sys
import time
import uuid
from email.utils import parsedate_to_datetime
from pathlib import Path

import pytest

from tests.e2e.peers import Ports

pytestmark = pytest.mark.e2e

FAIL2BAN_REGEX = r"security: lockout ip=(?P<host>\S+) "


def svtool(name: str) -> str:
    """A SIPVicious command from this interpreter's environment (test dependency)."""
    found = shutil.which(f"sipvicious_{name}", path=str(Path(sys.executable).parent)) or shutil.which(f"sipvicious_{name}")
    assert found, f"sipvicious_{name} missing: pip install -e .[test]"
    return found


def config(ports: Ports, extra: str = "") -> str:
    return f'''
[server]
listen = "{ports.listen}"
rtp_ports = "{ports.rtp_ports}"
recordings_dir = "recordings"
[organisation]
name = "Test"
[security]
max_auth_failures = 5
failure_window = 60
lockout_seconds = 600
{extra}
[[trunks]]
name = "carrier"
sources = ["{ports.trunk}"]
uri = "sip:{ports.trunk}"
[[users]]
name = "alice"
extension = "201"
password = "alice-secret"
[[users]]
name = "bob"
extension = "202"
password = "bob-secret"
'''


class RawPhone:
    """A phone at a fixed UDP address that registers with digest (RFC 7616 MD5, qop=auth)."""

    def __init__(self, user: str, password: str, server: tuple[str, int], host: str = "127.0.0.1") -> None:
        self.user, self.password, self.server = user, password, server
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.sock.settimeout(10)  # generous: the machine is shared
        self.host, self.port = self.sock.getsockname()
        self.cseq = 0
        self.call_id = f"{uuid.uuid4().hex}@{host}"

    def _request(self, auth: str = "") -> str:
        self.cseq += 1
        s, p = self.server
        msg = (
            f"REGISTER sip:{s}:{p} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {self.host}:{self.port};branch=z9hG4bK{uuid.uuid4().hex[:12]};rport\r\n"
            f"From: <sip:{self.user}@{s}>;tag=ph{self.port}\r\nTo: <sip:{self.user}@{s}>\r\n"
            f"Call-ID: {self.call_id}\r\nCSeq: {self.cseq} REGISTER\r\n"
            f"Contact: <sip:{self.user}@{self.host}:{self.port}>\r\nExpires: 600\r\nMax-Forwards: 70\r\n"
            f"{auth}Content-Length: 0\r\n\r\n"
        )
        self.sock.sendto(msg.encode(), self.server)
        return self.sock.recv(65535).decode()

    def register(self) -> str:
        """REGISTER, answer the 401; the final answer (its text)."""
        first = self._request()
        nonce = re.search(r'nonce="([^"]+)"', first)
        if not first.startswith("SIP/2.0 401") or nonce is None:
            return first
        realm = re.search(r'realm="([^"]+)"', first).group(1)  # type: ignore[union-attr]
        uri = f"sip:{self.server[0]}:{self.server[1]}"
        md5 = lambda t: hashlib.md5(t.encode()).hexdigest()  # noqa: E731
        ha1, ha2 = md5(f"{self.user}:{realm}:{self.password}"), md5(f"REGISTER:{uri}")
        response = md5(f"{ha1}:{nonce.group(1)}:00000001:c0ffee:auth:{ha2}")
        auth = (f'Authorization: Digest username="{self.user}", realm="{realm}", nonce="{nonce.group(1)}", '
                f'uri="{uri}", response="{response}", algorithm=MD5, qop=auth, nc=00000001, cnonce="c0ffee"\r\n')
        return self._request(auth)

    def close(self) -> None:
        self.sock.close()


def status(reply: str) -> int:
    return int(reply.split()[1])


def test_svcrack_locks_out_the_guesser_while_alices_phone_and_others_still_register(b2bua):
    pbx = b2bua(config(Ports.allocate()))
    server = (pbx.sip_host, pbx.sip_port)
    phone = RawPhone("alice", "alice-secret", server)  # 127.0.0.1, like the attacker
    first = phone.register()
    assert status(first) == 200, first
    date = parsedate_to_datetime(re.search(r"Date: (.+)\r\n", first).group(1))  # type: ignore[union-attr]
    assert abs(date.timestamp() - time.time()) < 60, date  # finding 4: was Thu, 01 Jan 1970

    # The attack: svcrack tries passwords 1000-1099 for alice from 127.0.0.1.
    log_before = len(pbx.logs())
    # svcrack asks for a fresh challenge after every 403 and stops only after --maximumtime
    # seconds without any answer; a locked-out guesser that shares its IP with a registered
    # phone is still answered 403 (RFC 3261), so svcrack may go on for ever: it is given
    # 20 s, as long as the lockout needs many times over, then stopped like an attacker
    # who gives up.
    crack = subprocess.Popen(
        [svtool("svcrack"), "-u", "alice", "-r", "1000-1099", "--maximumtime=4", "-t", "0.02",
         f"udp://{server[0]}:{server[1]}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        out, _ = crack.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        crack.kill()
        out, _ = crack.communicate()
    assert "alice-secret" not in out
    lockouts = [m for m in re.finditer(FAIL2BAN_REGEX, pbx.logs())]
    assert len(lockouts) == 1 and lockouts[0].group("host") == "127.0.0.1", pbx.logs()[-3000:]

    # Alice's phone (an address that authenticated as alice before) still registers,
    # and so do phones anywhere else; bob from a new port at the guesser's IP waits.
    assert status(phone.register()) == 200
    elsewhere = RawPhone("alice", "alice-secret", server, host="127.0.0.2")
    assert status(elsewhere.register()) == 200
    bob_new = RawPhone("bob", "bob-secret", server)
    assert status(bob_new.register()) == 403
    for p in (phone, elsewhere, bob_new):
        p.close()
    # One lockout line and a summary, not a warning per guess.
    attack_log = pbx.logs()[log_before:]
    assert attack_log.count("WARNING") <= 3, attack_log
    assert len(attack_log) < 4000, len(attack_log)


SCANNER_INVITE = (
    "INVITE sip:100@{host} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.3:{port};branch=z9hG4bK{n}\r\n"
    "From: <sip:100@1.1.1.1>;tag={n}\r\nTo: <sip:100@1.1.1.1>\r\nCall-ID: {n}\r\nCSeq: 1 INVITE\r\n"
    "Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
)


def drain(sock: socket.socket, seconds: float) -> list[bytes]:
    got: list[bytes] = []
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            got.append(sock.recv(65535))
        except (TimeoutError, socket.timeout):
            break
    return got


def test_a_strangers_invite_is_answered_once_and_floods_are_rationed(b2bua):
    pbx = b2bua(config(Ports.allocate()))
    server = (pbx.sip_host, pbx.sip_port)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.3", 0))
        port = sock.getsockname()[1]
        invite = SCANNER_INVITE.format(host=server[0], port=port, n="scan1").encode()
        sock.sendto(invite, server)
        answers = drain(sock, 4.0)  # Timer G would have retransmitted the 403 3 times by now
        assert [a.split(b" ", 2)[1] for a in answers] == [b"403"], answers
        assert sum(map(len, answers)) / len(invite) < 3  # the reflection factor (was 16 over 32 s)
        # 300 different INVITEs in a burst: answers are rationed per source (burst 50 + 10/s).
        for n in range(300):
            sock.sendto(SCANNER_INVITE.format(host=server[0], port=port, n=f"flood{n}").encode(), server)
        answered = drain(sock, 1.5)
        assert 10 <= len(answered) <= 80, len(answered)
    # The server still serves a phone.
    phone = RawPhone("alice", "alice-secret", server)
    assert status(phone.register()) == 200
    phone.close()


def test_answer_strangers_false_answers_them_not_at_all(b2bua):
    # The harness's readiness ping comes from 127.0.0.1: make that a (monitoring) trunk, as an
    # operator who silences strangers must for their own OPTIONS health checks.
    monitor = '[[trunks]]\nname = "monitor"\nsources = ["127.0.0.1/32"]\nuri = "sip:127.0.0.1:9"\n'
    pbx = b2bua(config(Ports.allocate(), "answer_strangers = false") + monitor)
    server = (pbx.sip_host, pbx.sip_port)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.3", 0))
        sock.sendto(SCANNER_INVITE.format(host=server[0], port=sock.getsockname()[1], n="quiet").encode(), server)
        assert drain(sock, 2.0) == []


def test_tcp_keepalives_alone_do_not_hold_a_slot_but_a_registered_phones_do(b2bua):
    pbx = b2bua(config(Ports.allocate()))
    server = (pbx.sip_host, pbx.sip_port)
    squatter = socket.create_connection(server, timeout=1)
    phone = socket.create_connection(server, timeout=1)
    host, port = phone.getsockname()
    s, p = server

    def register(auth: str = "", cseq: int = 1) -> str:
        phone.sendall((
            f"REGISTER sip:{s}:{p};transport=tcp SIP/2.0\r\nVia: SIP/2.0/TCP {host}:{port};branch=z9hG4bKt{cseq}\r\n"
            f"From: <sip:bob@{s}>;tag=t\r\nTo: <sip:bob@{s}>\r\nCall-ID: tcp-{port}\r\nCSeq: {cseq} REGISTER\r\n"
            f"Contact: <sip:bob@{host}:{port};transport=tcp>\r\nMax-Forwards: 70\r\n{auth}Content-Length: 0\r\n\r\n"
        ).encode())
        return phone.recv(65535).decode()

    challenge = register()
    nonce = re.search(r'nonce="([^"]+)"', challenge).group(1)  # type: ignore[union-attr]
    realm = re.search(r'realm="([^"]+)"', challenge).group(1)  # type: ignore[union-attr]
    md5 = lambda t: hashlib.md5(t.encode()).hexdigest()  # noqa: E731
    uri = f"sip:{s}:{p};transport=tcp"
    resp = md5(f"{md5(f'bob:{realm}:bob-secret')}:{nonce}:00000001:c0ffee:auth:{md5(f'REGISTER:{uri}')}")
    auth = (f'Authorization: Digest username="bob", realm="{realm}", nonce="{nonce}", uri="{uri}", '
            f'response="{resp}", algorithm=MD5, qop=auth, nc=00000001, cnonce="c0ffee"\r\n')
    assert register(auth, 2).startswith("SIP/2.0 200")
    start = time.monotonic()
    squatter_closed = None
    while time.monotonic() - start < 8:
        for sock in (squatter, phone):
            try:
                sock.sendall(b"\r\n\r\n")
                data = sock.recv(16)
            except (ConnectionError, TimeoutError, socket.timeout, OSError):
                data = b""
            if sock is squatter and not data and squatter_closed is None:
                squatter_closed = time.monotonic() - start
            if sock is phone:
                assert data and not data.strip(b"\r\n"), "the registered phone's connection must stay open"
        time.sleep(0.5)
    assert squatter_closed is not None and squatter_closed < 7, squatter_closed  # 5 s to speak SIP
    squatter.close()
    phone.close()

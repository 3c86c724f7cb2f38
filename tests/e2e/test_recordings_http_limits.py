"""The recordings HTTP service under a connection flood and slowloris clients, against a
running `b2bua run`: past `[http] max_connections` (or `max_connections_per_ip`) a new
connection is closed unread and counted; one that does not finish its request within
`header_timeout` is closed; a legitimate client is served throughout (from another source
address) or once the idle ones are gone. 127.0.0.2 and 127.0.0.3 are other sources on the
loopback (Linux routes all of 127/8 to lo)."""

from __future__ import annotations

import http.client
import re
import socket
import time

import pytest

from tests.e2e.recordings_setup import READ_TOKEN, start_pbx

pytestmark = pytest.mark.e2e

MAX, PER_IP, TIMEOUT = 6, 3, 4


@pytest.fixture(scope="module")
def pbx(tmp_path_factory):
    pbx = start_pbx(tmp_path_factory.mktemp("http_limits"),
                    http_extra=f"max_connections = {MAX}\nmax_connections_per_ip = {PER_IP}\n"
                               f"header_timeout = {TIMEOUT}")
    try:
        yield pbx
    finally:
        pbx.proc.stop()
        pbx.trunk.close()
        print(f"--- b2bua log ---\n{pbx.proc.logs()[-20000:]}")


def silent(pbx, source: str) -> socket.socket:
    """A connection that sends nothing."""
    return socket.create_connection(("127.0.0.1", pbx.http_port), timeout=5, source_address=(source, 0))


def closed_within(sock: socket.socket, seconds: float) -> bool:
    """True if the server closes (FIN or RST) `sock` within `seconds`; False if it stays open."""
    sock.settimeout(seconds)
    try:
        return sock.recv(1024) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def api_status(pbx, source: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", pbx.http_port, timeout=5, source_address=(source, 0))
    try:
        conn.request("GET", "/api/recordings", headers={"Authorization": f"Bearer {READ_TOKEN}"})
        return conn.getresponse().status
    finally:
        conn.close()


def refused(pbx) -> dict[str, float]:
    conn = http.client.HTTPConnection("127.0.0.1", pbx.http_port, timeout=5)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    return {m[1]: float(m[2]) for m in re.finditer(r'^b2bua_http_refused_total\{reason="([^"]+)"\} (\S+)$', text, re.M)}


def test_flood_past_the_bounds_is_refused_and_legit_clients_are_served(pbx):
    held: list[socket.socket] = []
    try:
        # One source: PER_IP silent connections are held, the next ones are closed at once.
        held += [silent(pbx, "127.0.0.1") for _ in range(PER_IP)]
        extra = [silent(pbx, "127.0.0.1") for _ in range(3)]
        assert all(closed_within(s, 1.0) for s in extra)
        assert not any(closed_within(s, 0.2) for s in held)  # the admitted ones are still open
        # Another source is not starved by the first: served at once.
        assert api_status(pbx, "127.0.0.2") == 200
        time.sleep(0.3)  # its connection closed; let the server see it go
        # Fill the total from a second source; a third source is now refused too.
        held += [silent(pbx, "127.0.0.2") for _ in range(MAX - PER_IP)]
        assert not any(closed_within(s, 0.2) for s in held[PER_IP:])
        late = silent(pbx, "127.0.0.3")
        assert closed_within(late, 1.0)
        # The silent ones are closed by the header timeout; then the API answers again.
        assert all(closed_within(s, TIMEOUT + 3) for s in held)
        assert api_status(pbx, "127.0.0.3") == 200
        assert api_status(pbx, "127.0.0.1") == 200
        counts = refused(pbx)
        assert counts["per-ip"] >= 3 and counts["max-connections"] >= 1, counts
        # Summarised by source: one line for the first refusal of each kind and source, not one each.
        pbx.proc.wait_for_log(r"reason=per-ip from=127\.0\.0\.1", 5)
        assert len(re.findall(r"reason=per-ip from=127\.0\.0\.1", pbx.proc.logs())) == 1
    finally:
        for s in held:
            s.close()


def test_headers_that_never_finish_are_closed_after_the_timeout(pbx):
    sock = silent(pbx, "127.0.0.1")
    try:
        sock.sendall(b"GET /api/recordings HTTP/1.1\r\nHost: pbx\r\n")
        started, closed = time.monotonic(), False
        # A header byte every 0.3 s, never the blank line that ends them.
        while time.monotonic() - started < TIMEOUT + 5:
            try:
                sock.sendall(b"X")
            except OSError:
                closed = True
                break
            if closed_within(sock, 0.3):
                closed = True
                break
        assert closed, "a slowloris connection was kept open past header_timeout"
        assert time.monotonic() - started >= TIMEOUT - 0.5  # by the timeout, not at once
        assert api_status(pbx, "127.0.0.1") == 200
    finally:
        sock.close()

"""Batched UDP I/O moves the same datagrams as sendto/recvfrom, many per system call."""

import socket
import time

import pytest

from rtp.batch_io import BatchSocket, available

pytestmark = pytest.mark.skipif(not available(), reason="recvmmsg/sendmmsg are Linux-only")


def udp() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    return s


def test_sendmmsg_then_recvmmsg_round_trip_in_order_with_sources():
    a, b = udp(), udp()
    try:
        sender, receiver = BatchSocket(a), BatchSocket(b)
        dest = b.getsockname()
        payloads = [bytes([i]) * (12 + i) for i in range(150)]
        assert sender.send([(p, dest) for p in payloads]) == 150
        got = []
        deadline = time.monotonic() + 2
        while len(got) < 150 and time.monotonic() < deadline:
            got += receiver.recv()
        assert [d for d, _ in got] == payloads
        assert {addr for _, addr in got} == {a.getsockname()}
        assert receiver.recv() == []  # nothing waiting: returns at once
    finally:
        a.close()
        b.close()

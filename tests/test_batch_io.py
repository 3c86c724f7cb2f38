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


def test_ports_sharing_one_send_area_each_send_their_own_datagrams_from_their_own_port():
    """rtp.mux gives every shared port one SendArea (a send completes before the next): the
    datagrams each port queued leave from that port, whole, to their own destinations, and a
    row send (the batch lane's) between two flushes disturbs neither."""
    import numpy as np

    from rtp.batch_io import BatchMux, ReceiveArea, SendArea

    area, send = ReceiveArea(64), SendArea(8)
    ports = [udp() for _ in range(3)]
    sinks = [udp() for _ in range(3)]
    try:
        muxes = [BatchMux(p, 8, area, send) for p in ports]
        for k, (mux, sink) in enumerate(zip(muxes, sinks)):
            for j in range(20):  # more than the area's batch: several sendmmsg calls each
                mux.queue(bytes([k, j]) * (6 + j), sink.getsockname())
        assert muxes[0].flush() == 20
        rows = np.zeros((2, 32), dtype=np.uint8)
        rows[1, :5] = [9, 9, 9, 9, 9]
        dst = np.frombuffer(muxes[1].sockaddr(sinks[1].getsockname()), dtype="V16")
        assert muxes[1].send_rows(rows, np.array([1]), np.array([5]), dst) == 1
        assert muxes[2].flush() == 20 and muxes[1].flush() == 20
        for k, sink in enumerate(sinks):
            sink.settimeout(2)
            got = [sink.recvfrom(2048) for _ in range(21 if k == 1 else 20)]
            assert {addr for _, addr in got} == {ports[k].getsockname()}
            datagrams = [d for d, _ in got]
            expected = [bytes([k, j]) * (6 + j) for j in range(20)]
            assert (datagrams == [b"\t" * 5, *expected]) if k == 1 else datagrams == expected
        with pytest.raises(ValueError):
            BatchMux(ports[0], 16, area, send)  # a batch larger than the shared area
    finally:
        for s in ports + sinks:
            s.close()

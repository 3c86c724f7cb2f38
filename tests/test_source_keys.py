"""Source keys (rtp.source_keys): exact for IPv4 and IPv6, and bounded by the routes for IPv6.

What each source gets: an IPv4 datagram the 48-bit address-and-port key it always had; an
IPv6 datagram from a source a route holds that source's interned key; any other IPv6
datagram a transient key that routes nowhere and still decodes to its exact (host, port).
A flood from 10,000 IPv6 addresses leaves the intern table as the routes made it.
"""

from __future__ import annotations

import socket
import struct

import numpy as np
import pytest

from rtp.batch_io import ReceiveArea, available, source_key
from rtp.source_keys import NOWHERE, TRANSIENT, V6_KEY, IPv4Keys, IPv6Keys

pytestmark = pytest.mark.skipif(not available(), reason="recvmmsg is Linux-only")


def has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False


def sockaddr_in6(host: str, port: int) -> bytes:
    return struct.pack("<H", socket.AF_INET6) + struct.pack("!HI", port, 0) + socket.inet_pton(socket.AF_INET6, host) + bytes(4)


def read(area: ReceiveArea, sock: socket.socket, count: int) -> int:
    """Rows 0.. filled from `sock` until `count` datagrams are in (loopback: at once)."""
    n = 0
    for _ in range(100):
        n += area.recv(sock.fileno(), n)
        if n == count:
            break
    return n


def test_ipv6_keys_are_held_by_routes_and_gone_with_the_last() -> None:
    keys = IPv6Keys()
    party = ("2001:db8::5", 4000)
    assert keys.find(party) == NOWHERE
    key = keys.hold(party)
    assert key & V6_KEY and key & TRANSIENT != TRANSIENT and key >= 1 << 48  # never an IPv4 key
    assert keys.find(("2001:db8:0:0:0:0:0:5", 4000)) == key  # any spelling of the address
    assert keys.find(("2001:db8::5", 4001)) == NOWHERE  # exact: the port counts
    assert keys.address(key) == party
    assert keys.hold(party) == key and len(keys) == 1  # two routes, one entry
    keys.release(key)
    assert keys.find(party) == key
    keys.release(key)
    assert keys.find(party) == NOWHERE and len(keys) == 0
    assert keys.hold(("192.0.2.1", 5)) == NOWHERE and len(keys) == 0  # not an IPv6 address


def test_a_flood_from_10000_ipv6_sources_does_not_grow_the_table_and_each_decodes_exactly() -> None:
    keys = IPv6Keys()
    area = ReceiveArea(1024, keys)
    party = ("2001:db8::1", 7078)
    held = keys.hold(party)
    names = area._names  # where recvmmsg writes each datagram's source
    sources = [(f"2001:db8:{i >> 8:x}:{i & 0xFF:x}::{i:x}", 1024 + i % 60000) for i in range(10_000)]
    seen = 0
    for start in range(0, len(sources), area.batch):
        chunk = sources[start : start + area.batch]
        for row, (host, port) in enumerate(chunk):
            names[row] = np.frombuffer(sockaddr_in6(host, port), np.uint8)
        names[len(chunk) - 1] = np.frombuffer(sockaddr_in6(*party), np.uint8)  # the party among them
        _, got = area.batch_of(len(chunk))
        assert int(got[-1]) == held
        for row in (0, len(chunk) // 2, len(chunk) - 2):
            key = int(got[row])
            assert key & TRANSIENT == TRANSIENT  # routes nowhere
            assert keys.address(key) == (socket.inet_ntop(socket.AF_INET6, socket.inet_pton(socket.AF_INET6, chunk[row][0])),
                                         chunk[row][1])
        seen += len(chunk)
    assert seen == 10_000
    assert len(keys) == 1 and len(keys._by_raw) == 1  # the party's route alone


def test_ipv4_keys_are_the_address_and_port_as_before() -> None:
    keys = IPv4Keys()
    addr = ("192.0.2.7", 5004)
    assert keys.find(addr) == keys.hold(addr) == source_key(addr) < 1 << 48
    assert keys.address(source_key(addr)) == addr and len(keys) == 0
    area = ReceiveArea(8)  # IPv4 sockets: the 16-byte sockaddr_in slots
    assert area._names.shape[1] == 16
    rx, tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM), socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        rx.bind(("127.0.0.1", 0))
        tx.bind(("127.0.0.1", 0))
        for i in range(3):
            tx.sendto(bytes([i]) * 20, rx.getsockname())
        lens, got = area.batch_of(read(area, rx, 3))
        assert got.tolist() == [source_key(tx.getsockname())] * 3 and lens.tolist() == [20] * 3
    finally:
        rx.close()
        tx.close()


@pytest.mark.skipif(not has_ipv6_loopback(), reason="no IPv6 loopback on this machine")
def test_an_ipv6_socket_read_into_an_area_gives_each_source_its_key() -> None:
    keys = IPv6Keys()
    area = ReceiveArea(16, keys)
    rx = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    senders = [socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) for _ in range(3)]
    try:
        rx.bind(("::1", 0))
        for s in senders:
            s.bind(("::1", 0))
        held = keys.hold(senders[0].getsockname()[:2])
        for k, s in enumerate(senders):
            s.sendto(bytes([k]) * (30 + k), rx.getsockname()[:2])
        lens, got = area.batch_of(read(area, rx, 3))
        by_len = {int(lens[i]) - 30: int(got[i]) for i in range(len(got))}
        assert by_len[0] == held
        for k in (1, 2):
            assert by_len[k] & TRANSIENT == TRANSIENT
            assert keys.address(by_len[k]) == senders[k].getsockname()[:2]
        assert len(keys) == 1
    finally:
        rx.close()
        for s in senders:
            s.close()

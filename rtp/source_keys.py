"""Source keys: the integer a received datagram's source is routed by (rtp.mux, rtp.fastpath).

IPv4: the 48-bit address and port themselves (`rtp.batch_io.source_key`), computed with numpy
for a whole batch and decoded back without any table.

IPv6: an address and port are 144 bits, more than a uint64 key holds, and a hash would not be
exact (two sources sharing a key would cross calls). `IPv6Keys` interns the sources routes
name instead: a source a leg's SDP names or it latched to gets a key while some port's route
holds it (`hold` / `release`: counted per route, gone with the last), so the table is bounded
by the legs, never by the traffic. A datagram from any other source gets a transient key
(its row in the receive area) that routes nowhere: it goes to the per-packet path, which
asks `address(key)` for its (host, port), decoded from that row's sockaddr_in6 while the
batch is being handled. A flood from many addresses therefore costs a dict look-up a
datagram and no memory.

Keys of the three kinds never meet: IPv4 keys are below 2**48, IPv6 ones have bit 63 set,
transient ones bits 63 and 62.
"""

from __future__ import annotations

import socket
import struct

import numpy as np

from rtp.batch_io import key_address, source_key

V6_KEY = 1 << 63  # an interned IPv6 source: V6_KEY | serial number
TRANSIENT = V6_KEY | (1 << 62)  # an IPv6 source no route names: TRANSIENT | receive-area row
NOWHERE = TRANSIENT | ((1 << 62) - 1)  # what `find` gives an IPv6 source no route names
_ROW = (1 << 32) - 1
# sockaddr_in6: family (2), port (2, network order), flowinfo (4), address (16), scope id (4)
SOCKADDR_IN6 = 28
_NAME_COLUMNS = np.array([*range(8, 24), 2, 3])  # the address, then the port: the interned bytes


class IPv4Keys:
    """IPv4 sources: the key is the address and port (no table to hold)."""

    family = socket.AF_INET

    @staticmethod
    def find(addr: tuple[str, int]) -> int:
        return source_key(addr)

    @staticmethod
    def hold(addr: tuple[str, int]) -> int:
        return source_key(addr)

    @staticmethod
    def release(key: int) -> None:
        pass

    @staticmethod
    def address(key: int) -> tuple[str, int]:
        return key_address(key)

    def __len__(self) -> int:
        return 0


class IPv6Keys:
    """IPv6 sources' keys, interned while a route holds them (see the module doc)."""

    family = socket.AF_INET6

    def __init__(self) -> None:
        self._by_raw: dict[bytes, int] = {}  # 16-byte address + 2-byte port (network order) -> key
        self._by_key: dict[int, tuple[bytes, tuple[str, int], int]] = {}  # key -> (raw, (host, port), holds)
        self._serial = 0
        self._names: np.ndarray | None = None  # the receive area's sockaddr rows of the batch in hand

    def __len__(self) -> int:
        return len(self._by_key)

    @staticmethod
    def _raw(addr: tuple[str, int]) -> bytes | None:
        try:
            return socket.inet_pton(socket.AF_INET6, addr[0]) + struct.pack("!H", addr[1])
        except (OSError, ValueError, TypeError, struct.error):
            return None

    def find(self, addr: tuple[str, int]) -> int:
        """The key of `addr` if a route holds it, else NOWHERE (which no route is under)."""
        raw = self._raw(addr)
        return self._by_raw.get(raw, NOWHERE) if raw is not None else NOWHERE

    def hold(self, addr: tuple[str, int]) -> int:
        """`addr`'s key, held once more (a route now names it); NOWHERE if it is no IPv6 address."""
        raw = self._raw(addr)
        if raw is None:
            return NOWHERE
        key = self._by_raw.get(raw)
        if key is None:
            self._serial += 1
            key = V6_KEY | self._serial
            self._by_raw[raw] = key
            self._by_key[key] = (raw, (socket.inet_ntop(socket.AF_INET6, raw[:16]), addr[1]), 1)
        else:
            raw, named, holds = self._by_key[key]
            self._by_key[key] = (raw, named, holds + 1)
        return key

    def release(self, key: int) -> None:
        """A route that held `key` is gone; the last one takes the entry with it."""
        entry = self._by_key.get(key)
        if entry is None:
            return
        raw, named, holds = entry
        if holds > 1:
            self._by_key[key] = (raw, named, holds - 1)
        else:
            del self._by_key[key]
            del self._by_raw[raw]

    def address(self, key: int) -> tuple[str, int]:
        """The (host, port) a key stands for: an interned one's, or a transient one's row of
        the batch in hand."""
        if key & TRANSIENT == TRANSIENT:
            row = self._names[key & _ROW]
            host = socket.inet_ntop(socket.AF_INET6, row[8:24].tobytes())
            return host, (int(row[2]) << 8) | int(row[3])
        return self._by_key[key][1]

    def keys_of(self, names: np.ndarray) -> np.ndarray:
        """Each received sockaddr_in6 row's key (uint64): interned, or transient (its row)."""
        self._names = names
        n = len(names)
        blob = names[:, _NAME_COLUMNS].tobytes()
        get = self._by_raw.get
        return np.fromiter((get(blob[i * 18 : i * 18 + 18], TRANSIENT | i) for i in range(n)), dtype=np.uint64,
                           count=n)

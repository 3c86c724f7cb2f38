"""SipTransport against real sockets on 127.0.0.1 (ephemeral ports, shortened timeouts).

Each test reads as a trace: bytes a client puts on the wire, and the (message, Peer)
pairs the transport hands up or the bytes it sends back.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest

from b2bua.message import MAX_MESSAGE_SIZE
from b2bua.peer import Peer
from b2bua.transport import SipTransport

#: Every wait in these tests; a hang fails fast instead of stalling the suite.
WAIT = 2.0
#: Shortened slowloris deadline, so the test takes a fraction of a second.
MESSAGE_TIMEOUT = 0.4
#: Shortened idle timeout.
IDLE_TIMEOUT = 0.6


def options(n: int, body: bytes = b"", transport: str = "TCP") -> bytes:
    """A complete OPTIONS request numbered `n`, with `body` and its Content-Length."""
    return (
        f"OPTIONS sip:bob@example.com SIP/2.0\r\n"
        f"Via: SIP/2.0/{transport} 127.0.0.1:5070;branch=z9hG4bK-{n}\r\n"
        f"Max-Forwards: 70\r\n"
        f"From: <sip:alice@example.com>;tag=a{n}\r\n"
        f"To: <sip:bob@example.com>\r\n"
        f"Call-ID: call-{n}@example.com\r\n"
        f"CSeq: {n} OPTIONS\r\n"
        f"Content-Type: text/plain\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"\r\n"
    ).encode() + body


OK = b"SIP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n"


class Inbox:
    """What the transport handed up, awaitable."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[bytes, Peer]] = asyncio.Queue()

    def __call__(self, data: bytes, peer: Peer) -> None:
        self.queue.put_nowait((data, peer))

    async def get(self) -> tuple[bytes, Peer]:
        return await asyncio.wait_for(self.queue.get(), WAIT)

    async def nothing_for(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        assert self.queue.empty(), self.queue.get_nowait()


@pytest.fixture
def inbox() -> Inbox:
    return Inbox()


@pytest.fixture
async def transport(inbox: Inbox) -> AsyncIterator[SipTransport]:
    t = SipTransport(
        "127.0.0.1", 0, inbox,
        idle_timeout=IDLE_TIMEOUT, message_timeout=MESSAGE_TIMEOUT, connect_timeout=1.0,
        max_connections_per_ip=4,
    )
    await t.start()
    yield t
    await asyncio.wait_for(t.stop(), WAIT)


class UdpClient(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[bytes, tuple]] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple) -> None:  # type: ignore[override]
        self.queue.put_nowait((data, addr))


async def udp_client() -> tuple[asyncio.DatagramTransport, UdpClient]:
    loop = asyncio.get_running_loop()
    return await loop.create_datagram_endpoint(UdpClient, local_addr=("127.0.0.1", 0))


async def tcp_client(t: SipTransport) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.wait_for(asyncio.open_connection("127.0.0.1", t.local_port), WAIT)


async def assert_closed(reader: asyncio.StreamReader, within: float = WAIT) -> None:
    """The server ends the connection (FIN or RST) within `within` seconds."""
    async with asyncio.timeout(within):
        try:
            while await reader.read(65536):
                pass
        except ConnectionError:
            pass


# -- UDP


async def test_udp_message_received_with_peer(transport: SipTransport, inbox: Inbox) -> None:
    client, _ = await udp_client()
    try:
        client.sendto(options(1, transport="UDP"), ("127.0.0.1", transport.local_port))
        data, peer = await inbox.get()
        assert data == options(1, transport="UDP")
        assert peer == Peer("udp", "127.0.0.1", client.get_extra_info("sockname")[1])
    finally:
        client.close()


async def test_udp_keepalives_and_empty_datagrams_are_ignored(transport: SipTransport, inbox: Inbox) -> None:
    client, _ = await udp_client()
    try:
        for junk in (b"\r\n\r\n", b"\r\n", b""):
            client.sendto(junk, ("127.0.0.1", transport.local_port))
        client.sendto(options(2, transport="UDP"), ("127.0.0.1", transport.local_port))
        data, _ = await inbox.get()
        assert data == options(2, transport="UDP")
        await inbox.nothing_for(0.05)
    finally:
        client.close()


async def test_udp_send_reaches_client(transport: SipTransport) -> None:
    client, protocol = await udp_client()
    try:
        port = client.get_extra_info("sockname")[1]
        transport.send(OK, Peer("udp", "127.0.0.1", port))
        data, addr = await asyncio.wait_for(protocol.queue.get(), WAIT)
        assert data == OK
        assert addr[1] == transport.local_port  # from the listening socket (RFC 3261 §18.2.2)
    finally:
        client.close()


# -- TCP framing


async def test_tcp_two_messages_in_one_segment(transport: SipTransport, inbox: Inbox) -> None:
    reader, writer = await tcp_client(transport)
    writer.write(options(1) + options(2))
    first, peer = await inbox.get()
    second, _ = await inbox.get()
    assert (first, second) == (options(1), options(2))
    assert peer == Peer("tcp", "127.0.0.1", writer.get_extra_info("sockname")[1])
    writer.close()


async def test_tcp_message_split_across_segments(transport: SipTransport, inbox: Inbox) -> None:
    reader, writer = await tcp_client(transport)
    message = options(3, body=b"hello world")
    writer.write(message[:10])
    await writer.drain()
    await asyncio.sleep(0.02)
    writer.write(message[10:150])
    await writer.drain()
    await asyncio.sleep(0.02)
    writer.write(message[150:])
    data, _ = await inbox.get()
    assert data == message
    writer.close()


async def test_tcp_body_is_bounded_by_content_length(transport: SipTransport, inbox: Inbox) -> None:
    reader, writer = await tcp_client(transport)
    first = options(4, body=b"v=0\r\n\r\n\r\nINVITE looks-like-a-message")  # CRLFs inside a body are body
    writer.write(first + options(5))
    assert (await inbox.get())[0] == first
    assert (await inbox.get())[0] == options(5)
    writer.close()


async def test_tcp_response_goes_back_on_the_same_connection(inbox: Inbox) -> None:
    transport: SipTransport

    def answer(data: bytes, peer: Peer) -> None:
        transport.send(OK, peer)

    transport = SipTransport("127.0.0.1", 0, answer)
    await transport.start()
    try:
        reader, writer = await tcp_client(transport)
        writer.write(options(6))
        assert await asyncio.wait_for(reader.readexactly(len(OK)), WAIT) == OK
        assert len(transport._all) == 1  # no second connection was opened
        writer.close()
    finally:
        await transport.stop()


async def test_tcp_new_outgoing_connection(transport: SipTransport, inbox: Inbox) -> None:
    received: asyncio.Queue[bytes] = asyncio.Queue()
    writers: list[asyncio.StreamWriter] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        received.put_nowait(await reader.readexactly(len(options(7)) + len(options(8))))
        writer.write(OK)
        await writer.drain()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        # Two sends before the connection exists: both queued on one connect, in order.
        transport.send(options(7), Peer("tcp", "127.0.0.1", port))
        transport.send(options(8), Peer("tcp", "127.0.0.1", port))
        assert await asyncio.wait_for(received.get(), WAIT) == options(7) + options(8)
        data, peer = await inbox.get()  # the answer comes back on our connection
        assert data == OK
        assert peer == Peer("tcp", "127.0.0.1", port)
        assert len(writers) == 1
    finally:
        for w in writers:
            w.close()
        server.close()
        await server.wait_closed()


async def test_tcp_connect_failure_is_logged_not_raised(transport: SipTransport, caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    transport.send(options(9), Peer("tcp", "127.0.0.1", port))
    async with asyncio.timeout(WAIT):
        while "connect-failed" not in caplog.text:
            await asyncio.sleep(0.01)
    assert not transport._connecting


# -- TCP protections


async def test_slowloris_is_closed_while_another_connection_keeps_working(transport: SipTransport, inbox: Inbox) -> None:
    slow_reader, slow_writer = await tcp_client(transport)
    good_reader, good_writer = await tcp_client(transport)
    message = options(10)

    async def trickle() -> None:
        for byte in message:
            slow_writer.write(bytes([byte]))
            await asyncio.sleep(0.05)

    trickling = asyncio.create_task(trickle())
    try:
        await asyncio.sleep(0.1)
        good_writer.write(options(11))
        assert (await inbox.get())[0] == options(11)
        await assert_closed(slow_reader, within=MESSAGE_TIMEOUT + 0.5)
        good_writer.write(options(12))
        assert (await inbox.get())[0] == options(12)
    finally:
        trickling.cancel()
        slow_writer.close()
        good_writer.close()


async def test_promised_body_never_sent_is_closed(transport: SipTransport, inbox: Inbox) -> None:
    reader, writer = await tcp_client(transport)
    writer.write(options(13, body=b"x" * 100)[:-40])  # headers and part of the body
    await assert_closed(reader, within=MESSAGE_TIMEOUT + 0.5)
    await inbox.nothing_for(0)
    writer.close()


async def test_keepalives_keep_an_idle_connection_alive(transport: SipTransport, inbox: Inbox) -> None:
    reader, writer = await tcp_client(transport)
    writer.write(options(13))
    _, peer = await inbox.get()
    transport.heard(peer, trusted=True)  # a registered phone's connection (issue 16)
    for _ in range(4):  # 4 * IDLE_TIMEOUT/2 > IDLE_TIMEOUT, but never idle that long
        await asyncio.sleep(IDLE_TIMEOUT / 2)
        writer.write(b"\r\n\r\n")
        assert await asyncio.wait_for(reader.readexactly(2), WAIT) == b"\r\n"
    writer.write(options(14))
    assert (await inbox.get())[0] == options(14)
    writer.close()


async def test_idle_connection_is_closed(transport: SipTransport) -> None:
    reader, writer = await tcp_client(transport)
    await assert_closed(reader, within=IDLE_TIMEOUT + 0.5)
    assert not transport._all
    writer.close()


async def test_oversize_message_closes_the_connection(transport: SipTransport, inbox: Inbox) -> None:
    reader, writer = await tcp_client(transport)
    other_reader, other_writer = await tcp_client(transport)
    writer.write(options(15, body=b"x" * (MAX_MESSAGE_SIZE + 1)))
    await assert_closed(reader)
    await inbox.nothing_for(0)
    other_writer.write(options(16))
    assert (await inbox.get())[0] == options(16)
    writer.close()
    other_writer.close()


async def test_garbage_closes_the_connection(transport: SipTransport, inbox: Inbox) -> None:
    reader, writer = await tcp_client(transport)
    writer.write(b"OPTIONS sip:x SIP/2.0\r\nContent-Length: banana\r\n\r\n")
    await assert_closed(reader)
    await inbox.nothing_for(0)
    writer.close()


async def test_double_crlf_ping_gets_single_crlf_pong(transport: SipTransport, inbox: Inbox) -> None:
    reader, writer = await tcp_client(transport)
    writer.write(b"\r\n\r\n")
    assert await asyncio.wait_for(reader.readexactly(2), WAIT) == b"\r\n"
    writer.write(b"\r\n\r\n" + options(17))  # a ping, then a message in the same segment
    assert await asyncio.wait_for(reader.readexactly(2), WAIT) == b"\r\n"
    assert (await inbox.get())[0] == options(17)
    with pytest.raises(asyncio.TimeoutError):  # exactly one pong per ping
        await asyncio.wait_for(reader.read(1), 0.05)
    writer.close()


async def test_per_ip_connection_cap(transport: SipTransport, inbox: Inbox) -> None:
    clients = [await tcp_client(transport) for _ in range(4)]  # the fixture allows 4 per IP
    reader, writer = await tcp_client(transport)
    await assert_closed(reader)
    clients[0][1].write(options(18))
    assert (await inbox.get())[0] == options(18)
    for _, w in clients:
        w.close()
    writer.close()


async def test_handler_error_costs_one_message_not_the_connection(inbox: Inbox) -> None:
    calls: list[bytes] = []

    def flaky(data: bytes, peer: Peer) -> None:
        calls.append(data)
        if len(calls) == 1:
            raise RuntimeError("bug upstairs")
        inbox(data, peer)

    transport = SipTransport("127.0.0.1", 0, flaky)
    await transport.start()
    try:
        reader, writer = await tcp_client(transport)
        writer.write(options(19) + options(20))
        assert (await inbox.get())[0] == options(20)
        writer.close()
    finally:
        await transport.stop()


# -- lifecycle


async def test_udp_and_tcp_share_the_port(transport: SipTransport) -> None:
    assert transport.local_port > 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s, pytest.raises(OSError):
        s.bind(("127.0.0.1", transport.local_port))  # the UDP port is taken...
    reader, writer = await tcp_client(transport)  # ...and TCP listens on the same number
    writer.close()


async def test_stop_closes_everything(inbox: Inbox) -> None:
    transport = SipTransport("127.0.0.1", 0, inbox)
    await transport.start()
    port = transport.local_port
    reader, writer = await tcp_client(transport)
    writer.write(b"OPTIONS sip:x SIP/2.0\r\n")  # mid-message
    await writer.drain()
    await asyncio.sleep(0.02)
    await asyncio.wait_for(transport.stop(), WAIT)
    await assert_closed(reader)
    with pytest.raises(OSError):
        await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), WAIT)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", port))  # the UDP port is free again
    transport.send(OK, Peer("udp", "127.0.0.1", port))  # after stop: dropped, not raised
    writer.close()


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback")
async def test_ipv6_udp_and_tcp(inbox: Inbox) -> None:
    transport = SipTransport("::1", 0, inbox)
    await transport.start()
    try:
        loop = asyncio.get_running_loop()
        client, _ = await loop.create_datagram_endpoint(UdpClient, local_addr=("::1", 0))
        client.sendto(options(21, transport="UDP"), ("::1", transport.local_port))
        data, peer = await inbox.get()
        assert peer == Peer("udp", "::1", client.get_extra_info("sockname")[1])
        client.close()
        reader, writer = await asyncio.open_connection("::1", transport.local_port)
        writer.write(options(22))
        data, peer = await inbox.get()
        assert data == options(22) and peer.transport == "tcp" and peer.host == "::1"
        writer.close()
    finally:
        await transport.stop()


def test_works_on_uvloop() -> None:
    """Production runs on uvloop, whose transports are not asyncio's classes."""
    uvloop = pytest.importorskip("uvloop")

    async def scenario() -> None:
        inbox = Inbox()
        transport = SipTransport("127.0.0.1", 0, inbox)
        await transport.start()
        try:
            reader, writer = await tcp_client(transport)
            writer.write(b"\r\n\r\n" + options(23))
            assert await asyncio.wait_for(reader.readexactly(2), WAIT) == b"\r\n"
            data, peer = await inbox.get()
            assert data == options(23)
            transport.send(OK, peer)
            assert await asyncio.wait_for(reader.readexactly(len(OK)), WAIT) == OK
            client, protocol = await udp_client()
            client.sendto(options(24, transport="UDP"), ("127.0.0.1", transport.local_port))
            data, peer = await inbox.get()
            transport.send(OK, peer)
            assert (await asyncio.wait_for(protocol.queue.get(), WAIT))[0] == OK
            client.close()
            writer.close()
        finally:
            await transport.stop()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(scenario())


async def test_udp_send_to_a_host_name_is_resolved(transport: SipTransport) -> None:
    client, protocol = await udp_client()
    try:
        transport.send(OK, Peer("udp", "localhost", client.get_extra_info("sockname")[1]))
        assert (await asyncio.wait_for(protocol.queue.get(), WAIT))[0] == OK
    finally:
        client.close()

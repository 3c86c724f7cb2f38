"""Issue 16 finding 2: TCP slots cannot be held by strangers.

Before, 16 addresses held all 1,024 connections with a CRLF every 5 s and every TCP phone
and trunk was shut out. Now a connection must send SIP within `hello_timeout`, a stranger's
keep-alives do not keep its slot, and a full table evicts an idle stranger for a newcomer.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from b2bua.transport import SipTransport
from tests.test_transport import WAIT, Inbox, assert_closed, options, tcp_client

HELLO = 0.5
STRANGER_IDLE = 0.8


@pytest.fixture
def inbox() -> Inbox:
    return Inbox()


async def make(inbox: Inbox, **kw: object) -> SipTransport:
    t = SipTransport("127.0.0.1", 0, inbox, idle_timeout=30.0, hello_timeout=HELLO,
                     stranger_idle_timeout=STRANGER_IDLE, **kw)  # type: ignore[arg-type]
    await t.start()
    return t


@pytest.fixture
async def transport(inbox: Inbox) -> AsyncIterator[SipTransport]:
    t = await make(inbox)
    yield t
    await asyncio.wait_for(t.stop(), WAIT)


async def ping_until_closed(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, seconds: float) -> float:
    """Send a CRLF ping every 0.1 s; how long until the server closed the connection."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    while loop.time() - start < seconds:
        writer.write(b"\r\n\r\n")
        try:
            data = await asyncio.wait_for(reader.read(64), 0.1)
        except asyncio.TimeoutError:
            continue
        except ConnectionError:
            break
        if not data:
            break
    return loop.time() - start


async def test_keepalives_alone_do_not_keep_a_connection_that_never_sent_sip(transport: SipTransport) -> None:
    reader, writer = await tcp_client(transport)
    held = await ping_until_closed(reader, writer, 5 * HELLO)
    assert held < 3 * HELLO, held
    assert not transport._all
    writer.close()


async def test_a_strangers_keepalives_do_not_keep_its_slot_but_a_phones_do(transport: SipTransport, inbox: Inbox) -> None:
    stranger_r, stranger_w = await tcp_client(transport)
    phone_r, phone_w = await tcp_client(transport)
    stranger_w.write(options(1))
    _, stranger = await inbox.get()
    transport.heard(stranger)  # valid SIP, source not vouched for
    phone_w.write(options(2))
    _, phone = await inbox.get()
    transport.heard(phone, trusted=True)  # a registered phone's address
    held, phone_held = await asyncio.gather(
        ping_until_closed(stranger_r, stranger_w, 4 * STRANGER_IDLE),
        ping_until_closed(phone_r, phone_w, 4 * STRANGER_IDLE),
    )
    assert held < 2.5 * STRANGER_IDLE, held
    assert phone_held >= 4 * STRANGER_IDLE  # still open at the end
    phone_w.write(options(3))
    assert (await inbox.get())[0] == options(3)
    stranger_w.close()
    phone_w.close()


async def test_a_full_table_evicts_an_idle_stranger_for_a_newcomer(inbox: Inbox) -> None:
    t = await make(inbox, max_connections=6, max_connections_per_ip=100)
    try:
        phones = []
        for n in range(3):
            r, w = await tcp_client(t)
            w.write(options(10 + n))
            _, peer = await inbox.get()
            t.heard(peer, trusted=True)
            phones.append((r, w))
        squatters = [await tcp_client(t) for _ in range(3)]  # connect, say nothing
        await asyncio.sleep(0.05)
        assert len(t._all) == 6
        newcomer_r, newcomer_w = await tcp_client(t)
        newcomer_w.write(options(20))
        assert (await inbox.get())[0] == options(20)  # admitted
        await assert_closed(squatters[0][0])  # the longest-idle stranger made room
        for r, w in phones:  # no phone was touched
            w.write(options(30))
            assert (await inbox.get())[0] == options(30)
        for _, w in [*phones, *squatters, (newcomer_r, newcomer_w)]:
            w.close()
    finally:
        await asyncio.wait_for(t.stop(), WAIT)


async def test_a_table_full_of_phones_refuses_a_newcomer(inbox: Inbox) -> None:
    t = await make(inbox, max_connections=2, max_connections_per_ip=100)
    try:
        phones = []
        for n in range(2):
            r, w = await tcp_client(t)
            w.write(options(40 + n))
            _, peer = await inbox.get()
            t.heard(peer, trusted=True)
            phones.append((r, w))
        reader, writer = await tcp_client(t)
        await assert_closed(reader)
        phones[0][1].write(options(50))
        assert (await inbox.get())[0] == options(50)
        for _, w in [*phones, (reader, writer)]:
            w.close()
    finally:
        await asyncio.wait_for(t.stop(), WAIT)

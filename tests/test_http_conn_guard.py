"""b2bua.recordings_service.conn_guard: the count bounds, and the guard wrapped around a real
aiohttp server (refused connections closed unread, admitted ones served unchanged, slots
given back when a connection closes)."""

from __future__ import annotations

import asyncio

from aiohttp import web

from b2bua.recordings_service.conn_guard import REFUSED_PER_IP, REFUSED_TOTAL, ConnectionGuard


def test_bounds_in_total_and_per_source_and_slots_are_given_back():
    seen: list[tuple[str, str]] = []
    guard = ConnectionGuard(3, 2, lambda ip, reason: seen.append((ip, reason)))
    assert guard.admit("a") and guard.admit("a")
    assert not guard.admit("a")  # per source
    assert guard.admit("b")
    assert not guard.admit("c")  # in total
    assert seen == [("a", REFUSED_PER_IP), ("c", REFUSED_TOTAL)]
    assert guard.refused == {REFUSED_TOTAL: 1, REFUSED_PER_IP: 1} and guard.open == 3
    guard.release("a")
    assert guard.admit("c") and not guard.admit("d")
    for host in ("a", "b", "c"):
        guard.release(host)
    assert guard.open == 0 and guard._per_ip == {}  # nothing kept for sources gone


async def test_guarded_aiohttp_server_refuses_unread_and_serves_the_admitted():
    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="hello")

    app = web.Application()
    app.router.add_get("/", hello)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    guard = ConnectionGuard(2, 3)  # one source here: the total bound is the one reached
    loop = asyncio.get_running_loop()
    server = await loop.create_server(guard.factory(runner.server), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert await asyncio.wait_for(reader.read(), 2) == b""  # closed unanswered: over the bound
        writer.close()
        assert guard.refused[REFUSED_TOTAL] == 1
        _, w = idle.pop()
        w.close()
        await w.wait_closed()
        for _ in range(50):  # the server sees the close
            if guard.open < 2:
                break
            await asyncio.sleep(0.01)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(), 2)
        assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"hello")
        writer.close()
        for _, w in idle:
            w.close()
    finally:
        server.close()
        await runner.cleanup()

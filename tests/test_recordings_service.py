"""The recordings service's parts without SIP: index, query parsing, tokens, the HTTP API
on a real aiohttp server, webhooks against a real receiver, retention, config keys.

The end-to-end versions, with real recorded calls through `b2bua run`, are in
tests/e2e/test_recordings_api.py and tests/e2e/test_recordings_page.py."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import http.client
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from b2bua.config import ApiToken, ConfigError, Webhook, parse
from b2bua.recordings_service import metrics as metricsmod
from b2bua.recordings_service.api import RecordingsApi, query_from
from b2bua.recordings_service.index import (
    Query, QueryError, SqliteIndex, decode_cursor, encode_cursor, parse_time,
)
from b2bua.recordings_service.retention import apply_retention
from b2bua.recordings_service.tokens import TokenBook
from b2bua.recordings_service.webhooks import Outbox, WebhookSender, backoff, sign
from rtp.sidecar import write_sidecar

READ_TOKEN, ADMIN_TOKEN = "read-secret-token", "admin-secret-token"


def sha(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()


TOKENS = (ApiToken("viewer", sha(READ_TOKEN), "read"), ApiToken("ops", sha(ADMIN_TOKEN), "admin"))


def sidecar(call_id: str, started: datetime, *, ddi: str | None = "441632960000", user: str = "alice",
            direction: str = "inbound", seconds: float = 10.0) -> dict:
    iso = lambda d: d.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")  # noqa: E731
    return {
        "call_id": call_id, "direction": direction, "from": "sip:+447700900123@carrier.example",
        "to": f"sip:{ddi or '201'}@pbx.example", "ddi": ddi, "user": user,
        "started": iso(started), "ended": iso(started + timedelta(seconds=seconds)), "sample_rate": 8000,
        "channels": 2, "pause": "silence", "segments": [[0.0, 3.0], [6.0, seconds]],
        "events": [{"t": 3.0, "event": "paused", "by": user}, {"t": 6.0, "event": "resumed", "by": user}],
    }


def put_recording(root: Path, data: dict, wav: bytes = b"RIFF....WAVE" + bytes(4000)) -> Path:
    started = datetime.fromisoformat(data["started"].replace("Z", "+00:00"))
    folder = root / f"{started.year:04d}" / f"{started.month:02d}" / f"{started.day:02d}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{data['call_id']}.wav").write_bytes(wav)
    path = folder / f"{data['call_id']}.json"
    write_sidecar(path, data)
    return path


T0 = datetime(2026, 11, 3, 9, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    from tests.private_redis import private_redis

    with private_redis(tmp_path_factory.mktemp("redis")) as url:
        yield url


@pytest.fixture(params=["sqlite", "redis"])
def index(request):
    if request.param == "sqlite":
        idx = SqliteIndex(":memory:")
    else:
        import redis

        from b2bua.recordings_service.redis_index import RedisIndex

        url = request.getfixturevalue("redis_url")
        redis.Redis.from_url(url).flushall()
        idx = RedisIndex(url)
    yield idx
    idx.close()


# -- index ----------------------------------------------------------------------------


def test_index_search_newest_first_with_filters_and_cursor(index):
    for i in range(30):
        data = sidecar(f"c{i:03d}", T0 + timedelta(minutes=i), ddi="441632960000" if i % 2 else "441632960001",
                       user="alice" if i % 3 else "bob", direction="inbound" if i % 5 else "outbound")
        index.add(data, f"x/{data['call_id']}.json")
    page = index.search(Query(limit=7))
    assert [e.call_id for e in page.entries] == [f"c{i:03d}" for i in range(29, 22, -1)]
    seen = [e.call_id for e in page.entries]
    while page.next:
        page = index.search(Query(limit=7, after=decode_cursor(page.next)))
        seen += [e.call_id for e in page.entries]
    assert seen == [f"c{i:03d}" for i in range(29, -1, -1)]  # every one once, in order

    by_number = index.search(Query(number="441632960000", limit=100)).entries
    assert [e.call_id for e in by_number] == [f"c{i:03d}" for i in range(29, -1, -1) if i % 2]
    # The caller's number (from the From URI, + ignored) finds them all.
    assert len(index.search(Query(number="447700900123", limit=100)).entries) == 30
    window = index.search(Query(start=(T0 + timedelta(minutes=10)).timestamp(),
                                end=(T0 + timedelta(minutes=20)).timestamp(), user="bob", limit=100)).entries
    assert [e.call_id for e in window] == ["c018", "c015", "c012"]
    assert {e.data()["direction"] for e in index.search(Query(direction="outbound", limit=100)).entries} == {"outbound"}
    assert index.count() == 30


def test_index_add_replaces_and_remove_forgets(index):
    data = sidecar("c1", T0)
    index.add(data, "a/c1.json")
    index.add({**data, "user": "bob", "ddi": "999", "to": "sip:999@pbx.example"}, "a/c1.json")
    assert index.count() == 1 and index.get("c1").data()["user"] == "bob"
    assert index.search(Query(number="441632960000")).entries == []  # the old number went with the old row
    assert index.remove("c1").call_id == "c1"
    assert index.get("c1") is None and index.remove("c1") is None


def test_index_rebuilds_from_sidecars_when_missing(tmp_path):
    root = tmp_path / "recordings"
    for i in range(5):
        put_recording(root, sidecar(f"r{i}", T0 + timedelta(days=i)))
    (root / "2026" / "11" / "03" / "junk.json").write_text("{not json")
    idx = SqliteIndex(root / "index.sqlite3")
    assert idx.created
    added = idx.rebuild(root)
    assert sorted(d["call_id"] for d in added) == [f"r{i}" for i in range(5)]
    assert idx.get("r2").json_path == "2026/11/05/r2.json"
    assert idx.rebuild(root) == []  # nothing twice
    idx.close()
    again = SqliteIndex(root / "index.sqlite3")
    assert not again.created and again.count() == 5
    again.close()


@pytest.mark.parametrize("text", ["zz", "eyJ4IjoxfQ", "WzEsMl0", "W3RydWUsIngiXQ", "%%%"])
def test_malformed_cursor_is_a_query_error(text):
    with pytest.raises(QueryError):
        decode_cursor(text)


def test_cursor_round_trips():
    assert decode_cursor(encode_cursor(1700000000.25, "abc")) == (1700000000.25, "abc")


def test_query_parsing():
    q = query_from({"from": "2026-11-03", "to": "2026-11-03", "number": "+44 1632 960000", "limit": "5"})
    assert q.end - q.start == 86400  # a bare "to" date includes that day
    assert q.number == "441632960000" and q.limit == 5
    assert parse_time("2026-11-03T10:00:00+01:00") == parse_time("2026-11-03T09:00:00Z")
    for bad in ({"limit": "0"}, {"limit": "x"}, {"limit": "501"}, {"direction": "sideways"}, {"from": "yesterday"},
                {"number": "abc"}, {"cursor": "!!"}):
        with pytest.raises(QueryError):
            query_from(bad)


# -- tokens ---------------------------------------------------------------------------


def test_tokens_are_checked_by_hash_with_scopes():
    book = TokenBook(TOKENS)
    assert book.check(f"Bearer {READ_TOKEN}").name == "viewer"
    assert book.check(f"bearer  {ADMIN_TOKEN} ").name == "ops"
    for bad in (None, "", "Bearer", f"Basic {READ_TOKEN}", "Bearer wrong", hashlib.sha256(READ_TOKEN.encode()).hexdigest()):
        assert book.check(bad) is None
    assert book.allows(TOKENS[1], "admin") and book.allows(TOKENS[1], "read")
    assert book.allows(TOKENS[0], "read") and not book.allows(TOKENS[0], "admin")


# -- the HTTP API on a real server ----------------------------------------------------


@pytest.fixture
async def api_client(tmp_path):
    root = tmp_path / "recordings"
    (tmp_path / "secret.txt").write_text("outside recordings_dir")
    idx = SqliteIndex(root.parent / "idx.sqlite3")
    for i in range(3):
        idx.add_file(root, put_recording(root, sidecar(f"call{i}", T0 + timedelta(minutes=i)),
                                         wav=bytes(range(256)) * 40))
    counters = metricsmod.ServiceCounters()
    registry = metricsmod.make_registry(metricsmod.B2buaCollector(object(), counters, root, idx))
    api = RecordingsApi(root, idx, TokenBook(TOKENS), registry, counters)
    client = TestClient(TestServer(api.app()))
    await client.start_server()
    client.api = api
    client.root = root
    yield client
    await client.close()
    idx.close()


def auth(token: str = READ_TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_api_without_a_valid_token_is_401(api_client):
    for path in ("/api/recordings", "/api/recordings/call1", "/api/recordings/call1.wav", "/api/recordings/nope"):
        for headers in ({}, auth("wrong"), {"Authorization": f"Basic {READ_TOKEN}"}):
            r = await api_client.get(path, headers=headers)
            assert r.status == 401, path
            assert (await r.json())["error"]
    r = await api_client.delete("/api/recordings/call1")
    assert r.status == 401


async def test_api_lists_gets_and_pages(api_client):
    r = await api_client.get("/api/recordings?limit=2", headers=auth())
    body = await r.json()
    assert [x["call_id"] for x in body["recordings"]] == ["call2", "call1"]
    assert body["recordings"][0]["segments"] == [[0.0, 3.0], [6.0, 10.0]]
    r = await api_client.get(f"/api/recordings?limit=2&cursor={body['next']}", headers=auth())
    last = await r.json()
    assert [x["call_id"] for x in last["recordings"]] == ["call0"] and last["next"] is None
    r = await api_client.get("/api/recordings/call1", headers=auth())
    assert (await r.json())["call_id"] == "call1"


async def test_api_wav_supports_range(api_client):
    wav = bytes(range(256)) * 40
    r = await api_client.get("/api/recordings/call1.wav", headers=auth())
    assert r.status == 200 and await r.read() == wav and r.headers["Content-Type"] == "audio/wav"
    r = await api_client.get("/api/recordings/call1.wav", headers={**auth(), "Range": "bytes=100-199"})
    assert r.status == 206 and await r.read() == wav[100:200]
    assert r.headers["Content-Range"] == f"bytes 100-199/{len(wav)}"
    r = await api_client.get("/api/recordings/call1.wav", headers={**auth(), "Range": "bytes=999999-"})
    assert r.status == 416


async def test_api_bad_requests_get_json_4xx(api_client):
    cases = {
        "/api/recordings/nope": 404,
        "/api/recordings/nope.wav": 404,
        "/api/recordings?cursor=garbage!": 400,
        "/api/recordings?limit=-1": 400,
        "/api/recordings?direction=up": 400,
        "/api/recordings?from=last-tuesday": 400,
        "/api/recordings/..%2F..%2Fetc%2Fpasswd": 400,
        "/api/recordings/..%2Fsecret.txt": 400,
        "/api/recordings/%2E%2E": 404,  # the client resolves it to /api/: no such route
    }
    for path, status in cases.items():
        r = await api_client.get(path, headers=auth())
        assert r.status == status, path
        body = await r.json()
        assert body["status"] == status and "Traceback" not in body["error"]


async def test_api_raw_path_traversal_never_leaves_recordings_dir(api_client):
    """Raw request lines, as an attacker sends them (no client-side normalisation)."""
    host, port = api_client.server.host, api_client.server.port

    def raw(path: str) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection(host, port, timeout=5)
        conn.putrequest("GET", path, skip_accept_encoding=True)
        conn.putheader("Authorization", f"Bearer {READ_TOKEN}")
        conn.endheaders()
        resp = conn.getresponse()
        data = resp.read()
        conn.close()
        return resp.status, data

    for path in ("/api/recordings/../../etc/passwd", "/api/recordings/..%2F..%2F..%2Fetc%2Fpasswd.wav",
                 "/api/recordings/%2e%2e%2f%2e%2e%2fsecret.txt", "/static/../../../etc/passwd",
                 "/api/recordings/call1.wav/../../../../etc/passwd", "/../../etc/passwd"):
        status, data = await asyncio.to_thread(raw, path)
        assert 400 <= status < 500, path
        assert b"root:" not in data and b"outside recordings_dir" not in data


async def test_api_signed_links_play_without_the_header(api_client):
    r = await api_client.get("/api/recordings", headers=auth())
    links = (await r.json())["links"]["call1"]
    r = await api_client.get(links["wav"], headers={"Range": "bytes=0-9"})
    assert r.status == 206 and len(await r.read()) == 10
    r = await api_client.get(links["json"])
    assert r.status == 200 and "attachment" in r.headers["Content-Disposition"]
    other = links["wav"].replace("call1.wav", "call2.wav")  # a link names one file only
    assert (await api_client.get(other)).status == 401
    tampered = links["wav"][:-1] + ("0" if links["wav"][-1] != "0" else "1")
    assert (await api_client.get(tampered)).status == 401
    expired = api_client.api.link("call1.wav", now=0)
    assert (await api_client.get(expired)).status == 401
    for query in ("sig=%C3%A9&expires=99999999999", "sig=&expires=1", "expires=-5&sig=00", "sig=00&expires=1e9"):
        assert (await api_client.get(f"/api/recordings/call1.wav?{query}")).status == 401, query


async def test_api_delete_is_admin_only_and_logged(api_client, caplog):
    r = await api_client.delete("/api/recordings/call1", headers=auth(READ_TOKEN))
    assert r.status == 403
    assert (api_client.root / "2026/11/03/call1.wav").exists()
    with caplog.at_level("INFO", logger="b2bua.http"):
        r = await api_client.delete("/api/recordings/call1", headers=auth(ADMIN_TOKEN))
    assert r.status == 200
    assert not (api_client.root / "2026/11/03/call1.wav").exists()
    assert not (api_client.root / "2026/11/03/call1.json").exists()
    assert "call=call1 event=recording-deleted by=ops" in caplog.text
    assert (await api_client.get("/api/recordings/call1", headers=auth())).status == 404
    assert (await api_client.delete("/api/recordings/call1", headers=auth(ADMIN_TOKEN))).status == 404


async def test_page_and_metrics_are_served(api_client):
    r = await api_client.get("/")
    page = await r.text()
    assert r.status == 200 and 'id="token"' in page and "/static/app.js" in page
    assert "http://" not in page and "https://" not in page  # nothing fetched from outside
    for name in ("app.js", "style.css"):
        r = await api_client.get(f"/static/{name}")
        assert r.status == 200 and "http" not in (await r.text()).replace("HTTP Range", "")
    assert (await api_client.get("/static/secret.txt")).status == 404
    r = await api_client.get("/metrics")
    text = await r.text()
    assert "b2bua_recordings_indexed 3.0" in text and "b2bua_recordings_disk_free_bytes" in text


# -- webhooks -------------------------------------------------------------------------


class Receiver:
    """A real HTTP receiver: answers `status` (a list consumed in order, then the last)."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = statuses
        self.got: list[tuple[bytes, str]] = []
        self.runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.got.append((body, request.headers.get("X-B2BUA-Signature", "")))
        status = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
        return web.Response(status=status)

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/hook"

    async def stop(self) -> None:
        await self.runner.cleanup()


async def wait_for(predicate, timeout: float = 10.0):
    for _ in range(int(timeout / 0.05)):
        if predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("timed out")


def test_backoff_doubles_to_a_cap():
    assert [round(backoff(n, lambda: 0.5)) for n in (1, 2, 3, 4)] == [1, 2, 4, 8]
    assert backoff(40, lambda: 0.5) == 3600


async def test_webhook_is_signed_and_retried_until_2xx(tmp_path, monkeypatch):
    monkeypatch.setattr("b2bua.recordings_service.webhooks.FIRST_RETRY", 0.05)
    receiver = Receiver([500, 302, 200])  # a redirect is not a delivery either
    url = await receiver.start()
    sender = WebhookSender([Webhook(url, "s3cret")], Outbox(tmp_path / "o.sqlite3"),
                           lambda c: f"http://pbx/api/recordings/{c}.wav")
    sender.start()
    sender.enqueue(sidecar("w1", T0))
    await wait_for(lambda: sender.outbox.depth() == 0)
    await sender.stop()
    await receiver.stop()
    assert len(receiver.got) == 3  # two failures, then delivered
    body, signature = receiver.got[-1]
    assert signature == "sha256=" + hmac.new(b"s3cret", body, hashlib.sha256).hexdigest() == sign("s3cret", body)
    data = json.loads(body)
    assert data["call_id"] == "w1" and data["wav_url"] == "http://pbx/api/recordings/w1.wav"
    assert data["segments"] == [[0.0, 3.0], [6.0, 10.0]]


async def test_webhook_outbox_survives_a_restart_and_an_outage(tmp_path, monkeypatch):
    monkeypatch.setattr("b2bua.recordings_service.webhooks.FIRST_RETRY", 0.05)
    receiver = Receiver([200])
    url = await receiver.start()
    await receiver.stop()  # the receiver is down
    path = tmp_path / "o.sqlite3"
    sender = WebhookSender([Webhook(url, "k")], Outbox(path), lambda c: None)
    sender.start()
    for i in range(20):
        sender.enqueue(sidecar(f"o{i}", T0))
    await asyncio.sleep(0.5)
    assert sender.failed_total >= 1
    # A dead receiver is tried once per backoff, not once per queued recording.
    assert sender.failed_total < 20
    await sender.stop()
    sender.outbox.close()
    # "Restart": a new sender on the same outbox file, the receiver back on the same port.
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    app = web.Application()
    got: list[str] = []

    async def handle(request):
        got.append(json.loads(await request.read())["call_id"])
        return web.Response(status=204)

    app.router.add_post("/hook", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    again = WebhookSender([Webhook(url, "k")], Outbox(path), lambda c: None)
    again.start()
    await wait_for(lambda: again.outbox.depth() == 0, timeout=15)
    await again.stop()
    await runner.cleanup()
    assert sorted(set(got)) == sorted(f"o{i}" for i in range(20))


def test_outbox_drops_rows_of_urls_no_longer_configured(tmp_path):
    box = Outbox(tmp_path / "o.sqlite3")
    box.put("http://a/", "c1", b"{}")
    box.put("http://b/", "c1", b"{}")
    assert box.drop_unknown(["http://a/"]) == 1 and box.depth() == 1


# -- retention ------------------------------------------------------------------------


def test_retention_deletes_old_days_only(tmp_path, index):
    root = tmp_path / "recordings"
    now = datetime(2026, 12, 6, 12, tzinfo=UTC)
    for age in (0, 1, 29, 30, 31, 400):
        data = sidecar(f"age{age}", now - timedelta(days=age))
        index.add_file(root, put_recording(root, data))
    run = apply_retention(root, 30, index, now=now)
    assert run.files == 2 and run.bytes > 0
    left = sorted(p.stem for p in root.rglob("*.wav"))
    assert left == ["age0", "age1", "age29", "age30"]
    assert index.get("age31") is None and index.get("age30") is not None
    assert apply_retention(root, 0, index, now=now).files == 0  # 0 keeps everything
    assert not (root / "2025").exists()  # empty folders go too


# -- config ---------------------------------------------------------------------------

BASE = {"server": {"listen": "127.0.0.1:5060"}}


def test_config_without_the_new_sections_keeps_working():
    config = parse(dict(BASE), Path("flows.toml"), Path("/tmp"))
    assert config.http is None and config.api_tokens == () and config.webhooks == ()
    assert config.recordings.retention_days == 0


def test_config_reads_the_new_sections():
    digest = hashlib.sha256(b"t").hexdigest()
    config = parse({**BASE, "http": {"listen": "127.0.0.1:8080"},
                    "api_tokens": [{"name": "ops", "token_sha256": digest, "scope": "admin"}],
                    "webhooks": [{"url": "http://127.0.0.1:9000/recordings", "secret": "x"}],
                    "recordings": {"retention_days": 90}}, Path("flows.toml"), Path("/tmp"))
    assert (config.http.host, config.http.port) == ("127.0.0.1", 8080)
    assert config.http.base_url == "http://127.0.0.1:8080"
    assert config.api_tokens[0].token_sha256 == bytes.fromhex(digest) and config.api_tokens[0].scope == "admin"
    assert config.webhooks[0].secret == "x" and config.recordings.retention_days == 90
    # The connection bounds' defaults; a small max_connections caps the per-source default too.
    assert (config.http.max_connections, config.http.max_connections_per_ip, config.http.header_timeout) == (256, 32, 10)
    small = parse({**BASE, "http": {"listen": "127.0.0.1:8080", "max_connections": 8, "header_timeout": 2.5}},
                  Path("flows.toml"), Path("/tmp")).http
    assert (small.max_connections, small.max_connections_per_ip, small.header_timeout) == (8, 8, 2.5)


@pytest.mark.parametrize("extra, key", [
    ({"http": {"listen": "127.0.0.1"}}, "http.listen"),
    ({"http": {"listen": "nowhere:80"}}, "http.listen"),
    ({"http": {"port": 1}}, "http.port"),
    ({"http": {"max_connections": 0}}, "http.max_connections"),
    ({"http": {"max_connections": "many"}}, "http.max_connections"),
    ({"http": {"max_connections": True}}, "http.max_connections"),
    ({"http": {"max_connections": 10, "max_connections_per_ip": 11}}, "http.max_connections_per_ip"),
    ({"http": {"max_connections_per_ip": 0}}, "http.max_connections_per_ip"),
    ({"http": {"header_timeout": 0}}, "http.header_timeout"),
    ({"http": {"header_timeout": 3600}}, "http.header_timeout"),
    ({"api_tokens": [{"name": "a", "token_sha256": "abc"}]}, "api_tokens[0].token_sha256"),
    ({"api_tokens": [{"name": "a", "token_sha256": "0" * 64, "scope": "root"}]}, "api_tokens[0].scope"),
    ({"api_tokens": [{"name": "a", "token_sha256": "0" * 64}, {"name": "a", "token_sha256": "1" * 64}]},
     "api_tokens[1].name"),
    ({"webhooks": [{"url": "ftp://x/", "secret": "s"}]}, "webhooks[0].url"),
    ({"webhooks": [{"url": "http://x/", "secret": ""}]}, "webhooks[0].secret"),
    ({"webhooks": [{"url": "http://x/"}]}, "webhooks[0].secret"),
    ({"recordings": {"retention_days": -1}}, "recordings.retention_days"),
    ({"recordings": {"retention_days": "30"}}, "recordings.retention_days"),
    ({"recordings": {"retention": 30}}, "recordings.retention"),
])
def test_config_bad_values_name_the_key(extra, key):
    with pytest.raises(ConfigError) as info:
        parse({**BASE, **extra}, Path("flows.toml"), Path("/tmp"))
    assert info.value.key == key and info.value.path == "flows.toml"


async def test_a_receiver_that_never_answers_costs_bounded_connections_and_memory(tmp_path, monkeypatch):
    """It accepts and says nothing: at most CONCURRENCY requests are ever in flight, the
    receiver is retried once per backoff (not once per queued recording), and the queue
    stays in the outbox file, not in memory."""
    from b2bua.recordings_service import webhooks as hooks

    monkeypatch.setattr(hooks, "REQUEST_TIMEOUT", 0.3)
    monkeypatch.setattr(hooks, "FIRST_RETRY", 0.2)
    open_now = peak = accepted = 0
    held: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal open_now, peak, accepted
        open_now += 1
        accepted += 1
        peak = max(peak, open_now)
        held.append(writer)
        try:
            await reader.read()  # until the client gives up and closes
        finally:
            open_now -= 1

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    sender = WebhookSender([Webhook(f"http://127.0.0.1:{port}/hook", "k")], Outbox(tmp_path / "o.sqlite3"),
                           lambda c: None)
    sender.start()
    for i in range(200):
        sender.enqueue(sidecar(f"n{i}", T0))
    await asyncio.sleep(2.0)
    await sender.stop()
    server.close()
    for writer in held:
        writer.close()
    assert 1 <= peak <= hooks.CONCURRENCY
    assert accepted <= 12  # ~2 s of backoff doubling from 0.2 s, not 200 attempts
    assert sender.outbox.depth() == 200  # all still queued, on disk
    assert len(sender._blocked) == 1


def test_in_a_cluster_worker_n_serves_http_on_port_plus_n_with_its_own_outbox():
    from types import SimpleNamespace

    from b2bua.recordings_service.service import RecordingsService

    config = parse({**BASE, "http": {"listen": "127.0.0.1:8080"},
                    "webhooks": [{"url": "http://127.0.0.1:9000/r", "secret": "s"}]}, Path("flows.toml"), Path("/tmp"))
    alone = RecordingsService(config, SimpleNamespace())
    assert alone.worker_index is None and alone.http_port == 8080
    assert alone.wav_url("c1") == "http://127.0.0.1:8080/api/recordings/c1.wav"
    worker = RecordingsService(config, SimpleNamespace(worker=SimpleNamespace(index=2)))
    assert worker.http_port == 8082 and worker.wav_url("c1") == "http://127.0.0.1:8082/api/recordings/c1.wav"


def test_metrics_read_the_live_objects_at_scrape_time(tmp_path):
    from types import SimpleNamespace

    from prometheus_client.parser import text_string_to_metric_families

    from b2bua.lockout import Lockout
    from b2bua.peer import Peer

    lockout = Lockout(max_failures=2)
    for t in (1.0, 2.0):
        lockout.record_failure(Peer("udp", "192.0.2.9", 5060), "alice", t)
    from rtp.disk_writer import WriterStats

    writer_stats = WriterStats(queue_depth=3, backlog_bytes=16000, backlog_seconds=0.5, dropped_seconds=0.0,
                               write_errors=2, failing=True, reserve_held=True, recordings=1)
    media = SimpleNamespace(
        admission=SimpleNamespace(ceiling=float("inf")), overloaded=False, lag=0.004,
        writer=SimpleNamespace(stats=lambda: writer_stats),
        stats=lambda: {"forwarded": 900, "malformed": 3, "unlatched": 2, "no_target": 5, "swallowed": 4,
                       "send_errors": 1, "strangers": 7, "late_reads": 6, "recordings_active": 1})
    core = SimpleNamespace(calls={"a": 1, "b": 2}, counts={"calls": 12, "refused:overload": 3})
    counters = metricsmod.ServiceCounters()
    counters.recordings_finalised = 9
    registry = metricsmod.make_registry(metricsmod.B2buaCollector(
        SimpleNamespace(core=core, media=media, lockout=lockout), counters, tmp_path))
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(metricsmod.render(registry).decode())
               for s in family.samples}
    assert samples[("b2bua_calls_active", ())] == 2
    assert samples[("b2bua_calls_total", ())] == 12
    assert samples[("b2bua_calls_refused_total", (("reason", "overload"),))] == 3
    assert samples[("b2bua_recordings_active", ())] == 1
    assert samples[("b2bua_recordings_total", ())] == 9
    assert samples[("b2bua_recorder_backlog_seconds", ())] == 0.5
    assert samples[("b2bua_recorder_write_errors_total", ())] == 2
    assert samples[("b2bua_recorder_disk_failing", ())] == 1
    assert samples[("b2bua_rtp_packets_total", ())] == 900 + 3 + 2 + 5 + 4 + 7
    assert samples[("b2bua_media_late_reads", ())] == 6
    assert samples[("b2bua_rtp_dropped_total", (("reason", "malformed"),))] == 3
    assert samples[("b2bua_rtp_dropped_total", (("reason", "send_error"),))] == 1
    assert samples[("b2bua_rtp_dropped_total", (("reason", "stranger"),))] == 7
    assert samples[("b2bua_media_lag_seconds", ())] == 0.004
    assert samples[("b2bua_admission_ceiling_calls", ())] == float("inf")
    assert samples[("b2bua_lockouts_total", (("scope", "ip"),))] == 1
    assert samples[("b2bua_recordings_disk_free_bytes", ())] > 0


def test_index_pages_recordings_started_at_the_same_instant(index):
    for i in range(7):
        data = sidecar(f"same{i}", T0)
        index.add(data, f"x/same{i}.json")
    seen, page = [], index.search(Query(limit=3))
    seen += [e.call_id for e in page.entries]
    while page.next:
        page = index.search(Query(limit=3, after=decode_cursor(page.next)))
        seen += [e.call_id for e in page.entries]
    assert seen == [f"same{i}" for i in range(6, -1, -1)]


def test_redis_index_remembers_it_was_built_and_is_shared(redis_url):
    import redis

    from b2bua.recordings_service.redis_index import RedisIndex

    redis.Redis.from_url(redis_url).flushall()
    first = RedisIndex(redis_url)
    assert first.created
    first.add(sidecar("shared1", T0), "2026/11/03/shared1.json")
    first.built()
    other = RedisIndex(redis_url)  # another worker
    assert not other.created and other.get("shared1").json_path == "2026/11/03/shared1.json"
    assert [e.call_id for e in other.search(Query(number="441632960000")).entries] == ["shared1"]
    assert [e.call_id for e in other.started_before((T0 + timedelta(seconds=1)).timestamp())] == ["shared1"]
    first.close()
    other.close()


def test_redis_index_page_read_while_a_recording_is_added_shows_each_once(redis_url):
    """A worker finalising a call between the steps of another's search must not shift the
    reader onto a member it already took (CI once listed one call twice and missed the new one)."""
    import redis

    from b2bua.recordings_service.redis_index import RedisIndex, client

    redis.Redis.from_url(redis_url).flushall()
    writer = RedisIndex(redis_url)
    for i in range(3):
        writer.add(sidecar(f"old{i}", T0 + timedelta(minutes=i)), f"x/old{i}.json")

    class AddsDuringTheFirstStep:
        def __init__(self, real):
            self.real, self.steps = real, 0

        def zrevrangebyscore(self, *args, **kwargs):
            kwargs["num"] = 1  # one member a step, so the page takes several
            got = self.real.zrevrangebyscore(*args, **kwargs)
            self.steps += 1
            if self.steps == 1:
                writer.add(sidecar("new", T0 + timedelta(hours=1)), "x/new.json")
            return got

        def __getattr__(self, name):
            return getattr(self.real, name)

    reader = RedisIndex(redis_url, redis_client=AddsDuringTheFirstStep(client(redis_url)))
    listed = [e.call_id for e in reader.search(Query(limit=10)).entries]
    assert listed == ["old2", "old1", "old0"]  # the page as it began; "new" is on the next read
    assert [e.call_id for e in reader.search(Query(limit=10)).entries] == ["new", "old2", "old1", "old0"]
    writer.close()
    reader.close()


def test_redis_index_filtered_search_walks_past_a_long_run_of_one_instant(redis_url):
    import redis

    from b2bua.recordings_service import redis_index

    redis.Redis.from_url(redis_url).flushall()
    idx = redis_index.RedisIndex(redis_url)
    for i in range(redis_index.CHUNK + 30):  # more bob calls at one instant than a step reads
        idx.add(sidecar(f"bob{i:04d}", T0, user="bob"), f"x/bob{i}.json")
    idx.add(sidecar("alice-late", T0 + timedelta(seconds=1), user="alice", direction="outbound"), "x/a.json")
    idx.add(sidecar("alice-early", T0 - timedelta(seconds=1), user="alice", direction="outbound"), "x/b.json")
    page = idx.search(Query(number="441632960000", direction="outbound", limit=5))
    assert [e.call_id for e in page.entries] == ["alice-late", "alice-early"] and page.next is None
    seen, page = [], idx.search(Query(user="bob", limit=97))
    seen += [e.call_id for e in page.entries]
    while page.next:
        page = idx.search(Query(user="bob", limit=97, after=decode_cursor(page.next)))
        seen += [e.call_id for e in page.entries]
    assert seen == [f"bob{i:04d}" for i in range(redis_index.CHUNK + 29, -1, -1)]
    idx.close()


async def test_api_answers_503_when_the_index_store_is_down(tmp_path, redis_url):
    from b2bua.recordings_service.redis_index import RedisIndex, client

    down = RedisIndex(redis_url)
    down.r = client("redis://127.0.0.1:1/0", 0.2)  # Redis goes away after the start
    counters = metricsmod.ServiceCounters()
    api = RecordingsApi(tmp_path, down, TokenBook(TOKENS), metricsmod.make_registry(
        metricsmod.B2buaCollector(object(), counters, tmp_path)), counters)
    client = TestClient(TestServer(api.app()))
    await client.start_server()
    try:
        r = await client.get("/api/recordings", headers=auth())
        assert r.status == 503 and r.headers["Retry-After"] == "5"
        assert "unavailable" in (await r.json())["error"]
    finally:
        await client.close()


async def test_hostile_paths_and_queries_never_get_a_5xx(api_client):
    import random
    from urllib.parse import quote

    rng = random.Random(18)
    alphabet = "aZ09./\\%:;?#&=+-_~ \x00\x7féü漢\U0001f600"
    names = ["", ".", "..", "...", "%00", "call1%00.wav", "call1.wav.wav", "call1.WAV", "a" * 5000, "call1.json.wav",
             "/etc/passwd", "call1;rm", "call1.wav?x", "CON", "call1\\..\\..\\x"]
    names += ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40))) for _ in range(60)]
    for name in names:
        for method in ("GET", "DELETE"):
            r = await api_client.request(method, "/api/recordings/" + quote(name, safe=""), headers=auth(ADMIN_TOKEN))
            assert r.status < 500, (method, name, r.status)
    params = ["from", "to", "number", "user", "direction", "limit", "cursor"]
    for _ in range(80):
        query = "&".join(f"{rng.choice(params)}={quote(''.join(rng.choice(alphabet) for _ in range(rng.randint(0, 30))))}"
                         for _ in range(rng.randint(1, 4)))
        r = await api_client.get("/api/recordings?" + query, headers=auth())
        assert r.status in (200, 400), (query, r.status)
        assert "error" in await r.json() if r.status == 400 else "recordings" in await r.json()


async def test_refused_tokens_go_to_the_hostile_summary_by_source(tmp_path):
    from b2bua.hostile_summary import HostileSummary

    lines: list[str] = []
    summary = HostileSummary(lines.append)
    counters = metricsmod.ServiceCounters()
    api = RecordingsApi(tmp_path, SqliteIndex(":memory:"), TokenBook(TOKENS), metricsmod.make_registry(
        metricsmod.B2buaCollector(object(), counters, tmp_path)), counters,
        on_unauthorised=lambda ip: summary.count(ip, "http-unauthorised", 0.0))
    client = TestClient(TestServer(api.app()))
    await client.start_server()
    try:
        for _ in range(25):
            assert (await client.get("/api/recordings", headers=auth("guess"))).status == 401
        assert (await client.get("/api/recordings", headers=auth())).status == 200
    finally:
        await client.close()
    assert lines == []  # nothing per request
    summary.flush(120.0, force=True)
    assert len(lines) == 1 and "ip=127.0.0.1" in lines[0] and "http-unauthorised=25" in lines[0]
    assert counters.http_unauthorised == 25

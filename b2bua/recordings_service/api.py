"""The recordings page, the REST API and /metrics, as an aiohttp application.

Why aiohttp: it runs on the B2BUA's own asyncio (uvloop) loop, so the API answers from the
same process that finalises recordings, with no thread or second process to feed; it does
HTTP/1.1 parsing, keep-alive, and Range/206/416 for files (`web.FileResponse`, which
streams from a thread or with sendfile, never reading a WAV on the loop) with a C parser.
The alternatives measured or read were: the standard library's http.server (threads,
blocking, no Range), Starlette/uvicorn (a second server loop to start and stop beside
ours; more moving parts for the same result).

Authentication (contract: every /api/ request needs `Authorization: Bearer <token>`): an
`<audio>` element cannot send that header, so an authenticated listing also returns, for
each recording, short-lived signed links (`links` beside `recordings`) to its WAV and
sidecar. A link names one file and expires; it is an HMAC with a key that lives only in
this process's memory.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from importlib import resources
from pathlib import Path
from typing import Any

from aiohttp import web

from b2bua.config import ApiToken
from b2bua.recordings_service import metrics as metricsmod
from b2bua.recordings_service.index import (
    CALL_ID, DEFAULT_LIMIT, DIRECTIONS, MAX_LIMIT, Entry, Query, QueryError, RecordingsIndex,
    decode_cursor, normalise_number, parse_time,
)
from b2bua.recordings_service.tokens import TokenBook

log = logging.getLogger("b2bua.http")

#: Signed links to a WAV or sidecar stay valid this long (a long call is listened to,
#: paused and sought in for a while); they die with the process anyway.
LINK_LIFETIME = 12 * 3600

STATIC_FILES = {"index.html": "text/html", "app.js": "text/javascript", "style.css": "text/css"}

TOKEN_KEY: web.AppKey[ApiToken] = web.AppKey("token", ApiToken)


def error(status: int, message: str, **headers: str) -> web.Response:
    return web.json_response({"error": message, "status": status}, status=status, headers=headers or None)


class RecordingsApi:
    def __init__(self, recordings_dir: Path, index: RecordingsIndex, tokens: TokenBook,
                 registry: Any, counters: metricsmod.ServiceCounters,
                 on_deleted: Callable[[str], None] | None = None,
                 on_unauthorised: Callable[[str], None] | None = None) -> None:
        self.recordings_dir = recordings_dir.resolve()
        self.index = index
        self.tokens = tokens
        self.registry = registry
        self.counters = counters
        self.on_deleted = on_deleted
        # A refused token's source, for the server's hostile-traffic summary (one line per
        # source per minute, never one per request).
        self.on_unauthorised = on_unauthorised
        self._link_key = secrets.token_bytes(32)
        self._store_errors = 0
        self._static = {name: resources.files("b2bua.recordings_service.static").joinpath(name).read_bytes()
                        for name in STATIC_FILES}

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._errors], client_max_size=64 * 1024)
        app.router.add_get("/", self.page)
        app.router.add_get("/static/{name}", self.static)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/api/recordings", self.list)
        app.router.add_get("/api/recordings/{name}", self.get)
        app.router.add_delete("/api/recordings/{name}", self.delete)
        return app

    # -- plumbing ---------------------------------------------------------------------

    @web.middleware
    async def _errors(self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                      ) -> web.StreamResponse:
        """Every error as JSON with its status; a bug is a 500 and one log line, never a
        traceback to the client."""
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return error(exc.status, exc.reason)
        except Exception as exc:
            if _store_unavailable(exc):  # Redis down, SQLite locked: 503; logged on the 1st and every 600th
                self._store_errors += 1
                if self._store_errors == 1 or self._store_errors % 600 == 0:
                    log.error("http event=index-unavailable errors=%d reason=%r", self._store_errors, str(exc)[:200])
                return error(503, "the recordings index is unavailable; try again shortly", **{"Retry-After": "5"})
            log.exception("http event=internal-error method=%s path=%s", request.method, request.path[:200])
            return error(500, "internal error")

    def _token(self, request: web.Request, scope: str) -> ApiToken | web.Response:
        token = self.tokens.check(request.headers.get("Authorization"))
        if token is None:
            self.counters.http_unauthorised += 1
            if self.on_unauthorised is not None:
                self.on_unauthorised(request.remote or "unknown")
            return error(401, "a valid Authorization: Bearer <token> is needed",
                         **{"WWW-Authenticate": 'Bearer realm="recordings"'})
        if not self.tokens.allows(token, scope):
            return error(403, f"the token {token.name!r} has scope {token.scope!r}; this needs {scope!r}")
        return token

    def sign(self, name: str, expires: int) -> str:
        return hmac.new(self._link_key, f"{name}\n{expires}".encode(), hashlib.sha256).hexdigest()

    def link(self, name: str, now: float | None = None) -> str:
        expires = int((now if now is not None else time.time()) + LINK_LIFETIME)
        return f"/api/recordings/{name}?expires={expires}&sig={self.sign(name, expires)}"

    def _signed(self, request: web.Request, name: str) -> bool:
        sig, expires = request.query.get("sig"), request.query.get("expires", "")
        if not sig or not expires.isdigit() or int(expires) < time.time():
            return False
        return hmac.compare_digest(sig.encode(), self.sign(name, int(expires)).encode())  # bytes: any sig text

    def _file(self, entry: Entry, relative: str) -> Path | None:
        """The file of an index entry, only if it is inside recordings_dir."""
        path = (self.recordings_dir / relative).resolve()
        if not path.is_relative_to(self.recordings_dir):
            return None
        return path

    # -- the page, static files, metrics ---------------------------------------------

    async def page(self, request: web.Request) -> web.Response:
        return self._static_response("index.html")

    async def static(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in STATIC_FILES:
            return error(404, "no such file")
        return self._static_response(name)

    def _static_response(self, name: str) -> web.Response:
        return web.Response(body=self._static[name], content_type=STATIC_FILES[name], charset="utf-8", headers={
            "Cache-Control": "no-cache",
            # Nothing from outside, no inline script: the page works offline and an
            # injected string in a sidecar cannot run.
            "Content-Security-Policy": "default-src 'self'; media-src 'self' blob:; img-src 'self' data:",
            "X-Content-Type-Options": "nosniff",
        })

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=metricsmod.render(self.registry), headers={"Content-Type": metricsmod.CONTENT_TYPE})

    # -- the API ----------------------------------------------------------------------

    async def list(self, request: web.Request) -> web.Response:
        token = self._token(request, "read")
        if isinstance(token, web.Response):
            return token
        try:
            query = query_from(request.query)
        except QueryError as exc:
            return error(400, str(exc))
        page = self.index.search(query)
        now = time.time()
        links = {e.call_id: {"wav": self.link(e.call_id + ".wav", now), "json": self.link(e.call_id + ".json", now)}
                 for e in page.entries}
        # The stored sidecars are spliced in as they are: no parse and re-encode per row.
        text = (f'{{"recordings":[{",".join(e.sidecar for e in page.entries)}],'
                f'"next":{json.dumps(page.next)},"links":{json.dumps(links, separators=(",", ":"))}}}')
        return web.Response(text=text, content_type="application/json")

    async def get(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        call_id, kind = _split(name)
        if call_id is None:
            return error(400, "not a recording's call id")
        if not (kind != "sidecar" and self._signed(request, name)):
            token = self._token(request, "read")
            if isinstance(token, web.Response):
                return token
        entry = self.index.get(call_id)
        if entry is None:
            return error(404, f"no recording {call_id}")
        if kind == "sidecar":
            return web.Response(text=entry.sidecar, content_type="application/json")
        if kind == "json":  # the sidecar as a download
            return web.Response(text=entry.sidecar, content_type="application/json",
                                headers={"Content-Disposition": f'attachment; filename="{call_id}.json"'})
        path = self._file(entry, entry.wav_path)
        if path is None or not path.is_file():
            return error(404, f"the WAV of {call_id} is missing")
        return web.FileResponse(path, headers={
            "Content-Type": "audio/wav",
            "Content-Disposition": f'inline; filename="{call_id}.wav"',
            "Cache-Control": "private, max-age=3600",
        })

    async def delete(self, request: web.Request) -> web.Response:
        token = self._token(request, "admin")
        if isinstance(token, web.Response):
            return token
        call_id, kind = _split(request.match_info["name"])
        if call_id is None or kind != "sidecar":
            return error(400, "not a recording's call id")
        entry = self.index.get(call_id)
        if entry is None:
            return error(404, f"no recording {call_id}")
        freed = 0
        for relative in (entry.wav_path, entry.json_path):
            path = self._file(entry, relative)
            if path is None:
                continue
            try:
                freed += path.stat().st_size
                path.unlink()
            except FileNotFoundError:
                pass
        self.index.remove(call_id)
        if self.on_deleted is not None:
            self.on_deleted(call_id)
        log.info("call=%s event=recording-deleted by=%s bytes=%d", call_id, token.name, freed)
        return web.json_response({"deleted": call_id})


def _store_unavailable(exc: Exception) -> bool:
    import sqlite3

    return type(exc).__module__.startswith("redis") or isinstance(exc, sqlite3.OperationalError)


def _split(name: str) -> tuple[str | None, str]:
    """"<id>" -> sidecar, "<id>.wav" -> wav, "<id>.json" -> the sidecar as a download."""
    kind = "sidecar"
    for suffix, what in ((".wav", "wav"), (".json", "json")):
        if name.endswith(suffix):
            name, kind = name[: -len(suffix)], what
            break
    if not CALL_ID.match(name) or ".." in name:
        return None, kind
    return name, kind


def query_from(params: Any) -> Query:
    """`?from=&to=&number=&user=&direction=&limit=&cursor=` as a Query; QueryError if bad."""
    start = parse_time(params["from"]) if params.get("from") else None
    end = parse_time(params["to"], end_of_day=True) if params.get("to") else None
    number = normalise_number(params["number"]) if params.get("number") else None
    if params.get("number") and not number:
        raise QueryError("number: expected digits")
    direction = params.get("direction") or None
    if direction is not None and direction not in DIRECTIONS:
        raise QueryError(f"direction: expected one of {', '.join(DIRECTIONS)}")
    limit_text = params.get("limit") or str(DEFAULT_LIMIT)
    if not limit_text.isdigit() or not 1 <= int(limit_text) <= MAX_LIMIT:
        raise QueryError(f"limit: expected 1 to {MAX_LIMIT}")
    after = decode_cursor(params["cursor"]) if params.get("cursor") else None
    return Query(start, end, number, params.get("user") or None, direction, int(limit_text), after)

"""The recordings service as `b2bua run` starts it: index, webhooks, HTTP, retention.

`b2bua.server` makes one `RecordingsService`, hands `on_finalised` to the media core (each
finalised recording's sidecar path, called on the event loop), and starts and stops it
with the server. With none of `[http]`, `[[webhooks]]` or `retention_days` in the file the
service does nothing at all, so an old flows.toml runs exactly as before.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from b2bua.config import Config
from b2bua.recordings_service import metrics as metricsmod
from b2bua.recordings_service.conn_guard import ConnectionGuard
from b2bua.recordings_service.index import RecordingsIndex, SqliteIndex, sidecar_relpath
from b2bua.recordings_service.retention import run_daily
from b2bua.recordings_service.tokens import TokenBook
from b2bua.recordings_service.webhooks import Outbox, WebhookSender

log = logging.getLogger("b2bua.recordings")



def state_path(recordings_dir: Path, what: str) -> Path:
    """`<recordings_dir>-<what>.sqlite3`, beside the recordings tree and not in it, so the tree
    holds recordings only (as the disk reserve does: rtp.disk_writer.reserve_path)."""
    return recordings_dir.parent / f"{recordings_dir.name}-{what}.sqlite3"

#: At start, sidecars of these last days not yet in the index are indexed (and announced):
#: a recording finalised just before a crash, before its row was committed.
RECONCILE_DAYS = 2


class RecordingsService:
    def __init__(self, config: Config, server: Any, index: RecordingsIndex | None = None) -> None:
        self.config = config
        self.server = server
        self.recordings_dir = config.server.recordings_dir
        self.enabled = bool(config.http or config.webhooks or config.recordings.retention_days)
        self.counters = metricsmod.ServiceCounters()
        self.index: RecordingsIndex | None = index
        self.webhooks: WebhookSender | None = None
        self._runner: Any = None
        self._http_server: asyncio.Server | None = None
        self.guard: ConnectionGuard | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.http_address: tuple[str, int] | None = None
        # A cluster worker (b2bua.cluster.worker.WorkerRole) has an index: worker N serves
        # HTTP on [http] port + N, keeps its own webhook outbox, and only worker 0 runs
        # retention; the index is shared (one SQLite file per host, WAL, several writers).
        self.worker_index: int | None = getattr(getattr(server, "worker", None), "index", None)

    # -- the hook ---------------------------------------------------------------------

    def on_finalised(self, json_path: Path) -> None:
        """A recording is finalised: index it and queue its webhooks. Never raises."""
        self.counters.recordings_finalised += 1
        if not self.enabled:
            return
        try:
            self._announce(Path(json_path))
        except Exception:
            log.exception("recording event=index-failed path=%s", json_path)

    def _announce(self, json_path: Path) -> None:
        from rtp.sidecar import read_sidecar

        data = read_sidecar(json_path)
        # The outbox first: if the process dies between the two commits, the start-up
        # reconciliation finds the sidecar unindexed and announces it again (a duplicate,
        # which receivers are told to expect, rather than a loss).
        if self.webhooks is not None:
            self.webhooks.enqueue(data)
        if self.index is not None:
            self.index.add(data, sidecar_relpath(self.recordings_dir, json_path))

    def wav_url(self, call_id: str) -> str | None:
        http = self.config.http
        if http is None:
            return None
        if not http.public_url and self.worker_index:
            http = replace(http, port=self.http_port)
        return f"{http.base_url}/api/recordings/{call_id}.wav"

    @property
    def http_port(self) -> int:
        assert self.config.http is not None
        return self.config.http.port + (self.worker_index or 0)

    # -- start and stop ---------------------------------------------------------------

    async def start(self, repaired: list[Path] = ()) -> None:  # type: ignore[assignment]
        """After recordings_dir exists and repair() ran (`repaired`: their WAV paths)."""
        if not self.enabled:
            return
        config = self.config
        needs_index = config.http is not None or bool(config.webhooks)
        if needs_index and self.index is None:
            redis_url = getattr(config.cluster, "redis", None) if getattr(config, "cluster", None) else None
            if redis_url:  # a cluster: one index for every worker, in the shared store
                from b2bua.recordings_service.redis_index import RedisIndex

                try:
                    self.index = RedisIndex(redis_url)
                except Exception as exc:  # redis-py's errors are not OSErrors: say which store, exit 1
                    raise OSError(f"recordings index at {redis_url}: {exc}") from exc
            else:
                self.index = SqliteIndex(state_path(self.recordings_dir, "index"))
        if config.webhooks:
            what = "webhooks" if self.worker_index is None else f"webhooks-worker{self.worker_index}"
            self.webhooks = WebhookSender(config.webhooks, Outbox(state_path(self.recordings_dir, what)), self.wav_url)
        if self.index is not None:
            created = getattr(self.index, "created", False)
            days = None if created else _recent_days(RECONCILE_DAYS)
            added = self.index.rebuild(self.recordings_dir, days)
            if created:
                self.index.built()
                log.info("recordings event=index-built recordings=%d path=%s", len(added), self.recordings_dir)
            else:
                # Recent sidecars the index missed (a crash between finalise and commit)
                # and the recordings repair() just recovered: announce them too.
                repaired_ids = {Path(p).stem for p in repaired}
                known = self.index.has(repaired_ids)
                for wav in repaired:
                    if Path(wav).stem not in known:
                        data = self.index.add_file(self.recordings_dir, Path(wav).with_suffix(".json"))
                        if data is not None:
                            added.append(data)
                for data in added:
                    if self.webhooks is not None:
                        self.webhooks.enqueue(data)
                if added:
                    log.info("recordings event=index-reconciled added=%d repaired=%d", len(added), len(repaired_ids))
        if self.webhooks is not None:
            self.webhooks.start()
        if config.http is not None:
            await self._start_http()
        if config.recordings.retention_days > 0 and not self.worker_index:
            self._tasks.append(asyncio.get_running_loop().create_task(
                run_daily(self.recordings_dir, config.recordings.retention_days, self.index), name="retention"))

    async def _start_http(self) -> None:
        from aiohttp import web

        from b2bua.recordings_service.api import RecordingsApi

        assert self.index is not None and self.config.http is not None
        http = self.config.http
        summary = getattr(self.server, "summary", None)  # b2bua.hostile_summary.HostileSummary
        loop = asyncio.get_running_loop()
        self.guard = ConnectionGuard(http.max_connections, http.max_connections_per_ip,
                                     (lambda ip, reason: summary.count(
                                         ip, f"http-refused-{reason}", loop.time(),
                                         line=f"http event=connection-refused reason={reason} from={ip}"))
                                     if summary is not None else None)
        collector = metricsmod.B2buaCollector(self.server, self.counters, self.recordings_dir, self.index,
                                              self.webhooks, self.guard)
        api = RecordingsApi(self.recordings_dir, self.index, TokenBook(self.config.api_tokens),
                            metricsmod.make_registry(collector), self.counters,
                            on_unauthorised=(lambda ip: summary.count(ip, "http-unauthorised", loop.time()))
                            if summary is not None else None)
        # access_log=None: one line per request would be hostile-traffic logging per
        # request (GUIDE: summarised, never per request); 401s are counted in /metrics.
        # keepalive_timeout: aiohttp closes a connection that has not completed a request this
        # long after it opened or after its last response (slowloris, idle keep-alives), and
        # idle connections hold file descriptors the media needs for its sockets.
        self._runner = web.AppRunner(api.app(), access_log=None, handle_signals=False,
                                     keepalive_timeout=http.header_timeout)
        await self._runner.setup()
        # Not web.TCPSite: the same listening socket, with aiohttp's protocol factory wrapped
        # by the connection bounds (conn_guard), which aiohttp has no option for.
        self._http_server = await loop.create_server(self.guard.factory(self._runner.server), http.host,
                                                     self.http_port, reuse_address=True)
        self.http_address = (http.host, self.http_port)
        log.info("startup http=http://%s:%d/ tokens=%d webhooks=%d retention_days=%d max_connections=%d",
                 http.host, self.http_port, len(self.config.api_tokens), len(self.config.webhooks),
                 self.config.recordings.retention_days, http.max_connections)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except asyncio.CancelledError:
                pass
        self._tasks.clear()
        if self._http_server is not None:
            self._http_server.close()  # stop accepting; the runner closes the open connections
            self._http_server = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self.webhooks is not None:
            await self.webhooks.stop()
            self.webhooks.outbox.close()
        if self.index is not None:
            self.index.close()


def _recent_days(n: int) -> list:
    today = datetime.now(UTC).date()
    return [today - timedelta(days=i) for i in range(n, -1, -1)]

"""Prometheus metrics for `GET /metrics`, with the maintained client (prometheus-client).

One custom collector reads the live objects when Prometheus scrapes, and only then: the
media core's counters (`MediaEngine.stats()`), the call table, admission, lockouts, the
recorders' backlogs, disk space and the webhook outbox. Nothing is counted per packet.
Each process has its own registry (no global state), so in a cluster each worker exposes
its own figures.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: MediaEngine.stats() keys that are drops, and the `reason` label each is exported under.
DROP_REASONS = {
    "malformed": "malformed",  # not RTP v2, truncated
    "unlatched": "unlatched",  # from an address that is not the party's (RTP bleed)
    "no_target": "no_target",  # nowhere to send yet (no SDP, hold)
    "send_errors": "send_error",  # the kernel refused the send (full buffer, unreachable)
    "strangers": "stranger",  # shared ports: from nobody we know
    "ambiguous": "ambiguous",  # shared ports: two calls claim the source
    "send_dropped": "send_dropped",  # IPv4 media ports (shared or per-call): RTP send refused
}
#: Packets that reached a relay: forwarded or any of its drops (shared-port strangers are
#: counted in `received` there, not by a relay).
RECEIVED_KEYS = ("forwarded", "malformed", "unlatched", "no_target", "swallowed", "strangers", "ambiguous")


class ServiceCounters:
    """What the recordings service itself counts (finalised recordings, HTTP refusals)."""

    def __init__(self) -> None:
        self.recordings_finalised = 0
        self.http_unauthorised = 0


class B2buaCollector(Collector):
    def __init__(self, server: Any, counters: ServiceCounters, recordings_dir: Path,
                 index: Any = None, webhooks: Any = None, guard: Any = None) -> None:
        self.server = server  # b2bua.server.Server: .core (B2BUA), .media (MediaEngine), .lockout
        self.counters = counters
        self.recordings_dir = recordings_dir
        self.index = index
        self.webhooks = webhooks
        self.guard = guard  # conn_guard.ConnectionGuard: HTTP connections open and refused

    def collect(self) -> Iterator[Metric]:
        server = self.server
        core = getattr(server, "core", None)
        media = getattr(server, "media", None)
        counts: dict[str, int] = dict(getattr(core, "counts", {}) or {})

        yield GaugeMetricFamily("b2bua_calls_active", "Calls up now (ringing or answered)",
                                value=len(getattr(core, "calls", ())))
        yield CounterMetricFamily("b2bua_calls", "Calls set up since start", value=counts.get("calls", 0))
        refused = CounterMetricFamily("b2bua_calls_refused", "INVITEs answered 503 since start", labels=["reason"])
        for reason in ("overload", "no-media-ports"):
            refused.add_metric([reason], counts.get(f"refused:{reason}", 0))
        yield refused

        stats = media.stats() if hasattr(media, "stats") else {}
        yield GaugeMetricFamily("b2bua_recordings_active", "Calls being recorded now",
                                value=stats.get("recordings_active", 0))
        yield CounterMetricFamily("b2bua_recordings", "Recordings finalised since start",
                                  value=self.counters.recordings_finalised)
        writer = getattr(media, "writer", None)  # rtp.disk_writer.DiskWriter: every recording's disk work
        if writer is not None:
            disk = writer.stats()
            yield GaugeMetricFamily("b2bua_recorder_backlog_seconds",
                                    "Audio held in memory waiting for the disk, over all recorders",
                                    value=disk.backlog_seconds)
            yield GaugeMetricFamily("b2bua_recorder_queue_depth", "Disk commands submitted and not yet performed",
                                    value=disk.queue_depth)
            yield GaugeMetricFamily("b2bua_recorder_disk_failing", "1 while the disk refuses recording writes",
                                    value=1.0 if disk.failing else 0.0)
            yield CounterMetricFamily("b2bua_recorder_dropped_seconds",
                                      "Audio kept as silence because the disk refused it too long",
                                      value=disk.dropped_seconds)
            yield CounterMetricFamily("b2bua_recorder_write_errors", "Failed recording writes (each retry counts)",
                                      value=disk.write_errors)

        if media is not None:
            admission = getattr(media, "admission", None)
            if admission is not None:
                ceiling = getattr(admission, "ceiling", float("inf"))
                yield GaugeMetricFamily("b2bua_admission_ceiling_calls",
                                        "Calls this core takes before new INVITEs get 503 (+Inf: not yet learned)",
                                        value=float(ceiling))
            yield GaugeMetricFamily("b2bua_admission_overloaded", "1 while new calls are refused",
                                    value=1.0 if _overloaded(media) else 0.0)
            yield GaugeMetricFamily("b2bua_media_lag_seconds",
                                    "Smoothed lateness of the 20 ms media tick (media reads run late)",
                                    value=float(getattr(media, "lag", 0.0)))
            received = sum(stats.get(k, 0) for k in RECEIVED_KEYS)
            yield CounterMetricFamily("b2bua_rtp_packets", "RTP packets received on media ports since start",
                                      value=received)
            dropped = CounterMetricFamily("b2bua_rtp_dropped", "RTP packets dropped since start", labels=["reason"])
            for key, reason in DROP_REASONS.items():
                dropped.add_metric([reason], stats.get(key, 0))
            yield dropped
            yield CounterMetricFamily("b2bua_rtp_forwarded", "RTP packets relayed to the other party since start",
                                      value=stats.get("forwarded", 0))
            if "late_reads" in stats:
                yield GaugeMetricFamily("b2bua_media_late_reads",
                                        "Shared-port reads over 5 ms late in the current 5 s window",
                                        value=stats["late_reads"])

        started = getattr(getattr(server, "lockout", None), "started", None)
        if isinstance(started, dict):
            lockouts = CounterMetricFamily("b2bua_lockouts", "Lockouts started after failed digest guesses, by scope",
                                           labels=["scope"])
            for scope in ("ip", "user", "addr"):
                lockouts.add_metric([scope], started.get(scope, 0))
            yield lockouts

        try:
            free = shutil.disk_usage(self.recordings_dir).free
        except OSError:
            free = 0
        yield GaugeMetricFamily("b2bua_recordings_disk_free_bytes", "Free bytes on the recordings_dir filesystem",
                                value=free)
        if self.index is not None:
            yield GaugeMetricFamily("b2bua_recordings_indexed", "Recordings in the index", value=self.index.count())
        if self.webhooks is not None:
            yield GaugeMetricFamily("b2bua_webhook_outbox_depth", "Webhook deliveries waiting for a 2xx",
                                    value=self.webhooks.outbox.depth())
            deliveries = CounterMetricFamily("b2bua_webhook_attempts", "Webhook POSTs since start", labels=["result"])
            deliveries.add_metric(["delivered"], self.webhooks.delivered_total)
            deliveries.add_metric(["failed"], self.webhooks.failed_total)
            yield deliveries
        yield CounterMetricFamily("b2bua_http_unauthorised", "API requests refused with 401 since start",
                                  value=self.counters.http_unauthorised)
        if self.guard is not None:
            yield GaugeMetricFamily("b2bua_http_connections", "HTTP connections open now", value=self.guard.open)
            http_refused = CounterMetricFamily("b2bua_http_refused",
                                               "HTTP connections closed unread at accept, by bound broken",
                                               labels=["reason"])
            for reason, n in self.guard.refused.items():
                http_refused.add_metric([reason], n)
            yield http_refused


def _overloaded(media: Any) -> bool:
    try:
        return bool(media.overloaded)
    except RuntimeError:  # no running loop (a test outside one)
        return False


def make_registry(collector: B2buaCollector) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)

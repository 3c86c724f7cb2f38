"""`b2bua cluster`: the edge, the workers and (when needed) Redis on one host, supervised.

A plain loop over child processes, not asyncio: it only starts, watches and signals
processes, and must stay simple enough to trust when everything else is failing.

- Kamailio runs in the foreground (-DD) on a private configuration in a private run
  directory (edge_config), never the system service; if it dies it is restarted (calls
  up keep their media: media never passes through it).
- A private `redis-server` is started when `[cluster] redis` names this host and
  nothing answers there.
- Each worker is `python -m b2bua worker --config FILE --index N`; every start and exit
  is logged as `worker=N pid=P port=S`. A worker that dies is restarted; the new process
  repairs the dead one's unfinalised recordings before it takes calls (recovery).
- SIGTERM/SIGINT drain everything: workers refuse new calls (503, so the edge has nowhere
  to send them), end the calls up with BYE through the edge and finalise their
  recordings; then the edge and Redis stop. SIGUSR1 drains the workers gently (calls
  finish on their own) and then stops the same way.
"""

from __future__ import annotations

import ctypes
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from b2bua.cluster import edge_config
from b2bua.cluster.topology import cluster_of, slot
from b2bua.cluster.worker import SECRET_ENV
from b2bua.config import Config

log = logging.getLogger("b2bua.cluster")

KAMAILIO = os.environ.get("B2BUA_KAMAILIO", "/usr/sbin/kamailio")
#: How often the loop looks at its children (seconds).
POLL = 0.1
#: A worker given SIGTERM has this long to end its calls and exit before SIGKILL.
STOP_GRACE = 10.0
#: A child that dies sooner than this after its start is restarted after a growing pause
#: (up to MAX_BACKOFF), so a worker that cannot start does not spin the CPU.
QUICK_DEATH = 2.0
MAX_BACKOFF = 5.0
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    """Children get SIGTERM if the supervisor itself is killed (Linux), never orphans."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


@dataclass
class Child:
    name: str
    argv: list[str]
    port: int = 0
    index: int | None = None
    env: dict[str, str] | None = None
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    backoff: float = 0.0
    restart_at: float | None = None
    restarts: int = field(default=0)

    def start(self) -> None:
        # Its own session: a terminal's Ctrl-C reaches the supervisor alone, which then stops
        # the workers before the edge (their BYEs leave through it).
        self.proc = subprocess.Popen(self.argv, env=self.env, preexec_fn=_die_with_parent, start_new_session=True)
        self.started = time.monotonic()
        self.restart_at = None
        if self.index is not None:
            log.info("worker=%d pid=%d port=%d event=started", self.index, self.proc.pid, self.port)
        else:
            log.info("%s pid=%d port=%d event=started", self.name, self.proc.pid, self.port)

    def reap_group(self) -> None:
        """Once the child itself has exited, whatever is left of its session is an orphan:
        Kamailio's forked workers outlive a main process killed with SIGKILL (they hold its
        ports, so a restarted edge could not bind). The child led its own session
        (start_new_session), so its process group is exactly what it started."""
        if self.proc is None or self.proc.poll() is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            assert self.proc is not None
            try:
                self.proc.send_signal(sig)
            except ProcessLookupError:
                pass

    def log_exit(self) -> None:
        assert self.proc is not None
        self.reap_group()
        code = self.proc.returncode
        how = f"signal={signal.Signals(-code).name}" if code < 0 else f"status={code}"
        if self.index is not None:
            log.warning("worker=%d pid=%d port=%d event=exited %s", self.index, self.proc.pid, self.port, how)
        else:
            log.warning("%s pid=%d port=%d event=exited %s", self.name, self.proc.pid, self.port, how)


class Supervisor:
    def __init__(self, config: Config, run_dir: Path | None = None, *, sip_trace: bool = False) -> None:
        self.config = config
        self.sip_trace = sip_trace
        self.cluster = cluster_of(config)
        self.run_dir = run_dir
        self._own_run_dir = run_dir is None
        self.stopping = False
        self.gentle = False  # SIGUSR1: let calls finish
        self.children: list[Child] = []
        self.workers: list[Child] = []
        self.edge: Child | None = None
        self.redis: Child | None = None

    # -- setup

    def _redis_child(self) -> Child | None:
        """A private redis-server (b2bua.redis_server's settings: append-only file, fsync
        every second) with its data beside the registrations database, so a restart of it
        or of the whole cluster keeps the registrations."""
        from b2bua import redis_server
        from b2bua.shared_state import redis_data_dir

        url = urlsplit(self.cluster.redis)
        if url.scheme != "redis" or not _is_local(url.hostname or ""):
            return None
        host, port = url.hostname or "127.0.0.1", url.port or 6379
        if redis_server.answers(host, port):
            log.info("redis event=found address=%s:%d (not starting one)", host, port)
            return None
        directory = redis_data_dir(self.config)
        try:
            argv = redis_server.argv(host, port, directory)
        except redis_server.RedisServerError as exc:
            raise RuntimeError(f"{self.cluster.redis} does not answer, and {exc}") from None
        directory.mkdir(parents=True, exist_ok=True)
        return Child("redis", argv, port=port)

    def _edge_child(self) -> Child:
        if not Path(KAMAILIO).is_file():
            raise RuntimeError(f"{KAMAILIO} not found (apt-get install kamailio)")
        assert self.run_dir is not None
        edge_dir = self.run_dir / "edge"
        cfg, _ = edge_config.write(self.config, edge_dir)
        argv = [KAMAILIO, "-DD", "-E", "-f", str(cfg), "-Y", str(edge_dir), "-w", str(edge_dir), "-m", "64", "-M", "8"]
        return Child("edge", argv, port=self.config.server.port)

    def _worker_child(self, index: int, secret: str) -> Child:
        argv = [sys.executable, "-m", "b2bua", "worker", "--config", str(self.config.path), "--index", str(index),
                *(["--sip-trace"] if self.sip_trace else [])]
        env = dict(os.environ, **{SECRET_ENV: secret})
        return Child(f"worker{index}", argv, port=slot(self.config, index).port, index=index, env=env)

    # -- the loop

    def run(self) -> int:
        if self.run_dir is None:
            self.run_dir = Path(tempfile.mkdtemp(prefix="b2bua-cluster-"))
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGUSR1, self._on_drain)
        try:
            try:
                self.redis = self._redis_child()
                self.edge = self._edge_child()
            except (RuntimeError, OSError) as exc:
                log.error("cluster event=failed reason=%r", str(exc))
                return 1
            secret = secrets.token_hex(32)
            self.workers = [self._worker_child(i, secret) for i in range(self.cluster.workers)]
            self.children = [c for c in (self.redis, self.edge) if c is not None] + self.workers
            log.info("cluster event=starting edge=%s:%d workers=%d run_dir=%s", self.config.server.host,
                     self.config.server.port, self.cluster.workers, self.run_dir)
            if self.redis is not None:
                self.redis.start()
                if not _wait_answers(urlsplit(self.cluster.redis).hostname or "127.0.0.1", self.redis.port, 10.0):
                    log.error("redis pid=%d event=not-answering within=5s", self.redis.proc.pid)  # type: ignore[union-attr]
            for child in self.children:
                if child is not self.redis:
                    child.start()
            while not self.stopping:
                self._watch()
                time.sleep(POLL)
            return self._shutdown()
        finally:
            for child in self.children:
                if child.alive():
                    child.signal(signal.SIGKILL)
                    assert child.proc is not None
                    child.proc.wait()
            if self._own_run_dir and self.run_dir is not None:
                shutil.rmtree(self.run_dir, ignore_errors=True)

    def _on_stop(self, signum: int, frame: object) -> None:
        if self.stopping and self.gentle:
            log.info("cluster event=escalate from=drain to=terminate")
            self.gentle = False  # a SIGTERM during a gentle drain: end the calls now
        self.stopping = True

    def _on_drain(self, signum: int, frame: object) -> None:
        self.stopping = True
        self.gentle = True

    def _watch(self) -> None:
        now = time.monotonic()
        for child in self.children:
            if child.proc is not None and child.restart_at is None and not child.alive():
                child.log_exit()
                quick = now - child.started < QUICK_DEATH
                child.backoff = min(MAX_BACKOFF, max(0.5, child.backoff * 2)) if quick else 0.0
                child.restart_at = now + child.backoff
            if child.restart_at is not None and now >= child.restart_at:
                child.restarts += 1
                child.start()

    def _shutdown(self) -> int:
        log.info("cluster event=stopping mode=%s", "drain" if self.gentle else "terminate")
        workers = [w for w in self.workers if w.alive()]
        for worker in workers:
            worker.signal(signal.SIGUSR1 if self.gentle else signal.SIGTERM)
        deadline = None if self.gentle else time.monotonic() + STOP_GRACE
        while any(w.alive() for w in workers):
            if deadline is None and not self.gentle:  # escalated by SIGTERM
                for worker in workers:
                    worker.signal(signal.SIGTERM)
                deadline = time.monotonic() + STOP_GRACE
            if deadline is not None and time.monotonic() > deadline:
                for w in workers:
                    if w.alive():
                        log.error("worker=%d pid=%d event=killed reason=no-exit-in-%.0fs", w.index, w.proc.pid, STOP_GRACE)  # type: ignore[union-attr]
                        w.signal(signal.SIGKILL)
                break
            time.sleep(POLL)
        for w in workers:
            assert w.proc is not None
            w.proc.wait()
            w.log_exit()
        for child in (self.edge, self.redis):
            if child is not None and child.alive():
                child.signal(signal.SIGTERM)
                assert child.proc is not None
                try:
                    child.proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    child.signal(signal.SIGKILL)
                    child.proc.wait()
                child.log_exit()
        log.info("cluster event=stopped")
        return 0


def _is_local(host: str) -> bool:
    if host in ("localhost", "127.0.0.1", "::1") or host.startswith("127."):
        return True
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((host, 0))  # only an address of this host can be bound
        return True
    except OSError:
        return False


def _wait_answers(host: str, port: int, within: float) -> bool:
    from b2bua.redis_server import answers

    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if answers(host, port, 0.2):
            return True
        time.sleep(0.05)
    return False


def run_cluster(config: Config, sip_trace: bool = False) -> int:
    from b2bua.server import setup_logging

    setup_logging()
    return Supervisor(config, sip_trace=sip_trace).run()

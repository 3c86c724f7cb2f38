"""A private `redis-server` for `b2bua cluster` and for tests: our own process, config and port.

Never the system service: a Debian install may or may not have one running, with its own
data and settings, and tests run beside other engineers' tests. So we start Debian's
`redis-server` binary with a config given on the command line (no config file of the
system's is read), bound to loopback or the host `[cluster] redis` names, in a directory
of our own.

Persistence is an append-only file fsynced every second (`appendfsync everysec`): a
restarted Redis comes back with everything but at most the last second of writes, and the
workers re-assert what they hold on reconnect (see `redis_bindings.py`), so a restart costs
no registration. A SIGTERM'd Redis writes its file completely before it exits.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

#: How long a starting redis-server may take to answer PING. It starts in milliseconds;
#: loading a large append-only file is what could take longer.
START_TIMEOUT = 10.0
#: Hosts that mean "this machine" in a `[cluster] redis` URL.
_LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", "0.0.0.0", ""}


class RedisServerError(RuntimeError):
    """redis-server is missing, or did not start and answer on its port."""


def find_binary() -> str:
    """The redis-server binary (Debian's `redis-server` package)."""
    path = shutil.which("redis-server") or (
        "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None
    )
    if path is None:
        raise RedisServerError("redis-server not found: install Debian's redis-server package (apt-get install redis-server)")
    return path


def free_tcp_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on `host` now (the kernel's choice, so it does not collide with
    ports other tests are choosing at random)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def answers(host: str, port: int, timeout: float = 0.5) -> bool:
    """True when something at host:port answers a Redis PING with +PONG (RESP, inline)."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith((b"+PONG", b"-NOAUTH"))
    except OSError:
        return False


@dataclass
class PrivateRedis:
    """One redis-server we started: `url` to give the client, `stop()` when done."""

    host: str
    port: int
    directory: Path
    process: subprocess.Popen[bytes]
    _own_dir: bool = field(default=False, repr=False)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"redis://{host}:{self.port}/0"

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self, *, remove_dir: bool | None = None, kill: bool = False) -> None:
        """SIGTERM (the append-only file is completed) or, with `kill`, SIGKILL (as a crash).

        A temporary directory we made is removed unless `remove_dir=False` (a test that
        restarts Redis on the same data keeps it).
        """
        if self.process.poll() is None:
            (self.process.kill if kill else self.process.terminate)()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if remove_dir if remove_dir is not None else self._own_dir:
            shutil.rmtree(self.directory, ignore_errors=True)

    def restart(self) -> None:
        """Start the same server again (same port, same directory and data)."""
        self.stop(remove_dir=False)
        self.process = _spawn(self.host, self.port, self.directory)
        _wait_ready(self)

    def __enter__(self) -> PrivateRedis:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _spawn(host: str, port: int, directory: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(argv(host, port, directory), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)


def argv(host: str, port: int, directory: Path) -> list[str]:
    """The command line of a private redis-server (also what `b2bua cluster` supervises)."""
    return [
        find_binary(),
        "--bind", host,
        "--port", str(port),
        "--dir", str(directory),
        "--appendonly", "yes",
        "--appendfsync", "everysec",
        "--save", "",  # the append-only file is the persistence; no RDB snapshots on top
        "--daemonize", "no",
        "--protected-mode", "yes",
        "--logfile", str(directory / "redis.log"),
        "--pidfile", "",
    ]


def _wait_ready(server: PrivateRedis) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            err = server.process.stderr.read().decode(errors="replace") if server.process.stderr else ""
            log = server.directory / "redis.log"
            tail = log.read_text(errors="replace")[-500:] if log.exists() else ""
            raise RedisServerError(
                f"redis-server exited with {server.process.returncode} on {server.host}:{server.port}: {(err or tail).strip()}"
            )
        if answers(server.host, server.port, timeout=0.2):
            return
        time.sleep(0.02)
    server.stop(remove_dir=False)
    raise RedisServerError(f"redis-server did not answer on {server.host}:{server.port} within {START_TIMEOUT:.0f} s")


def start(
    host: str = "127.0.0.1", port: int | None = None, directory: str | Path | None = None, *, attempts: int = 5
) -> PrivateRedis:
    """Start a private redis-server; `port=None` picks a free one (retrying if another
    process takes it first); `directory=None` uses a temporary one removed at `stop()`."""
    own = directory is None
    path = Path(tempfile.mkdtemp(prefix="b2bua-redis-")) if directory is None else Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    last: RedisServerError | None = None
    for _ in range(attempts if port is None else 1):
        chosen = port if port is not None else free_tcp_port(host)
        server = PrivateRedis(host, chosen, path, _spawn(host, chosen, path), own)
        try:
            _wait_ready(server)
            return server
        except RedisServerError as exc:  # most likely the port was taken between choice and bind
            last = exc
    if own:
        shutil.rmtree(path, ignore_errors=True)
    assert last is not None
    raise last


def ensure_local(url: str, directory: str | Path) -> PrivateRedis | None:
    """For `b2bua cluster`: when `url` names this host and nothing answers there, start a
    private redis-server on that port with its data in `directory` (kept across runs, so a
    cluster restart keeps registrations). Returns None when a Redis already answers or the
    URL names another host (then it is the operator's to run)."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", ""):
        return None  # rediss:// or unix:// are the operator's own setup
    host = parts.hostname or "127.0.0.1"
    port = parts.port or 6379
    if host not in _LOCAL_HOSTS:
        return None
    if host in ("localhost", "0.0.0.0", ""):
        host = "127.0.0.1"
    if answers(host, port):
        return None
    return start(host, port, directory)

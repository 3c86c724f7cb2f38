"""`flows.toml` parsed once into frozen, validated objects.

Nothing else in the project reads TOML: the rest of the code receives a `Config`.
Every error names the file, the key, the value and what was expected, so a PBX admin
can fix the file without reading code; a bad file never starts a half-working server.
"""

from __future__ import annotations

import ipaddress
import tomllib
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from b2bua.codecs import DEFAULT_CODECS, KNOWN as KNOWN_CODECS
from b2bua.policy import Record

#: Where `b2bua run` looks when no --config is given and ./flows.toml is absent.
PACKAGED_CONFIG = Path(__file__).with_name("data") / "flows.toml"

#: RFC 3261 §19.1.2 default port; used when `listen` has no port.
DEFAULT_SIP_PORT = 5060
#: The feature-digit timeout: how long a `*` waits for its `1` before it is passed on.
DEFAULT_FEATURE_TIMEOUT = 2.0
#: Ring groups ring this long when the file does not say (seconds).
DEFAULT_RING_TIMEOUT = 30
#: An RTP port pair per party and two parties per call: a range needs at least one call.
MIN_RTP_PORTS = 4


class ConfigError(Exception):
    """A configuration problem, worded for the person editing the file."""

    def __init__(self, path: Path | str, key: str, reason: str) -> None:
        self.path = str(path)
        self.key = key
        self.reason = reason
        super().__init__(f"{self.path}: {key}: {reason}")


@dataclass(frozen=True)
class Server:
    host: str
    port: int
    media_ip: str
    rtp_ports: tuple[int, int]  # inclusive range
    recordings_dir: Path
    realm: str
    pause: str = "silence"  # "silence" | "skip"
    feature_timeout: float = DEFAULT_FEATURE_TIMEOUT
    registrations_db: Path | None = None
    media_sockets: str = "shared"  # "shared" (rtp.mux: many legs per port, IPv4) | "per_call" (default for an IPv6 media_ip)
    media_poll: float = 0.002  # seconds between reads of the IPv4 media ports, shared or per-call; 0: on readiness (rtp.mux)
    max_calls: int = 0  # concurrent calls taken before new INVITEs get 503; 0: as many as the core carries


@dataclass(frozen=True)
class Organisation:
    name: str
    call_recording: bool


@dataclass(frozen=True)
class Security:
    """Brute-force protection for digest authentication."""

    max_failures: int = 5
    failure_window: float = 60.0
    lockout_seconds: float = 600.0
    #: Digest challenges offered, in order (RFC 8760 §2.4: preferred first). Phones on
    #: older stacks (baresip 1.0's libre, seen here) fail registration outright when any
    #: challenge is SHA-256 instead of picking the MD5 one, so MD5 alone is the default;
    #: ["SHA-256", "MD5"] offers both to fleets that cope.
    digest_algorithms: tuple[str, ...] = ("MD5",)
    # -- issue 16: on the open internet (see b2bua/lockout.py and b2bua/strangers.py) --
    #: Slow guessing: failures from one IP tolerated per hour and per day.
    max_failures_per_hour: int = 20
    max_failures_per_day: int = 50
    #: Each further lockout of an IP within a day doubles; never longer than this.
    max_lockout_seconds: float = 86_400.0
    #: Failures against one user from addresses never authenticated as it, all sources
    #: together, per hour; past it only the user's known addresses are evaluated.
    max_user_failures_per_hour: int = 30
    #: Strangers (unauthenticated, not a trunk) get one answer per request, never
    #: retransmitted; false: they get none at all.
    answer_strangers: bool = True
    #: Answers to strangers per second per source IP (bursts of 5x allowed).
    stranger_answers_per_second: float = 10.0


@dataclass(frozen=True)
class Trunk:
    name: str
    sources: tuple[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, int | None], ...]
    uri: str

    def matches(self, host: str, port: int) -> bool:
        """True when a packet from host:port comes from this trunk."""
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(ip in net and (p is None or p == port) for net, p in self.sources)


@dataclass(frozen=True)
class Number:
    ddi: str
    record: Record
    to: tuple[str, str]  # ("ring_group" | "user", name)


@dataclass(frozen=True)
class RingGroup:
    name: str
    record: Record
    members: tuple[str, ...]
    ring_timeout: float


@dataclass(frozen=True)
class User:
    name: str
    extension: str | None
    password: str
    record_inbound: Record
    record_outbound: Record


# -- wave 2: the recordings page, REST API, webhooks and retention (b2bua.recordings_service)


@dataclass(frozen=True)
class Http:
    """`[http]`: where the recordings page, the REST API and /metrics listen."""

    host: str
    port: int
    #: The base of `wav_url` in webhook bodies; default "http://<listen>". Set it when the
    #: receiver reaches this server through another name (a proxy, a public address).
    public_url: str = ""
    #: Open HTTP connections at once, and from one source address; past either bound a new
    #: connection is closed at once (b2bua.recordings_service.conn_guard): idle or hostile
    #: connections must not take the file descriptors the media sockets need.
    max_connections: int = 256
    max_connections_per_ip: int = 32
    #: Seconds a connection may take to send a complete request (and stay idle between
    #: requests) before it is closed: a slowloris client cannot hold one for ever.
    header_timeout: float = 10.0

    @property
    def base_url(self) -> str:
        if self.public_url:
            return self.public_url.rstrip("/")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


@dataclass(frozen=True)
class ApiToken:
    """`[[api_tokens]]`: a bearer token, stored only as its SHA-256."""

    name: str
    token_sha256: bytes  # the digest itself (32 bytes), compared in constant time
    scope: str  # "read" | "admin"


@dataclass(frozen=True)
class Webhook:
    """`[[webhooks]]`: one POST per finalised recording, signed with `secret`."""

    url: str
    secret: str


@dataclass(frozen=True)
class RecordingsPolicy:
    """`[recordings]`: 0 keeps recordings for ever (the seed's default)."""

    retention_days: int = 0


@dataclass(frozen=True)
class Cluster:
    """`[cluster]`: Kamailio at `[server] listen` in front of `workers` B2BUA processes.

    Each worker takes the port `worker_ports[0] + index` on every host in `hosts`, and its
    own slice of `[server] rtp_ports` (b2bua.cluster.topology). `edge_address` is where
    workers send to the edge and the one address whose `X-B2BUA-Source` they believe.
    """

    workers: int
    edge: str  # "kamailio"
    redis: str  # redis://host:port/db
    worker_ports: tuple[int, int]  # inclusive range
    hosts: tuple[str, ...]  # the worker hosts the edge dispatches to (default: [server] media_ip)
    edge_host: str  # the edge as workers reach it (default: [server] listen)
    edge_port: int


@dataclass(frozen=True)
class MediaSettings:
    """`[media]`: the codecs we offer and accept on every leg, in our order of preference
    (b2bua/codecs.py negotiates each leg from it; legs that differ are transcoded)."""

    codecs: tuple[str, ...] = DEFAULT_CODECS


@dataclass(frozen=True)
class Config:
    path: Path
    server: Server
    organisation: Organisation
    security: Security = field(default_factory=Security)
    trunks: tuple[Trunk, ...] = ()
    numbers: tuple[Number, ...] = ()
    ring_groups: tuple[RingGroup, ...] = ()
    users: tuple[User, ...] = ()
    http: Http | None = None  # None: no HTTP server at all
    api_tokens: tuple[ApiToken, ...] = ()
    webhooks: tuple[Webhook, ...] = ()
    recordings: RecordingsPolicy = field(default_factory=RecordingsPolicy)
    cluster: Cluster | None = None  # None: `b2bua run`, one process, nothing else needed
    media: MediaSettings = field(default_factory=MediaSettings)

    # Lookups by key, built once per Config (it is frozen): a scan per INVITE grew with the
    # organisation (thousands of numbers and users) on every call's setup.
    @cached_property
    def _by_ddi(self) -> dict[str, Number]:
        return _first_by(self.numbers, lambda n: n.ddi)

    @cached_property
    def _by_name(self) -> dict[str, User]:
        return _first_by(self.users, lambda u: u.name)

    @cached_property
    def _by_extension(self) -> dict[str, User]:
        return _first_by(self.users, lambda u: u.extension)

    def user(self, name: str) -> User | None:
        return self._by_name.get(name)

    def ring_group(self, name: str) -> RingGroup | None:
        return next((g for g in self.ring_groups if g.name == name), None)

    def number(self, dialled: str) -> Number | None:
        """The number a Request-URI user part dials; a leading + is ignored."""
        return self._by_ddi.get(dialled.lstrip("+"))

    def user_by_extension(self, extension: str) -> User | None:
        return self._by_extension.get(extension)

    def trunk_for(self, host: str, port: int) -> Trunk | None:
        return next((t for t in self.trunks if t.matches(host, port)), None)


def _first_by(items: tuple, key) -> dict:  # noqa: ANN001 - any item type, any key function
    """Each key's first item (as a scan would find it); items whose key is None are left out."""
    out: dict = {}
    for item in items:
        k = key(item)
        if k is not None:
            out.setdefault(k, item)
    return out


def load(path: Path | str | None = None) -> Config:
    """Read the file `b2bua` should use: the given one, ./flows.toml, else the demo."""
    if path is None:
        local = Path("flows.toml")
        if local.is_file():
            return load_file(local)
        # The demo inside the package: its relative paths would land in
        # site-packages, so they are taken relative to the working directory.
        return load_file(PACKAGED_CONFIG, base=Path.cwd())
    return load_file(Path(path))


def load_file(path: Path, base: Path | None = None) -> Config:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(path, "(file)", f"cannot read: {exc.strerror or exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, "(syntax)", f"not valid TOML: {exc}") from None
    return parse(data, path, base=base if base is not None else path.resolve().parent)


# -- validation helpers -------------------------------------------------------------


class _Reader:
    """Reads one table, remembering the key path for error messages."""

    def __init__(self, path: Path, where: str, table: Any) -> None:
        self.path = path
        self.where = where
        if not isinstance(table, dict):
            raise ConfigError(path, where, f"expected a table, got {_show(table)}")
        self.table = table
        self.used: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.where}.{name}" if self.where else name

    def get(self, name: str, kind: type | tuple[type, ...], default: Any = ..., *, what: str = "") -> Any:
        self.used.add(name)
        if name not in self.table:
            if default is ...:
                raise ConfigError(self.path, self.key(name), f"missing; expected {what or _kind(kind)}")
            return default
        value = self.table[name]
        # TOML booleans are ints to Python: keep them apart.
        if isinstance(value, bool) and bool not in _as_tuple(kind):
            raise ConfigError(self.path, self.key(name), f"got {_show(value)}, expected {what or _kind(kind)}")
        if not isinstance(value, kind):
            raise ConfigError(self.path, self.key(name), f"got {_show(value)}, expected {what or _kind(kind)}")
        return value

    def record(self, name: str) -> Record:
        value = self.get(name, str, "dont_care", what='"yes", "no" or "dont_care"')
        try:
            return Record.parse(value)
        except ValueError:
            raise ConfigError(
                self.path, self.key(name), f'got {_show(value)}, expected "yes", "no" or "dont_care"'
            ) from None

    def done(self) -> None:
        unknown = sorted(set(self.table) - self.used)
        if unknown:
            raise ConfigError(self.path, self.key(unknown[0]), "unknown key (a typo?)")


def _as_tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _kind(kind: type | tuple[type, ...]) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false", list: "a list", dict: "a table"}
    return " or ".join(names.get(k, k.__name__) for k in _as_tuple(kind))


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, dict):
        return "a table"
    return repr(value)


def _host_port(path: Path, key: str, value: str, default_port: int | None) -> tuple[str, int | None]:
    """Split "ip", "ip:port", "[v6]:port" into parts, checking both."""
    host, port_text = value, None
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            raise ConfigError(path, key, f'got "{value}", expected "[IPv6]:port"')
        host, rest = value[1:end], value[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise ConfigError(path, key, f'got "{value}", expected "[IPv6]:port"')
            port_text = rest[1:]
    elif value.count(":") == 1:
        host, port_text = value.split(":")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(path, key, f'got "{value}", expected an IP address (optionally with :port)') from None
    if port_text is None:
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigError(path, key, f'got "{value}", the port must be 1-65535')
    return host, int(port_text)


# -- sections -------------------------------------------------------------------------


def parse(data: dict[str, Any], path: Path, base: Path) -> Config:
    top = _Reader(path, "", data)
    server = _server(path, base, top.get("server", dict, what="a [server] table"))
    org_table = _Reader(path, "organisation", top.get("organisation", dict, {}))
    organisation = Organisation(
        name=org_table.get("name", str, "Organisation"),
        call_recording=org_table.get("call_recording", bool, True),
    )
    org_table.done()
    security = _security(path, top.get("security", dict, {}))
    trunks = tuple(_trunk(path, i, t) for i, t in enumerate(top.get("trunks", list, [])))
    users = tuple(_user(path, i, u) for i, u in enumerate(top.get("users", list, [])))
    groups = tuple(_ring_group(path, i, g) for i, g in enumerate(top.get("ring_groups", list, [])))
    numbers = tuple(_number(path, i, n) for i, n in enumerate(top.get("numbers", list, [])))
    http = _http(path, top.get("http", dict, None))
    tokens = tuple(_api_token(path, i, t) for i, t in enumerate(top.get("api_tokens", list, [])))
    webhooks = tuple(_webhook(path, i, w) for i, w in enumerate(top.get("webhooks", list, [])))
    recordings_policy = _recordings_policy(path, top.get("recordings", dict, {}))
    cluster_table = top.get("cluster", dict, None, what="a [cluster] table")
    cluster = _cluster(path, server, cluster_table) if cluster_table is not None else None
    media = _media(path, top.get("media", dict, {}))
    top.done()
    config = Config(path, server, organisation, security, trunks, numbers, groups, users,
                    http=http, api_tokens=tokens, webhooks=webhooks, recordings=recordings_policy,
                    cluster=cluster, media=media)
    _cross_check(config)
    return config


def _server(path: Path, base: Path, table: Any) -> Server:
    r = _Reader(path, "server", table)
    host, port = _host_port(path, "server.listen", r.get("listen", str, "127.0.0.1:5060"), DEFAULT_SIP_PORT)
    media_ip = r.get("media_ip", str, host)
    try:
        ipaddress.ip_address(media_ip)
    except ValueError:
        raise ConfigError(path, "server.media_ip", f'got "{media_ip}", expected an IP address') from None
    ports_text = r.get("rtp_ports", str, "20000-20999", what='a range like "20000-20999"')
    parts = ports_text.split("-")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise ConfigError(path, "server.rtp_ports", f'got "{ports_text}", expected a range like "20000-20999"')
    low, high = (int(p) for p in parts)
    if not 1024 <= low < high <= 65535:
        raise ConfigError(path, "server.rtp_ports", f'got "{ports_text}", expected 1024 <= first < last <= 65535')
    if high - low + 1 < MIN_RTP_PORTS:
        raise ConfigError(path, "server.rtp_ports", f'got "{ports_text}", expected at least {MIN_RTP_PORTS} ports (two RTP/RTCP pairs make one call)')
    if media_ip == host or _is_wildcard(host) or _is_wildcard(media_ip):
        if port is not None and low <= port <= high:
            raise ConfigError(path, "server.rtp_ports", f'"{ports_text}" overlaps the SIP port {port} of server.listen')
    recordings = Path(r.get("recordings_dir", str, "recordings"))
    if not recordings.is_absolute():
        recordings = base / recordings
    pause = r.get("pause", str, "silence", what='"silence" or "skip"')
    if pause not in ("silence", "skip"):
        raise ConfigError(path, "server.pause", f'got "{pause}", expected "silence" or "skip"')
    timeout = r.get("feature_digit_timeout", (int, float), DEFAULT_FEATURE_TIMEOUT)
    if not 0.2 <= timeout <= 10:
        raise ConfigError(path, "server.feature_digit_timeout", f"got {timeout}, expected 0.2 to 10 seconds")
    # Shared ports are the default (rtp.mux: cheaper per packet); they need IPv4, so an
    # IPv6 media_ip without the key gets a port pair per leg (on the same batch path).
    sockets = r.get("media_sockets", str, "per_call" if ":" in media_ip else "shared", what='"per_call" or "shared"')
    if sockets not in ("per_call", "shared"):
        raise ConfigError(path, "server.media_sockets", f'got "{sockets}", expected "per_call" or "shared"')
    if sockets == "shared" and ":" in media_ip:
        raise ConfigError(path, "server.media_sockets", f'"shared" needs an IPv4 media_ip, got "{media_ip}"')
    poll_ms = r.get("media_poll_ms", (int, float), 2)
    if not 0 <= poll_ms <= 20:
        raise ConfigError(path, "server.media_poll_ms", f"got {poll_ms}, expected 0 to 20 milliseconds (0: read on readiness)")
    max_calls = r.get("max_calls", int, 0)
    if max_calls < 0:
        raise ConfigError(path, "server.max_calls", f"got {max_calls}, expected a whole number >= 0 (0: no fixed limit)")
    db_text = r.get("registrations_db", str, "")
    db = Path(db_text) if db_text else recordings.parent / "registrations.sqlite3"
    if not db.is_absolute():
        db = base / db
    server = Server(
        host=host,
        port=port or DEFAULT_SIP_PORT,
        media_ip=media_ip,
        rtp_ports=(low, high),
        recordings_dir=recordings,
        realm=r.get("realm", str, "b2bua"),
        pause=pause,
        feature_timeout=float(timeout),
        registrations_db=db,
        media_sockets=sockets,
        media_poll=poll_ms / 1000,
        max_calls=max_calls,
    )
    r.done()
    return server


def _port_range(path: Path, key: str, text: str) -> tuple[int, int]:
    parts = text.split("-")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise ConfigError(path, key, f'got "{text}", expected a range like "5100-5199"')
    low, high = (int(p) for p in parts)
    if not 1 <= low <= high <= 65535:
        raise ConfigError(path, key, f'got "{text}", expected 1 <= first <= last <= 65535')
    return low, high


def _cluster(path: Path, server: Server, table: Any) -> Cluster:
    """`[cluster]`: every value is checked against `[server]`, so no worker starts half-configured."""
    r = _Reader(path, "cluster", table)
    workers = r.get("workers", int, 2)
    if not 1 <= workers <= 256:
        raise ConfigError(path, "cluster.workers", f"got {workers}, expected 1 to 256 worker processes")
    edge = r.get("edge", str, "kamailio", what='"kamailio"')
    if edge != "kamailio":
        raise ConfigError(path, "cluster.edge", f'got "{edge}", expected "kamailio" (the only edge we configure)')
    redis = r.get("redis", str, "redis://127.0.0.1:6379/0", what='a URL like "redis://127.0.0.1:6379/0"')
    _redis_url(path, redis)
    low, high = _port_range(path, "cluster.worker_ports", r.get("worker_ports", str, "5100-5199", what='a range like "5100-5199"'))
    if high - low + 1 < workers:
        raise ConfigError(path, "cluster.worker_ports", f'"{low}-{high}" has {high - low + 1} ports for {workers} workers')
    if low <= server.port < low + workers:
        raise ConfigError(path, "cluster.worker_ports", f'"{low}-{high}" holds the edge\'s SIP port {server.port} of server.listen')
    rtp_low, rtp_high = server.rtp_ports
    if low <= rtp_high and rtp_low < low + workers:
        raise ConfigError(path, "cluster.worker_ports", f'"{low}-{high}" overlaps server.rtp_ports {rtp_low}-{rtp_high}')
    per_worker = ((rtp_high - rtp_low + 1) // workers) & ~1
    if per_worker < MIN_RTP_PORTS:
        raise ConfigError(path, "cluster.workers", f"{workers} workers leave each fewer than {MIN_RTP_PORTS} of server.rtp_ports {rtp_low}-{rtp_high}")
    if _is_wildcard(server.media_ip):
        raise ConfigError(path, "server.media_ip", f'got "{server.media_ip}"; a cluster\'s workers bind it, so it must be this host\'s address')
    hosts = r.get("hosts", list, [server.media_ip], what='a list of worker host addresses like ["10.0.0.2"]')
    for i, host in enumerate(hosts):
        key = f"cluster.hosts[{i}]"
        if not isinstance(host, str):
            raise ConfigError(path, key, f"got {_show(host)}, expected an IP address")
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ConfigError(path, key, f'got "{host}", expected an IP address') from None
        if _is_wildcard(host):
            raise ConfigError(path, key, f'got "{host}", expected the address the edge reaches the workers at')
    if not hosts:
        raise ConfigError(path, "cluster.hosts", "is empty; expected at least one worker host")
    if _is_wildcard(server.host):
        raise ConfigError(path, "server.listen", f'"{server.host}" is a wildcard; the edge listens (and record-routes) '
                          "with this address, so it must be the edge's own, e.g. its public IP")
    default_edge = f"[{server.host}]:{server.port}" if ":" in server.host else f"{server.host}:{server.port}"
    edge_text = r.get("edge_address", str, default_edge, what='"ip:port" where the workers reach the edge')
    edge_host, edge_port = _host_port(path, "cluster.edge_address", edge_text, DEFAULT_SIP_PORT)
    if _is_wildcard(edge_host):
        raise ConfigError(path, "cluster.edge_address", f'"{edge_host}" is a wildcard; expected the edge\'s address as workers see it')
    r.done()
    return Cluster(workers, edge, redis, (low, high), tuple(hosts), edge_host, edge_port or DEFAULT_SIP_PORT)


def _redis_url(path: Path, url: str) -> None:
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ConfigError(path, "cluster.redis", f'got "{url}", the port must be 1-65535') from None
    if parts.scheme not in ("redis", "rediss", "unix") or (parts.scheme != "unix" and not parts.hostname):
        raise ConfigError(path, "cluster.redis", f'got "{url}", expected a URL like "redis://127.0.0.1:6379/0"')
    if port is not None and not 0 < port < 65536:
        raise ConfigError(path, "cluster.redis", f'got "{url}", the port must be 1-65535')


def _is_wildcard(ip: str) -> bool:
    return ip in ("0.0.0.0", "::")


def _security(path: Path, table: Any) -> Security:
    r = _Reader(path, "security", table)
    algorithms = r.get("digest_algorithms", list, ["MD5"], what='a list like ["MD5", "SHA-256"]')
    for i, name in enumerate(algorithms):
        if name not in ("MD5", "SHA-256"):
            raise ConfigError(path, f"security.digest_algorithms[{i}]", f'got {_show(name)}, expected "MD5" or "SHA-256"')
    if not algorithms:
        raise ConfigError(path, "security.digest_algorithms", "is empty; expected at least one of MD5, SHA-256")
    sec = Security(
        max_failures=r.get("max_auth_failures", int, 5),
        failure_window=float(r.get("failure_window", (int, float), 60)),
        lockout_seconds=float(r.get("lockout_seconds", (int, float), 600)),
        digest_algorithms=tuple(algorithms),
        max_failures_per_hour=r.get("max_auth_failures_per_hour", int, 20),
        max_failures_per_day=r.get("max_auth_failures_per_day", int, 50),
        max_lockout_seconds=float(r.get("max_lockout_seconds", (int, float), 86_400)),
        max_user_failures_per_hour=r.get("max_user_failures_per_hour", int, 30),
        answer_strangers=r.get("answer_strangers", bool, True),
        stranger_answers_per_second=float(r.get("stranger_answers_per_second", (int, float), 10)),
    )
    r.done()
    for key, count in (("max_auth_failures", sec.max_failures), ("max_auth_failures_per_hour", sec.max_failures_per_hour),
                       ("max_auth_failures_per_day", sec.max_failures_per_day),
                       ("max_user_failures_per_hour", sec.max_user_failures_per_hour)):
        if count < 1:
            raise ConfigError(path, f"security.{key}", f"got {count}, expected at least 1")
    # Zero or negative durations switch the protection off: refuse them, naming the key.
    for key, seconds in (("failure_window", sec.failure_window), ("lockout_seconds", sec.lockout_seconds),
                         ("max_lockout_seconds", sec.max_lockout_seconds),
                         ("stranger_answers_per_second", sec.stranger_answers_per_second)):
        if not seconds > 0 or seconds == float("inf"):
            raise ConfigError(path, f"security.{key}", f"got {_show(seconds)}, expected a positive number")
    if sec.max_lockout_seconds < sec.lockout_seconds:
        raise ConfigError(path, "security.max_lockout_seconds",
                          f"got {_show(sec.max_lockout_seconds)}, expected at least lockout_seconds ({_show(sec.lockout_seconds)})")
    return sec


def _trunk(path: Path, i: int, table: Any) -> Trunk:
    r = _Reader(path, f"trunks[{i}]", table)
    name = r.get("name", str)
    sources = []
    for j, src in enumerate(r.get("sources", list, what='a list like ["127.0.0.1:5080", "203.0.113.0/24"]')):
        key = f"trunks[{i}].sources[{j}]"
        if not isinstance(src, str):
            raise ConfigError(path, key, f"got {_show(src)}, expected a string")
        if "/" in src:
            try:
                sources.append((ipaddress.ip_network(src, strict=False), None))
            except ValueError:
                raise ConfigError(path, key, f'got "{src}", expected a CIDR like "203.0.113.0/24"') from None
        else:
            host, port = _host_port(path, key, src, None)
            sources.append((ipaddress.ip_network(host), port))
    uri = r.get("uri", str)
    if not uri.lower().startswith(("sip:", "sips:")):
        raise ConfigError(path, f"trunks[{i}].uri", f'got "{uri}", expected a SIP URI like "sip:203.0.113.5:5060"')
    r.done()
    return Trunk(name, tuple(sources), uri)


def _user(path: Path, i: int, table: Any) -> User:
    r = _Reader(path, f"users[{i}]", table)
    name = r.get("name", str)
    if not name or any(c in name for c in ' :@;<>"'):
        raise ConfigError(path, f"users[{i}].name", f'got "{name}", expected a SIP user name (no spaces, : @ ; < > ")')
    extension = r.get("extension", (str, int), None)
    user = User(
        name=name,
        extension=str(extension) if extension is not None else None,
        password=r.get("password", str),
        record_inbound=r.record("record_inbound"),
        record_outbound=r.record("record_outbound"),
    )
    if not user.password:
        raise ConfigError(path, f"users[{i}].password", "is empty; every user needs a password")
    r.done()
    return user


def _ring_group(path: Path, i: int, table: Any) -> RingGroup:
    r = _Reader(path, f"ring_groups[{i}]", table)
    members = r.get("members", list, what='a list of user names like ["alice", "bob"]')
    for j, m in enumerate(members):
        if not isinstance(m, str):
            raise ConfigError(path, f"ring_groups[{i}].members[{j}]", f"got {_show(m)}, expected a user name")
    timeout = r.get("ring_timeout", (int, float), DEFAULT_RING_TIMEOUT)
    if not 1 <= timeout <= 600:
        raise ConfigError(path, f"ring_groups[{i}].ring_timeout", f"got {timeout}, expected 1 to 600 seconds")
    group = RingGroup(r.get("name", str), r.record("record"), tuple(members), float(timeout))
    r.done()
    return group


def _number(path: Path, i: int, table: Any) -> Number:
    r = _Reader(path, f"numbers[{i}]", table)
    ddi = r.get("ddi", (str, int))
    ddi = str(ddi).lstrip("+")
    if not ddi or not all(c.isdigit() or c in "*#" for c in ddi):
        raise ConfigError(path, f"numbers[{i}].ddi", f'got "{ddi}", expected digits like "441632960000"')
    to = r.get("to", str, what='"ring_group:NAME" or "user:NAME"')
    kind, _, name = to.partition(":")
    if kind not in ("ring_group", "user") or not name:
        raise ConfigError(path, f"numbers[{i}].to", f'got "{to}", expected "ring_group:NAME" or "user:NAME"')
    number = Number(ddi, r.record("record"), (kind, name))
    r.done()
    return number


def _http(path: Path, table: Any) -> Http | None:
    if table is None:
        return None
    r = _Reader(path, "http", table)
    listen = r.get("listen", str, "127.0.0.1:8080", what='an address like "127.0.0.1:8080"')
    host, port = _host_port(path, "http.listen", listen, None)
    if port is None:
        raise ConfigError(path, "http.listen", f'got "{listen}", expected an address with a port like "127.0.0.1:8080"')
    public_url = r.get("public_url", str, "")
    if public_url and not public_url.lower().startswith(("http://", "https://")):
        raise ConfigError(path, "http.public_url", f'got "{public_url}", expected a URL like "https://pbx.example:8443"')
    max_connections = r.get("max_connections", int, Http.max_connections)
    if not 1 <= max_connections <= 65536:
        raise ConfigError(path, "http.max_connections", f"got {max_connections}, expected 1 to 65536")
    per_ip = r.get("max_connections_per_ip", int, min(Http.max_connections_per_ip, max_connections))
    if not 1 <= per_ip <= max_connections:
        raise ConfigError(path, "http.max_connections_per_ip",
                          f"got {per_ip}, expected 1 to max_connections ({max_connections})")
    header_timeout = r.get("header_timeout", (int, float), Http.header_timeout)
    if not 1 <= header_timeout <= 300:
        raise ConfigError(path, "http.header_timeout", f"got {header_timeout}, expected 1 to 300 seconds")
    r.done()
    return Http(host, port, public_url, max_connections, per_ip, float(header_timeout))


def _api_token(path: Path, i: int, table: Any) -> ApiToken:
    r = _Reader(path, f"api_tokens[{i}]", table)
    name = r.get("name", str)
    if not name or not name.isprintable() or " " in name:
        raise ConfigError(path, f"api_tokens[{i}].name", f"got {_show(name)}, expected a name without spaces (it is logged)")
    digest = r.get("token_sha256", str, what="the hex SHA-256 of the token (64 hex digits)")
    try:
        raw = bytes.fromhex(digest)
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise ConfigError(path, f"api_tokens[{i}].token_sha256", "expected 64 hex digits: the SHA-256 of the token "
                          "(e.g. printf %s TOKEN | sha256sum), never the token itself")
    scope = r.get("scope", str, "read", what='"read" or "admin"')
    if scope not in ("read", "admin"):
        raise ConfigError(path, f"api_tokens[{i}].scope", f'got {_show(scope)}, expected "read" or "admin"')
    r.done()
    return ApiToken(name, raw, scope)


def _webhook(path: Path, i: int, table: Any) -> Webhook:
    r = _Reader(path, f"webhooks[{i}]", table)
    url = r.get("url", str, what='a URL like "http://127.0.0.1:9000/recordings"')
    scheme, _, rest = url.partition("://")
    if scheme.lower() not in ("http", "https") or not rest or rest.startswith("/"):
        raise ConfigError(path, f"webhooks[{i}].url", f"got {_show(url)}, expected an http:// or https:// URL with a host")
    secret = r.get("secret", str, what="a string that signs each body")
    if not secret:
        raise ConfigError(path, f"webhooks[{i}].secret", "is empty; the receiver checks X-B2BUA-Signature with it")
    r.done()
    return Webhook(url, secret)


def _recordings_policy(path: Path, table: Any) -> RecordingsPolicy:
    r = _Reader(path, "recordings", table)
    days = r.get("retention_days", int, 0, what="a whole number of days (0: keep for ever)")
    if days < 0:
        raise ConfigError(path, "recordings.retention_days", f"got {days}, expected 0 (keep for ever) or more days")
    r.done()
    return RecordingsPolicy(days)


def _media(path: Path, table: Any) -> MediaSettings:
    r = _Reader(path, "media", table)
    names = r.get("codecs", list, list(DEFAULT_CODECS), what='a list like ["PCMU", "PCMA"]')
    if not names:
        raise ConfigError(path, "media.codecs", "is empty; list at least one of " + ", ".join(KNOWN_CODECS))
    codecs: list[str] = []
    for i, name in enumerate(names):
        key = f"media.codecs[{i}]"
        if not isinstance(name, str) or name.upper() not in KNOWN_CODECS:
            planned = " (G.722 is planned, not yet carried by the media core)" if str(name).upper() == "G722" else ""
            raise ConfigError(path, key, f"got {_show(name)}, expected one of " + ", ".join(KNOWN_CODECS) + planned)
        if name.upper() in codecs:
            raise ConfigError(path, key, f"{_show(name)} is listed twice")
        codecs.append(name.upper())
    r.done()
    return MediaSettings(tuple(codecs))


def _cross_check(config: Config) -> None:
    path = config.path
    _unique(path, "api_tokens", [t.name for t in config.api_tokens], "name")
    _unique(path, "users", [u.name for u in config.users], "name")
    _unique(path, "users", [u.extension for u in config.users], "extension")
    _unique(path, "ring_groups", [g.name for g in config.ring_groups], "name")
    _unique(path, "numbers", [n.ddi for n in config.numbers], "ddi")
    _unique(path, "trunks", [t.name for t in config.trunks], "name")
    names = {u.name for u in config.users}
    for i, group in enumerate(config.ring_groups):
        for j, member in enumerate(group.members):
            if member not in names:
                raise ConfigError(path, f"ring_groups[{i}].members[{j}]", f'"{member}" is in no [[users]] table')
    groups = {g.name for g in config.ring_groups}
    for i, number in enumerate(config.numbers):
        kind, name = number.to
        if kind == "user" and name not in names:
            raise ConfigError(path, f"numbers[{i}].to", f'"user:{name}": no [[users]] table has name = "{name}"')
        if kind == "ring_group" and name not in groups:
            raise ConfigError(path, f"numbers[{i}].to", f'"ring_group:{name}": no [[ring_groups]] table has name = "{name}"')


def _unique(path: Path, table: str, values: list[str | None], key: str) -> None:
    seen: dict[str, int] = {}
    for i, value in enumerate(values):
        if value is None:
            continue
        if value in seen:
            raise ConfigError(path, f"{table}[{i}].{key}", f'"{value}" is used twice (also {table}[{seen[value]}])')
        seen[value] = i
